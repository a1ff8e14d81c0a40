import hashlib
import os

import pytest

from builder.errors import ModelSpecError
from builder.models import checksum_file, parse_checksum
from builder.models.checksum import HashThread, hash_file
from builder.models.copy import copy_verified


def test_parse_accepts_sha256_md5_and_bare_hex():
    h = "ab" * 32
    assert str(parse_checksum(f"sha256:{h}")) == f"sha256:{h}"
    assert str(parse_checksum(f"SHA256:{h.upper()}")) == f"sha256:{h}"
    assert str(parse_checksum(h)) == f"sha256:{h}"
    assert parse_checksum("md5:" + "0" * 32).algo == "md5"


@pytest.mark.parametrize("bad, needle", [
    ("sha256:abc", "malformed sha256"),
    ("sha256:" + "g" * 64, "malformed sha256"),
    ("md5:" + "a" * 64, "malformed md5"),
    ("sha1:" + "a" * 40, "unknown checksum algorithm 'sha1'"),
])
def test_parse_rejects_malformed_with_one_line(bad, needle):
    with pytest.raises(ModelSpecError) as exc:
        parse_checksum(bad, where="models[0].checksum")
    msg = str(exc.value)
    assert needle in msg and "models[0].checksum" in msg and "\n" not in msg


def test_checksum_file_matches_hashlib(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)  # spans several mmap slices? (8 MiB) - one partial slice
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert checksum_file(p) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert checksum_file(p, "md5") == "md5:" + hashlib.md5(data).hexdigest()


def test_hash_file_multi_slice_and_empty(tmp_path):
    data = os.urandom(8 * 1024 * 1024 * 2 + 5)
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    d = hash_file(p, ("sha256", "md5"))
    assert d.hexdigest() == hashlib.sha256(data).hexdigest()
    assert d.hexdigest("md5") == hashlib.md5(data).hexdigest()
    assert d.size == len(data)
    e = tmp_path / "empty"
    e.write_bytes(b"")
    assert hash_file(e).hexdigest() == hashlib.sha256(b"").hexdigest()


def test_hash_thread_reset_starts_over():
    t = HashThread()
    t.feed(b"garbage")
    t.reset()
    t.feed(b"hello ")
    t.feed(b"world")
    d = t.finish()
    assert d.hexdigest() == hashlib.sha256(b"hello world").hexdigest()
    assert d.size == 11


def test_copy_verified_copies_and_hashes(tmp_path):
    data = os.urandom(9 * 1024 * 1024 + 3)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    seen = []
    d = copy_verified(src, dst, ("sha256",), seen.append)
    assert dst.read_bytes() == data
    assert d.hexdigest() == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)
