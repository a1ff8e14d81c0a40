"""Limits on raw workflows and expanded templates, found by input name on any node class."""

from __future__ import annotations

import random

import pytest

from rp_handler.config import Limits, WorkerConfig
from rp_handler.errors import InputError
from rp_handler.limits import check_input_bytes, check_limits
from rp_handler.templates import expand_template, load_templates

LIMITS = Limits(max_pixels=1024 * 1024, max_batch=4, max_steps=50, max_frames=81, max_input_bytes=1000)


def _node(cls, **inputs):
    return {"class_type": cls, "inputs": inputs}


def test_defaults_from_env_accept_every_template_with_defaults():
    limits = WorkerConfig.from_env({}).limits
    for name, tpl in load_templates().items():
        params = {n: "in.png" for n, p in tpl.params.items() if p.required}
        wf, _ = expand_template(name, params, rng=random.Random(0))
        check_limits(wf, limits)


def test_template_values_are_checked_after_expansion():
    wf, _ = expand_template("sdxl_txt2img", {"width": 2048, "height": 1024}, rng=random.Random(0))
    with pytest.raises(InputError) as exc:
        check_limits(wf, LIMITS)
    msg = str(exc.value)
    assert "node 5 (EmptyLatentImage)" in msg and "2048×1024" in msg and "1048576" in msg and "LIMIT_MAX_PIXELS" in msg
    wf, _ = expand_template("sd15_txt2img", {"steps": 60}, rng=random.Random(0))
    with pytest.raises(InputError, match=r"node 3 \(KSampler\): steps=60 exceeds the limit 50"):
        check_limits(wf, LIMITS)
    wf, _ = expand_template("cpu_invert", {"batch_size": 5})
    with pytest.raises(InputError, match=r"batch_size=5 exceeds the limit 4 \(LIMIT_MAX_BATCH\)"):
        check_limits(wf, LIMITS)


@pytest.mark.parametrize(
    "node, needle",
    [
        (_node("EmptyImage", width=2048, height=1024, batch_size=1, color=0), "width×height=2048×1024"),
        (_node("SomeCustomResize", target_width=1500, target_height=1500), "target_width×target_height"),
        (_node("ImageScaleToTotalPixels", megapixels=1.5, upscale_method="area"), "megapixels=1.5"),
        (_node("RepeatLatentBatch", amount=5, samples=["1", 0]), "amount=5"),
        (_node("KSamplerAdvanced", steps=51), "steps=51"),
        (_node("EmptyHunyuanLatentVideo", width=64, height=64, length=97, batch_size=1), "length=97"),
        (_node("SVD_img2vid_Conditioning", video_frames=100), "video_frames=100"),
        (_node("MyVideoNode", frame_count=82), "frame_count=82"),
        (_node("MyVideoNode", num_frames=200.0), "num_frames=200.0"),
        (_node("LoadImageBase64", image="A" * 1001), "bytes(image)=1001"),
        (_node("CLIPTextEncode", text="é" * 501), "bytes(text)=1002"),
    ],
)
def test_raw_workflow_limits_found_by_input_name(node, needle):
    wf = {"1": _node("EmptyLatentImage", width=64, height=64, batch_size=1), "7": node}
    with pytest.raises(InputError) as exc:
        check_limits(wf, LIMITS)
    assert needle in str(exc.value) and "node 7" in str(exc.value)
    assert exc.value.details["node_id"] == "7"


def test_values_at_the_limit_links_and_conditioning_pass():
    wf = {
        "1": _node("EmptyLatentImage", width=1024, height=1024, batch_size=4),
        "2": _node("KSampler", steps=50, seed=0, cfg=7.0, latent_image=["1", 0]),
        "3": _node("EmptyLTXVLatentVideo", width=32, height=32, length=81, batch_size=["9", 0]),
        # SDXL size conditioning: not rendered, so not a pixel budget
        "4": _node("CLIPTextEncodeSDXL", width=4096, height=4096, target_width=4096, target_height=4096, text="x"),
        "5": _node("ImageScale", width=["8", 0], height=4096),
        "6": "not a node",
    }
    check_limits(wf, LIMITS)


def test_zero_means_no_limit():
    unlimited = Limits(max_pixels=0, max_batch=0, max_steps=0, max_frames=0, max_input_bytes=0)
    check_limits({"1": _node("EmptyImage", width=16384, height=16384, batch_size=4096, steps=10000,
                             text="x" * 5000)}, unlimited)


def test_limits_come_from_env():
    limits = WorkerConfig.from_env({"LIMIT_MAX_STEPS": "10"}).limits
    with pytest.raises(InputError, match="steps=11 exceeds the limit 10"):
        check_limits({"3": _node("KSampler", steps=11)}, limits)


def test_not_a_workflow():
    with pytest.raises(InputError, match="workflow must be an object"):
        check_limits(["1"], LIMITS)


def test_input_bytes():
    check_input_bytes("a.png", 1000, LIMITS)
    with pytest.raises(InputError, match=r"'a.png' is 1001 bytes, above the limit 1000 \(MAX_INPUT_BYTES\)"):
        check_input_bytes("a.png", 1001, LIMITS)


def test_version_limits_tighten_env_limits():
    from rp_handler.limits import stricter_limits

    merged = stricter_limits(LIMITS, {"max_steps": 20, "max_batch": 16, "max_frames": 0})
    assert (merged.max_steps, merged.max_batch, merged.max_frames) == (20, 4, 81)
    unlimited = Limits(max_pixels=0, max_batch=0, max_steps=0, max_frames=0, max_input_bytes=0)
    assert stricter_limits(unlimited, {"max_pixels": 100}).max_pixels == 100
    assert stricter_limits(LIMITS, None) is LIMITS
    with pytest.raises(ValueError, match="unknown limit 'max_stepz'"):
        stricter_limits(LIMITS, {"max_stepz": 1})
    with pytest.raises(ValueError, match="whole number"):
        stricter_limits(LIMITS, {"max_steps": "10"})
    with pytest.raises(InputError, match="steps=21"):
        check_limits({"3": _node("KSampler", steps=21)}, merged)
