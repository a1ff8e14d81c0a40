"""Output image formats: re-encode still images as the job asked (``output.format``/``quality``).

``reencode`` is pure (bytes in, bytes out); ``FormatSink`` wraps any sink so each image is
re-encoded on the upload thread just before it is shipped. ComfyUI's original stays in the job's
folder, which the handler removes when the job ends. PNG (the default) ships ComfyUI's bytes
unchanged; animated images, videos and anything Pillow cannot read pass through unchanged too.
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger(__name__)

_PIL_NAMES = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
_SUFFIX = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}


def reencode(data: bytes, fmt: str, quality: int) -> bytes | None:
    """``data`` as ``fmt`` (webp/jpeg at ``quality``); None when it should ship unchanged:
    png asked, not a still image Pillow reads, or already in ``fmt``."""
    if fmt == "png":
        return None
    from PIL import Image, UnidentifiedImageError  # lazy: only jobs that ask for another format

    try:
        with Image.open(io.BytesIO(data)) as im:
            if getattr(im, "n_frames", 1) > 1 or (im.format or "").upper() == _PIL_NAMES[fmt]:
                return None
            im.load()
            out = io.BytesIO()
            _prepared(im, fmt).save(out, format=_PIL_NAMES[fmt], **_options(fmt, quality))
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as err:  # not an image Pillow can write: ship as is
        log.warning("output kept as sent by ComfyUI: cannot re-encode it as %s (%s)", fmt, type(err).__name__)
        return None


def _prepared(im: Any, fmt: str) -> Any:
    alpha = "A" in im.getbands() or "transparency" in im.info
    if fmt == "jpeg":
        return im if im.mode in ("RGB", "L") else im.convert("RGB")
    if im.mode in ("RGB", "RGBA", "L", "LA"):
        return im
    return im.convert("RGBA" if alpha else "RGB")


def _options(fmt: str, quality: int) -> dict[str, Any]:
    if fmt == "webp":
        return {"quality": quality, "method": 4}
    return {"quality": quality, "optimize": True}


def format_of(filename: str) -> str:
    """The format a result names: its extension (``png``, ``webp``, ``jpeg``, ``mp4``...)."""
    ext = PurePosixPath(filename).suffix.lower().lstrip(".")
    return "jpeg" if ext == "jpg" else ext


class FormatSink:
    """Re-encodes images as ``fmt`` before handing them to ``inner``; names format and size."""

    def __init__(self, inner: Any, fmt: str = "png", quality: int = 90):
        self.inner, self.fmt, self.quality = inner, fmt, quality
        self.mode = inner.mode

    def put(self, item: Any, source: Path | bytes) -> dict[str, Any]:
        encoded = None
        if self.fmt != "png" and item.mime.startswith("image/"):
            original = source.read_bytes() if isinstance(source, Path) else source
            encoded = reencode(original, self.fmt, self.quality)
        if encoded is None:
            return {**self.inner.put(item, source), "format": format_of(item.filename)}
        renamed = replace(item, filename=str(PurePosixPath(item.filename).with_suffix(_SUFFIX[self.fmt])))
        result = self.inner.put(renamed, encoded)
        return {**result, "filename": renamed.filename, "mime": renamed.mime, "format": self.fmt,
                "original": {"filename": item.filename, "format": format_of(item.filename),
                             "size": len(original)}}
