"""``python -m rp_handler``: the RunPod worker (see ``rp_handler.main``)."""

from rp_handler import timings  # noqa: F401  (first: marks the import time, imports nothing heavy)

import sys

from builder.entry import ensure_for_module

if __name__ == "__main__":
    ensure_for_module("rp_handler")  # plain python3: re-run in the project's .venv

from rp_handler.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
