"""docker/hybrid_spec.py: the spec a hybrid image realizes from (same spec, models skipped)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.docker.dockerfile_model import REPO_ROOT

HELPER = REPO_ROOT / "docker" / "hybrid_spec.py"
SPEC = {
    "schema_version": 2,
    "version_id": "demo",
    "comfy": {"repo": "https://example.invalid/ComfyUI", "ref": "master"},
    "custom_nodes": [],
    "models": [{"source": "https://example.invalid/m.safetensors", "target_subdir": "checkpoints"}],
    "options": {"offline": True},
}


def run(*args):
    return subprocess.run([sys.executable, str(HELPER), *map(str, args)], capture_output=True, text=True, timeout=30)


def test_writes_the_spec_with_skip_models_and_leaves_the_source_alone(tmp_path):
    src_dir, out_dir = tmp_path / "versions", tmp_path / "out"
    src_dir.mkdir()
    original = json.dumps(SPEC, indent=1)
    (src_dir / "demo.json").write_text(original)
    proc = run("demo", "--versions-dir", src_dir, "--out-dir", out_dir)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((out_dir / "demo.json").read_text())
    assert written["options"] == {"offline": True, "skip_models": True}
    assert {k: v for k, v in written.items() if k != "options"} == {k: v for k, v in SPEC.items() if k != "options"}
    assert (src_dir / "demo.json").read_text() == original
    assert [p.name for p in out_dir.iterdir()] == ["demo.json"], "no temp file left behind"


def test_spec_without_options_gets_them(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.json").write_text(json.dumps({"schema_version": 2, "version_id": "a"}))
    assert run("a", "--versions-dir", tmp_path / "v", "--out-dir", tmp_path / "o").returncode == 0
    assert json.loads((tmp_path / "o" / "a.json").read_text())["options"] == {"skip_models": True}


def test_missing_spec_is_one_line_naming_the_file(tmp_path):
    proc = run("nope", "--versions-dir", tmp_path, "--out-dir", tmp_path / "o")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "nope.json: no such spec" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_bad_json_and_bad_options_are_rejected(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    proc = run("bad", "--versions-dir", tmp_path, "--out-dir", tmp_path / "o")
    assert proc.returncode == 1 and "not valid JSON" in proc.stderr
    (tmp_path / "opt.json").write_text(json.dumps({"options": ["skip_models"]}))
    proc = run("opt", "--versions-dir", tmp_path, "--out-dir", tmp_path / "o")
    assert proc.returncode == 1 and "options: expected an object" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_refuses_to_overwrite_the_source(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    proc = run("a", "--versions-dir", tmp_path, "--out-dir", tmp_path)
    assert proc.returncode == 2 and "must differ" in proc.stderr
    assert (tmp_path / "a.json").read_text() == "{}"
