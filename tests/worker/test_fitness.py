"""Fitness checks: each one passes on a fit host and fails with one line naming what is wrong;
through runpod's own job loop a failure exits 1 before any job is taken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.lock import build_lock, write_lock
from builder.resolve import Resolution
from builder.spec import load_spec
from rp_handler.fitness import FitnessError, check_comfy, plan_checks
from rp_handler.process import ComfyProcess
from rp_handler.supervisor import Supervisor
from tests.worker.conftest import make_cfg

REPO = Path(__file__).resolve().parents[2]
SPEC = {"schema_version": 2, "version_id": "fit", "comfy": {"repo": "https://github.com/comfyanonymous/ComfyUI",
                                                            "commit": "a" * 40}}


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def baked_cfg(tmp_path: Path, **env: str):
    return make_cfg(tmp_path, VERSIONS_DIR=str(tmp_path / "versions"), COMFY_VERSION_ID="fit",
                    COMFY_DEPLOY_MODE="baked", **env)


def write_spec(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "versions" / "fit.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**SPEC, **extra}))
    return path


def checks_by_name(cfg, sup=None, outputs: Path | None = None, root: Path = Path("/")) -> dict:
    return {c.__name__: c for c in plan_checks(cfg, sup, outputs or Path("/tmp"), root=root)}


def test_version_lock_missing_fresh_and_stale(tmp_path):
    cfg = baked_cfg(tmp_path)
    check = checks_by_name(cfg)["version_lock"]
    write_spec(tmp_path)
    with pytest.raises(FitnessError) as err:
        check()
    assert "version fit has no lock at" in one_line(err) and "rebuild with --build-arg VERSION_ID=fit" in str(err.value)
    spec = load_spec(cfg.build.spec_path("fit"))
    write_lock(cfg.build.lock_path("fit"), build_lock(spec, Resolution(comfy="a" * 40, nodes={})))
    check()  # fresh
    write_spec(tmp_path, description="edited after the image was built")
    with pytest.raises(FitnessError) as err:
        check()
    assert "does not match spec" in one_line(err) and "the spec changed since the lock was written" in str(err.value)


def test_version_lock_only_in_baked_mode(tmp_path):
    assert "version_lock" not in checks_by_name(make_cfg(tmp_path, COMFY_DEPLOY_MODE="volume"))
    with pytest.raises(FitnessError, match="COMFY_VERSION_ID is empty"):
        checks_by_name(make_cfg(tmp_path, COMFY_DEPLOY_MODE="baked"))["version_lock"]()


def test_free_disk_thresholds(tmp_path):
    out = tmp_path / "io" / "output"  # not created yet: its nearest existing folder is measured
    checks_by_name(make_cfg(tmp_path, FITNESS_MIN_FREE_OUTPUT_GB="0.001"), outputs=out)["free_disk"]()
    cfg = make_cfg(tmp_path, FITNESS_MIN_FREE_OUTPUT_GB="1000000", NVME_CACHE_DIR=str(tmp_path / "nvme"),
                   FITNESS_MIN_FREE_CACHE_GB="2000000")
    with pytest.raises(FitnessError) as err:
        checks_by_name(cfg, outputs=out)["free_disk"]()
    line = one_line(err)
    assert f"free at {tmp_path} for the outputs, FITNESS_MIN_FREE_OUTPUT_GB=1e+06 needed" in line
    assert "for the NVMe cache, FITNESS_MIN_FREE_CACHE_GB=2e+06 needed" in line


def test_cuda_device_nodes(tmp_path):
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "dev" / "nvidiactl").touch()  # a driver without a GPU handed to the container
    cfg = make_cfg(tmp_path, COMFY_GPU_IMAGE="true", COMFY_FORCE_CPU="auto")
    with pytest.raises(FitnessError) as err:
        checks_by_name(cfg, root=root)["cuda_device"]()
    assert "GPU image but no NVIDIA GPU is visible" in one_line(err)
    (root / "dev" / "nvidia0").touch()
    checks_by_name(cfg, root=root)["cuda_device"]()
    assert "cuda_device" not in checks_by_name(make_cfg(tmp_path, COMFY_GPU_IMAGE="true", COMFY_FORCE_CPU="true"))
    assert "cuda_device" not in checks_by_name(make_cfg(tmp_path, COMFY_FORCE_CPU="auto"))  # no CUDA_VERSION
    assert make_cfg(tmp_path, CUDA_VERSION="12.8.1").fitness.gpu_image  # nvidia/cuda base images set it


def _supervised(home: Path, cfg) -> Supervisor:
    sup = Supervisor(ComfyProcess(cfg, home), max_restarts=1, boot_timeout_s=20)
    sup.start()
    return sup


def test_comfy_boot_failure_names_the_log_tail(tiny_home, monkeypatch):
    monkeypatch.setenv("TINY_MODE", "crash")
    cfg = make_cfg()
    sup = _supervised(tiny_home, cfg)
    try:
        with pytest.raises(FitnessError) as err:
            check_comfy(cfg, sup)
    finally:
        sup.stop(timeout=5)
    line = one_line(err)
    assert line.startswith("ComfyUI did not boot: ComfyUI exited with code 3 during start-up")
    assert "last lines: " in line and "ImportError: no module named torch" in line


def test_comfy_answers_and_gpu_image_needs_a_cuda_device(tiny_home, tmp_path):
    cfg = make_cfg()
    sup = _supervised(tiny_home, cfg)
    try:
        check_comfy(cfg, sup)
        assert sup.ready
        gpu_cfg = make_cfg(COMFY_GPU_IMAGE="true", COMFY_FORCE_CPU="false")
        with pytest.raises(FitnessError) as err:  # the tiny ComfyUI's /system_stats lists no device
            check_comfy(gpu_cfg, sup)
        assert "GPU image but ComfyUI runs on no device" in one_line(err)
    finally:
        sup.stop(timeout=5)


def test_comfy_check_without_waiting_passes_a_booting_comfy(tiny_home, monkeypatch):
    monkeypatch.setenv("TINY_MODE", "silent")  # never answers
    cfg = make_cfg(FITNESS_WAIT_COMFY="false")
    sup = _supervised(tiny_home, cfg)
    try:
        t0 = time.monotonic()
        check_comfy(cfg, sup)
        assert not sup.ready and time.monotonic() - t0 < 5
    finally:
        sup.stop(timeout=5)


def test_disabled(tmp_path):
    assert plan_checks(make_cfg(tmp_path, FITNESS_CHECKS="false"), None, tmp_path) == []


# --- through runpod's own job loop -------------------------------------------------------------------

def _run_worker(tmp_path: Path, home: Path, **env: str) -> tuple[subprocess.CompletedProcess, int]:
    from tests.worker.fake_runpod_api import FakeRunPodApi

    api = FakeRunPodApi()
    api.queue("job-1", {"workflow": {}})
    full = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    full.update({"PYTHONPATH": str(REPO), "COMFY_HOME": str(home), "COMFY_PORT": "0", "COMFY_FORCE_CPU": "true",
                 "COMFY_CACHE_ROOT": str(tmp_path / "cache"), "COMFY_IO_DIR": str(tmp_path / "io"),
                 "PYTHONUNBUFFERED": "1", **api.env(), **env})
    try:
        proc = subprocess.run([sys.executable, "-m", "rp_handler"], cwd=tmp_path, env=full, capture_output=True,
                              text=True, timeout=120)
        return proc, api.takes
    finally:
        api.close()


def _failure_line(proc: subprocess.CompletedProcess) -> str:
    text = proc.stdout + proc.stderr
    return next(line for line in text.splitlines() if "Fitness check failed" in line)


@pytest.mark.slow
def test_sdk_loop_refuses_work_when_comfy_cannot_boot(tmp_path, tiny_home):
    proc, takes = _run_worker(tmp_path, tiny_home, TINY_MODE="crash")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert takes == 0  # the job stays queued for a healthy worker
    line = _failure_line(proc)
    assert "comfyui | FitnessError: ComfyUI did not boot" in line and "ImportError" in line


@pytest.mark.slow
def test_sdk_loop_refuses_work_without_disk(tmp_path, tiny_home):
    proc, takes = _run_worker(tmp_path, tiny_home, FITNESS_MIN_FREE_OUTPUT_GB="1000000")
    assert proc.returncode == 1 and takes == 0, proc.stdout[-3000:]
    assert "free_disk | FitnessError: not enough free disk" in _failure_line(proc)


def test_register_with_the_sdk_and_switch_off_its_own_checks(tmp_path):
    from runpod.serverless.modules import rp_fitness

    from rp_handler.fitness import register

    environ: dict[str, str] = {"RUNPOD_SKIP_GPU_CHECK": "false"}  # an explicit choice is kept
    cfg = make_cfg(tmp_path, **environ)
    try:
        names = register(cfg, None, tmp_path, environ)
        assert names == ["free_disk", "comfyui"]  # that the SDK runs them: the job-loop tests above
    finally:
        rp_fitness.clear_fitness_checks()
    assert environ == {"RUNPOD_SKIP_GPU_CHECK": "false", "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    environ = {}
    register(make_cfg(tmp_path, FITNESS_SDK_CHECKS="true", FITNESS_CHECKS="false"), None, tmp_path, environ)
    assert environ == {}
