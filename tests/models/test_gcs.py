"""gs:// sources with the real google-cloud-storage client against gcp-storage-emulator."""

import os

from tests.models.helpers import blobs, realize, sha

DATA = os.urandom(1_500_000)


def test_fetch_from_emulator(gcs_client, cfg, models_dir):
    gcs_client.bucket("test").blob("models/vae/x.safetensors").upload_from_string(DATA)
    [rec] = realize([{"source": "gs://test/models/vae/x.safetensors", "target_subdir": "vae",
                      "checksum": "sha256:" + sha(DATA)}], cfg, models_dir)
    assert rec["status"] == "fetched" and rec["size"] == len(DATA)
    assert rec["resolved_source"].startswith("gs://test/models/vae/x.safetensors#")
    assert (models_dir / "vae" / "x.safetensors").read_bytes() == DATA
    assert len(blobs(cfg)) == 1


def test_missing_object_and_bucket(gcs_client, cfg, models_dir):
    recs = realize([{"source": "gs://test/nope.bin"}, {"source": "gs://no-such-bucket/a.bin"}], cfg, models_dir)
    assert recs[0]["status"] == "missing"
    assert "object does not exist in bucket 'test'" in recs[0]["error"]
    assert recs[1]["status"] == "missing" and "no-such-bucket" in recs[1]["error"]
    assert all("\n" not in r["error"] for r in recs)


def test_gcs_mismatch_leaves_nothing(gcs_client, cfg, models_dir):
    gcs_client.bucket("test").blob("m.bin").upload_from_string(DATA)
    [rec] = realize([{"source": "gs://test/m.bin", "checksum": "md5:" + "0" * 32}], cfg, models_dir)
    assert rec["status"] == "mismatch" and "gs://test/m.bin" in rec["error"] and "md5:" + "0" * 32 in rec["error"]
    assert not (models_dir / "checkpoints" / "m.bin").exists() and blobs(cfg) == []
