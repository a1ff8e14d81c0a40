"""Job input → a validated ``Job``: a pure function, no I/O, no network.

Accepted input (RunPod's ``job["input"]``)::

    {"workflow": {...API format...},
     "images": [{"name": "in.png", "image": "<base64 | data: URI | https URL>"}],
     "output": "base64" | {"mode": "gcs"|"base64"|"local", "bucket": "...", "prefix": "...",
                           "format": "png"|"webp"|"jpeg", "quality": 1-100},
     "timeout_s": 120}
    {"template": "sdxl_txt2img", "params": {"prompt": "...", "seed": -1}, ...}   # instead of "workflow"
    {"action": "status"}

Every rejection is an ``InputError`` whose message names the field and the fix.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import orjson

from rp_handler.config import WorkerConfig
from rp_handler.errors import InputError
from rp_handler.limits import check_limits
from rp_handler.templates import expand_template

OUTPUT_MODES = ("gcs", "base64", "local")
OUTPUT_FORMATS = ("png", "webp", "jpeg")  # png: ComfyUI's bytes unchanged; else re-encoded by the worker
DEFAULT_QUALITY = 90
ACTIONS = ("status", "warm")
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ ()+-]{0,199}$")
_PREFIX_OK = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True)
class ImageInput:
    """One input image: either decoded bytes or an URL still to fetch."""

    name: str
    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class OutputSpec:
    mode: str
    bucket: str = ""
    prefix: str = ""
    local_dir: str = ""
    format: str = "png"
    quality: int = DEFAULT_QUALITY


@dataclass(frozen=True)
class Job:
    id: str
    workflow: dict[str, Any]
    images: tuple[ImageInput, ...]
    output: OutputSpec
    timeout_s: float
    template: dict[str, Any] | None = None  # {"name", "params"} with every value used (random seeds resolved)


@dataclass(frozen=True)
class Action:
    id: str
    name: str


def parse_job(job_id: str, raw: Any, cfg: WorkerConfig) -> Job | Action:
    """Validate RunPod's ``job["input"]``; raise ``InputError`` naming what is wrong."""
    if not isinstance(raw, dict):
        raise InputError(
            f"job input must be a JSON object like {{\"workflow\": {{...}}}}, got {_kind(raw)}",
            {"field": "input"},
        )
    if nesting_depth(raw, MAX_DEPTH + 2) > MAX_DEPTH + 1:
        raise InputError(f"job input is nested more than {MAX_DEPTH} levels deep; send a flat "
                         "{\"workflow\": {...}, \"images\": [...]} object", {"field": "input", "max_depth": MAX_DEPTH})
    if "action" in raw:
        action = raw["action"]
        if action not in ACTIONS:
            raise InputError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}", {"field": "action"})
        return Action(id=job_id, name=action)
    workflow, template = parse_workflow_or_template(raw)
    check_limits(workflow, cfg.limits)
    images = parse_images(raw.get("images"), cfg)
    output = parse_output(raw.get("output"), cfg)
    timeout_s = parse_timeout(raw.get("timeout_s"), cfg)
    return Job(id=job_id, workflow=workflow, images=images, output=output, timeout_s=timeout_s, template=template)


def parse_workflow_or_template(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``workflow`` as sent, or ``template`` + ``params`` expanded (workflows/); never both."""
    if "template" not in raw:
        if "params" in raw:
            raise InputError("'params' needs a 'template' (e.g. {\"template\": \"sdxl_txt2img\", \"params\": {...}}); "
                             "a raw 'workflow' takes no params", {"field": "params"})
        return parse_workflow(raw.get("workflow")), None
    if raw.get("workflow") is not None:
        raise InputError("send either 'workflow' or 'template' (with 'params'), not both", {"field": "template"})
    workflow, used = expand_template(raw["template"], raw.get("params"))
    return workflow, {"name": raw["template"], "params": used}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


MAX_DEPTH = 64  # levels of JSON nesting a workflow may have (real ones have 4 or 5)


def nesting_depth(value: Any, stop: int) -> int:
    """Depth of nested lists/objects, counted without recursion; stops counting at ``stop``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest >= stop:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_workflow(value: Any) -> dict[str, Any]:
    """The API-format graph ``{node_id: {"class_type", "inputs"}}``; a JSON string is accepted."""
    if value is None:
        raise InputError(
            "input has no 'workflow': pass the ComfyUI workflow in API format "
            "(in ComfyUI: Workflow → Export (API), or 'Save (API)')",
            {"field": "workflow"},
        )
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise InputError(f"'workflow' is a string but not valid JSON: {err}", {"field": "workflow"}) from None
        except RecursionError:
            raise InputError(f"'workflow' is nested too deeply (more than {MAX_DEPTH} levels)",
                             {"field": "workflow"}) from None
    if not isinstance(value, dict) or not value:
        raise InputError(f"'workflow' must be a non-empty JSON object in API format, got {_kind(value)}",
                         {"field": "workflow"})
    if isinstance(value.get("nodes"), list) and isinstance(value.get("links"), list):
        raise InputError(
            "'workflow' is in ComfyUI's UI (graph) format with 'nodes' and 'links'; "
            "export it in API format with 'Save (API)' (Workflow → Export (API)) and send that",
            {"field": "workflow", "format": "ui"},
        )
    if "prompt" in value and isinstance(value["prompt"], dict) and len(value) <= 3:
        raise InputError("'workflow' looks like a /prompt request body; send only its 'prompt' object",
                         {"field": "workflow"})
    depth = nesting_depth(value, MAX_DEPTH + 1)
    if depth > MAX_DEPTH:
        raise InputError(f"'workflow' is nested more than {MAX_DEPTH} levels deep; ComfyUI workflows are "
                         "flat {node_id: {class_type, inputs}} objects", {"field": "workflow", "max_depth": MAX_DEPTH})
    for node_id, node in value.items():
        if not isinstance(node, dict):
            raise InputError(f"workflow node {node_id!r} must be an object with 'class_type' and 'inputs', "
                             f"got {_kind(node)}", {"field": "workflow", "node_id": str(node_id)})
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise InputError(f"workflow node {node_id!r} has no 'class_type'; is this an API-format workflow "
                             "(Save (API))?", {"field": "workflow", "node_id": str(node_id)})
        if not isinstance(node.get("inputs", {}), dict):
            raise InputError(f"workflow node {node_id!r} ('{node['class_type']}'): 'inputs' must be an object",
                             {"field": "workflow", "node_id": str(node_id)})
    try:
        orjson.dumps(value)  # what the client sends to ComfyUI: fail here, in one line, not inside the POST
    except TypeError as err:
        raise InputError(f"'workflow' holds a value that cannot be sent to ComfyUI as JSON ({err}): integers must "
                         "fit in 64 bits (a seed, for one, at most 18446744073709551615)", {"field": "workflow"}) from None
    return value


def check_image_name(name: Any, where: str) -> str:
    """A plain file name: no folders, no '..', no leading dot, no control characters."""
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}.name must be a file name like 'input.png'", {"field": f"{where}.name"})
    if "/" in name or "\\" in name or ".." in name or not _NAME_OK.match(name):
        raise InputError(
            f"{where}.name {name[:80]!r} is not a plain file name: use letters, digits, '.', '_', '-' "
            "without folders or '..' (e.g. 'input.png')",
            {"field": f"{where}.name"},
        )
    return name


def parse_images(value: Any, cfg: WorkerConfig) -> tuple[ImageInput, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InputError(f"'images' must be a list of {{\"name\", \"image\"}} objects, got {_kind(value)}",
                         {"field": "images"})
    seen: set[str] = set()
    out: list[ImageInput] = []
    for i, item in enumerate(value):
        where = f"images[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{where} must be an object {{\"name\", \"image\"}}, got {_kind(item)}", {"field": where})
        name = check_image_name(item.get("name"), where)
        if name in seen:
            raise InputError(f"{where}.name {name!r} is used twice; give each image its own name", {"field": where})
        seen.add(name)
        out.append(parse_image_value(item.get("image"), name, where, cfg))
    return tuple(out)


def parse_image_value(value: Any, name: str, where: str, cfg: WorkerConfig) -> ImageInput:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}.image must be base64, a data: URI or an https URL", {"field": f"{where}.image"})
    head = value[:16].lower()
    if head.startswith(("https://", "http://")):
        check_url(value, cfg, where=f"{where}.image")
        return ImageInput(name=name, url=value)
    if head.startswith("data:"):
        meta, sep, payload = value.partition(",")
        if not sep or ";base64" not in meta.lower():
            raise InputError(f"{where}.image is a data: URI without ';base64,' data", {"field": f"{where}.image"})
        value = payload
    limit = cfg.limits.max_input_bytes
    approx = (len(value) * 3) // 4
    if approx > limit:
        raise InputError(
            f"{where}.image is about {approx / 1e6:.1f} MB decoded, over the {limit / 1e6:.1f} MB input limit "
            "(MAX_INPUT_BYTES); pass an https URL or a smaller image",
            {"field": f"{where}.image", "bytes": approx, "limit": limit},
        )
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}.image is not valid base64 (nor a data: URI or https URL)",
                         {"field": f"{where}.image"}) from None
    if not data:
        raise InputError(f"{where}.image decodes to zero bytes", {"field": f"{where}.image"})
    return ImageInput(name=name, data=data)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPAT = ipaddress.IPv6Network("::/96")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64, IPv4-compatible), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _V4_COMPAT:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be fetched from (None when it may): only globally routable unicast."""
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            return address_refused(inner)
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


def check_url(url: str, cfg: WorkerConfig, *, where: str) -> None:
    """Syntax, scheme and literal-address check; names are re-checked after DNS in ``inputs``."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise InputError(f"{where}: only https URLs are fetched", {"field": where})
    if parts.scheme == "http" and not cfg.allow_private_urls:
        raise InputError(f"{where}: use an https URL (plain http is refused)", {"field": where})
    if not parts.hostname:
        raise InputError(f"{where}: URL has no host", {"field": where})
    if parts.username or parts.password:
        raise InputError(f"{where}: URLs with credentials are refused", {"field": where})
    if cfg.allow_private_urls:
        return
    host = parts.hostname.rstrip(".")  # 'localhost.' is 'localhost'
    if host in ("localhost",) or host.endswith((".localhost", ".internal", ".local")):
        raise InputError(f"{where}: host {host!r} is local; only public hosts are fetched "
                         "(ALLOW_PRIVATE_URLS=true allows it)", {"field": where})
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return
    reason = address_refused(ip)
    if reason:
        raise InputError(f"{where}: address {host} is {reason}; only public addresses are fetched "
                         "(ALLOW_PRIVATE_URLS=true allows it)", {"field": where, "reason": reason})


def parse_output(value: Any, cfg: WorkerConfig) -> OutputSpec:
    if value is None:
        value = {}
    if isinstance(value, str):
        value = {"mode": value}
    if not isinstance(value, dict):
        raise InputError(f"'output' must be a mode name or an object {{\"mode\": ...}}, got {_kind(value)}",
                         {"field": "output"})
    mode = str(value.get("mode") or cfg.output_mode).strip().lower()
    if mode not in OUTPUT_MODES:
        raise InputError(f"unknown output mode {mode!r}: use one of {', '.join(OUTPUT_MODES)}",
                         {"field": "output.mode"})
    encoding = {"format": parse_output_format(value.get("format")), "quality": parse_quality(value.get("quality"))}
    return replace(_parse_destination(mode, value, cfg), **encoding)


def parse_output_format(value: Any) -> str:
    if value is None:
        return "png"
    fmt = value.strip().lower() if isinstance(value, str) else value
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in OUTPUT_FORMATS:
        raise InputError(f"output.format must be one of {', '.join(OUTPUT_FORMATS)}, got {value!r}",
                         {"field": "output.format"})
    return fmt


def parse_quality(value: Any) -> int:
    if value is None:
        return DEFAULT_QUALITY
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value) or not 1 <= value <= 100):
        raise InputError(f"output.quality must be a whole number from 1 to 100 (webp and jpeg), got {value!r}",
                         {"field": "output.quality"})
    return int(value)


def _parse_destination(mode: str, value: dict[str, Any], cfg: WorkerConfig) -> OutputSpec:
    prefix = value.get("prefix", cfg.gcs.prefix)
    if not isinstance(prefix, str) or (prefix.strip("/") and not _PREFIX_OK.match(prefix.strip("/"))):
        raise InputError("output.prefix must be a path like 'team/outputs' (letters, digits, '._-', no '..')",
                         {"field": "output.prefix"})
    if ".." in prefix:
        raise InputError("output.prefix may not contain '..'", {"field": "output.prefix"})
    if mode == "gcs":
        bucket = value.get("bucket") or cfg.gcs.bucket
        if not isinstance(bucket, str) or not bucket:
            raise InputError("output mode gcs needs a bucket: set GCS_BUCKET on the endpoint or output.bucket "
                             "in the input (or use output mode base64)", {"field": "output.bucket"})
        if not (cfg.gcs.credentials_file or cfg.gcs.emulator_host):
            raise InputError("output mode gcs needs credentials: set GOOGLE_APPLICATION_CREDENTIALS to a "
                             "service-account JSON file on the endpoint (or use output mode base64)",
                             {"field": "output.mode", "missing": "GOOGLE_APPLICATION_CREDENTIALS"})
        return OutputSpec(mode="gcs", bucket=bucket, prefix=prefix.strip("/"))
    if mode == "local":
        if not cfg.output_local_dir:
            raise InputError("output mode local needs OUTPUT_LOCAL_DIR set on the worker", {"field": "output.mode"})
        return OutputSpec(mode="local", local_dir=cfg.output_local_dir, prefix=prefix.strip("/"))
    return OutputSpec(mode="base64")


def parse_timeout(value: Any, cfg: WorkerConfig) -> float:
    if value is None:
        return float(cfg.job_timeout_s)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"'timeout_s' must be a number of seconds, got {value!r}", {"field": "timeout_s"})
    if value <= 0:
        raise InputError(f"'timeout_s' must be positive, got {value}", {"field": "timeout_s"})
    if value > cfg.job_max_timeout_s:
        raise InputError(f"'timeout_s' {value} is over this worker's maximum {cfg.job_max_timeout_s:g} s "
                         "(JOB_MAX_TIMEOUT_S)", {"field": "timeout_s", "max": cfg.job_max_timeout_s})
    return float(value)
