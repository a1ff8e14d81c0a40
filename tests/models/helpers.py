"""Small helpers shared by the model tests (no fakes of our own code)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from builder.models import realize_models


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def realize(entries, cfg, models_dir: Path, **kw) -> list[dict]:
    kw.setdefault("offline", False)
    kw.setdefault("raise_on_error", False)
    return realize_models(entries, cfg=cfg, models_dir=models_dir, **kw)


def leftovers(*dirs: Path) -> list[Path]:
    """Every ``*.incomplete`` under the given directories."""
    out = []
    for d in dirs:
        if Path(d).exists():
            out += [Path(r) / f for r, _, fs in os.walk(d) for f in fs if f.endswith(".incomplete")]
    return out


def blobs(cfg) -> list[Path]:
    root = cfg.store_dir / "models" / "sha256"
    return sorted(root.glob("*/*/blob")) if root.exists() else []
