#!/usr/bin/env python3
"""Manage pinned ComfyUI versions: a thin wrapper over ``builder.cli``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
