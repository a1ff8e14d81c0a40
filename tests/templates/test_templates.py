"""Templates: every shipped template expands into a workflow a real ComfyUI would accept."""

from __future__ import annotations

import json
import random

import pytest

from rp_handler.errors import InputError
from rp_handler.templates import TemplateError, expand_template, load_templates
from tests.templates.objinfo import object_info, validate

EXPECTED = {"sd15_txt2img", "sdxl_txt2img", "sd15_img2img", "upscale", "flux_txt2img", "cpu_invert"}
TEMPLATES = load_templates()


def _defaults(tpl) -> dict:
    # image params have no default: give them an uploaded image's name
    return {n: "job-1/input.png" for n, p in tpl.params.items() if p.required}


def _file_inputs(tpl) -> set[tuple[str, str]]:
    return {(t.node, t.input) for p in tpl.params.values() if p.type in ("model", "image") for t in p.targets}


def test_all_expected_templates_ship():
    assert EXPECTED <= set(TEMPLATES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_expands_with_defaults_and_validates_against_object_info(name):
    tpl = TEMPLATES[name]
    workflow, used = expand_template(name, _defaults(tpl), rng=random.Random(1))
    assert validate(workflow, skip_combo=_file_inputs(tpl)) == []
    assert set(used) == set(tpl.params)
    for pname, p in tpl.params.items():
        for t in p.targets:
            assert workflow[t.node]["inputs"][t.input] == used[pname]
    # the stored template is not modified by expanding it
    assert workflow is not tpl.workflow


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_param_at_its_bounds_still_validates(name):
    tpl = TEMPLATES[name]
    for pname, p in tpl.params.items():
        for value in (p.min, p.max):
            if value is None or (p.random_if is not None and value == p.random_if):
                continue
            if p.multiple_of:
                value = value - value % p.multiple_of if value == p.max else value + (-value) % p.multiple_of
            params = {**_defaults(tpl), pname: value}
            workflow, used = expand_template(name, params, rng=random.Random(0))
            assert used[pname] == value
            assert validate(workflow, skip_combo=_file_inputs(tpl)) == [], (pname, value)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_choices_are_real_combo_values(name):
    info = object_info()
    tpl = TEMPLATES[name]
    for p in tpl.params.values():
        if p.choices is None:
            continue
        for t in p.targets:
            cls = tpl.workflow[t.node]["class_type"]
            spec = info[cls]["input"]["required"][t.input]
            assert set(p.choices) <= set(spec[0]), (p.name, cls)


def test_validator_catches_broken_workflows():
    # the structural check must be able to fail, or the tests above prove nothing
    wf, _ = expand_template("sd15_txt2img", {}, rng=random.Random(0))
    assert validate(wf, skip_combo={("4", "ckpt_name")}) == []
    broken = json.loads(json.dumps(wf))
    broken["3"]["inputs"]["model"] = ["4", 1]  # CLIP into MODEL
    broken["8"]["inputs"]["samples"] = ["99", 0]
    broken["5"]["class_type"] = "EmptyLatentImageX"
    del broken["6"]["inputs"]["text"]
    broken["3"]["inputs"]["sampler_name"] = "nope"
    broken["3"]["inputs"]["steps"] = 0
    problems = "\n".join(validate(broken, skip_combo={("4", "ckpt_name")}))
    for needle in ("expects MODEL", "missing node '99'", "EmptyLatentImageX", "'text' missing", "'nope'", "below min"):
        assert needle in problems


def test_params_reach_every_target():
    wf, used = expand_template(
        "flux_txt2img", {"width": 768, "height": 1344, "prompt": "a fox", "seed": 7}, rng=random.Random(0)
    )
    assert wf["27"]["inputs"]["width"] == wf["30"]["inputs"]["width"] == 768
    assert wf["27"]["inputs"]["height"] == wf["30"]["inputs"]["height"] == 1344
    assert wf["6"]["inputs"]["text"] == "a fox"
    assert wf["25"]["inputs"]["noise_seed"] == 7 and used["seed"] == 7


def test_seed_minus_one_is_random_and_reported():
    wf, used = expand_template("sd15_txt2img", {"seed": -1}, rng=random.Random(42))
    seed = used["seed"]
    assert seed == random.Random(42).randrange(0, 2**53)
    assert wf["3"]["inputs"]["seed"] == seed >= 0
    # the default is -1 too, and two different rngs give different seeds
    _, a = expand_template("sd15_txt2img", {}, rng=random.Random(1))
    _, b = expand_template("sd15_txt2img", {}, rng=random.Random(2))
    assert a["seed"] != b["seed"]
    # without an rng a fresh one is used; still a valid seed
    _, c = expand_template("sd15_txt2img", {})
    assert 0 <= c["seed"] < 2**53


def test_numbers_given_as_strings_are_accepted():
    wf, used = expand_template("sd15_txt2img", {"steps": "30", "cfg": "6.5", "seed": "12"}, rng=random.Random(0))
    assert (used["steps"], used["cfg"], used["seed"]) == (30, 6.5, 12)
    assert isinstance(wf["3"]["inputs"]["cfg"], float)


@pytest.mark.parametrize(
    "params, needles",
    [
        ({"stepz": 20}, ["'sd15_txt2img'", "no param 'stepz'", "steps"]),
        ({"steps": 500}, ["'steps'", "500", "maximum 150", "'sd15_txt2img'"]),
        ({"steps": 0}, ["'steps'", "minimum 1"]),
        ({"cfg": 31.5}, ["'cfg'", "maximum 30"]),
        ({"width": 2048}, ["'width'", "maximum 1024"]),
        ({"width": 513}, ["'width'", "multiple of 8"]),
        ({"steps": "many"}, ["'steps'", "integer", "'many'"]),
        ({"steps": 2.5}, ["'steps'", "integer"]),
        ({"steps": True}, ["'steps'", "integer"]),
        ({"cfg": float("nan")}, ["'cfg'", "finite"]),
        ({"seed": -2}, ["'seed'", "minimum -1"]),
        ({"sampler_name": "magic"}, ["'sampler_name'", "'magic'", "euler"]),
        ({"prompt": ["a", "b"]}, ["'prompt'", "string"]),
        ({"prompt": "x" * 10001}, ["'prompt'", "maximum 10000"]),
        ({"checkpoint": "../../etc/passwd"}, ["'checkpoint'", "'..'"]),
        ({"checkpoint": "/abs/model.safetensors"}, ["'checkpoint'", "relative"]),
        ({"checkpoint": 3}, ["'checkpoint'", "models/checkpoints"]),
        ({"batch_size": 9}, ["'batch_size'", "maximum 8"]),
    ],
)
def test_bad_params_give_one_line_errors(params, needles):
    with pytest.raises(InputError) as exc:
        expand_template("sd15_txt2img", params, rng=random.Random(0))
    message = str(exc.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_unknown_template_and_bad_params_shape():
    with pytest.raises(InputError, match="unknown template 'sd3'.*sd15_txt2img"):
        expand_template("sd3", {})
    with pytest.raises(InputError, match="params must be an object"):
        expand_template("sd15_txt2img", ["prompt"])


def test_image_param_is_required_and_must_be_a_safe_name():
    with pytest.raises(InputError, match="'image' is required"):
        expand_template("sd15_img2img", {"prompt": "x"})
    with pytest.raises(InputError, match="'image'.*'..'"):
        expand_template("upscale", {"image": "../secret.png"})
    wf, used = expand_template("upscale", {"image": "job-7/photo.png", "scale_by": 0.5})
    assert wf["1"]["inputs"]["image"] == "job-7/photo.png"
    assert wf["4"]["inputs"]["scale_by"] == 0.5 and used["upscale_model"] == "RealESRGAN_x4plus.pth"


def test_cpu_invert_is_model_free():
    wf, used = expand_template("cpu_invert", {"width": 32, "height": 16, "color": 255})
    assert [n["class_type"] for n in wf.values()] == ["EmptyImage", "ImageInvert", "SaveImage"]
    assert used == {"width": 32, "height": 16, "batch_size": 1, "color": 255}
    assert TEMPLATES["cpu_invert"].models == ()


def test_describe_lists_params_with_bounds():
    d = TEMPLATES["sdxl_txt2img"].describe()
    assert d["params"]["steps"]["max"] == 150 and d["params"]["seed"]["random_if"] == -1
    assert json.loads(json.dumps(d)) == d


def _write_template(dirpath, manifest, workflow):
    (dirpath / "t.json").write_text(json.dumps(workflow))
    (dirpath / "t.manifest.json").write_text(json.dumps({"name": "t", "workflow": "t.json", **manifest}))


WF = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


@pytest.mark.parametrize(
    "param, needle",
    [
        ({"type": "int", "default": 1, "targets": [{"node": "9", "input": "width"}]}, "lacks"),
        ({"type": "int", "default": 1, "targets": [{"node": "1", "input": "depth"}]}, "lacks"),
        ({"type": "int", "default": 1, "targets": [{"node": "2", "input": "images"}]}, "link"),
        ({"type": "int", "default": 99, "max": 10, "targets": [{"node": "1", "input": "width"}]}, "default"),
        ({"type": "complex", "default": 1, "targets": [{"node": "1", "input": "width"}]}, "type"),
        ({"type": "int", "default": 1, "targets": []}, "targets"),
    ],
)
def test_broken_manifests_are_rejected_at_load(tmp_path, param, needle):
    _write_template(tmp_path, {"params": {"w": param}}, WF)
    with pytest.raises(TemplateError, match=needle):
        load_templates(tmp_path)


def test_templates_from_another_directory(tmp_path):
    _write_template(tmp_path, {"params": {"w": {"type": "int", "default": 8, "min": 1, "max": 64,
                                                "targets": [{"node": "1", "input": "width"},
                                                            {"node": "1", "input": "height"}]}}}, WF)
    templates = load_templates(tmp_path)
    wf, used = expand_template("t", {"w": 32}, templates=templates)
    assert wf["1"]["inputs"]["width"] == wf["1"]["inputs"]["height"] == 32
    assert used == {"w": 32}


def test_readme_lists_every_template_and_param(repo_root):
    readme = (repo_root / "workflows" / "README.md").read_text()
    for name, tpl in TEMPLATES.items():
        assert f"## {name}" in readme
        for pname in tpl.params:
            assert f"`{pname}`" in readme.split(f"## {name}", 1)[1]


def _strategy(p):
    from hypothesis import strategies as st

    if p.choices is not None:
        return st.sampled_from(p.choices)
    if p.type == "int":
        s = st.integers(min_value=int(p.min), max_value=int(p.max))
        return s.map(lambda v: v - v % p.multiple_of if v - v % p.multiple_of >= p.min else v + (-v) % p.multiple_of) \
            if p.multiple_of else s
    if p.type == "float":
        return st.floats(min_value=p.min, max_value=p.max, allow_nan=False)
    if p.type == "string":
        return st.text(max_size=50)
    return st.sampled_from(["a.safetensors", "sub/b.png"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_any_in_bounds_params_give_a_valid_workflow(name):
    from hypothesis import given, settings, HealthCheck
    from hypothesis import strategies as st

    tpl = TEMPLATES[name]
    strategy = st.fixed_dictionaries({}, optional={n: _strategy(p) for n, p in tpl.params.items()})

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(strategy)
    def check(params):
        params = {**_defaults(tpl), **params}
        workflow, used = expand_template(name, params, rng=random.Random(0))
        assert validate(workflow, skip_combo=_file_inputs(tpl)) == []
        for k, v in params.items():
            if not (tpl.params[k].random_if is not None and v == tpl.params[k].random_if):
                assert used[k] == v

    check()
