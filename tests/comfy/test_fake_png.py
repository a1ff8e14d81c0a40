"""The fake's PNG codec against a PNG written by the real ComfyUI (Pillow, filtered rows)."""

from __future__ import annotations

import zlib

import pytest

from tests.conftest import PROTOCOL_DIR
from tests.fakes.comfyui.pngfile import Image, NotAnImage, decode_png, encode_png


def test_decodes_real_comfyui_output():
    img = decode_png((PROTOCOL_DIR / "sample_output_saveimage_64x64.png").read_bytes())
    assert (img.width, img.height) == (64, 64)
    assert img.data == bytes([0xFF, 0x80, 0x00]) * 64 * 64  # EmptyImage color 16744448


def test_round_trip_with_text_and_crc():
    img = Image(3, 2, bytes(range(18)))
    blob = encode_png(img, text={"prompt": '{"1": {}}'})
    assert decode_png(blob) == img
    assert b'tEXtprompt\x00{"1": {}}' in blob
    idat = blob.index(b"IDAT")
    length = int.from_bytes(blob[idat - 4:idat], "big")
    assert zlib.crc32(blob[idat:idat + 4 + length]) == int.from_bytes(blob[idat + 4 + length:idat + 8 + length], "big")


def test_not_an_image():
    with pytest.raises(NotAnImage):
        decode_png(b"this is not a png")
