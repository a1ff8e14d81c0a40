"""Bad input never breaks the worker or the builder: only clear one-line errors, never a traceback.

Property-based fuzzing (hypothesis) of job inputs through the real handler with a fake ComfyUI and
of version specs through the builder's validation; path traversal in every file name field; huge
base64 and deeply nested JSON. (URLs to private addresses: test_ssrf.py.)
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.config import BuildConfig
from builder.errors import BuildError, ModelSpecError, SpecError
from builder.models.plan import plan, plan_entry
from builder.spec import model_target, validate
from rp_handler.errors import InputError
from rp_handler.handler import handle
from rp_handler.inputs import rewrite_workflow
from rp_handler.job import Action, Job, parse_job
from rp_handler.outputs import LocalSink, OutputFile, local_path
from rp_handler.templates import expand_template
from tests.fakes.comfyui.pngfile import Image, encode_png
from tests.faults.harness import half_written
from tests.worker.conftest import make_cfg

PNG = encode_png(Image(4, 4, bytes([9, 8, 7]) * 16))
PNG_B64 = base64.b64encode(PNG).decode()
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

TRAVERSAL = ["../x.png", "..", "../../../../etc/passwd", "/etc/passwd", "a/../../b.png", "..\\..\\x.png",
             "C:\\x.png", "x/../../y", "./../x", "%2e%2e/x", "\x00x.png", "ok.png\x00../", "~/x.png", ".hidden",
             "a/b.png", "\\\\server\\share\\x"]

# ------------------------------------------------------------------------ strategies
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                         max_size=4), max_leaves=12)
classes = st.sampled_from(["EmptyImage", "ImageInvert", "SaveImage", "PreviewImage", "LoadImage", "ImageScale",
                           "CheckpointLoaderSimple", "KSampler", "NoSuchNode"]) | st.text(max_size=10)
input_keys = st.sampled_from(["width", "height", "batch_size", "color", "images", "image", "filename_prefix",
                              "steps", "seed", "ckpt_name", "upscale_method", "crop"]) | st.text(max_size=6)
links = st.tuples(st.sampled_from(["1", "2", "3"]) | st.text(max_size=3), st.integers(-1, 3)).map(list)
input_values = (st.integers(-5, 5000) | st.sampled_from(TRAVERSAL + ["ComfyUI", "in.png", "nearest-exact"])
                | links | json_values)
nodes = st.fixed_dictionaries({"class_type": classes,
                               "inputs": st.dictionaries(input_keys, input_values, max_size=5)})
node_ids = st.sampled_from(["1", "2", "3"]) | st.text(max_size=4)
workflows = st.dictionaries(node_ids, nodes | json_values, max_size=4)
# Only URLs the guard refuses before any DNS: fuzzing must never make the worker resolve a real name.
image_values = (st.sampled_from([PNG_B64, "data:image/png;base64," + PNG_B64, "data:image/png,xx", "!!notbase64",
                                 "", "https://127.0.0.1/x.png", "https://169.254.169.254/", "http://10.0.0.1/a",
                                 "https://[::1]/x", "https://localhost/x", "ftp://x/y", "https://u:p@127.0.0.1/"])
                | st.text(max_size=20).filter(lambda t: "://" not in t) | json_values)
images = st.fixed_dictionaries({"name": st.sampled_from(TRAVERSAL + ["in.png"]) | st.text(max_size=10) | json_values,
                                "image": image_values})
outputs = (st.sampled_from(["base64", "local", "gcs", "nope", ""]) | json_values
           | st.fixed_dictionaries({}, optional={"mode": st.sampled_from(["base64", "local", "gcs"]) | json_values,
                                                 "prefix": st.sampled_from(TRAVERSAL + ["team/out"]) | json_values,
                                                 "bucket": st.text(max_size=8) | json_values}))
job_inputs = st.fixed_dictionaries({}, optional={
    "workflow": workflows | workflows.map(json.dumps) | json_values,
    "images": st.lists(images | json_values, max_size=3) | json_values,
    "output": outputs,
    "timeout_s": st.floats(min_value=0.05, max_value=5) | st.floats() | st.integers() | json_values,
    "action": st.sampled_from(["status", "nope"]) | json_values,
}) | json_values


def assert_clear(result: dict) -> None:
    assert isinstance(result, dict)
    json.dumps(result)  # a RunPod result must be JSON
    if "error" in result:
        err = result["error"]
        assert isinstance(err, str) and err and "\n" not in err and "Traceback" not in err, err
        code = result["details"]["code"]
        assert code != "internal", f"an internal error escaped: {err}"
    else:
        assert "outputs" in result or "status" in result, result


# ------------------------------------------------------------------------ fuzzing
@pytest.mark.slow
@FUZZ
@given(raw=job_inputs)
def test_fuzzed_job_inputs_through_the_handler(comfy_ctx, raw):
    result = handle({"id": "fuzz", "input": raw}, comfy_ctx)
    assert_clear(result)
    left = half_written(comfy_ctx.dirs.input, comfy_ctx.dirs.output, comfy_ctx.dirs.temp)
    assert not left, left


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=job_inputs)
def test_fuzzed_job_inputs_through_the_validator(raw):
    cfg = make_cfg(None)
    try:
        parsed = parse_job("fuzz", raw, cfg)
    except InputError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert isinstance(parsed, (Job, Action))


repo_urls = st.sampled_from(["https://github.com/comfyanonymous/ComfyUI", "file:///tmp/x.git", "git@h:o/r.git",
                             "../rel", "not a url", "https://x/..", "https://x/org/..", ""]) | json_values
model_entries = st.fixed_dictionaries({"source": st.sampled_from(["https://e.com/a.bin", "hf://o/r/f.bin",
                                                                  "gs://b/o.bin", "/abs/m.bin", "civitai:1"])
                                       | json_values}, optional={
    "target_subdir": st.sampled_from(TRAVERSAL + ["loras"]) | json_values,
    "target_path": st.sampled_from(TRAVERSAL + ["$MODELS_DIR/../x", "$COMFY_HOME/../x", "loras/", "vae/v.bin"])
    | json_values,
    "name": st.sampled_from(TRAVERSAL + ["m.safetensors"]) | json_values,
    "checksum": st.sampled_from(["sha256:" + "a" * 64, "md5:" + "b" * 32, "sha1:x"]) | json_values})
specs = st.fixed_dictionaries({"schema_version": st.sampled_from([2, 1, "2"]),
                               "version_id": st.sampled_from(["v1", "../v", ""]) | st.text(max_size=8)},
                              optional={
    "comfy": st.fixed_dictionaries({"repo": repo_urls}, optional={"ref": st.text(max_size=8) | json_values,
                                                                  "commit": st.text(max_size=8) | json_values}),
    "custom_nodes": st.lists(st.fixed_dictionaries({"repo": repo_urls}, optional={
        "name": st.sampled_from(TRAVERSAL + ["Node"]) | json_values, "ref": st.text(max_size=6),
        "run_install_py": json_values}), max_size=3) | json_values,
    "models": st.lists(model_entries | json_values, max_size=3) | json_values,
    "python_packages": st.lists(st.text(max_size=12), max_size=3) | json_values,
    "pip_constraints": st.lists(st.text(max_size=12), max_size=3) | json_values,
    "env": st.dictionaries(st.text(max_size=6), json_values, max_size=3) | json_values,
    "options": st.dictionaries(st.sampled_from(["offline", "pin_installed", "pip_index_url", "x"]), json_values,
                               max_size=3) | json_values,
}) | json_values


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=specs)
def test_fuzzed_specs_give_only_spec_errors(data):
    try:
        spec = validate(data, "fuzz.json")
    except SpecError as err:
        assert str(err) and "\n" not in str(err) and err.problems
        return
    for entry in spec.models:  # a valid spec's model targets stay inside the models dir / COMFY_HOME
        target = model_target(entry)
        assert target is not None and ".." not in target.split("/") and not target.startswith(("/", "~"))


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(model_entries | json_values, max_size=3))
def test_fuzzed_model_entries_plan_or_refuse(entries, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "plan-fuzz"
    cfg = BuildConfig.from_env({"HOME": str(root), "COMFY_CACHE_ROOT": str(root / "c")}, container=False,
                               volume_root=root / "nv")
    models = root / "models"
    try:
        tasks = plan(entries if isinstance(entries, list) else [entries], cfg=cfg, models_dir=models,
                     comfy_home=root / "ComfyUI")
    except ModelSpecError as err:
        assert str(err) and "\n" not in str(err)
        return
    for t in tasks:
        if not Path(str(entries[t.index].get("target_path", ""))).is_absolute():
            norm = os.path.normpath(t.target)
            assert norm.startswith(str(models) + os.sep) or norm.startswith(str(root / "ComfyUI") + os.sep), t.target


# ------------------------------------------------------------------------ path traversal
@pytest.mark.parametrize("name", TRAVERSAL)
def test_traversal_in_image_name_is_refused(name):
    with pytest.raises(InputError) as exc:
        parse_job("t", {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": name}}},
                        "images": [{"name": name, "image": PNG_B64}]}, make_cfg(None))
    assert "images[0].name" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("prefix", [p for p in TRAVERSAL if p not in ("a/b.png",)])
def test_traversal_in_output_prefix_is_refused_or_stays_inside(prefix, tmp_path):
    cfg = make_cfg(tmp_path, OUTPUT_LOCAL_DIR=str(tmp_path / "out"))
    try:
        job = parse_job("t", {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}},
                              "output": {"mode": "local", "prefix": prefix}}, cfg)
    except InputError as err:
        assert "output.prefix" in str(err)
        return
    sink = LocalSink(Path(job.output.local_dir), "t", job.output.prefix)  # e.g. '/etc/passwd' → 'etc/passwd'
    item = OutputFile(node="1", kind="images", index=0, filename="x.png", subfolder="", type="output")
    written = Path(sink.put(item, b"x")["path"]).resolve()
    assert written.is_relative_to((tmp_path / "out").resolve()), written


@pytest.mark.parametrize("prefix", ["../../../escape", "/abs/escape", "..\\..\\escape", "a/../../../escape"])
def test_traversal_in_filename_prefix_stays_in_the_job_folder(comfy_ctx, fake_comfy, prefix):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 5}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}
    assert rewrite_workflow(wf, {}, "jobs/x")["2"]["inputs"]["filename_prefix"].startswith("jobs/x/")
    before = set(fake_comfy.root.parent.rglob("*"))
    res = handle({"id": "trav", "input": {"workflow": wf}}, comfy_ctx)
    assert "error" not in res, res
    [out] = res["outputs"]
    assert "escape" in out["filename"] or out["filename"].endswith(".png")
    new = {p for p in set(fake_comfy.root.parent.rglob("*")) - before if p.is_file()}
    assert not new, f"files left or written outside the job folder: {new}"


@pytest.mark.parametrize("filename,subfolder", [("../../../evil.png", ""), ("evil.png", "../../.."),
                                                ("..\\..\\evil.png", ""), ("/etc/evil.png", "")])
def test_output_names_from_comfyui_cannot_escape_the_sink(tmp_path, filename, subfolder):
    """A custom node may report any filename/subfolder: reading and writing stay inside their folders."""
    out_dir, sink_dir = tmp_path / "comfy-out", tmp_path / "sink"
    out_dir.mkdir()
    item = OutputFile(node="../../n", kind="images", index=0, filename=filename, subfolder=subfolder, type="output")
    path = local_path(item, output_dir=out_dir, temp_dir=tmp_path / "temp")
    assert path is None or path.is_relative_to(out_dir.resolve())
    res = LocalSink(sink_dir, "job-1").put(item, b"data")
    written = Path(res["path"]).resolve()
    assert written.is_relative_to(sink_dir.resolve()) and written.read_bytes() == b"data"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [written]


@pytest.mark.parametrize("value", [v for v in TRAVERSAL if v not in (".hidden", "a/b.png", "%2e%2e/x", "~/x.png",
                                                                     "\x00x.png", "ok.png\x00../")])
def test_traversal_in_template_image_param_is_refused(value):
    with pytest.raises(InputError) as exc:
        expand_template("sd15_img2img", {"image": value})
    assert "image" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("field,value", [("target_path", "../../etc/x.bin"), ("target_path", "$MODELS_DIR/../../x"),
                                         ("target_path", "$COMFY_HOME/../x.bin"), ("target_path", "/etc/x.bin"),
                                         ("target_path", "~/x.bin"), ("target_subdir", "../.."),
                                         ("target_subdir", "/etc"), ("name", ".."), ("name", "../x.bin"),
                                         ("name", "a/b.bin")])
def test_traversal_in_model_fields_is_refused(field, value, tmp_path):
    entry = {"source": "https://e.com/m.bin", field: value}
    spec = {"schema_version": 2, "version_id": "v1", "comfy": {"repo": "https://github.com/o/ComfyUI", "ref": "v1"},
            "models": [entry]}
    with pytest.raises(SpecError) as exc:
        validate(spec, "v1.json")
    assert "models[0]" in str(exc.value) and "\n" not in str(exc.value)
    cfg = BuildConfig.from_env({"HOME": str(tmp_path), "COMFY_CACHE_ROOT": str(tmp_path / "c")}, container=False,
                               volume_root=tmp_path / "nv")
    if value.startswith("/"):
        return  # absolute targets are explicit (lock records); the spec refuses them above
    try:
        task = plan_entry(entry, 0, cfg=cfg, models_dir=tmp_path / "models", comfy_home=tmp_path / "ComfyUI")
    except ModelSpecError as err:
        assert "\n" not in str(err)
    else:
        norm = os.path.normpath(task.target)
        assert norm.startswith(str(tmp_path / "models") + os.sep), f"{field}={value!r} planned to {task.target}"


@pytest.mark.parametrize("name", ["../evil", "..", "a/b", "/abs", ".hidden", "x\x00y", "..\\evil"])
def test_traversal_in_custom_node_name_is_refused(name):
    spec = {"schema_version": 2, "version_id": "v1", "comfy": {"repo": "https://github.com/o/ComfyUI", "ref": "v1"},
            "custom_nodes": [{"repo": "https://github.com/o/Node", "ref": "main", "name": name}]}
    with pytest.raises(SpecError) as exc:
        validate(spec, "v1.json")
    assert "custom_nodes[0].name" in str(exc.value)


def test_custom_node_name_from_a_traversal_repo_url_is_refused():
    spec = {"schema_version": 2, "version_id": "v1", "comfy": {"repo": "https://github.com/o/ComfyUI", "ref": "v1"},
            "custom_nodes": [{"repo": "https://github.com/o/..", "ref": "main"}]}
    with pytest.raises(BuildError):
        validate(spec, "v1.json")


# ------------------------------------------------------------------------ size and depth
@pytest.mark.slow
def test_100_mb_of_base64_is_refused_without_decoding(comfy_ctx):
    big = "A" * (100 * 2**20)
    for value in (big, "data:image/png;base64," + big):
        res = handle({"id": "big", "input": {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}},
                                             "images": [{"name": "big.png", "image": value}]}}, comfy_ctx)
        assert res["details"]["code"] == "invalid_input" and "MAX_INPUT_BYTES" in res["error"], res["error"]
        assert "\n" not in res["error"]
    assert not half_written(comfy_ctx.dirs.input)


@pytest.mark.slow
def test_100_mb_of_base64_under_a_raised_limit_is_staged_and_removed(fake_comfy, tmp_path):
    from tests.faults.conftest import context_for

    ctx = context_for(fake_comfy, tmp_path, MAX_INPUT_BYTES=str(120 * 2**20))
    try:
        wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "big"}}}
        res = handle({"id": "big2", "input": {"workflow": wf, "images": [{"name": "big.png",
                                                                          "image": "A" * (100 * 2**20)}]}}, ctx)
        assert "error" not in res, res
        assert not [p for p in (fake_comfy.input_dir / "jobs").rglob("*") if p.is_file()]
    finally:
        ctx.close()


def _deep(depth: int, leaf=1):
    value = leaf
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("where", ["node_input", "workflow_string", "images", "output", "timeout_s", "action",
                                   "top"])
def test_deeply_nested_json_is_a_clear_error(comfy_ctx, where):
    deep = _deep(100_000)
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}}
    inputs = {
        "node_input": {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": deep}}}},
        "workflow_string": {"workflow": "[" * 100_000 + "]" * 100_000},
        "images": {"workflow": wf, "images": deep},
        "output": {"workflow": wf, "output": {"mode": deep}},
        "timeout_s": {"workflow": wf, "timeout_s": deep},
        "action": {"action": deep},
        "top": deep,
    }[where]
    res = handle({"id": "deep", "input": inputs}, comfy_ctx)
    assert res["details"]["code"] == "invalid_input", res
    assert "\n" not in res["error"] and len(res["error"]) <= 500
