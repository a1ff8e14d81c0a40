"""Run ComfyUI's main.py with a larger garbage-collector threshold during its boot only.

    <COMFY_PYTHON> -u comfy_launch.py <GEN0_THRESHOLD> <COMFY_HOME>/main.py <ComfyUI arguments...>

ComfyUI's boot creates millions of objects (imports of torch, transformers and every node module)
and Python's default generation-0 threshold (700) runs the cyclic collector thousands of times
while nothing is garbage yet. This launcher raises the threshold, starts main.py exactly as
``python main.py ...`` would (``__main__``, ``sys.argv``, ``sys.path[0]``), and restores the
interpreter's default thresholds as soon as ComfyUI's port accepts a connection, so jobs run with
the usual collector (tensors in reference cycles are not held longer). Standard library only: it
runs in ComfyUI's interpreter, not the worker's.
"""

import gc
import os
import runpy
import socket
import sys
import threading
import time


def _port(argv):
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    return 8188


def _restore_when_listening(port, defaults, deadline_s=3600.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    gc.set_threshold(*defaults)


def main():
    threshold, main_py, args = int(sys.argv[1]), os.path.abspath(sys.argv[2]), sys.argv[3:]
    defaults = gc.get_threshold()
    if threshold > defaults[0]:
        gc.set_threshold(threshold, defaults[1], defaults[2])
        threading.Thread(target=_restore_when_listening, args=(_port(args), defaults), daemon=True,
                         name="gc-threshold-restore").start()
    sys.argv = [main_py, *args]
    sys.path[0] = os.path.dirname(main_py)
    runpy.run_path(main_py, run_name="__main__")


if __name__ == "__main__":
    main()
