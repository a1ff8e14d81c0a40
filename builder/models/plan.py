"""Turn spec/lock model entries into tasks (pure: no disk, no network)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.config import BuildConfig
from builder.errors import ModelSpecError
from builder.models.checksum import Checksum, parse_checksum
from builder.models.sources import Source, describe, parse_source

DEFAULT_SUBDIR = "checkpoints"
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class ModelTask:
    index: int
    source_text: str  # as written in the spec (recorded in the lock)
    source: Source  # what we fetch from (the lock's resolved_source when present)
    label: str  # safe for logs and errors
    name: str
    target: Path
    expected: Checksum | None  # from the spec's checksum
    sha256: str | None  # sha256 we expect (spec checksum or lock)
    size: int | None  # from the lock
    resolved_source: str | None = None  # from the lock (an hf:// source pinned to a commit, ...)

    @property
    def algos(self) -> tuple[str, ...]:
        return ("sha256", "md5") if self.expected and self.expected.algo == "md5" else ("sha256",)

    @property
    def md5(self) -> str | None:
        return self.expected.hex if self.expected and self.expected.algo == "md5" else None

    @property
    def network(self) -> bool:
        return self.source.kind != "local"


def expand_target(text: str, *, models_dir: Path, comfy_home: Path | None, where: str) -> Path:
    """Expand ``$COMFY_HOME`` / ``$MODELS_DIR`` (also ``${...}``) and ``~``; relative → under models_dir."""
    values = {"MODELS_DIR": str(models_dir), "COMFY_HOME": str(comfy_home) if comfy_home else None}

    def sub(m: re.Match) -> str:
        var = m.group(1) or m.group(2)
        if var not in values:
            raise ModelSpecError(f"{where}: unknown variable ${var} in target_path (only $COMFY_HOME and $MODELS_DIR)")
        if values[var] is None:
            raise ModelSpecError(f"{where}: target_path uses ${var} but COMFY_HOME is not known here (set COMFY_HOME)")
        return values[var]

    path = Path(_VAR.sub(sub, text)).expanduser()
    return path if path.is_absolute() else models_dir / path


def _check_target_text(text: str, where: str) -> None:
    """No '..' and no '~' in a target_path: a relative one must stay under the models dir.

    (Absolute paths are explicit: lock records carry them; spec validation refuses them in specs.)
    """
    if ".." in PurePosixPath(text.replace("\\", "/")).parts or text.startswith("~"):
        raise ModelSpecError(f"{where}.target_path: {text!r} escapes the models dir; use a relative path without "
                             "'..' or '~' (e.g. 'loras/x.safetensors')")


def _plain_name(name: str, where: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ModelSpecError(f"{where}: {name!r} is not a plain file name")
    return name


def plan_entry(
    entry: dict, index: int, *, cfg: BuildConfig, models_dir: Path, comfy_home: Path | None = None
) -> ModelTask:
    where = f"models[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
        raise ModelSpecError(f"{where}: each model needs a 'source' string")
    for key in ("target_subdir", "target_path", "name", "checksum", "sha256", "resolved_source"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise ModelSpecError(f"{where}.{key}: must be a string, got {type(entry[key]).__name__}")
    source_text = entry["source"]
    fetch_text = entry.get("resolved_source") or source_text
    source = parse_source(fetch_text, cfg, where=f"{where}.source")
    expected = parse_checksum(entry["checksum"], where=f"{where}.checksum") if entry.get("checksum") else None
    lock_sha = None
    if entry.get("sha256"):
        lock_sha = parse_checksum(entry["sha256"], where=f"{where}.sha256")
        if lock_sha.algo != "sha256":
            raise ModelSpecError(f"{where}.sha256: expected a sha256 digest, got {entry['sha256']!r}")
    sha256 = expected.hex if expected and expected.algo == "sha256" else (lock_sha.hex if lock_sha else None)
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise ModelSpecError(f"{where}.size: {size!r} is not a byte count")

    target_path = entry.get("target_path")
    name = entry.get("name") or source.default_name
    if target_path:
        _check_target_text(str(target_path), where)
        target = expand_target(str(target_path), models_dir=models_dir, comfy_home=comfy_home, where=where)
        if str(target_path).endswith("/"):
            if not name:
                raise ModelSpecError(f"{where}: target_path is a directory; add 'name' (the file name)")
            target = target / _plain_name(name, where)
    else:
        if not name:
            raise ModelSpecError(
                f"{where}: cannot tell the file name of {describe(source)}; add 'name' or 'target_path'"
            )
        subdir = entry.get("target_subdir") or DEFAULT_SUBDIR
        sub = PurePosixPath(subdir)
        if sub.is_absolute() or ".." in sub.parts:
            raise ModelSpecError(f"{where}.target_subdir: {subdir!r} must be a relative folder like 'loras'")
        target = models_dir / sub / _plain_name(name, where)
    return ModelTask(
        index=index,
        source_text=source_text,
        source=source,
        label=describe(source),
        name=target.name,
        target=target,
        expected=expected,
        sha256=sha256,
        size=size,
        resolved_source=entry.get("resolved_source"),
    )


def plan(entries: list[dict], *, cfg: BuildConfig, models_dir: Path, comfy_home: Path | None = None) -> list[ModelTask]:
    """All tasks, or one :class:`ModelSpecError` naming every bad entry."""
    tasks, problems = [], []
    for i, entry in enumerate(entries):
        try:
            tasks.append(plan_entry(entry, i, cfg=cfg, models_dir=models_dir, comfy_home=comfy_home))
        except ModelSpecError as exc:
            problems.append(str(exc))
    seen: dict[Path, ModelTask] = {}
    for t in tasks:
        other = seen.get(t.target)
        if other and other.source_text != t.source_text:
            problems.append(f"models[{t.index}]: target {t.target} is also the target of models[{other.index}]")
        seen.setdefault(t.target, t)
    if problems:
        raise ModelSpecError("; ".join(problems))
    return tasks
