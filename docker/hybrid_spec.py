"""Write the spec a hybrid image is realized from: the version's spec with ``options.skip_models``.

Hybrid images bake ComfyUI and its custom nodes but leave models on the network volume.
The builder's CLI has no flag for that; the spec option ``skip_models`` is the switch, so
the image build writes ``<out-dir>/<id>.json`` (same spec, that one option set) and realizes
with ``VERSIONS_DIR=<out-dir>``. The image keeps that spec next to its lock so the worker's
lock check compares like with like.

Usage: python3 docker/hybrid_spec.py <id> --versions-dir DIR --out-dir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path


class SpecError(Exception):
    """A spec that cannot be read or is not a JSON object."""


def hybrid_spec(spec: dict) -> dict:
    """Return a copy of ``spec`` with ``options.skip_models`` set; the input is unchanged."""
    options = spec.get("options") or {}
    if not isinstance(options, dict):
        raise SpecError(f"options: expected an object, got {type(options).__name__}; fix the spec")
    return {**spec, "options": {**options, "skip_models": True}}


def load_spec(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec; create it with `scripts/version.py create`") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{path}: expected a JSON object at the top level")
    return spec


def write_atomic(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` through ``<name>.<random>.incomplete`` + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.incomplete")
    try:
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_id")
    parser.add_argument("--versions-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    src = args.versions_dir / f"{args.version_id}.json"
    dst = args.out_dir / f"{args.version_id}.json"
    if src.resolve() == dst.resolve():
        print(f"error: --out-dir must differ from --versions-dir ({src} would be overwritten)", file=sys.stderr)
        return 2
    try:
        spec = hybrid_spec(load_spec(src))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_atomic(dst, json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {dst} (options.skip_models=true)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
