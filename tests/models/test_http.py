"""HTTP sources against the local file server with its fault modes."""

import os

import pytest

from builder.errors import ChecksumMismatch, NotFoundError
from builder.models import realize_models
from tests.models.helpers import blobs, leftovers, realize, sha

DATA = os.urandom(3 * 1024 * 1024 + 123)


def test_fetch_then_ok_then_restored(server, cfg, models_dir):
    url = server.add("/m/model.safetensors", DATA)
    entry = {"source": url, "target_subdir": "loras", "checksum": "sha256:" + sha(DATA)}
    [rec] = realize([entry], cfg, models_dir)
    target = models_dir / "loras" / "model.safetensors"
    assert rec == {"source": url, "target": str(target), "sha256": sha(DATA), "size": len(DATA), "status": "fetched"}
    assert target.read_bytes() == DATA
    blob = cfg.store_dir / "models" / "sha256" / sha(DATA)[:2] / sha(DATA) / "blob"
    assert blob.read_bytes() == DATA and os.path.samefile(blob, target)  # hardlink on one filesystem

    [rec] = realize([entry], cfg, models_dir)
    assert rec["status"] == "ok"
    target.unlink()
    n = len(server.requests)
    [rec] = realize([entry], cfg, models_dir, offline=True)
    assert rec["status"] == "restored" and target.read_bytes() == DATA
    assert len(server.requests) == n  # from the store, no network
    assert leftovers(cfg.store_dir, models_dir) == []


def test_without_checksum_records_sha256_and_size(server, cfg, models_dir):
    url = server.add("/x/a.bin", DATA)
    [rec] = realize([{"source": url}], cfg, models_dir)
    assert rec["status"] == "fetched" and rec["sha256"] == sha(DATA) and rec["size"] == len(DATA)


def test_one_blob_serves_every_version(server, cfg, models_dir, tmp_path):
    url = server.add("/x/shared.bin", DATA)
    realize([{"source": url}], cfg, models_dir)
    other = tmp_path / "other-version-models"
    [rec] = realize([{"source": url, "sha256": sha(DATA), "target_subdir": "vae"}], cfg, other)
    assert rec["status"] == "restored"
    assert len(blobs(cfg)) == 1 and len(server.seen("/x/shared.bin")) == 1


def test_resume_sends_range_and_if_range(server, cfg, models_dir):
    url = server.add("/r.bin", DATA, truncate=1024 * 1024, truncate_times=1)
    [rec] = realize([{"source": url, "checksum": "sha256:" + sha(DATA)}], cfg, models_dir)
    assert rec["status"] == "fetched"
    first, second = server.seen("/r.bin")
    assert "range" not in first.headers
    assert second.headers["range"] == f"bytes={1024 * 1024}-"
    assert second.headers["if-range"] == server.files["/r.bin"].etag
    assert second.status == 206


def test_server_ignoring_range_starts_over(server, cfg, models_dir):
    url = server.add("/ir.bin", DATA, truncate=1000, truncate_times=1, ignore_range=True)
    [rec] = realize([{"source": url, "checksum": "sha256:" + sha(DATA)}], cfg, models_dir)
    assert rec["status"] == "fetched"
    assert (models_dir / "checkpoints" / "ir.bin").read_bytes() == DATA
    statuses = [(s.headers.get("range"), s.status) for s in server.seen("/ir.bin")]
    assert statuses == [(None, 200), ("bytes=1000-", 200)]


def test_truncated_body_every_time_is_a_clear_error(server, cfg, models_dir):
    url = server.add("/t.bin", DATA, truncate=1000, ignore_range=True)
    [rec] = realize([{"source": url}], cfg, models_dir)
    assert rec["status"] == "missing"
    assert "/t.bin" in rec["error"] and "gave up after" in rec["error"] and "\n" not in rec["error"]
    assert not (models_dir / "checkpoints" / "t.bin").exists()
    assert leftovers(cfg.store_dir, models_dir) == [] and blobs(cfg) == []


def test_lying_content_length(server, cfg, models_dir):
    url = server.add("/lie.bin", DATA, lying_length=5000)
    [rec] = realize([{"source": url}], cfg, models_dir)
    assert rec["status"] == "missing"
    assert "Content-Length" in rec["error"] and "\n" not in rec["error"]
    assert blobs(cfg) == [] and not (models_dir / "checkpoints" / "lie.bin").exists()


def test_transient_500_is_retried(server, cfg, models_dir):
    url = server.add("/flaky.bin", DATA, fail_times=2)
    [rec] = realize([{"source": url}], cfg, models_dir)
    assert rec["status"] == "fetched" and len(server.seen("/flaky.bin")) == 3


def test_404_and_redirect_loop(server, cfg, models_dir):
    recs = realize([{"source": server.url + "/absent.bin"}, {"source": server.url + "/__loop__/a", "name": "l.bin"}],
                   cfg, models_dir)
    assert recs[0]["status"] == "missing" and "HTTP 404" in recs[0]["error"] and "does not exist" in recs[0]["error"]
    assert recs[1]["status"] == "missing" and "redirect loop" in recs[1]["error"]


def test_404_raises_not_found_for_the_builder(server, cfg, models_dir):
    with pytest.raises(NotFoundError, match="HTTP 404") as exc:
        realize_models([{"source": server.url + "/absent.bin"}], cfg=cfg, models_dir=models_dir, offline=False)
    assert exc.value.records[0]["status"] == "missing"


def test_redirect_followed(server, cfg, models_dir):
    server.add("/real.bin", DATA)
    url = server.add("/go.bin", redirect="/real.bin")
    [rec] = realize([{"source": url}], cfg, models_dir)
    assert rec["status"] == "fetched" and rec["sha256"] == sha(DATA)


def test_mismatch_names_source_expected_actual_and_leaves_nothing(server, cfg, models_dir):
    url = server.add("/bad.bin", DATA)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ChecksumMismatch) as exc:
        realize_models([{"source": url, "checksum": wrong}], cfg=cfg, models_dir=models_dir, offline=False)
    msg = str(exc.value)
    assert url in msg and wrong in msg and sha(DATA) in msg and "\n" not in msg
    assert not (models_dir / "checkpoints" / "bad.bin").exists()
    assert blobs(cfg) == [] and leftovers(cfg.store_dir, models_dir) == []


def test_existing_target_mismatch_needs_overwrite(server, cfg, models_dir):
    url = server.add("/o.bin", DATA)
    entry = {"source": url, "checksum": "sha256:" + sha(DATA)}
    target = models_dir / "checkpoints" / "o.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"corrupted")
    [rec] = realize([entry], cfg, models_dir)
    assert rec["status"] == "mismatch" and "--overwrite" in rec["error"] and sha(DATA) in rec["error"]
    assert target.read_bytes() == b"corrupted"  # left alone
    [rec] = realize([entry], cfg, models_dir, overwrite=True)
    assert rec["status"] == "fetched" and target.read_bytes() == DATA
    # corrupt again: now the store has the blob, so --overwrite restores without network
    target.unlink()
    target.write_bytes(b"corrupted again")
    n = len(server.requests)
    [rec] = realize([entry], cfg, models_dir, overwrite=True)
    assert rec["status"] == "restored" and target.read_bytes() == DATA and len(server.requests) == n


def test_corrupt_blob_is_discarded_and_refetched(server, cfg, models_dir):
    url = server.add("/c.bin", DATA)
    entry = {"source": url, "checksum": "sha256:" + sha(DATA)}
    realize([entry], cfg, models_dir)
    target = models_dir / "checkpoints" / "c.bin"
    [blob] = blobs(cfg)
    target.unlink()
    os.chmod(blob, 0o644)
    blob.write_bytes(b"bit rot")
    [rec] = realize([entry], cfg, models_dir)
    assert rec["status"] == "fetched" and target.read_bytes() == DATA


def test_parallel_ranged_download(server, cfg, models_dir, make_cfg, monkeypatch):
    import builder.models.http as http

    monkeypatch.setattr(http, "PIECE", 512 * 1024)  # small pieces so a 3 MiB file has several
    cfg4 = make_cfg(MODEL_DOWNLOAD_CONNECTIONS=4)
    url = server.add("/big.bin", DATA, truncate=100_000, truncate_times=2)
    [rec] = realize([{"source": url, "checksum": "sha256:" + sha(DATA)}], cfg4, models_dir, parallel_min=1024 * 1024)
    assert rec["status"] == "fetched" and (models_dir / "checkpoints" / "big.bin").read_bytes() == DATA
    ranges = [s.headers.get("range") for s in server.seen("/big.bin")]
    assert all(r and r.startswith("bytes=") for r in ranges)
    assert len(ranges) >= len(DATA) // (512 * 1024)
    assert all(s.headers.get("if-range") for s in server.seen("/big.bin")[1:])


def test_parallel_falls_back_when_range_ignored(server, make_cfg, models_dir):
    cfg4 = make_cfg(MODEL_DOWNLOAD_CONNECTIONS=4)
    url = server.add("/nr.bin", DATA, ignore_range=True)
    [rec] = realize([{"source": url}], cfg4, models_dir, parallel_min=1024)
    assert rec["status"] == "fetched" and rec["sha256"] == sha(DATA)
    assert len(server.seen("/nr.bin")) == 1  # the 200 answer to the probe is used as the download


def test_md5_checksum_indexes_the_blob(server, cfg, models_dir):
    import hashlib

    md5 = hashlib.md5(DATA).hexdigest()
    url = server.add("/md5.bin", DATA)
    [rec] = realize([{"source": url, "checksum": "md5:" + md5}], cfg, models_dir)
    assert rec["status"] == "fetched" and rec["sha256"] == sha(DATA)
    assert (cfg.store_dir / "models" / "md5" / md5[:2] / md5 / "blob").read_bytes() == DATA
    (models_dir / "checkpoints" / "md5.bin").unlink()
    [rec] = realize([{"source": url, "checksum": "md5:" + md5}], cfg, models_dir, offline=True)
    assert rec["status"] == "restored"


def test_offline_without_blob_is_missing(server, cfg, models_dir):
    url = server.add("/off.bin", DATA)
    [rec] = realize([{"source": url}], cfg, models_dir, offline=True)
    assert rec["status"] == "missing" and "offline" in rec["error"]
    assert server.requests == []


def test_cache_dir_overrides_store(server, cfg, models_dir, tmp_path):
    url = server.add("/cd.bin", DATA)
    realize([{"source": url}], cfg, models_dir, cache_dir=tmp_path / "C")
    assert (tmp_path / "C" / "models" / "sha256" / sha(DATA)[:2] / sha(DATA) / "blob").exists()
    assert blobs(cfg) == []


def test_parallel_hash_failure_is_an_error_not_a_wrong_sha256(server, make_cfg, models_dir, monkeypatch):
    """A failure on the range hashing thread fails the download; no sha256 of a prefix is recorded."""
    import builder.models.http as http
    from builder.models.checksum import Digests

    class FailingDigests(Digests):  # fault injection: the hashing step fails after 1 MiB
        def update(self, data) -> None:
            if self.size >= 1024 * 1024:
                raise OSError("injected read error")
            super().update(data)

    monkeypatch.setattr(http, "PIECE", 512 * 1024)
    monkeypatch.setattr(http, "Digests", FailingDigests)
    url = server.add("/hashfail.bin", DATA)
    [rec] = realize([{"source": url}], make_cfg(MODEL_DOWNLOAD_CONNECTIONS=4), models_dir, parallel_min=1024)
    assert rec["status"] == "missing", rec
    assert "hashing the download failed" in rec["error"] and "\n" not in rec["error"]
    assert not (models_dir / "checkpoints" / "hashfail.bin").exists()


def test_parallel_ctrl_c_stops_range_workers_before_the_file_is_closed(server, tmp_path, monkeypatch):
    import _thread
    import threading

    import builder.models.http as http

    monkeypatch.setattr(http, "PIECE", 256 * 1024)
    url = server.add("/slow.bin", DATA, rate=512 * 1024)
    started = threading.Event()
    timer = threading.Timer(0.5, _thread.interrupt_main)
    opts = http.HttpOptions({}, connections=4, parallel_min=1024)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            http.download(url, tmp_path / "slow.incomplete", label="slow.bin", opts=opts,
                          progress=lambda n: started.set())
    finally:
        timer.cancel()
    assert started.is_set()
    alive = [t.name for t in threading.enumerate() if t.name.startswith("range-") and t.is_alive()]
    assert alive == []  # no worker can write into a closed (and maybe reused) file descriptor
