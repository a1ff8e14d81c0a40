"""ModelCache end to end on a "volume" dir and an "nvme" dir under tmp_path."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time

import pytest

from rp_handler.cache import STATUSES, ModelCache
from rp_handler.errors import InputError
from tests.cache.conftest import MiB, cache_config, checkpoint_workflow, put_model


def by_name(statuses):
    return {s.name: s for s in statuses}


def test_cold_then_warm_job_report(make_cache, volume, nvme):
    put_model(volume, "checkpoints/sd15.safetensors", 3 * MiB)
    put_model(volume, "loras/detail.safetensors", 2 * MiB)
    cache = make_cache()
    wf = checkpoint_workflow("sd15.safetensors", lora="detail.safetensors")

    first = cache.preload_workflow(wf, job_id="job-1")
    assert [s.status for s in first] == ["scheduled", "scheduled"]
    assert all(s.read_from == "volume" and s.path.startswith(str(volume)) for s in first)
    assert cache.wait("job-1", timeout=30)
    report = cache.job_report("job-1")
    assert report["hits"] == 0 and report["misses"] == 2
    assert report["bytes_copied"] == 5 * MiB
    assert report["seconds"] >= 0
    assert {m["status"] for m in report["models"]} == {"cached"}
    copy = nvme / "checkpoints" / "sd15.safetensors"
    assert copy.read_bytes() == (volume / "checkpoints" / "sd15.safetensors").read_bytes()
    cache.release("job-1")

    second = cache.preload_workflow(wf, job_id="job-2")
    assert [s.status for s in second] == ["cached", "cached"]
    assert second[0].path == str(copy) and second[0].read_from == "cache"
    report = cache.job_report("job-2")
    assert (report["hits"], report["misses"], report["bytes_copied"]) == (2, 0, 0)
    assert set(report) == {"hits", "misses", "bytes_copied", "seconds", "models"}
    json.dumps(report)
    assert all(m["status"] in STATUSES for m in report["models"])


def test_missing_model_is_not_found_and_named(make_cache):
    cache = make_cache()
    [st] = cache.preload_workflow(checkpoint_workflow("ghost_v2.safetensors"), job_id="j")
    assert st.status == "not_found" and st.folder == "checkpoints"
    assert "checkpoints/ghost_v2.safetensors" in st.error and "node 4 CheckpointLoaderSimple.ckpt_name" in st.error
    assert cache.wait("j", timeout=1)
    assert cache.job_report("j")["models"][0]["error"] == st.error
    assert cache.missing("j") == [st.error]
    assert cache.missing("unknown-job") == []


def test_small_files_and_local_files_are_not_copied(make_cache, volume, tmp_path):
    put_model(volume, "loras/tiny.safetensors", 100 * 1024)
    put_model(volume, "checkpoints/big.safetensors", 2 * MiB)
    local = tmp_path / "ComfyUI" / "models"
    put_model(local, "checkpoints/big.safetensors", 10)
    cache = make_cache(min_size_mb=1, local_models_dir=local)
    sts = by_name(cache.preload_workflow(checkpoint_workflow("big.safetensors", lora="tiny.safetensors"), job_id="j"))
    assert sts["tiny.safetensors"].status == "skipped_small"
    assert sts["tiny.safetensors"].path == str(volume / "loras" / "tiny.safetensors")
    assert sts["big.safetensors"].status == "skipped_exists"
    assert sts["big.safetensors"].read_from == "local"


def test_categories_limit_what_is_cached(make_cache, volume):
    put_model(volume, "loras/l.safetensors", MiB)
    put_model(volume, "checkpoints/c.safetensors", MiB)
    put_model(volume, "clip/t5.safetensors", MiB)
    cache = make_cache(categories="loras,clip")  # legacy "clip" means text_encoders
    wf = checkpoint_workflow("c.safetensors", lora="l.safetensors")
    wf["30"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "t5.safetensors", "type": "flux"}}
    sts = cache.preload_workflow(wf, job_id="j")
    assert [(s.folder, s.status) for s in sts] == [("loras", "scheduled"), ("text_encoders", "scheduled")]


def test_comfy_models_dir_linked_to_the_volume_is_not_local(make_cache, volume, tmp_path):
    put_model(volume, "checkpoints/c.safetensors", MiB)
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "models").symlink_to(volume)
    [st] = make_cache(local_models_dir=comfy / "models").preload_workflow(
        checkpoint_workflow("c.safetensors"), job_id="j")
    assert st.status == "scheduled"


def test_budget_smaller_than_one_model_reads_from_volume(make_cache, volume, nvme, caplog):
    put_model(volume, "checkpoints/huge.safetensors", 3 * MiB)
    cache = make_cache(budget_bytes=2 * MiB)
    with caplog.at_level(logging.WARNING):
        [st] = cache.preload_workflow(checkpoint_workflow("huge.safetensors"), job_id="j")
    assert st.status == "skipped_budget"
    assert st.path == str(volume / "checkpoints" / "huge.safetensors") and st.read_from == "volume"
    assert "larger than the cache budget" in st.error and "CACHE_BUDGET_GB" in st.error
    assert "huge.safetensors" in caplog.text
    assert not (nvme / "checkpoints" / "huge.safetensors").exists()


def test_two_jobs_wanting_the_same_file_share_one_copy(make_cache, volume, caplog):
    put_model(volume, "checkpoints/shared.safetensors", 4 * MiB)
    cache = make_cache(read_throttle_bps=8 * MiB)
    wf = checkpoint_workflow("shared.safetensors")
    results = {}

    def job(job_id):
        results[job_id] = cache.preload_workflow(wf, job_id=job_id)

    with caplog.at_level(logging.INFO):
        threads = [threading.Thread(target=job, args=(f"job-{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        in_flight = cache.status()["in_flight"]
        assert len(in_flight) == 1
        assert in_flight[0]["key"] == "checkpoints/shared.safetensors"
        assert in_flight[0]["jobs"] == ["job-0", "job-1"]
        assert cache.wait("job-0", timeout=30) and cache.wait("job-1", timeout=30)
    assert "joins that copy" in caplog.text
    assert caplog.text.count("cache: copied checkpoints/shared.safetensors") == 1
    for job_id in ("job-0", "job-1"):
        report = cache.job_report(job_id)
        assert report["models"][0]["status"] == "cached" and report["misses"] == 1
    assert len(cache.status()["entries"]) == 1


def test_volume_file_changing_during_copy_is_not_cached(make_cache, volume, nvme):
    src = put_model(volume, "checkpoints/moving.safetensors", 4 * MiB)
    cache = make_cache(read_throttle_bps=4 * MiB)
    cache.preload_workflow(checkpoint_workflow("moving.safetensors"), job_id="j")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        flight = cache.status()["in_flight"]
        if flight and flight[0]["bytes_done"] >= MiB:
            break
        time.sleep(0.01)
    with open(src, "ab") as fh:
        fh.write(b"more bytes from a new upload")
    assert cache.wait("j", timeout=30)
    [model] = cache.job_report("j")["models"]
    assert model["status"] == "error" and "changed while it was copied" in model["error"]
    assert not (nvme / "checkpoints" / "moving.safetensors").exists()
    assert not list((nvme / "checkpoints").glob("*.incomplete"))
    assert cache.status()["entries"] == []
    # the next job copies the settled file
    [st] = cache.preload_workflow(checkpoint_workflow("moving.safetensors"), job_id="k")
    assert st.status == "scheduled" and cache.wait("k", timeout=30)
    assert (nvme / "checkpoints" / "moving.safetensors").read_bytes() == src.read_bytes()


def test_stale_cache_copy_is_replaced_when_the_volume_file_changes(make_cache, volume, nvme):
    src = put_model(volume, "vae/ae.safetensors", MiB)
    cache = make_cache()
    wf = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}}
    cache.preload_workflow(wf, job_id="a")
    cache.wait("a", 30)
    cache.release("a")
    put_model(volume, "vae/ae.safetensors", MiB, seed=7)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    [again] = cache.preload_workflow(wf, job_id="b")
    assert again.status == "scheduled"
    cache.wait("b", 30)
    assert (nvme / "vae" / "ae.safetensors").read_bytes() == src.read_bytes()


def _unreadable_in_child(volume, nvme, object_info, queue):
    os.setgid(65534)
    os.setuid(65534)
    cache = ModelCache(cache_config(nvme), volume, object_info)
    try:
        [st] = cache.preload_workflow(checkpoint_workflow("locked.safetensors"), job_id="j")
        queue.put(st.to_dict())
    finally:
        cache.close()


def test_unreadable_file_is_an_error_and_named(make_cache, volume, nvme, object_info, tmp_path):
    src = put_model(volume, "checkpoints/locked.safetensors", MiB)
    os.chmod(src, 0)
    if os.geteuid() != 0:
        [st] = make_cache().preload_workflow(checkpoint_workflow("locked.safetensors"), job_id="j")
        model = st.to_dict()
    else:  # root reads anything: check it as an unprivileged user in a child process
        import multiprocessing

        for p in [tmp_path, *tmp_path.parents][:-1]:
            if p.stat().st_mode & 0o005 != 0o005:
                os.chmod(p, p.stat().st_mode | 0o005)
        for p in (volume, volume / "checkpoints", volume.parent):
            os.chmod(p, 0o755)
        nvme.mkdir(parents=True)
        os.chmod(nvme, 0o777)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_unreadable_in_child, args=(volume, nvme, object_info, queue))
        child.start()
        model = queue.get(timeout=30)
        child.join(10)
    assert model["status"] == "error"
    assert "locked.safetensors is not readable" in model["error"] and model["read_from"] == "volume"


def test_cache_dir_not_writable_falls_back_to_the_volume(make_cache, volume, tmp_path, caplog):
    put_model(volume, "checkpoints/c.safetensors", MiB)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    with caplog.at_level(logging.WARNING):
        cache = make_cache(root=blocker / "cache")
    assert not cache.enabled and "is not writable" in cache.disabled_reason
    assert "NVME_CACHE_DIR" in cache.disabled_reason
    [st] = cache.preload_workflow(checkpoint_workflow("c.safetensors"), job_id="j")
    assert st.status == "error" and st.read_from == "volume"
    assert st.path == str(volume / "checkpoints" / "c.safetensors")
    assert "not writable" in caplog.text
    assert cache.status()["enabled"] is False
    yaml_text = cache.write_extra_model_paths(tmp_path / "emp.yaml").read_text()
    assert "nvme_cache" not in yaml_text and str(volume) in yaml_text


def test_eviction_follows_our_access_record_not_atime(make_cache, volume, nvme):
    for name in ("a", "b", "c"):
        put_model(volume, f"checkpoints/{name}.safetensors", MiB)
    cache = make_cache(budget_bytes=int(2.5 * MiB))
    for name in ("a", "b"):
        cache.preload_workflow(checkpoint_workflow(f"{name}.safetensors"), job_id=name)
        cache.wait(name, 30)
        cache.release(name)
    # a job uses "a" again: "b" is now the least recently used
    cache.preload_workflow(checkpoint_workflow("a.safetensors"), job_id="a2")
    cache.release("a2")
    # file times say the opposite: "b" looks fresh, "a" looks old
    os.utime(nvme / "checkpoints" / "b.safetensors", (time.time() + 1000, time.time() + 1000))
    os.utime(nvme / "checkpoints" / "a.safetensors", (1, 1))
    [st] = cache.preload_workflow(checkpoint_workflow("c.safetensors"), job_id="c")
    assert st.status == "scheduled"
    cache.wait("c", 30)
    assert (nvme / "checkpoints" / "a.safetensors").exists()
    assert not (nvme / "checkpoints" / "b.safetensors").exists()
    assert (nvme / "checkpoints" / "c.safetensors").exists()
    index = json.loads((nvme / ".index.json").read_text())
    assert sorted(e["key"] for e in index["entries"]) == ["checkpoints/a.safetensors", "checkpoints/c.safetensors"]


def test_files_in_use_by_a_job_are_never_evicted(make_cache, volume, nvme):
    put_model(volume, "checkpoints/a.safetensors", MiB)
    put_model(volume, "checkpoints/b.safetensors", MiB)
    cache = make_cache(budget_bytes=int(1.5 * MiB))
    cache.preload_workflow(checkpoint_workflow("a.safetensors"), job_id="running")
    cache.wait("running", 30)
    [st] = cache.preload_workflow(checkpoint_workflow("b.safetensors"), job_id="other")
    assert st.status == "skipped_budget" and "in use by running jobs" in st.error
    assert (nvme / "checkpoints" / "a.safetensors").exists()
    assert cache.status()["entries"][0]["in_use_by"] == ["running"]
    cache.release("running")
    [st] = cache.preload_workflow(checkpoint_workflow("b.safetensors"), job_id="after")
    assert st.status == "scheduled"
    cache.wait("after", 30)
    assert not (nvme / "checkpoints" / "a.safetensors").exists()


def test_index_survives_a_restart_and_torn_files_are_dropped(make_cache, volume, nvme):
    put_model(volume, "checkpoints/a.safetensors", MiB)
    put_model(volume, "loras/b.safetensors", MiB)
    cache = make_cache()
    cache.preload_workflow(checkpoint_workflow("a.safetensors", lora="b.safetensors"), job_id="j")
    cache.wait("j", 30)
    cache.close()
    with open(nvme / "loras" / "b.safetensors", "r+b") as fh:  # damaged while the worker was down
        fh.truncate(1000)
    (nvme / "checkpoints" / "x.safetensors.dead.incomplete").write_bytes(b"partial")
    os.utime(nvme / "checkpoints" / "x.safetensors.dead.incomplete", (1, 1))
    again = make_cache()
    assert [e["key"] for e in again.status()["entries"]] == ["checkpoints/a.safetensors"]
    assert not (nvme / "loras" / "b.safetensors").exists()
    assert not (nvme / "checkpoints" / "x.safetensors.dead.incomplete").exists()
    sts = by_name(again.preload_workflow(checkpoint_workflow("a.safetensors", lora="b.safetensors"), job_id="k"))
    assert sts["a.safetensors"].status == "cached" and sts["b.safetensors"].status == "scheduled"


def test_checksum_from_the_lock_is_verified_while_copying(make_cache, volume, nvme):
    good = put_model(volume, "checkpoints/good.safetensors", 2 * MiB)
    put_model(volume, "checkpoints/bad.safetensors", 2 * MiB)
    sums = {"checkpoints/good.safetensors": hashlib.sha256(good.read_bytes()).hexdigest(),
            "checkpoints/bad.safetensors": "f" * 64}
    cache = make_cache(checksums=sums)
    for name in ("good", "bad"):
        cache.preload_workflow(checkpoint_workflow(f"{name}.safetensors"), job_id=name)
        cache.wait(name, 30)
    assert cache.job_report("good")["models"][0]["status"] == "cached"
    bad = cache.job_report("bad")["models"][0]
    assert bad["status"] == "error" and "checksum mismatch" in bad["error"] and "expected " + "f" * 64 in bad["error"]
    assert not (nvme / "checkpoints" / "bad.safetensors").exists()
    entry = next(e for e in cache.status()["entries"] if e["key"] == "checkpoints/good.safetensors")
    assert entry["sha256"] == sums["checkpoints/good.safetensors"]


def test_warm_while_a_warm_runs_joins_it(make_cache, volume):
    put_model(volume, "checkpoints/a.safetensors", 8 * MiB)  # about a second: the second warm arrives first
    put_model(volume, "loras/b.safetensors", 2 * MiB)
    cache = make_cache(read_throttle_bps=8 * MiB)
    first = cache.warm(models=["checkpoints/a.safetensors"])
    assert first["ok"] and not first["joined"] and not first["done"]
    second = cache.warm(models=[{"folder": "loras", "name": "b.safetensors"}, "checkpoints/a.safetensors"],
                        wait=True, timeout=30)
    assert second["ok"] and second["joined"] and second["done"]
    assert second["warm_id"] == first["warm_id"]
    assert {m["name"]: m["status"] for m in second["models"]} == {"a.safetensors": "cached",
                                                                  "b.safetensors": "cached"}
    assert cache.status()["warm"] == {"warm_id": first["warm_id"], "done": True, "models": 2}
    third = cache.warm(workflow=checkpoint_workflow("a.safetensors"), wait=True)
    assert not third["joined"] and third["hits"] == 1
    with pytest.raises(InputError, match="models"):
        cache.warm()


def test_bad_workflow_is_an_input_error(make_cache):
    with pytest.raises(InputError, match="class_type"):
        make_cache().preload_workflow({"1": {"inputs": {}}}, job_id="j")


def test_extra_model_paths_put_the_cache_first(make_cache, volume, nvme, tmp_path):
    import yaml

    put_model(volume, "ipadapter/x.safetensors", 10)
    cache = make_cache()
    doc = yaml.safe_load(cache.write_extra_model_paths(tmp_path / "extra_model_paths.yaml").read_text())
    assert list(doc) == ["nvme_cache", "network_volume"]
    assert doc["nvme_cache"]["base_path"] == str(nvme) and doc["nvme_cache"]["is_default"] is True
    assert doc["network_volume"]["base_path"] == str(volume)
    assert doc["network_volume"]["text_encoders"].split("\n") == ["text_encoders", "clip"]
    assert doc["network_volume"]["diffusion_models"].split("\n") == ["unet", "diffusion_models"]
    assert doc["network_volume"]["ipadapter"] == "ipadapter"
    assert doc["nvme_cache"]["ipadapter"] == "ipadapter"
