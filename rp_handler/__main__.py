"""``python -m rp_handler``: the RunPod worker (see ``rp_handler.main``)."""

from rp_handler import timings  # noqa: F401  (first: marks the import time, imports nothing heavy)

import sys

from rp_handler.main import main

if __name__ == "__main__":
    sys.exit(main())
