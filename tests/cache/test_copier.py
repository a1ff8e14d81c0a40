"""copy_file against real files: verification, torn copies, nothing partial left behind."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from builder.errors import ChecksumMismatch
from rp_handler.cache.copier import CopyCancelled, SourceChanged, copy_file
from tests.cache.conftest import MiB, put_model


def leftovers(path):
    return [p.name for p in path.iterdir() if p.name.endswith(".incomplete")]


def test_copy_with_known_checksum(tmp_path):
    src = put_model(tmp_path / "vol", "m.safetensors", 5 * MiB + 123)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dst = tmp_path / "nvme" / "checkpoints" / "m.safetensors"
    result = copy_file(src, dst, expected_sha256=sha.upper())
    assert dst.read_bytes() == src.read_bytes()
    assert result.sha256 == sha and result.size == src.stat().st_size
    assert leftovers(dst.parent) == []


def test_copy_without_checksum_does_not_hash(tmp_path):
    src = put_model(tmp_path / "vol", "m.bin", 3 * MiB)
    result = copy_file(src, tmp_path / "out" / "m.bin")
    assert result.sha256 is None
    assert (tmp_path / "out" / "m.bin").read_bytes() == src.read_bytes()


def test_checksum_mismatch_leaves_nothing(tmp_path):
    src = put_model(tmp_path / "vol", "m.safetensors", 2 * MiB)
    dst = tmp_path / "nvme" / "m.safetensors"
    expected = r"m\.safetensors \(sha256\): expected 0{64}, got [0-9a-f]{64}"
    with pytest.raises(ChecksumMismatch, match=expected):
        copy_file(src, dst, expected_sha256="0" * 64)
    assert not dst.exists()
    assert leftovers(dst.parent) == []


def test_empty_file_with_checksum(tmp_path):
    src = tmp_path / "empty.pt"
    src.write_bytes(b"")
    result = copy_file(src, tmp_path / "o" / "empty.pt", expected_sha256=hashlib.sha256(b"").hexdigest())
    assert result.size == 0


@pytest.mark.parametrize("change", ["append", "truncate", "rewrite_same_size", "replace"])
def test_source_changing_during_copy_is_never_cached(tmp_path, change):
    src = put_model(tmp_path / "vol", "m.safetensors", 4 * MiB)
    dst = tmp_path / "nvme" / "m.safetensors"
    progressed = threading.Event()

    def mutate():
        progressed.wait(10)
        if change == "append":
            with open(src, "ab") as fh:
                fh.write(b"x" * 1000)
        elif change == "truncate":
            os.truncate(src, MiB)
        elif change == "rewrite_same_size":
            st = src.stat()
            os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        else:
            other = put_model(tmp_path / "vol", "new.safetensors", 4 * MiB)
            os.replace(other, src)

    t = threading.Thread(target=mutate)
    t.start()
    with pytest.raises(SourceChanged, match="m.safetensors"):
        copy_file(src, dst, read_throttle_bps=4 * MiB,
                  progress=lambda n: progressed.set() if n >= MiB else None)
    t.join()
    assert not dst.exists()
    assert leftovers(dst.parent) == []


def test_throttle_and_cancel(tmp_path):
    src = put_model(tmp_path / "vol", "m.safetensors", 8 * MiB)
    cancel = threading.Event()
    dst = tmp_path / "nvme" / "m.safetensors"
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(CopyCancelled):
        copy_file(src, dst, read_throttle_bps=4 * MiB, cancel=cancel)
    assert not dst.exists() and leftovers(dst.parent) == []


def test_missing_source_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        copy_file(tmp_path / "nope.safetensors", tmp_path / "o" / "nope.safetensors")
