"""scripts/verify_models.py and builder.models.cli.main."""

import json
import os
import subprocess
import sys

from builder.models.cli import main
from tests.models.helpers import sha

DATA = os.urandom(100_000)


def _env(tmp_path, **extra):
    return {"HOME": str(tmp_path / "home"), "COMFY_CACHE_ROOT": str(tmp_path / "cache"),
            "MODEL_DOWNLOAD_CONNECTIONS": "1", **extra}


def test_spec_table_and_exit_codes(server, tmp_path, capsys):
    url = server.add("/a.bin", DATA)
    spec = tmp_path / "v.json"
    spec.write_text(json.dumps({"schema_version": 2, "models": [
        {"source": url, "target_subdir": "loras", "checksum": "sha256:" + sha(DATA)}]}))
    md = tmp_path / "models"
    assert main(["--spec", str(spec), "--models-dir", str(md)], env=_env(tmp_path)) == 0
    out = capsys.readouterr()
    assert "fetched" in out.out and str(md / "loras" / "a.bin") in out.out and sha(DATA)[:12] in out.out
    assert out.err == ""  # quiet when not a TTY
    assert main(["--spec", str(spec), "--models-dir", str(md), "--json"], env=_env(tmp_path)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["models"][0]["status"] == "ok"


def test_problem_exits_1_with_error_line(server, tmp_path, capsys):
    spec = tmp_path / "v.json"
    spec.write_text(json.dumps({"models": [{"source": server.url + "/gone.bin"}]}))
    assert main(["--spec", str(spec), "--models-dir", str(tmp_path / "m")], env=_env(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "missing" in out and "HTTP 404" in out


def test_usage_errors_exit_2(tmp_path, capsys):
    try:
        main([], env=_env(tmp_path))
    except SystemExit as exc:
        assert exc.code == 2
    else:  # pragma: no cover
        raise AssertionError("argparse should exit")
    assert main(["--spec", str(tmp_path / "absent.json")], env=_env(tmp_path)) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["--spec", str(bad)], env=_env(tmp_path)) == 2
    capsys.readouterr()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("models: [unclosed\n  - x: {\n")
    assert main(["--spec", str(bad_yaml)], env=_env(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.yaml is not valid YAML" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_malformed_checksum_in_spec_is_one_line(tmp_path, capsys):
    spec = tmp_path / "v.json"
    spec.write_text(json.dumps({"models": [{"source": "/x.bin", "checksum": "sha256:123"}]}))
    assert main(["--spec", str(spec)], env=_env(tmp_path)) == 1
    err = capsys.readouterr().err.strip()
    assert "models[0].checksum" in err and "malformed sha256" in err and "\n" not in err


def test_lock_input_and_cache_dir_and_overwrite(server, tmp_path, capsys):
    url = server.add("/l.bin", DATA)
    md, cache = tmp_path / "models", tmp_path / "C"
    target = md / "checkpoints" / "l.bin"
    lock = tmp_path / "x.lock.json"
    lock.write_text(json.dumps({"models": [{"source": url, "target": str(target), "sha256": sha(DATA),
                                            "size": len(DATA)}]}))
    args = ["--lock", str(lock), "--cache-dir", str(cache), "--json"]
    assert main(args, env=_env(tmp_path)) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["status"] == "fetched"
    assert (cache / "models" / "sha256" / sha(DATA)[:2] / sha(DATA) / "blob").exists()
    target.unlink()
    target.write_bytes(b"tampered")
    assert main(args, env=_env(tmp_path)) == 1
    assert json.loads(capsys.readouterr().out)["models"][0]["status"] == "mismatch"
    assert main(args + ["--overwrite", "--offline"], env=_env(tmp_path)) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["status"] == "restored"
    assert target.read_bytes() == DATA


def test_script_wrapper_runs(repo_root, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    spec = tmp_path / "models.json"
    spec.write_text(json.dumps([{"source": str(src), "name": "s.bin", "target_subdir": "vae"}]))
    proc = subprocess.run([sys.executable, str(repo_root / "scripts" / "verify_models.py"), "--spec", str(spec),
                           "--models-dir", str(tmp_path / "m"), "--json"],
                          capture_output=True, text=True, env={**os.environ, **_env(tmp_path)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["models"][0]["sha256"] == sha(DATA)
    assert (tmp_path / "m" / "vae" / "s.bin").read_bytes() == DATA
