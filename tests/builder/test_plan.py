"""make_plan is pure: these cases build Observed by hand and touch no disk."""

from pathlib import Path

from builder.plan import Checkout, Flags, Observed, make_plan
from builder.spec import validate

A, B, C = "a" * 40, "b" * 40, "c" * 40
HOME = Path("/nowhere/ComfyUI")


def spec_and_lock(models=()):
    spec = validate({"schema_version": 2, "version_id": "p", "comfy": {"repo": "https://h/ComfyUI", "commit": A},
                     "custom_nodes": [{"repo": "https://h/node", "commit": B}], "models": list(models)})
    lock = {"comfy": {"repo": "https://h/ComfyUI", "commit": A},
            "custom_nodes": [{"name": "node", "repo": "https://h/node", "commit": B, "run_install_py": False}],
            "models": [{"source": m["source"], "target": "checkpoints/m", "sha256": None, "size": None}
                       for m in models],
            "pip": {"installed": {}}}
    return spec, lock


def observed(comfy_head=A, node_head=B, *, dirty=None, mirror_has=True, state=None, pip="d1", models_ok=True):
    node = HOME / "custom_nodes" / "node"
    return Observed(
        home=HOME,
        comfy=Checkout(HOME, True, True, comfy_head),
        nodes={"node": Checkout(node, node_head is not None, node_head is not None, node_head, dirty, mirror_has)},
        state=state if state is not None else {"pip_digest": "d1"},
        pip_digest=pip, models_ok=models_ok)


def kinds(plan):
    return [a.kind for a in plan.actions]


def test_matching_target_plans_nothing():
    spec, lock = spec_and_lock()
    plan = make_plan(spec, lock, observed(), Flags())
    assert plan.empty and plan.lines() == ["nothing to do: the target already matches the lock"]


def test_missing_node_is_fetched_cloned_and_installed():
    spec, lock = spec_and_lock()
    plan = make_plan(spec, lock, observed(node_head=None, mirror_has=False, pip=None), Flags())
    assert kinds(plan) == ["fetch", "clone", "pip"]
    assert plan.actions[1].path == HOME / "custom_nodes" / "node" and plan.actions[1].sha == B


def test_offline_lists_missing_instead_of_fetching():
    spec, lock = spec_and_lock()
    plan = make_plan(spec, lock, observed(node_head=None, mirror_has=False, pip=None), Flags(offline=True))
    assert "fetch" not in kinds(plan) and plan.missing_offline == ("node (https://h/node @ bbbbbbbbbbbb)",)


def test_dirty_checkout_is_a_problem_unless_forced_or_ours():
    spec, lock = spec_and_lock()
    obs = observed(node_head=C, dirty=True)
    assert "has local modifications" in make_plan(spec, lock, obs, Flags()).problems[0]
    forced = make_plan(spec, lock, obs, Flags(force=True))
    assert kinds(forced) == ["update", "pip"] and forced.actions[0].force
    ours = observed(node_head=C, dirty=True, state={"pending": [str(HOME / "custom_nodes" / "node")]})
    assert make_plan(spec, lock, ours, Flags()).actions[0].force


def test_models_planned_unless_present_or_skipped():
    spec, lock = spec_and_lock(models=[{"source": "https://h/m", "target_subdir": "checkpoints", "name": "m"}])
    assert kinds(make_plan(spec, lock, observed(models_ok=False), Flags())) == ["models"]
    assert make_plan(spec, lock, observed(models_ok=False), Flags(skip_models=True)).empty
    assert make_plan(spec, lock, observed(models_ok=True), Flags()).empty
