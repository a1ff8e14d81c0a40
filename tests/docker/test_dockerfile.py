"""The Dockerfile, read as data: what it copies, runs, mounts and sets must be real and safe."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import PurePosixPath

import pytest

from rp_handler.config import ALL_ENV
from tests.docker.dockerfile_model import (
    REPO_ROOT,
    ancestry,
    dockerignore_rules,
    effective_env,
    in_context,
    load,
    stage_map,
)

MODES = ("baked", "hybrid", "volume")
VENV = "/opt/venv"  # the version's own packages, on top of the shared /opt/python
REALIZE_STAGE = {"baked": "realize-baked", "hybrid": "realize-hybrid"}
# Variables the image sets for tools, not for the project (docs/runpod.md lists them).
TOOL_ENV = {
    "DEBIAN_FRONTEND", "LANG", "PATH", "PYTHONUNBUFFERED", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "HF_HOME",
}
SECRET_WORDS = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|PRIVATE_KEY", re.I)
PROJECT_NAMES = {var.name for var in ALL_ENV}


@pytest.fixture(scope="module")
def dockerfile():
    return load()


@pytest.fixture(scope="module")
def stages(dockerfile):
    return dockerfile[1]


def _missing(rels: list[str]) -> None:
    """Fail for any path the Dockerfile needs that is not in the repo."""
    missing = [rel for rel in dict.fromkeys(rels) if not (REPO_ROOT / rel).exists()]
    assert not missing, f"the Dockerfile needs paths that are not in the repo: {missing}"


def _shell_words(ins) -> list[str]:
    return shlex.split(ins.body.replace("\\\n", " "), comments=False)


def test_final_stages_exist_and_baked_is_the_default(stages):
    names = [s.name for s in stages]
    for mode in MODES:
        assert mode in names, f"no final stage '{mode}'"
    assert names[-1] == "baked", "the last stage is what a plain `docker build` gives: keep it baked"


def test_final_stages_hold_no_compilers_or_build_context(stages):
    by_name = stage_map(stages)
    for mode in MODES:
        chain = [s.name for s in ancestry(by_name[mode], stages)]
        assert chain == [mode, "base"], f"{mode} must be FROM base only, not {chain}"
        for ins in by_name[mode].of("COPY") + by_name[mode].of("ADD"):
            assert ins.name == "COPY" and ins.flag_values("from"), (
                f"line {ins.line}: final stages copy built trees from other stages only"
            )
        assert not by_name[mode].of("RUN"), f"{mode}: no RUN in a final stage (do the work in a build stage)"
    base_runs = " ".join(i.body for i in by_name["base"].of("RUN"))
    assert "build-essential" not in base_runs and "gcc" not in base_runs


def test_copy_sources_exist_and_survive_dockerignore(stages):
    rules = dockerignore_rules()
    sources = []
    for stage in stages:
        for ins in stage.of("COPY") + stage.of("ADD"):
            if ins.flag_values("from"):
                continue
            words = json.loads(ins.body) if ins.body.startswith("[") else ins.body.split()
            sources += [w.rstrip("/") for w in words[:-1]]
    assert sources, "no COPY from the build context at all?"
    blocked = [src for src in sources if src != "." and not in_context(src, rules)]
    assert not blocked, f".dockerignore excludes what the Dockerfile copies: {blocked}"
    _missing([src for src in sources if src != "."])


def test_copy_from_names_a_stage_and_its_path_is_made_there(stages):
    names = {s.name for s in stages}
    rules = dockerignore_rules()
    from_app = []
    for stage in stages:
        for ins in stage.of("COPY"):
            for src_stage in ins.flag_values("from"):
                assert src_stage in names, f"line {ins.line}: --from={src_stage} is not a stage"
                src = ins.body.split()[0]
                if src_stage == "app" and src != "/app":
                    rel = src.removeprefix("/app/")
                    assert in_context(rel + "/__init__.py", rules), f"line {ins.line}: {rel} is not in the context"
                    from_app.append(rel)
    _missing(from_app)


def test_context_needs_of_the_image_are_in_context_and_tests_are_not():
    rules = dockerignore_rules()
    for rel in ("rp_handler/config.py", "builder/config.py", "scripts/version.py", "versions/x.json",
                "test_input.json", "requirements/runtime.lock", "workflows/sdxl_txt2img.json"):
        assert in_context(rel, rules), f"{rel} must reach the build context"
    for rel in ("tests/conftest.py", ".git/HEAD", ".venv/bin/python", "docs/runpod.md", "bench/x.py",
                "rp_handler/__pycache__/config.cpython-311.pyc", "volume/builds/x", "scripts/test.sh"):
        assert not in_context(rel, rules), f"{rel} must stay out of the build context"


def test_run_lines_call_real_entry_points(stages):
    called_scripts, modules, realize_seen = [], [], False
    for stage in stages:
        for ins in stage.of("RUN"):
            words = _shell_words(ins)
            for i, word in enumerate(words[:-1]):
                if word not in ("python3", "python"):
                    continue
                nxt = words[i + 1]
                if nxt == "-m":
                    modules.append(words[i + 2])
                elif nxt.endswith(".py"):
                    called_scripts.append(nxt)
                    if nxt == "scripts/version.py":
                        assert words[i + 2] == "realize", f"line {ins.line}: only `realize` runs at build"
                        realize_seen = True
    assert realize_seen, "no RUN calls scripts/version.py realize"
    for mod in modules:
        assert importlib.util.find_spec(mod) is not None, f"RUN calls python3 -m {mod}: no such module"
    cli = REPO_ROOT / "builder" / "cli.py"
    if cli.exists():
        assert re.search(r"['\"]realize['\"]", cli.read_text()), "builder/cli.py has no `realize` subcommand"
    _missing(sorted(set(called_scripts)) + ["builder/cli.py"])


def test_realize_runs_exactly_the_builder_cli(stages):
    by_name = stage_map(stages)
    for mode, stage_name in REALIZE_STAGE.items():
        stage = by_name[stage_name]
        assert any(i.body.startswith("VERSION_ID") for i in stage.of("ARG")), f"{stage_name}: ARG VERSION_ID"
        env = effective_env(stage, stages)
        runs = [i for i in stage.of("RUN") if "scripts/version.py realize" in i.body]
        assert len(runs) == 1, f"{stage_name}: one realize RUN"
        words = _shell_words(runs[0])
        args = words[words.index("realize") + 1:]
        assert args[0].startswith("${VERSION_ID")
        options = args[1:]
        flags = {o for o in options if o.startswith("--")}
        allowed = {"--target", "--offline", "--wheels-dir", "--dry-run", "--skip-models", "--installer"}
        assert flags <= allowed, options
        # uv does not count the packages of a --system-site-packages venv's base as installed: pip does
        assert options[options.index("--installer") + 1] == "pip", "realize into the venv with pip"
        assert options[options.index("--target") + 1] == env["COMFY_HOME"], "--target must equal COMFY_HOME"
        assert ("--skip-models" in flags) == (mode == "hybrid"), "only hybrid leaves the models out"
        cli = REPO_ROOT / "builder" / "cli.py"
        if cli.exists():
            for flag in flags:
                assert f'"{flag}"' in cli.read_text(), f"builder/cli.py has no realize option {flag}"


def _under(path: str, root: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(root) or PurePosixPath(root) in PurePosixPath(path).parents


def test_realized_files_land_in_the_layer_not_in_a_cache_mount(stages):
    """Cache mounts vanish after the RUN: whatever must be in the image lies outside them."""
    by_name = stage_map(stages)
    for mode, stage_name in REALIZE_STAGE.items():
        stage = by_name[stage_name]
        env = effective_env(stage, stages)
        run = next(i for i in stage.of("RUN") if "scripts/version.py realize" in i.body)
        caches = [m["target"] for m in run.mounts() if m.get("type") == "cache"]
        assert caches, f"{stage_name}: realize without cache mounts re-downloads everything"
        root = env["COMFY_CACHE_ROOT"]
        kept = [env["COMFY_HOME"], f"{root}/resolved", root]
        if mode == "baked":
            kept.append(env["MODELS_DIR"])
            assert f"{root}/store" in caches, "the model store should be a cache mount"
        for path in kept:
            assert not any(_under(path, c) for c in caches), f"{stage_name}: {path} lies in a cache mount"
        assert f"{root}/git" in caches, "the git object cache should be a cache mount"
        # The RUN after realize has no mounts and rejects links that would dangle without them.
        after = stage.of("RUN")[stage.of("RUN").index(run) + 1]
        assert not after.mounts() and "-xtype l" in after.body and "exit 1" in after.body
        for path in [VENV, env["COMFY_HOME"], root] + ([env["MODELS_DIR"]] if mode == "baked" else []):
            assert path in after.body.split("-xtype")[0], f"{stage_name}: {path} not checked for dangling links"
            assert path in after.body.split("-perm")[0].split("-xtype")[1], f"{stage_name}: {path} not made o-w"
        assert env["COMFY_PYTHON"] == f"{VENV}/bin/python3" and env["PATH"].startswith(f"{VENV}/bin:")
        if mode == "baked":  # the final stage copies MODELS_DIR even for a spec without models
            assert f"mkdir -p {env['MODELS_DIR']}" in after.body


def test_final_stage_paths_match_the_stage_that_realized_them(stages):
    by_name = stage_map(stages)
    for mode, stage_name in REALIZE_STAGE.items():
        built = effective_env(by_name[stage_name], stages)
        final = effective_env(by_name[mode], stages)
        for name in ("COMFY_HOME", "MODELS_DIR", "COMFY_CACHE_ROOT", "VERSIONS_DIR"):
            assert final.get(name) == built.get(name), f"{mode}: {name} differs from {stage_name}"
        assert "VERSIONS_DIR" not in final, "the image's specs are /app/versions, the ones realize used"
        copied = {i.body.split()[0] for i in by_name[mode].of("COPY") if i.flag_values("from") == [stage_name]}
        needed = {built["COMFY_HOME"], built["COMFY_CACHE_ROOT"], VENV}
        if mode == "baked":
            needed.add(built["MODELS_DIR"])
        assert needed == copied, f"{mode} copies {copied} from {stage_name}, not {needed}"
        assert final["COMFY_VERSION_ID"] == "${VERSION_ID}"
        assert final["COMFY_PYTHON"] == built["COMFY_PYTHON"], "ComfyUI runs in the venv realize installed into"
    volume = effective_env(by_name["volume"], stages)
    for name in ("COMFY_HOME", "MODELS_DIR", "COMFY_CACHE_ROOT"):
        assert name not in volume, f"volume mode must leave {name} to the /runpod-volume defaults"


def test_entrypoint_is_the_worker_and_test_input_is_in_the_workdir(stages):
    by_name = stage_map(stages)
    app = by_name["app"]
    assert app.of("WORKDIR")[-1].body == "/app"
    assert any(i.body.split() == [".", "/app/"] for i in app.of("COPY")), "app stage copies the context to /app"
    assert in_context("test_input.json", dockerignore_rules())
    for mode in MODES:
        stage = by_name[mode]
        (entry,) = stage.of("ENTRYPOINT")
        argv = json.loads(entry.body)
        assert argv[-3:] == ["python3", "-m", "rp_handler"], argv
        assert stage.of("WORKDIR")[-1].body == "/app", "test_input.json is read from the working directory"
        assert any(i.flag_values("from") == ["app"] and i.body.split() == ["/app", "/app"]
                   for i in stage.of("COPY")), f"{mode} must copy /app"
        assert not stage.of("CMD"), "arguments (e.g. --rp_serve_api) come from docker run / compose"
    assert (REPO_ROOT / "rp_handler" / "__init__.py").exists()
    _missing(["rp_handler/__main__.py", "test_input.json"])


def test_no_secret_in_arg_env_or_any_instruction_but_a_secret_mount(dockerfile):
    global_ins, stages = dockerfile
    everything = global_ins + [i for s in stages for i in s.instructions]
    for ins in everything:
        if ins.name in ("ARG", "ENV", "LABEL"):
            pairs = parse_pairs(ins)
            for name, value in pairs.items():
                assert not SECRET_WORDS.search(name), f"line {ins.line}: {ins.name} {name} looks like a secret"
                assert not re.search(r"hf_[A-Za-z0-9]{20,}", value), f"line {ins.line}: a token value"
    mentions = [i for i in everything if re.search(r"HF_TOKEN|CIVITAI_TOKEN", i.value)]
    assert mentions, "the realize RUN should receive the tokens through secret mounts"
    for ins in mentions:
        assert ins.name == "RUN", f"line {ins.line}: tokens may appear only in a RUN's secret mounts"
        secret_envs = {m.get("env") for m in ins.mounts() if m.get("type") == "secret"}
        assert {"HF_TOKEN", "CIVITAI_TOKEN"} <= secret_envs
        for name in ("HF_TOKEN", "CIVITAI_TOKEN"):
            assert name not in ins.body, f"line {ins.line}: {name} used in the command itself"
        for m in ins.mounts():
            if m.get("type") == "secret":
                assert m["id"] in {"hf_token", "civitai_token"} and "required" not in m


def parse_pairs(ins) -> dict[str, str]:
    text = ins.body.replace("\\\n", " ")
    out = {}
    for tok in shlex.split(text):
        name, _, value = tok.partition("=")
        out[name] = value
    return out


def test_image_env_names_are_documented_project_vars_or_tool_vars(stages):
    tool_prefixes = ("UV_", "PIP_")
    for stage in stages:
        for name in stage.env():
            if name in PROJECT_NAMES or name in TOOL_ENV or name.startswith(tool_prefixes):
                continue
            pytest.fail(f"stage {stage.name}: ENV {name} is neither in rp_handler.config.ALL_ENV nor a tool variable")


def test_torch_is_constrained_for_every_later_install(stages):
    base_env = stage_map(stages)["base"].env()
    assert base_env["UV_CONSTRAINT"] == base_env["PIP_CONSTRAINT"] == "/etc/comfy/constraints.txt"
    deps_runs = " ".join(i.body for i in stage_map(stages)["deps"].of("RUN"))
    assert "/etc/comfy/constraints.txt" in deps_runs and "torch==" in deps_runs


def _module_level_imports(path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # module level only: imports inside functions are lazy
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_realize_stage_copies_every_package_the_builder_imports(stages):
    """The realize stages copy builder/ but not the worker, so a worker change never re-realizes;
    that holds only while the builder imports the worker lazily (inside functions)."""
    by_name = stage_map(stages)
    local = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").exists()}
    for stage_name in REALIZE_STAGE.values():
        copied = {i.body.split()[0].strip("/").split("/")[0] for i in by_name[stage_name].of("COPY")
                  if not i.flag_values("from")}
        for path in sorted((REPO_ROOT / "builder").rglob("*.py")) + [REPO_ROOT / "scripts" / "version.py"]:
            if not path.exists():
                continue
            needed = _module_level_imports(path) & local
            assert needed <= copied, (
                f"{path.relative_to(REPO_ROOT)} imports {sorted(needed - copied)} at module level, which "
                f"{stage_name} does not copy: import it inside the function that needs it, or COPY it"
            )


def test_every_top_level_package_reaches_the_image():
    rules = dockerignore_rules()
    not_shipped = {"tests", "bench"}
    for pkg in sorted(p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").exists()):
        if pkg in not_shipped:
            continue
        assert in_context(f"{pkg}/__init__.py", rules), f"package {pkg}/ is left out by .dockerignore"


def test_docs_describe_every_final_layer_and_build_arg(dockerfile):
    global_ins, stages = dockerfile
    doc = (REPO_ROOT / "docs" / "runpod.md").read_text()
    by_name = stage_map(stages)
    for mode in MODES:
        assert f"**{mode}**" in doc, f"docs/runpod.md does not describe mode {mode}"
        for ins in by_name[mode].of("COPY"):
            dest = ins.body.split()[-1]
            assert f"`{dest}`" in doc, f"docs/runpod.md's layer table does not mention {dest} ({mode})"
    args = {i.body.split("=")[0] for s in stages for i in s.of("ARG")} | {i.body.split("=")[0] for i in global_ins}
    for arg in sorted(args):
        assert f"`{arg}`" in doc, f"build arg {arg} is not documented in docs/runpod.md"


@pytest.mark.parametrize("stage_name", sorted(REALIZE_STAGE.values()))
def test_post_realize_check_runs_and_rejects_dangling_links(stages, stage_name, tmp_path):
    """Run the RUN line that follows realize, with its paths moved under tmp_path."""
    import os
    import subprocess
    import sys

    stage = stage_map(stages)[stage_name]
    runs = stage.of("RUN")
    body = next(runs[i + 1] for i, r in enumerate(runs) if "scripts/version.py realize" in r.body).body
    for path in (VENV, "/opt/comfy", "/opt/models", "/opt/cache"):
        (tmp_path / path.strip("/")).mkdir(parents=True, exist_ok=True)
        body = body.replace(path, str(tmp_path / path.strip("/")))
    assert not re.search(r"(?<![\w/.-])/opt/", body), body
    (tmp_path / "opt/comfy/main.py").write_text("print('comfy')\n")
    (tmp_path / "opt/venv/.lock").write_text("")
    os.chmod(tmp_path / "opt/venv/.lock", 0o666)  # as uv leaves its lock files
    os.chmod(tmp_path / "opt/cache", 0o777)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def run():
        return subprocess.run(["bash", "-o", "pipefail", "-c", body], capture_output=True, text=True,
                              env=env, timeout=120)

    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "opt/venv/.lock").stat().st_mode & 0o777 == 0o664, "world-writable files stay"
    assert (tmp_path / "opt/cache").stat().st_mode & 0o777 == 0o775
    (tmp_path / "opt/cache/store").mkdir()
    (tmp_path / "opt/cache/store/blob").write_text("x")
    os.symlink(tmp_path / "opt/cache/store/blob", tmp_path / "opt/comfy/model.safetensors")
    assert run().returncode == 0, "a live link is fine"
    (tmp_path / "opt/cache/store/blob").unlink()  # the cache mount is gone after the RUN
    bad = run()
    assert bad.returncode == 1
    assert "model.safetensors" in bad.stderr and "dangle" in bad.stderr


def test_versions_share_every_layer_but_their_own(stages):
    """/opt/python (torch, the worker's and ComfyUI's requirements), /etc/comfy and /app come from stages
    that do not depend on VERSION_ID, and before the version's own layers."""
    by_name = stage_map(stages)
    shared = [("deps", "/opt/python"), ("deps", "/etc/comfy"), ("app", "/app")]
    for mode in MODES:
        copies = [(i.flag_values("from")[0], i.body.split()[0]) for i in by_name[mode].of("COPY")]
        assert copies[:3] == shared, f"{mode}: the shared layers first, then the version's: {copies}"
        assert all("--link" in i.value for i in by_name[mode].of("COPY")), f"{mode}: COPY --link keeps layers independent"
    for name in ("deps", "app"):
        for stage in ancestry(by_name[name], stages):
            assert not any(i.body.startswith("VERSION_ID") for i in stage.of("ARG")), f"{stage.name} depends on the version"
    deps_runs = " ".join(i.body for i in by_name["deps"].of("RUN"))
    assert "comfyui.lock" in deps_runs and "runtime.lock" in deps_runs
    assert "compileall" in deps_runs and 'get_paths()["stdlib"]' in deps_runs.split("compileall", 1)[1]


def test_no_world_writable_paths_reach_a_final_image(stages):
    by_name = stage_map(stages)
    deps_runs = " ".join(i.body for i in by_name["deps"].of("RUN"))
    assert "rm -rf /opt/python/.lock /opt/python/.temp /opt/python/.cache" in deps_runs, "uv's lock and temp dirs"
    for name in ("deps", "app", *REALIZE_STAGE.values()):
        last = by_name[name].of("RUN")[-1].body
        assert "-perm -o+w ! -type l -exec chmod o-w {} +" in last, f"{name}: its last RUN clears o+w"


def test_the_dockerfile_needs_no_frontend_image(dockerfile):
    """No `# syntax=` line: an offline builder uses its own frontend (build_docker.sh checks its age)."""
    first = (REPO_ROOT / "Dockerfile").read_text().splitlines()[0]
    assert not first.lower().startswith("# syntax"), first
    assert "BuildKit 0.16" in (REPO_ROOT / "Dockerfile").read_text()


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_comfyui_lock_agrees_with_runtime_lock():
    """The image installs comfyui.lock constrained by runtime.lock: a package pinned in both must agree."""
    runtime = _pins(REPO_ROOT / "requirements" / "runtime.lock")
    comfy = _pins(REPO_ROOT / "requirements" / "comfyui.lock")
    assert comfy, "requirements/comfyui.lock has no pins"
    differ = {n: (comfy[n], runtime[n]) for n in comfy.keys() & runtime.keys() if comfy[n] != runtime[n]}
    assert not differ, (f"comfyui.lock and runtime.lock pin different versions {differ}: regenerate comfyui.lock "
                        "(the command is at the top of requirements/comfyui.in)")
    assert not {"torch", "torchvision", "torchaudio"} & comfy.keys(), "torch comes from TORCH_INDEX_URL, not the lock"
