#!/usr/bin/env python3
"""Verify model files against a spec or lock; fetch or restore what is missing.

    python3 scripts/verify_models.py (--spec FILE | --lock FILE) [--models-dir D] [--cache-dir C]
                                     [--overwrite] [--offline] [--jobs N] [--json]

See docs/models.md.  Exit 0 when every model is ok, 1 on any problem, 2 on usage errors.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.entry import ensure_for_script  # noqa: E402  (stdlib only)

if __name__ == "__main__":
    ensure_for_script(__file__)  # plain python3: re-run in the project's .venv

from builder.models.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
