"""Model store faults (download cut, checksum mismatch, two realizes at once) and NVMe cache faults
(cache disk full, a volume file vanishing mid-copy).

Every trial checks the promise of the store and the cache: a model is either complete and verified
at its target or absent with a one-line error; no ``*.incomplete`` anywhere; the next run works.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from builder.config import BuildConfig
from builder.models import realize_models
from tests.faults.harness import half_written
from tests.fakes.model_server import ModelFileServer

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blobs(store: Path) -> list[Path]:
    root = store / "models" / "sha256"
    return sorted(root.glob("*/*/blob")) if root.exists() else []


class _ModelBase:
    bound_s = 20.0
    size = MiB

    def setup(self, root: Path) -> None:
        self.root = root
        self.srv = ModelFileServer().start()
        self.cfg = BuildConfig.from_env({"HOME": str(root / "home"), "COMFY_CACHE_ROOT": str(root / "cache"),
                                         "MODEL_DOWNLOAD_CONNECTIONS": "1"}, volume_root=root / "no-volume",
                                        container=False)
        self.models = root / "models"

    def teardown(self) -> None:
        self.srv.stop()

    def realize(self, entries: list[dict]) -> list[dict]:
        return realize_models(entries, cfg=self.cfg, models_dir=self.models, offline=False, raise_on_error=False)

    def data(self, i: int) -> bytes:
        return os.urandom(self.size - 7) + f"{i:07d}".encode()

    def entry(self, path: str, data: bytes, *, checksum: str | None = None) -> dict:
        return {"source": self.srv.url + path, "target_subdir": "checkpoints", "name": path.strip("/"),
                "checksum": checksum or f"sha256:{sha(data)}"}

    def check_clean(self) -> None:
        left = half_written(self.models, self.cfg.store_dir)
        assert not left, f"half-written files: {left[:5]}"

    def check_fetched(self, rec: dict, data: bytes) -> None:
        assert rec["status"] in ("fetched", "restored", "ok"), rec
        target = Path(rec["target"])
        assert target.read_bytes() == data, "target content differs from the source"
        assert rec["sha256"] == sha(data)

    def check_failed(self, rec: dict, *words: str) -> None:
        assert rec["status"] in ("missing", "mismatch"), rec
        err = rec.get("error", "")
        assert err and "\n" not in err and "Traceback" not in err, err
        for w in words:
            assert w in err, f"{w!r} not in {err!r}"
        assert not Path(rec["target"]).exists(), "a partial or unverified target was left"


class DownloadCutOnce(_ModelBase):
    name = "model download cut at 50 % (once)"

    def trial(self, i: int) -> None:
        data = self.data(i)
        path = f"/cut-once-{i}.safetensors"
        self.srv.add(path, data, truncate=len(data) // 2, truncate_times=1)
        [rec] = self.realize([self.entry(path, data)])
        self.check_fetched(rec, data)
        ranged = [r for r in self.srv.seen(path) if r.method == "GET" and "range" in r.headers]
        assert ranged, "the download did not resume with Range after the cut"
        self.check_clean()


class DownloadCutAlways(_ModelBase):
    name = "model download cut at 50 % (every try, no Range)"
    ci_trials = 5  # each trial waits out the downloader's 5-attempt backoff (about 3 s)

    def trial(self, i: int) -> None:
        data = self.data(i)
        path = f"/cut-always-{i}.safetensors"
        self.srv.add(path, data, truncate=len(data) // 2, ignore_range=True)
        [rec] = self.realize([self.entry(path, data)])
        self.check_failed(rec, path.strip("/"))
        assert not [b for b in blobs(self.cfg.store_dir) if b.parent.name == sha(data)]
        self.check_clean()
        self.srv.add(path, data)  # the server recovers: the next realize fetches it
        [rec] = self.realize([self.entry(path, data)])
        self.check_fetched(rec, data)
        self.check_clean()


class ChecksumMismatchFault(_ModelBase):
    name = "model checksum mismatch"

    def trial(self, i: int) -> None:
        data = self.data(i)
        path = f"/mismatch-{i}.safetensors"
        self.srv.add(path, data)
        wrong = "sha256:" + sha(data + b"x")
        [rec] = self.realize([self.entry(path, data, checksum=wrong)])
        self.check_failed(rec, "checksum mismatch", wrong, sha(data))
        assert not [b for b in blobs(self.cfg.store_dir) if b.parent.name == sha(data)], "unverified blob stored"
        self.check_clean()
        [rec] = self.realize([self.entry(path, data)])
        self.check_fetched(rec, data)
        self.check_clean()


class TwoRealizesAtOnce(_ModelBase):
    name = "two realizes of one spec at once (2 processes)"
    bound_s = 60.0

    def trial(self, i: int) -> None:
        files = {f"/both-{i}-{k}.safetensors": self.data(i * 10 + k) for k in range(2)}
        for path, data in files.items():
            self.srv.add(path, data, rate=8 * MiB)  # ~125 ms each: the two runs overlap
        entries = [self.entry(p, d) for p, d in files.items()]
        args = json.dumps({"entries": entries, "models_dir": str(self.models), "home": str(self.root / "home"),
                           "cache_root": str(self.root / "cache")})
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [subprocess.Popen([sys.executable, "-m", "tests.faults.realize_once", args], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=50) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, f"a realize failed: {out[-500:]} {err[-1500:]}"
            records = json.loads(out.strip().splitlines()[-1])
            for rec, data in zip(records, files.values()):
                self.check_fetched(rec, data)
        for data in files.values():
            assert len([b for b in blobs(self.cfg.store_dir) if b.parent.name == sha(data)]) == 1
        self.check_clean()


# ----------------------------------------------------------------------------- NVMe cache
class _CacheBase:
    bound_s = 20.0

    def make_cache(self, nvme: Path, budget_bytes: int = 0):
        from rp_handler.cache import ModelCache
        from rp_handler.config import WorkerConfig

        env = {"NVME_CACHE_DIR": str(nvme), "CACHE_MIN_SIZE_MB": "0.5",
               "CACHE_BUDGET_GB": str(budget_bytes / (1 << 30))}
        return ModelCache(WorkerConfig.from_env(env).cache, self.volume, None, read_throttle_bps=16 * MiB,
                          spool_poll_s=0.05)

    def put(self, name: str, size: int) -> Path:
        path = self.volume / "checkpoints" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        return path

    @staticmethod
    def workflow(name: str) -> dict:
        return {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}}

    def wait_copying(self, cache, at_least: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            flight = cache.status()["in_flight"]
            if flight and flight[0]["bytes_done"] >= at_least:
                return
            time.sleep(0.005)
        raise AssertionError("the copy never started")

    def check_next_job_caches(self, cache, name: str, src: Path, job: str) -> None:
        [st] = cache.preload_workflow(self.workflow(name), job_id=job)
        assert st.status in ("scheduled", "cached"), st
        assert cache.wait(job, timeout=15)
        [model] = cache.job_report(job)["models"]
        assert model["status"] == "cached", model
        assert (self.nvme / "checkpoints" / name).read_bytes() == src.read_bytes()
        cache.release(job)


class VolumeFileVanishes(_CacheBase):
    name = "volume file vanishing mid-copy"

    def setup(self, root: Path) -> None:
        self.volume, self.nvme = root / "volume" / "models", root / "nvme"
        self.volume.mkdir(parents=True)
        self.cache = self.make_cache(self.nvme)

    def teardown(self) -> None:
        self.cache.close()

    def trial(self, i: int) -> None:
        name = f"vanish-{i}.safetensors"
        src = self.put(name, 3 * MiB)
        keep = src.read_bytes()
        self.cache.preload_workflow(self.workflow(name), job_id=f"v{i}")
        self.wait_copying(self.cache, MiB)
        src.unlink()
        assert self.cache.wait(f"v{i}", timeout=15)
        [model] = self.cache.job_report(f"v{i}")["models"]
        assert model["status"] == "error" and "removed while it was copied" in model["error"], model
        assert "\n" not in model["error"]
        assert not (self.nvme / "checkpoints" / name).exists(), "a copy of a vanished file was cached"
        assert not half_written(self.nvme), half_written(self.nvme)
        self.cache.release(f"v{i}")
        src.write_bytes(keep)  # uploaded again: the next job caches it
        self.check_next_job_caches(self.cache, name, src, f"v{i}-next")
        assert not half_written(self.nvme)


class CacheDiskFull(_CacheBase):
    """A small tmpfs as the NVMe disk; another writer fills it while a copy runs (needs mount rights)."""

    name = "NVMe cache disk full mid-copy"
    DISK = 12 * MiB

    def setup(self, root: Path) -> None:
        self.volume, self.nvme = root / "volume" / "models", root / "nvme"
        self.volume.mkdir(parents=True)
        self.nvme.mkdir()
        self.mounted = False
        rc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.DISK}", "tmpfs", str(self.nvme)],
                            capture_output=True).returncode
        if rc != 0:
            raise PermissionError("cannot mount a small tmpfs for the full-disk fault (needs root)")
        self.mounted = True
        self.cache = self.make_cache(self.nvme, budget_bytes=64 * MiB)  # the budget believes there is room

    def teardown(self) -> None:
        if getattr(self, "cache", None) is not None:
            self.cache.close()
        if getattr(self, "mounted", False):
            subprocess.run(["umount", "-l", str(self.nvme)], capture_output=True)

    def fill(self, path: Path) -> None:
        with open(path, "wb", buffering=0) as fh:
            block = b"\0" * (256 << 10)
            try:
                while True:
                    fh.write(block)
            except OSError:
                pass

    def trial(self, i: int) -> None:
        name = f"full-{i}.safetensors"
        src = self.put(name, 4 * MiB)
        filler = self.nvme / "other-writer.bin"
        self.cache.preload_workflow(self.workflow(name), job_id=f"f{i}")
        try:
            self.wait_copying(self.cache, MiB)
            self.fill(filler)
            assert self.cache.wait(f"f{i}", timeout=15)
        finally:
            filler_size = filler.stat().st_size if filler.exists() else 0
            filler.unlink(missing_ok=True)
        [model] = self.cache.job_report(f"f{i}")["models"]
        assert model["status"] == "error" and "no space left" in model["error"], model
        assert model["read_from"] == "volume" and "\n" not in model["error"]
        assert not (self.nvme / "checkpoints" / name).exists(), "a partial copy was left as the model"
        assert not half_written(self.nvme), half_written(self.nvme)
        assert filler_size > 0, "the other writer found no room at all"
        self.cache.release(f"f{i}")
        self.check_next_job_caches(self.cache, name, src, f"f{i}-next")
        assert not half_written(self.nvme)


def model_scenarios() -> list:
    return [DownloadCutOnce(), DownloadCutAlways(), ChecksumMismatchFault(), TwoRealizesAtOnce()]


def cache_scenarios() -> list:
    return [CacheDiskFull(), VolumeFileVanishes()]
