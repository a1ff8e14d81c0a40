"""Minimal PNG encode/decode (8-bit RGB/RGBA, zlib) so the fake needs no Pillow."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"\x89PNG\r\n\x1a\n"


class NotAnImage(Exception):
    """Raised for bytes that are no image we understand (like PIL.UnidentifiedImageError)."""


@dataclass
class Image:
    """One RGB image: ``data`` is width*height*3 bytes, row-major."""

    width: int
    height: int
    data: bytes


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_png(image: Image, *, text: dict[str, str] | None = None, compress_level: int = 4) -> bytes:
    """A valid PNG of ``image`` with optional tEXt chunks (like ComfyUI's metadata)."""
    w, h, data = image.width, image.height, image.data
    stride = w * 3
    raw = b"".join(b"\x00" + data[y * stride:(y + 1) * stride] for y in range(h))
    out = [MAGIC, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))]
    for key, value in (text or {}).items():
        out.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace")))
    out.append(_chunk(b"IDAT", zlib.compress(raw, compress_level)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(blob: bytes) -> Image:
    """Decode a non-interlaced 8-bit gray/RGB/RGBA PNG; other images of known magic → grey of their size."""
    if blob[:3] == b"\xff\xd8\xff" or blob[:4] == b"RIFF":
        return Image(64, 64, b"\x80" * 64 * 64 * 3)
    if not blob.startswith(MAGIC):
        raise NotAnImage("not a PNG")
    pos, idat, ihdr = 8, [], None
    try:
        while pos < len(blob):
            (length,) = struct.unpack(">I", blob[pos:pos + 4])
            kind = blob[pos + 4:pos + 8]
            body = blob[pos + 8:pos + 8 + length]
            pos += 12 + length
            if kind == b"IHDR":
                ihdr = struct.unpack(">IIBBBBB", body)
            elif kind == b"IDAT":
                idat.append(body)
            elif kind == b"IEND":
                break
    except struct.error as exc:
        raise NotAnImage(f"truncated PNG: {exc}") from exc
    if ihdr is None:
        raise NotAnImage("PNG without IHDR")
    w, h, depth, ctype, _, _, interlace = ihdr
    channels = {0: 1, 2: 3, 6: 4, 4: 2}.get(ctype)
    if depth != 8 or channels is None or interlace:
        return Image(w, h, b"\x80" * w * h * 3)
    raw = zlib.decompress(b"".join(idat))
    stride = w * channels
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(h):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride if ftype else 0):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif ftype == 4:
                line[i] = (line[i] + _paeth(a, b, c)) & 0xFF
        rows.append(line)
        prev = line
    rgb = bytearray()
    for line in rows:
        if channels == 3:
            rgb += line
        else:
            for x in range(w):
                px = line[x * channels:(x + 1) * channels]
                rgb += bytes(px[:3]) if channels == 4 else bytes([px[0]] * 3)
    return Image(w, h, bytes(rgb))
