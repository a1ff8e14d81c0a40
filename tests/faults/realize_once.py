"""``python -m tests.faults.realize_once ARGS_JSON``: one realize_models run in its own process.

ARGS_JSON: {"entries": [...], "models_dir": "...", "home": "...", "cache_root": "..."}; prints the
lock records as JSON on the last line (used to run two realizes of one spec at once).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from builder.config import BuildConfig
from builder.models import realize_models


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    cfg = BuildConfig.from_env({"HOME": args["home"], "COMFY_CACHE_ROOT": args["cache_root"],
                                "MODEL_DOWNLOAD_CONNECTIONS": "1"}, volume_root=Path(args["home"]) / "no-volume",
                               container=False)
    records = realize_models(args["entries"], cfg=cfg, models_dir=Path(args["models_dir"]), offline=False,
                             raise_on_error=False)
    print(json.dumps(records))
    return 0 if all(r["status"] in ("ok", "fetched", "restored") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
