"""hf:// sources through huggingface_hub against the fake Hub endpoint."""

import os

from tests.models.helpers import blobs, leftovers, realize, sha

BIG = os.urandom(300_000)  # served as an LFS file (302 to the CDN)
SMALL = b'{"small": true}'  # served directly


def test_fetch_pins_commit_in_lock(hub, make_cfg, models_dir):
    commit = hub.add_repo("org/repo", {"unet/m.safetensors": BIG, "config.json": SMALL})
    cfg = make_cfg(HF_ENDPOINT=hub.url)
    recs = realize([{"source": "hf://org/repo/unet/m.safetensors", "target_subdir": "unet"},
                    {"source": "hf://org/repo@main/config.json", "target_subdir": "configs"}], cfg, models_dir)
    assert [r["status"] for r in recs] == ["fetched", "fetched"]
    assert recs[0]["resolved_source"] == f"hf://org/repo@{commit}/unet/m.safetensors"
    assert recs[0]["sha256"] == sha(BIG) and recs[0]["size"] == len(BIG)
    assert (models_dir / "unet" / "m.safetensors").read_bytes() == BIG
    assert (models_dir / "configs" / "config.json").read_bytes() == SMALL
    assert leftovers(cfg.store_dir, models_dir) == []


def test_lock_revision_survives_a_new_commit(hub, make_cfg, models_dir, tmp_path):
    hub.add_repo("org/repo", {"m.bin": BIG})
    cfg = make_cfg(HF_ENDPOINT=hub.url)
    [rec] = realize([{"source": "hf://org/repo/m.bin"}], cfg, models_dir)
    hub.push("org/repo", {"m.bin": os.urandom(300_000)})  # main moves on
    # a fresh store and models dir: the lock's pinned commit still yields the old bytes
    cfg2 = make_cfg(HF_ENDPOINT=hub.url, COMFY_CACHE_ROOT=tmp_path / "cache2")
    [again] = realize([{"source": rec["source"], "resolved_source": rec["resolved_source"], "sha256": rec["sha256"]}],
                      cfg2, tmp_path / "models2")
    assert again["status"] == "fetched" and (tmp_path / "models2" / "checkpoints" / "m.bin").read_bytes() == BIG


def test_absent_file_revision_and_repo(hub, make_cfg, models_dir):
    hub.add_repo("org/repo", {"m.bin": BIG})
    cfg = make_cfg(HF_ENDPOINT=hub.url)
    recs = realize([{"source": "hf://org/repo/missing.bin"}, {"source": "hf://org/repo@v9/m.bin", "name": "a.bin"},
                    {"source": "hf://org/nope/m.bin", "name": "b.bin"}], cfg, models_dir)
    assert all(r["status"] == "missing" for r in recs)
    assert "absent at revision 'main'" in recs[0]["error"]
    assert "revision 'v9' does not exist" in recs[1]["error"]
    assert "HF_TOKEN is not set" in recs[2]["error"]  # the Hub answers 401 for unknown or private repos
    assert all("\n" not in r["error"] for r in recs)


def test_private_and_gated_repos_name_hf_token(hub, make_cfg, models_dir):
    hub.add_repo("org/private", {"m.bin": BIG}, token="right")
    hub.add_repo("org/gated", {"g.bin": BIG}, gated=True)
    recs = realize([{"source": "hf://org/private/m.bin"}, {"source": "hf://org/gated/g.bin"}],
                   make_cfg(HF_ENDPOINT=hub.url), models_dir)
    assert "HF_TOKEN is not set" in recs[0]["error"] and "gated" in recs[1]["error"]
    [rec] = realize([{"source": "hf://org/private/m.bin"}], make_cfg(HF_ENDPOINT=hub.url, HF_TOKEN="bad"), models_dir)
    assert "HF_TOKEN was rejected" in rec["error"]


def test_hub_lfs_hash_is_checked_even_without_a_checksum(hub, make_cfg, models_dir):
    hub.add_repo("org/repo", {"m.bin": BIG})
    hub.repos["org/repo"].overrides["m.bin"] = {"linked_etag": "f" * 64}
    cfg = make_cfg(HF_ENDPOINT=hub.url)
    [rec] = realize([{"source": "hf://org/repo/m.bin"}], cfg, models_dir)
    assert rec["status"] == "mismatch" and "f" * 64 in rec["error"] and sha(BIG) in rec["error"]
    assert blobs(cfg) == [] and not (models_dir / "checkpoints" / "m.bin").exists()


def test_offline_restores_from_store_only(hub, make_cfg, models_dir):
    hub.add_repo("org/repo", {"m.bin": BIG})
    cfg = make_cfg(HF_ENDPOINT=hub.url)
    [rec] = realize([{"source": "hf://org/repo/m.bin"}], cfg, models_dir)
    (models_dir / "checkpoints" / "m.bin").unlink()
    n = len(hub.requests)
    [again] = realize([{"source": "hf://org/repo/m.bin", "sha256": rec["sha256"]}], cfg, models_dir, offline=True)
    assert again["status"] == "restored" and len(hub.requests) == n
