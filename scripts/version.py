#!/usr/bin/env python3
"""Manage pinned ComfyUI versions: a thin wrapper over ``builder.cli``.

``run-ui`` and ``run-handler`` belong to the worker (``rp_handler.localrun``): they are named here,
where both packages meet, so the builder never imports the worker.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.entry import ensure_for_script  # noqa: E402  (stdlib only)

if __name__ == "__main__":
    ensure_for_script(__file__)  # plain python3: re-run in the project's .venv

from builder.cli import PassThrough, main  # noqa: E402

WORKER_COMMANDS = (
    PassThrough("run-ui", "rp_handler.localrun", "run_ui",
                "start ComfyUI's UI for a realized version (rp_handler.localrun)"),
    PassThrough("run-handler", "rp_handler.localrun", "run_handler",
                "run the handler locally on a workflow (rp_handler.localrun)"),
)

if __name__ == "__main__":
    sys.exit(main(pass_through=WORKER_COMMANDS))
