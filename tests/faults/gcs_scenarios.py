"""GCS faults on the output upload: a proxy in front of gcp-storage-emulator injects them.

Each trial runs a job with output mode gcs through the proxy: 503 twice then OK must still deliver
every output exactly once; 403 must be a one-line output error with nothing half-uploaded under the
job's prefix; a very slow GCS must still deliver. The next job (no fault) must succeed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tests.fakes.comfyui.pngfile import decode_png
from tests.faults.gcs_proxy import GcsFaultProxy
from tests.faults.harness import assert_one_line_error
from tests.faults.worker_scenarios import BATCH, check_clean, history, workflow
from tests.helpers import gcs_emulator, storage_client
from tests.worker.conftest import LiveWorker

BUCKET = "faults"


class GcsFault:
    bound_s = 20.0

    def __init__(self, name: str, *, fail_next: list[int] | None = None, always: int | None = None,
                 delay_s: float = 0.0, expect: str = "ok", error_words: tuple[str, ...] = (), **env: str):
        self.name, self.fail_next, self.always, self.delay_s, self.expect = name, fail_next, always, delay_s, expect
        self.error_words, self.env = error_words, env
        self._stack = contextlib.ExitStack()

    def setup(self, root: Path) -> None:
        url = self._stack.enter_context(gcs_emulator())
        self.client = storage_client(url)
        self.client.create_bucket(BUCKET)
        self.proxy = GcsFaultProxy(url).start()
        self._stack.callback(self.proxy.stop)
        self.w = LiveWorker(root, GCS_BUCKET=BUCKET, STORAGE_EMULATOR_HOST=self.proxy.url, OUTPUT_MODE="gcs",
                            GCS_RETRY_BASE_SLEEP="0.01", GCS_PREFIX="out", **self.env)
        self._stack.callback(self.w.close)

    def teardown(self) -> None:
        self._stack.close()

    def objects(self, job_id: str) -> dict[str, bytes]:
        return {b.name: b.download_as_bytes() for b in self.client.list_blobs(BUCKET, prefix=f"out/{job_id}/")}

    def check_delivered(self, res: dict, job_id: str, color: int) -> None:
        """Every image ComfyUI wrote is in the bucket and in the result exactly once, intact."""
        assert "error" not in res, f"job failed: {res.get('error')}"
        hist = history(self.w.url, res["prompt_id"])
        wrote = sorted(img["filename"] for out in hist["outputs"].values() for img in out.get("images", []))
        got = sorted(o["filename"] for o in res["outputs"])
        assert got == wrote and len(got) == BATCH, f"result {got}, ComfyUI wrote {wrote}"
        stored = self.objects(job_id)
        assert sorted(stored) == sorted(o["object"] for o in res["outputs"]), f"bucket has {sorted(stored)}"
        want = bytes(((color >> 16) & 255, (color >> 8) & 255, color & 255))
        for data in stored.values():
            assert bytes(decode_png(data).data[:3]) == want

    def trial(self, i: int) -> None:
        color = 0x203040 + i * 0x010101
        job_id = f"gcs-{i}"
        before = self.proxy.uploads
        self.proxy.set(fail_next=self.fail_next, always=self.always, delay_s=self.delay_s)
        try:
            res = self.w.run({"workflow": workflow(color)}, job_id)
        finally:
            left = list(self.proxy.fail_next)
            self.proxy.set()
        assert not left, f"the injected faults {left} were never hit"
        assert self.proxy.uploads - before >= BATCH + len(self.fail_next or ()), "uploads did not pass the proxy"
        if self.expect == "ok":
            self.check_delivered(res, job_id, color)
        else:
            assert_one_line_error(res, ("output_error",))
            for word in self.error_words:
                assert word in res["error"], f"{word!r} not in {res['error']!r}"
            if self.always:  # refused outright: nothing may be stored (a timed-out upload may still land)
                assert not self.objects(job_id), "objects uploaded by a failed job"
        check_clean(self.w)
        nxt = self.w.run({"workflow": workflow(color ^ 0xFFFFFF)}, f"{job_id}-next")
        self.check_delivered(nxt, f"{job_id}-next", color ^ 0xFFFFFF)


def gcs_scenarios() -> list:
    return [
        GcsFault("GCS 503 twice then OK", fail_next=[503, 503]),
        GcsFault("GCS 403", always=403, expect="error", error_words=("403", "roles/storage.objectCreator")),
        GcsFault("GCS very slow (0.5 s per upload)", delay_s=0.5),
        GcsFault("GCS stalls past GCS_TIMEOUT_S", delay_s=3.0, expect="error", error_words=("GCS_TIMEOUT_S",),
                 GCS_TIMEOUT_S="0.3", GCS_RETRIES="2"),
    ]
