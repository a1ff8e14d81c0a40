"""``scripts/verify_models.py`` / ``version.py verify-models``: check, fetch and restore models.

Exit codes: 0 every model ok/fetched/restored, 1 any problem, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

from builder.config import BuildConfig
from builder.errors import BuildError, UsageError
from builder.models.progress import LogProgress, TtyProgress
from builder.models.realize import realize_models

log = logging.getLogger(__name__)
GOOD = {"ok", "fetched", "restored"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="verify_models.py",
        description="Verify model files against their checksums; fetch or restore what is missing.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", type=Path, help="version spec (versions/<id>.json) or a JSON/YAML list of models")
    src.add_argument("--lock", type=Path, help="resolved lock (<cache>/resolved/<id>.lock.json)")
    p.add_argument("--models-dir", type=Path, help="models directory (default: $MODELS_DIR)")
    p.add_argument("--cache-dir", type=Path, help="store root; blobs go to <dir>/models/<algo>/<HH>/<hex>/blob")
    p.add_argument("--overwrite", action="store_true", help="replace mismatching files (restore or refetch)")
    p.add_argument("--offline", action="store_true", help="never use the network (store and local files only)")
    p.add_argument("--jobs", type=int, default=4, help="models handled in parallel (default 4)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    return p


def load_entries(path: Path, *, lock: bool) -> list[dict]:
    """Model entries from a spec, a lock, or a bare list (JSON, or YAML by suffix)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    is_yaml = path.suffix in (".yaml", ".yml")
    try:
        if is_yaml:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:  # not a ValueError: name it here, on one line
                raise ValueError(" ".join(str(exc).split())) from None
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path} is not valid {'YAML' if is_yaml else 'JSON'}: {exc}") from None
    models = data.get("models") if isinstance(data, dict) else data
    if models is None:
        models = []
    if not isinstance(models, list):
        raise UsageError(f"{path}: 'models' must be a list")
    if lock:
        models = [_from_lock(m) for m in models]
    return models


def _from_lock(rec: dict) -> dict:
    if not isinstance(rec, dict):
        return rec
    entry = dict(rec)
    if not any(entry.get(k) for k in ("target_path", "target_subdir", "name")) and entry.get("target"):
        entry["target_path"] = entry["target"]
    return entry


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_table(records: list[dict]) -> str:
    rows = [("STATUS", "SIZE", "SHA256", "TARGET")]
    for r in records:
        rows.append((r["status"], _size(r.get("size")), (r.get("sha256") or "")[:12], r["target"]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    for r in records:
        if r.get("error"):
            lines.append(f"{r['status']}: {r['error']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = BuildConfig.from_env(os.environ if env is None else env)
    except ValueError as exc:  # a malformed setting (NETWORK_VOLUME=maybe, ...): one line
        print(f"verify_models: {exc}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("verify_models: --jobs must be at least 1", file=sys.stderr)
        return 2
    try:
        entries = load_entries(args.spec or args.lock, lock=args.lock is not None)
        progress = TtyProgress(sys.stderr) if sys.stderr.isatty() and not args.json else LogProgress()
        records = realize_models(
            entries,
            cfg=cfg,
            models_dir=args.models_dir or cfg.models_dir,
            offline=args.offline or cfg.offline,
            overwrite=args.overwrite,
            jobs=args.jobs,
            cache_dir=args.cache_dir,
            progress=progress,
            raise_on_error=False,
        )
    except BuildError as exc:
        print(f"verify_models: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps({"ok": all(r["status"] in GOOD for r in records), "models": records}, indent=2))
    else:
        print(format_table(records) if records else "no models in the spec")
    return 0 if all(r["status"] in GOOD for r in records) else 1
