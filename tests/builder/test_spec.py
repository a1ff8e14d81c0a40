import json

import pytest

from builder.errors import SpecError
from builder.spec import is_git_url, load_spec, model_target, spec_digest, validate


def base(**over):
    data = {"schema_version": 2, "version_id": "demo",
            "comfy": {"repo": "https://github.com/comfyanonymous/ComfyUI", "ref": "master"},
            "custom_nodes": [], "models": [], "python_packages": [], "env": {}, "options": {}}
    data.update(over)
    return data


def problems(data, **kw):
    with pytest.raises(SpecError) as info:
        validate(data, "spec.json", **kw)
    return info.value.problems


def test_valid_spec_builds_frozen_spec_with_defaults():
    spec = validate(base(custom_nodes=[{"repo": "git@github.com:cubiq/ComfyUI_essentials.git", "ref": "main"}]))
    assert spec.custom_nodes[0].name == "ComfyUI_essentials"
    assert spec.options.pin_installed == ("torch", "torchvision", "torchaudio")
    assert spec.digest == spec_digest(base(custom_nodes=[{"repo": "git@github.com:cubiq/ComfyUI_essentials.git",
                                                          "ref": "main"}]))


def test_every_problem_is_reported_at_once_with_its_json_path():
    data = base(
        schema_version=1,
        custom_nodes=[{"repo": "https://github.com/a/one"}, {"repo": "https://github.com/a/two"},
                      {"repo": "ftp://example.com/x", "comit": "abc"}],
        models=[{"source": "https://x/y.safetensors", "checksum": "sha256:abc"},
                {"source": "https://x/z.bin", "checksum": "crc32:00"},
                {"source": "https://x/e.bin", "target_path": "../../etc/passwd"}],
        python_packages=["ok==1", "not a requirement!!"],
        pip_constraints=["torch"],
    )
    out = problems(data)
    joined = "\n".join(out)
    assert "schema_version: must be 2 (got 1)" in joined
    assert "custom_nodes[2].repo: not a git URL: 'ftp://example.com/x'" in joined
    assert "custom_nodes[2].comit: unknown key (did you mean 'commit'?)" in joined
    assert "models[0].checksum: malformed 'sha256:abc': sha256 needs 64 lowercase hex digits" in joined
    assert "models[1].checksum: malformed 'crc32:00'" in joined
    assert "models[2].target_path: target escapes the models dir" in joined
    assert "python_packages[1]: not a pip requirement" in joined
    assert "pip_constraints[0]: a constraint needs a version specifier" in joined
    assert len(out) == 8


def test_unknown_top_level_key_gets_a_did_you_mean_hint():
    out = problems(base(custom_node=[]))
    assert out == ["custom_node: unknown key (did you mean 'custom_nodes'?)"]


def test_duplicate_node_names_and_model_targets():
    out = problems(base(
        custom_nodes=[{"repo": "https://github.com/a/Same"}, {"repo": "https://github.com/b/same.git"}],
        models=[{"source": "https://x/a/m.safetensors", "target_subdir": "loras"},
                {"source": "https://y/b/m.safetensors", "target_path": "loras/m.safetensors"}]))
    assert any(p.startswith("custom_nodes[1].name: duplicate node name 'same'") for p in out)
    assert "models[1]: duplicate target 'loras/m.safetensors' (also models[0])" in out


@pytest.mark.parametrize("url,ok", [
    ("https://github.com/org/repo", True), ("ssh://git@host/org/repo.git", True),
    ("git@github.com:org/repo.git", True), ("file:///srv/git/repo.git", True), ("/srv/git/repo", True),
    ("./relative/repo", True), ("http://github.com/org/repo", False), ("github.com/org/repo", False),
    ("https://github.com", False), ("", False), (" https://x/y", False)])
def test_git_url_forms(url, ok):
    assert is_git_url(url) is ok


def test_checksum_md5_and_models_dir_prefixes():
    spec = validate(base(models=[
        {"source": "https://x/a.pth", "target_subdir": "upscale_models", "checksum": "md5:" + "0" * 32},
        {"source": "hf://org/repo/vae.safetensors", "target_path": "$MODELS_DIR/vae/v.safetensors"},
        {"source": "https://x/c.yaml", "target_path": "$COMFY_HOME/models/configs/c.yaml"}]))
    assert [model_target(m) for m in spec.models] == [
        "upscale_models/a.pth", "vae/v.safetensors", "$COMFY_HOME/models/configs/c.yaml"]
    out = problems(base(models=[{"source": "https://x/a", "target_path": "/abs/path"}]))
    assert out[0].startswith("models[0].target_path: target escapes")


def test_bad_refs_commits_env_and_options():
    out = problems(base(comfy={"repo": "https://github.com/x/y", "ref": "bad ref", "commit": "XYZ"},
                        env={"1BAD": "x", "GOOD": 3}, options={"offline": "yes", "skip_model": True}))
    joined = "\n".join(out)
    for needle in ("comfy.ref: not a valid git ref name", "comfy.commit: not a commit SHA",
                   "env.1BAD: not a valid environment variable name", "env.GOOD: value must be a string",
                   "options.offline: must be true or false",
                   "options.skip_model: unknown key (did you mean 'skip_models'?)"):
        assert needle in joined


def test_file_name_must_match_version_id(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps(base()))
    with pytest.raises(SpecError, match="version_id: 'demo' does not match the file name 'other'.json"):
        load_spec(path)


def test_invalid_json_is_one_line(tmp_path):
    path = tmp_path / "demo.json"
    path.write_text('{"schema_version": 2,')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "invalid JSON at line 1" in str(info.value) and "\n" not in str(info.value)


def test_real_specs_in_versions_dir_are_valid(repo_root):
    specs = sorted((repo_root / "versions").glob("*.json"))
    assert {p.name for p in specs} >= {"cpu-demo.json", "sdxl-base.json"}
    for path in specs:
        spec = load_spec(path)
        for node in spec.custom_nodes:
            assert node.commit and len(node.commit) == 40
