"""CacheStore: budget against the real disk, reservations, the index file."""

from __future__ import annotations

import json
import shutil

from rp_handler.cache.store import CacheStore, Entry
from tests.cache.conftest import MiB


def test_full_disk_refuses_with_a_reason(tmp_path):
    root = tmp_path / "nvme"
    root.mkdir()
    free = shutil.disk_usage(root).free
    store = CacheStore(root, 0, disk_margin_bytes=free + (64 << 30))  # as if the disk were full
    ok, reason, evicted = store.reserve("checkpoints/big.safetensors", 8 * MiB)
    assert not ok and evicted == []
    assert "no room for checkpoints/big.safetensors" in reason
    assert store.reserved_bytes() == 0


def test_reservations_count_against_the_budget(tmp_path):
    store = CacheStore(tmp_path / "nvme", 3 * MiB)
    assert store.reserve("a/x.bin", 2 * MiB)[0]
    ok, reason, _ = store.reserve("a/y.bin", 2 * MiB)
    assert not ok and "reserved" in reason
    store.unreserve("a/x.bin")
    assert store.reserve("a/y.bin", 2 * MiB)[0]


def test_index_is_written_atomically_and_reloaded(tmp_path):
    root = tmp_path / "nvme"
    store = CacheStore(root, 0)
    (root / "loras").mkdir()
    (root / "loras" / "l.safetensors").write_bytes(b"x" * 1000)
    store.commit(Entry(key="loras/l.safetensors", size=1000, source="/vol/loras/l.safetensors"))
    store.touch("loras/l.safetensors")
    data = json.loads((root / ".index.json").read_text())
    assert data["entries"][0]["hits"] == 1 and data["clock"] == 2
    assert [p.name for p in root.iterdir() if p.name.endswith(".incomplete")] == []
    again = CacheStore(root, 0)
    assert again.entries["loras/l.safetensors"].access_seq == 2


def test_corrupt_index_is_rebuilt_from_files(tmp_path, caplog):
    root = tmp_path / "nvme"
    (root / "vae").mkdir(parents=True)
    (root / "vae" / "v.safetensors").write_bytes(b"y" * 10)
    (root / ".index.json").write_text("{not json")
    store = CacheStore(root, 0)
    assert list(store.entries) == ["vae/v.safetensors"] and "unreadable" in caplog.text
