from pathlib import Path

from builder.pip_install import (InstallRequest, Installer, closure, command, constraint_lines, find_installer,
                                 install, installed_versions, requirement_roots)

UV = Installer("uv", ("uv", "pip", "install"))
PIP = Installer("pip", ("python", "-m", "pip"))


def test_commands_for_wheels_offline_and_indexes():
    base = dict(python=Path("/t/python"), requirement_files=(Path("/r.txt"),), packages=("x",), constraints=())
    wheels = InstallRequest(**base, wheels_dir=Path("/w"))
    assert command(UV, wheels, Path("/c"))[-6:] == ["x", "-c", "/c", "--no-index", "--find-links", "/w"]
    assert command(PIP, wheels, None)[:5] == ["python", "-m", "pip", "--python", "/t/python"]
    assert command(UV, InstallRequest(**base, offline=True), None)[-1] == "--offline"
    assert command(PIP, InstallRequest(**base, offline=True), None)[-1] == "--no-index"
    idx = InstallRequest(**base, index_url="https://i/simple", extra_index_urls=("https://e/cpu",))
    assert command(UV, idx, None)[-6:] == ["--index-url", "https://i/simple", "--extra-index-url", "https://e/cpu",
                                           "--index-strategy", "unsafe-best-match"]
    assert "--index-strategy" not in command(PIP, idx, None)


def test_constraints_precedence():
    lines = constraint_lines(["torch==2.8.0+cpu"], {"torch": "2.5.1", "torchvision": "0.20.1"},
                             {"Torch": "1.0", "numpy": "2.1.0"})
    assert lines == ["numpy==2.1.0", "torch==2.8.0+cpu", "torchvision==0.20.1"]


def test_roots_follow_includes_and_closure_follows_extras(tmp_path, venv_python):
    from .fixtures import make_wheel
    (tmp_path / "base.txt").write_text("# comment\ntinyfoo>=1.0  # inline\n--extra-index-url https://x\n")
    (tmp_path / "req.txt").write_text("-r base.txt\nTiny_Bar[fast]==2.0\n")
    roots = requirement_roots([tmp_path / "req.txt"], ["tinyextra"])
    assert roots == [("tiny-bar", ["fast"]), ("tinyextra", []), ("tinyfoo", [])]
    local = tmp_path / "wheels"
    make_wheel(local, "withextra", "1.0", ["tinydep", 'tinybar; extra == "bar"', 'tinyextra; extra == "nope"'])
    make_wheel(local, "tinydep", "1.0")
    make_wheel(local, "tinybar", "2.0")
    make_wheel(local, "tinyextra", "0.3")
    install(find_installer(), InstallRequest(python=venv_python, requirement_files=(), constraints=(),
                                             packages=("withextra[bar]", "tinyextra"), wheels_dir=local))
    assert closure(venv_python, [("withextra", ["bar"])]) == {"tinybar": "2.0", "tinydep": "1.0", "withextra": "1.0"}
    assert closure(venv_python, [("withextra", [])]) == {"tinydep": "1.0", "withextra": "1.0"}
    assert installed_versions(venv_python, ["tinydep", "torch"]) == {"tinydep": "1.0"}
