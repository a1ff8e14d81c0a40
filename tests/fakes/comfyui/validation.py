"""ComfyUI's prompt validation (execution.validate_prompt), reproduced for the transcripts of 07/14."""

from __future__ import annotations

import traceback
from typing import Any, Callable

# (class_type, input_name, value) -> True when fine, else the message (LoadImage's VALIDATE_INPUTS).
CustomCheck = Callable[[str, str, Any], "bool | str"]


class ValidationResult:
    def __init__(self, ok: bool, error: dict | None, outputs: list[str], node_errors: dict):
        self.ok, self.error, self.outputs, self.node_errors = ok, error, outputs, node_errors


def _invalid(message: str, details: str) -> ValidationResult:
    return ValidationResult(False, {"type": "invalid_prompt", "message": message,
                                    "details": details, "extra_info": {}}, [], {})


def _types_match(received: str, expected: Any) -> bool:
    if not isinstance(expected, str) or not isinstance(received, str):
        return True
    if "*" in (received, expected) or received == expected:
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


def _traceback() -> list[str]:
    return traceback.format_tb(__import__("sys").exc_info()[2])


class _Validator:
    def __init__(self, prompt: dict, info: Callable[[str], dict], custom: CustomCheck | None):
        self.prompt, self.info, self.custom = prompt, info, custom
        self.validated: dict[str, tuple[bool, list, str]] = {}

    def inputs(self, unique_id: str) -> tuple[bool, list, str]:
        if unique_id in self.validated:
            return self.validated[unique_id]
        node = self.prompt[unique_id]
        inputs = node["inputs"]
        class_type = node["class_type"]
        spec = self.info(class_type)
        valid_inputs = {**(spec["input"].get("required") or {}), **(spec["input"].get("optional") or {})}
        required = set((spec["input"].get("required") or {}).keys())
        errors: list[dict] = []
        valid = True
        for x, info in valid_inputs.items():
            if x not in inputs:
                if x in required:
                    errors.append({"type": "required_input_missing", "message": "Required input is missing",
                                   "details": f"{x}", "extra_info": {"input_name": x}})
                continue
            val = inputs[x]
            type_input = info[0] if isinstance(info, list) and info else info
            extra = info[1] if isinstance(info, list) and len(info) > 1 and isinstance(info[1], dict) else {}
            info = [type_input, extra]  # ComfyUI reports input_config as (type, extra_info)
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append({"type": "bad_linked_input",
                                   "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                   "details": f"{x}", "extra_info": {"input_name": x, "input_config": info,
                                                                       "received_value": val}})
                    continue
                o_id = val[0]
                o_class = self.prompt[o_id]["class_type"]  # KeyError for a missing node: caught above
                r = self.info(o_class)["output"]
                received = r[val[1]] if isinstance(val[1], int) and 0 <= val[1] < len(r) else "*"
                if type_input != "COMBO" and not isinstance(type_input, list) and not _types_match(received, type_input):
                    details = f"{x}, received_type({received}) mismatch input_type({type_input})"
                    errors.append({"type": "return_type_mismatch",
                                   "message": "Return type mismatch between linked nodes",
                                   "details": details,
                                   "extra_info": {"input_name": x, "input_config": info,
                                                  "received_type": received, "linked_node": val}})
                    continue
                try:
                    r2 = self.inputs(o_id)
                    if r2[0] is False:
                        valid = False
                        continue
                except Exception as ex:  # noqa: BLE001 - mirrors ComfyUI
                    valid = False
                    self.validated[o_id] = (False, [{
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node", "details": str(ex),
                        "extra_info": {"input_name": x, "input_config": info,
                                       "exception_message": str(ex),
                                       "exception_type": type(ex).__name__,
                                       "traceback": _traceback(), "linked_node": val}}], o_id)
                    continue
                continue
            try:
                if type_input == "INT":
                    val = int(val)
                    inputs[x] = val
                elif type_input == "FLOAT":
                    val = float(val)
                    inputs[x] = val
                elif type_input == "STRING":
                    val = str(val)
                    inputs[x] = val
                elif type_input == "BOOLEAN":
                    val = bool(val)
                    inputs[x] = val
            except Exception as ex:  # noqa: BLE001
                errors.append({"type": "invalid_input_type",
                               "message": f"Failed to convert an input value to a {type_input} value",
                               "details": f"{x}, {val}, {ex}",
                               "extra_info": {"input_name": x, "input_config": info, "received_value": val,
                                              "exception_message": str(ex)}})
                continue
            if type_input in ("INT", "FLOAT"):
                if "min" in extra and val < extra["min"]:
                    errors.append({"type": "value_smaller_than_min",
                                   "message": f"Value {val} smaller than min of {extra['min']}",
                                   "details": f"{x}",
                                   "extra_info": {"input_name": x, "input_config": info, "received_value": val}})
                    continue
                if "max" in extra and val > extra["max"]:
                    errors.append({"type": "value_bigger_than_max",
                                   "message": f"Value {val} bigger than max of {extra['max']}",
                                   "details": f"{x}",
                                   "extra_info": {"input_name": x, "input_config": info, "received_value": val}})
                    continue
            custom = self.custom(class_type, x, val) if self.custom else None
            if custom is not None:
                if custom is not True:
                    errors.append({"type": "custom_validation_failed",
                                   "message": "Custom validation failed for node",
                                   "details": f"{x} - {custom}",
                                   "extra_info": {"input_name": x, "input_config": info, "received_value": val}})
                continue
            if isinstance(type_input, list):  # legacy combo; V3 "COMBO" is not checked (README fact 5)
                if val not in type_input:
                    input_config: Any = info
                    list_info = str(type_input)
                    if len(type_input) > 20:
                        list_info = f"(list of length {len(type_input)})"
                        input_config = None
                    errors.append({"type": "value_not_in_list", "message": "Value not in list",
                                   "details": f"{x}: '{val}' not in {list_info}",
                                   "extra_info": {"input_name": x, "input_config": input_config,
                                                  "received_value": val}})
                    continue
        ret = (not errors and valid, errors, unique_id)
        self.validated[unique_id] = ret
        return ret


def validate_prompt(prompt: Any, info: Callable[[str], dict], known: Callable[[Any], bool],
                    custom: CustomCheck | None = None) -> ValidationResult:
    """Like ComfyUI: raises (→ HTTP 500) for prompts that are not a mapping of nodes."""
    outputs: list[str] = []
    for x in prompt:
        node = prompt[x]  # a list or a string prompt raises TypeError here, as in ComfyUI
        if "class_type" not in node:
            return _invalid("Cannot execute because a node is missing the class_type property.",
                            f"Node ID '#{x}'")
        class_type = node["class_type"]
        if not known(class_type):
            return _invalid(f"Cannot execute because node {class_type} does not exist.", f"Node ID '#{x}'")
        if info(class_type).get("output_node"):
            outputs.append(x)
    if not outputs:
        return ValidationResult(False, {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                                        "details": "", "extra_info": {}}, [], {})
    v = _Validator(prompt, info, custom)
    good: list[str] = []
    failed: list[tuple[str, list]] = []
    node_errors: dict[str, dict] = {}
    for o in sorted(outputs):
        try:
            m = v.inputs(o)
            valid, reasons = m[0], m[1]
        except Exception as ex:  # noqa: BLE001 - mirrors ComfyUI
            valid = False
            reasons = [{"type": "exception_during_validation", "message": "Exception when validating node",
                        "details": str(ex), "extra_info": {"exception_type": type(ex).__name__,
                                                          "traceback": _traceback()}}]
            v.validated[o] = (False, reasons, o)
        if valid is True:
            good.append(o)
            continue
        failed.append((o, reasons))
        for node_id, result in v.validated.items():
            if result[0] is not True and result[1]:
                if node_id not in node_errors:
                    node_errors[node_id] = {"errors": result[1], "dependent_outputs": [],
                                            "class_type": prompt[node_id]["class_type"]}
                node_errors[node_id]["dependent_outputs"].append(o)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errs in failed for e in errs)
        return ValidationResult(False, {"type": "prompt_outputs_failed_validation",
                                        "message": "Prompt outputs failed validation",
                                        "details": details, "extra_info": {}}, [], node_errors)
    return ValidationResult(True, None, good, node_errors)
