"""ComfyUI outputs → sinks (base64, GCS, local folder), uploaded as soon as each node reports them.

``output_items(node, output)`` turns one ``executed``/history output into items (pure);
``OutputCollector`` feeds them to a sink on a small thread pool while the job still runs and
``finish`` reconciles with the history, so nothing reported only in history is lost.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Union

from builder.atomic import write_atomic
from rp_handler.config import WorkerConfig
from rp_handler.encode import FormatSink
from rp_handler.gcs_sink import GcsSink
from rp_handler.errors import OutputError
from rp_handler.inputs import job_key
from rp_handler.job import OutputSpec

log = logging.getLogger(__name__)

RUNPOD_RESULT_LIMIT_MB = 20


@dataclass(frozen=True)
class OutputFile:
    """A file ComfyUI reported: ``{"filename", "subfolder", "type"}`` under an output key."""

    node: str
    kind: str  # history key: images, gifs, videos, audio, ...
    index: int
    filename: str
    subfolder: str
    type: str  # output | temp | input

    @property
    def key(self) -> tuple:
        return (self.node, self.kind, self.index, self.filename, self.subfolder, self.type)

    @property
    def object_name(self) -> str:
        """``<node>_<index>_<file>`` as one plain name: node ids and file names come from the workflow and
        custom nodes, so separators, control characters and leading dots are replaced."""
        return _plain(f"{self.node}_{self.index}_{self.filename}")

    @property
    def mime(self) -> str:
        return mimetypes.guess_type(self.filename)[0] or "application/octet-stream"

    def describe(self) -> dict[str, Any]:
        return {"node": self.node, "kind": self.kind, "index": self.index, "filename": self.filename,
                "type": self.type, "mime": self.mime}


@dataclass(frozen=True)
class OutputText:
    node: str
    kind: str
    index: int
    text: str

    @property
    def key(self) -> tuple:
        return (self.node, self.kind, self.index, "", "", "text")

    def describe(self) -> dict[str, Any]:
        return {"node": self.node, "kind": self.kind, "index": self.index, "type": "text", "text": self.text}


_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def _plain(name: str) -> str:
    safe = _UNSAFE.sub("_", name).lstrip(".") or "output"
    return safe[:255]


Item = Union[OutputFile, OutputText]
Source = Union[Path, bytes]


def output_items(node: str, output: dict[str, Any] | None) -> list[Item]:
    """Every file and text entry of one node's UI output (any key: images, gifs, audio, text...)."""
    items: list[Item] = []
    for kind, values in (output or {}).items():
        if not isinstance(values, list):
            continue
        for index, value in enumerate(values):
            if isinstance(value, dict) and isinstance(value.get("filename"), str):
                items.append(OutputFile(node=str(node), kind=kind, index=index, filename=value["filename"],
                                        subfolder=str(value.get("subfolder") or ""),
                                        type=str(value.get("type") or "output")))
            elif isinstance(value, str) and kind not in ("animated",):
                items.append(OutputText(node=str(node), kind=kind, index=index, text=value))
    return items


def local_path(item: OutputFile, *, output_dir: Path, temp_dir: Path, input_dir: Path | None = None) -> Path | None:
    """Where ComfyUI wrote the file, if it is inside its folder (None for a path escaping it)."""
    root = {"output": output_dir, "temp": temp_dir, "input": input_dir}.get(item.type)
    if root is None:
        return None
    path = (root / item.subfolder / item.filename).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        return None
    return path


# ----------------------------------------------------------------------------- sinks
class Sink(Protocol):
    mode: str

    def put(self, item: OutputFile, source: Source) -> dict[str, Any]: ...


def _read(source: Source) -> bytes:
    return source.read_bytes() if isinstance(source, Path) else source


class Base64Sink:
    """Inline base64; refuses once the result would pass RunPod's 20 MB result limit."""

    mode = "base64"

    def __init__(self, max_result_bytes: int):
        self.max_result_bytes = max_result_bytes
        self.total = 0
        self._lock = threading.Lock()

    def put(self, item: OutputFile, source: Source) -> dict[str, Any]:
        size = source.stat().st_size if isinstance(source, Path) else len(source)
        encoded_len = 4 * ((size + 2) // 3)
        with self._lock:
            self.total += encoded_len
            total = self.total
        if total > self.max_result_bytes:
            raise OutputError(
                f"outputs are {total / 1e6:.1f} MB as base64, over RunPod's {RUNPOD_RESULT_LIMIT_MB} MB result "
                f"limit (MAX_RESULT_BYTES={self.max_result_bytes}): use output mode gcs "
                "(set GCS_BUCKET and GOOGLE_APPLICATION_CREDENTIALS)",
                {"bytes_base64": total, "limit": self.max_result_bytes, "fix": "output mode gcs"},
            )
        data = _read(source)
        return {"data": base64.b64encode(data).decode("ascii"), "size": len(data)}


class LocalSink:
    """Copies into ``<root>/<prefix>/<job>/<node>_<index>_<filename>`` (atomically)."""

    mode = "local"

    def __init__(self, root: Path, job_id: str, prefix: str = ""):
        self.dir = root / prefix / job_key(job_id) if prefix else root / job_key(job_id)

    def put(self, item: OutputFile, source: Source) -> dict[str, Any]:
        target = self.dir / item.object_name
        data = _read(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
        return {"path": str(target), "size": len(data)}


def make_sink(spec: OutputSpec, cfg: WorkerConfig, job_id: str) -> Sink:
    """The job's destination, behind ``FormatSink``: images re-encoded as ``output.format`` first."""
    sink: Sink
    if spec.mode == "gcs":
        sink = GcsSink(cfg.gcs, spec.bucket, spec.prefix, job_id)
    elif spec.mode == "local":
        sink = LocalSink(Path(spec.local_dir), job_id, spec.prefix)
    else:
        sink = Base64Sink(cfg.max_result_bytes)
    return FormatSink(sink, spec.format, spec.quality)


# ----------------------------------------------------------------------------- collector
class OutputCollector:
    """Ships each reported output to the sink at once, on a small thread pool."""

    def __init__(self, sink: Sink, locate: Callable[[OutputFile], Source], *, workers: int = 2,
                 on_uploaded: Callable[[], None] | None = None):
        self.sink = sink
        self.locate = locate
        self.on_uploaded = on_uploaded
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self._lock = threading.Lock()
        self._seen: dict[tuple, tuple[Item, Future | None]] = {}
        self.temp_files: list[Path] = []
        self._cancelled = False

    def add(self, node: str, output: dict[str, Any] | None) -> None:
        for item in output_items(node, output):
            with self._lock:
                if item.key in self._seen or self._cancelled:
                    continue
                fut = self._pool.submit(self._ship, item) if isinstance(item, OutputFile) else None
                self._seen[item.key] = (item, fut)

    def _ship(self, item: OutputFile) -> dict[str, Any]:
        source = self.locate(item)
        if item.type == "temp" and isinstance(source, Path):
            with self._lock:
                self.temp_files.append(source)
        result = {**item.describe(), **self.sink.put(item, source)}
        if self.on_uploaded:
            self.on_uploaded()
        return result

    def finish(self, history_outputs: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Add what only the history reported, wait for every upload, return results in node order."""
        for node, output in (history_outputs or {}).items():
            self.add(node, output)
        with self._lock:
            entries = list(self._seen.values())
        results: list[dict[str, Any]] = []
        first_error: BaseException | None = None
        for item, fut in entries:
            if fut is None:
                results.append(item.describe())
                continue
            try:
                results.append(fut.result())
            except BaseException as err:  # keep waiting for the rest, then raise the first
                first_error = first_error or err
        self._pool.shutdown(wait=True)
        if first_error is not None:
            raise first_error
        return sorted(results, key=_order)

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def cancel(self) -> None:
        """The job was stopped: drop the uploads not yet started and take no more (``finish`` then raises)."""
        with self._lock:
            self._cancelled = True
        self._pool.shutdown(wait=False, cancel_futures=True)


def _order(entry: dict[str, Any]) -> tuple:
    node = entry.get("node", "")
    return (0, int(node)) if str(node).isdigit() else (1, str(node)), entry.get("kind", ""), entry.get("index", 0)
