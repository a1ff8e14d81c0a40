"""Disk full and cross-filesystem placement, on small tmpfs mounts (needs root; skipped otherwise)."""

import os
import subprocess

import pytest

from builder.errors import DiskFullError
from builder.models import realize_models
from tests.models.helpers import leftovers, realize, sha

DATA = os.urandom(3 * 1024 * 1024)


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name: str, size: str):
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_disk_full_while_downloading(server, make_cfg, tmpfs, tmp_path):
    small = tmpfs("small", "1m")
    cfg = make_cfg(COMFY_CACHE_ROOT=small, MODEL_DOWNLOAD_CONNECTIONS=1)
    url = server.add("/big.bin", DATA)  # no size known in advance: fails while writing
    with pytest.raises(DiskFullError) as exc:
        realize_models([{"source": url}], cfg=cfg, models_dir=tmp_path / "models", offline=False)
    msg = str(exc.value)
    assert "no space left" in msg and "partial file was removed" in msg and "\n" not in msg
    assert leftovers(small) == []
    assert not (tmp_path / "models" / "checkpoints" / "big.bin").exists()


def test_disk_full_known_size_fails_before_downloading(server, make_cfg, tmpfs, tmp_path):
    small = tmpfs("small2", "1m")
    cfg = make_cfg(COMFY_CACHE_ROOT=small, MODEL_DOWNLOAD_CONNECTIONS=1)
    url = server.add("/big2.bin", DATA)
    [rec] = realize([{"source": url, "sha256": sha(DATA), "size": len(DATA)}], cfg, tmp_path / "models")
    assert rec["status"] == "missing" and "not enough space" in rec["error"]
    assert server.requests == []


def test_models_dir_on_another_filesystem_gets_a_verified_copy(server, cfg, tmpfs):
    other = tmpfs("otherfs", "16m")
    url = server.add("/x.bin", DATA)
    [rec] = realize([{"source": url}], cfg, other)
    target = other / "checkpoints" / "x.bin"
    assert rec["status"] == "fetched" and target.read_bytes() == DATA
    [blob] = list(cfg.store_dir.glob("models/sha256/*/*/blob"))
    assert os.stat(blob).st_ino != os.stat(target).st_ino  # a copy, not a link
    target.unlink()
    [rec] = realize([{"source": url, "sha256": sha(DATA)}], cfg, other, offline=True)
    assert rec["status"] == "restored" and target.read_bytes() == DATA
    assert leftovers(other) == []


def test_unwritable_models_dir_is_a_one_line_error(server, cfg, tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "models"
        blocker.write_text("a file where the models dir should be")
        models_dir = blocker / "sub"
    else:  # pragma: no cover - non-root CI
        models_dir = tmp_path / "ro"
        models_dir.mkdir()
        os.chmod(models_dir, 0o500)
    url = server.add("/p.bin", DATA)
    [rec] = realize([{"source": url}], cfg, models_dir)
    assert rec["status"] == "missing" and "/p.bin" in rec["error"] and "\n" not in rec["error"]
