"""Helpers shared by the ``version.py`` commands: find and load a spec, print text or ``--json``, and
read the ``--nodes`` / ``--models`` arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from .config import BuildConfig
from .errors import UsageError

HEX40 = re.compile(r"^[0-9a-f]{40}$")


def spec_path_for(cfg: BuildConfig, ref: str) -> Path:
    """``<id>`` → versions/<id>.json; anything that looks like a path is used as is."""
    if ref.endswith(".json") or "/" in ref:
        return Path(ref)
    return cfg.spec_path(ref)


def load(cfg: BuildConfig, ref: str):
    from .spec import load_spec
    return load_spec(spec_path_for(cfg, ref))


def emit(args: argparse.Namespace, data: Any, text: str | list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(text) if isinstance(text, list) else text)


def split_repo_ref(value: str) -> dict:
    """``URL@REF`` → {repo, ref|commit}; ``git@host:org/repo`` alone has no ref."""
    repo, sep, ref = value.rpartition("@")
    if not sep or not repo or "/" in ref or ":" in ref or not ref:
        return {"repo": value}
    return {"repo": repo, "commit": ref} if HEX40.match(ref) else {"repo": repo, "ref": ref}


def json_or_file(value: str | None, what: str) -> list:
    if value is None:
        return []
    text = value
    path = Path(value)
    if not value.lstrip().startswith(("[", "{")):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--{what}: {value!r} is neither JSON nor a readable file ({exc.strerror})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json or yaml parse error
        raise UsageError(f"--{what}: cannot parse {value[:60]!r}: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict) and what in data:
        data = data[what]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UsageError(f"--{what}: expected a JSON list (or object) of {what}")
    return data


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
