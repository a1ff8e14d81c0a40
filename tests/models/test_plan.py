from pathlib import Path

import pytest

from builder.errors import ModelSpecError
from builder.models.plan import plan, plan_entry
from builder.models.sources import GcsSource, HfSource, HttpSource, LocalSource, parse_source, redact_url


def test_parse_sources(cfg):
    assert parse_source("hf://org/repo@abc/sub/m.safetensors", cfg) == HfSource("org/repo", "abc", "sub/m.safetensors")
    assert parse_source("hf://org/repo/m.bin", cfg).revision == "main"
    assert parse_source("https://huggingface.co/org/repo/resolve/v1/a/b.bin", cfg) == HfSource("org/repo", "v1", "a/b.bin")
    assert parse_source("gs://bucket/dir/m.ckpt", cfg) == GcsSource("bucket", "dir/m.ckpt")
    assert parse_source("file:///x/y.bin", cfg) == LocalSource(Path("/x/y.bin"))
    civ = parse_source("civitai:12345", cfg)
    assert civ == HttpSource("https://civitai.com/api/download/models/12345", token_env="CIVITAI_TOKEN")
    assert parse_source("https://civitai.com/api/download/models/9?type=Model", cfg).token_env == "CIVITAI_TOKEN"
    assert parse_source("https://example.com/m.bin", cfg).token_env == ""


@pytest.mark.parametrize("bad", ["civitai:abc", "hf://org", "gs://bucket", "ftp://x/y", ""])
def test_bad_sources_are_one_line_errors(cfg, bad):
    with pytest.raises(ModelSpecError) as exc:
        parse_source(bad, cfg, where="models[3].source")
    assert "models[3].source" in str(exc.value) and "\n" not in str(exc.value)


def test_redact_url_drops_query_and_userinfo():
    assert redact_url("https://u:p@cdn.example/x.bin?sig=SECRET") == "https://cdn.example/x.bin?<redacted>"


def test_target_subdir_default_and_expansion(cfg, tmp_path):
    md = tmp_path / "m"
    t = plan_entry({"source": "https://e.com/a.safetensors", "target_subdir": "loras"}, 0, cfg=cfg, models_dir=md)
    assert t.target == md / "loras" / "a.safetensors"
    t = plan_entry({"source": "https://e.com/a.bin"}, 0, cfg=cfg, models_dir=md)
    assert t.target == md / "checkpoints" / "a.bin"
    t = plan_entry({"source": "https://e.com/a.bin", "target_path": "$MODELS_DIR/vae/x.bin"}, 0, cfg=cfg, models_dir=md)
    assert t.target == md / "vae" / "x.bin"
    t = plan_entry({"source": "https://e.com/a.bin", "target_path": "${COMFY_HOME}/models/y/", "name": "n.bin"},
                   0, cfg=cfg, models_dir=md, comfy_home=tmp_path / "home")
    assert t.target == tmp_path / "home" / "models" / "y" / "n.bin"
    t = plan_entry({"source": "gs://b/o/m.pt", "target_path": "upscale_models/m.pt"}, 0, cfg=cfg, models_dir=md)
    assert t.target == md / "upscale_models" / "m.pt"


def test_comfy_home_unknown_or_unknown_var(cfg, tmp_path):
    with pytest.raises(ModelSpecError, match="COMFY_HOME is not known"):
        plan_entry({"source": "/a.bin", "target_path": "$COMFY_HOME/a.bin"}, 0, cfg=cfg, models_dir=tmp_path)
    with pytest.raises(ModelSpecError, match=r"unknown variable \$HOME"):
        plan_entry({"source": "/a.bin", "target_path": "$HOME/a.bin"}, 0, cfg=cfg, models_dir=tmp_path)


def test_traversal_and_missing_name_rejected(cfg, tmp_path):
    with pytest.raises(ModelSpecError, match="relative folder"):
        plan_entry({"source": "/a.bin", "target_subdir": "../etc"}, 0, cfg=cfg, models_dir=tmp_path)
    with pytest.raises(ModelSpecError, match="plain file name"):
        plan_entry({"source": "/a.bin", "name": "../x"}, 0, cfg=cfg, models_dir=tmp_path)
    with pytest.raises(ModelSpecError, match="add 'name'"):
        plan_entry({"source": "civitai:42"}, 0, cfg=cfg, models_dir=tmp_path)


def test_lock_fields_and_md5(cfg, tmp_path):
    sha = "cd" * 32
    t = plan_entry({"source": "hf://o/r/m.bin", "sha256": sha, "size": 10,
                    "resolved_source": "hf://o/r@" + "1" * 40 + "/m.bin", "checksum": "md5:" + "e" * 32},
                   0, cfg=cfg, models_dir=tmp_path)
    assert t.sha256 == sha and t.size == 10 and t.md5 == "e" * 32
    assert t.source == HfSource("o/r", "1" * 40, "m.bin")
    assert t.algos == ("sha256", "md5")


def test_plan_collects_every_problem(cfg, tmp_path):
    with pytest.raises(ModelSpecError) as exc:
        plan([{"source": "/a.bin", "checksum": "sha256:zz"}, {"nope": 1},
              {"source": "/x/a.bin"}, {"source": "/y/a.bin"}], cfg=cfg, models_dir=tmp_path)
    msg = str(exc.value)
    assert "models[0].checksum" in msg and "models[1]" in msg and "also the target of models[2]" in msg
