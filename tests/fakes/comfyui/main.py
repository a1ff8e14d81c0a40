"""Run the fake ComfyUI exactly like ComfyUI's main.py (unknown flags are ignored).

    python tests/fakes/comfyui/main.py --listen 127.0.0.1 --port 0 --cpu --disable-auto-launch

Env: FAKE_COMFY_BOOT_DELAY_S (sleep before listening), FAKE_COMFY_FAULTS (JSON object of faults).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    sys.path.insert(0, str(HERE))
    from server import FakeComfy, parse_faults  # type: ignore[no-redef]
else:
    from .server import FakeComfy, parse_faults


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="main.py", description="fake ComfyUI")
    p.add_argument("--listen", default="127.0.0.1", nargs="?", const="0.0.0.0")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--disable-auto-launch", action="store_true")
    p.add_argument("--input-directory")
    p.add_argument("--output-directory")
    p.add_argument("--temp-directory")
    p.add_argument("--user-directory")
    p.add_argument("--base-directory")
    p.add_argument("--extra-model-paths-config", action="append", nargs="+", default=[])
    p.add_argument("--database-url")
    args, unknown = p.parse_known_args(argv)
    args.unknown = unknown
    return args


async def _serve(comfy: FakeComfy, host: str, port: int) -> None:
    await comfy.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("comfyui").info("Stopped server")
    await comfy.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s", force=True)
    log = logging.getLogger("comfyui")
    args = parse_args(argv)
    if args.unknown:
        log.info("[fake] ignoring unknown arguments: %s", " ".join(args.unknown))
    base = Path(args.base_directory) if args.base_directory else HERE
    faults = parse_faults(os.environ.get("FAKE_COMFY_FAULTS"))
    boot = float(os.environ.get("FAKE_COMFY_BOOT_DELAY_S", "0") or 0)
    log.info("Checkpoint files will always be loaded safely.")
    log.info("Total VRAM 0 MB, total RAM 0 MB")
    log.info("Set vram state to: DISABLED")
    log.info("Device: cpu")
    log.info("ComfyUI version: 0.3.64 (fake)")
    if boot > 0:
        log.info("[fake] boot delay %.2f s", boot)
        time.sleep(boot)
    extra = [Path(f) for group in args.extra_model_paths_config for f in group]
    comfy = FakeComfy(
        input_dir=Path(args.input_directory or base / "input"),
        output_dir=Path(args.output_directory or base / "output"),
        temp_dir=Path(args.temp_directory or base / "temp"),
        user_dir=Path(args.user_directory or base / "user"),
        models_dir=base / "models",
        extra_model_paths=extra,
        faults=faults,
        hard_exit=True,
        argv=["main.py", *argv],
    )
    log.info("Import times for custom nodes:\n   0.0 seconds: %s", HERE / "custom_nodes" / "websocket_image_save.py")
    asyncio.run(_serve(comfy, args.listen, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
