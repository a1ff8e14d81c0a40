"""Kill and race real processes: nothing half-written, two writers both succeed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.models.helpers import blobs, leftovers, sha

DATA = os.urandom(2 * 1024 * 1024)

SCRIPT = """
import json, sys
from pathlib import Path
from builder.config import BuildConfig
import os
from builder.models import realize_models
entries, models_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
recs = realize_models(entries, cfg=BuildConfig.from_env(os.environ), models_dir=models_dir, offline=False)
print(json.dumps(recs))
"""


def _spawn(repo_root, tmp_path, entries, models_dir, cache):
    env = {**os.environ, "HOME": str(tmp_path / "home"), "COMFY_CACHE_ROOT": str(cache),
           "MODEL_DOWNLOAD_CONNECTIONS": "1", "PYTHONPATH": str(repo_root)}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(entries), str(models_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_download_leaves_nothing_at_target(server, repo_root, tmp_path):
    url = server.add("/slow.bin", DATA, rate=2 * 1024 * 1024)  # ~1 s
    md, cache = tmp_path / "models", tmp_path / "cache"
    proc = _spawn(repo_root, tmp_path, [{"source": url}], md, cache)
    deadline = time.monotonic() + 20
    while not leftovers(cache) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert leftovers(cache), "the download never started"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not (md / "checkpoints" / "slow.bin").exists()
    assert list(cache.glob("store/models/sha256/*/*/blob")) == []
    # the next run succeeds regardless of the dead writer's temp file
    server.files["/slow.bin"].faults.pop("rate")
    proc = _spawn(repo_root, tmp_path, [{"source": url}], md, cache)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (md / "checkpoints" / "slow.bin").read_bytes() == DATA


@pytest.mark.parametrize("shared_store", [True, False], ids=["same-store", "separate-stores"])
def test_two_processes_fetching_the_same_model_both_succeed(server, repo_root, tmp_path, shared_store):
    url = server.add("/race.bin", DATA, rate=8 * 1024 * 1024)
    md = tmp_path / "models"
    entry = [{"source": url, "checksum": "sha256:" + sha(DATA)}]
    procs = [_spawn(repo_root, tmp_path, entry, md, tmp_path / ("cache" if shared_store else f"cache{i}"))
             for i in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        [rec] = json.loads(out)
        assert rec["status"] in ("fetched", "restored", "ok") and rec["sha256"] == sha(DATA)
    assert (md / "checkpoints" / "race.bin").read_bytes() == DATA
    assert leftovers(md) == []
    if shared_store:
        assert len(list((tmp_path / "cache").glob("store/models/sha256/*/*/blob"))) == 1


def test_stale_temps_of_dead_writers_are_swept(tmp_path):
    from builder.models.store import Store

    store = Store(tmp_path / "store")
    d = store.temp_dir(None)
    old, fresh = d / "a.bin.dead01.incomplete", d / "b.bin.live02.incomplete"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    store.temp_dir(None)
    assert not old.exists() and fresh.exists()
