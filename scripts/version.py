#!/usr/bin/env python3
"""Manage pinned ComfyUI versions: a thin wrapper over ``builder.cli``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.entry import ensure_for_script  # noqa: E402  (stdlib only)

if __name__ == "__main__":
    ensure_for_script(__file__)  # plain python3: re-run in the project's .venv

from builder.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
