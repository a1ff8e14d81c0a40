"""``version.py run-handler`` and ``version.py run-ui``: the worker's pieces, run on a workstation.

    version.py run-handler <id> --workflow FILE --output base64|gcs|local [--out-file F]
        [--gcs-bucket B --gcs-prefix P] [--models-dir D] [--offline] [--verbose] [--timeout S]
    version.py run-ui <id> [--host H] [--port N] [--extra-args -- ARGS...]

run-handler starts the version's ComfyUI on 127.0.0.1 exactly as the worker does, runs one job
through the same handler and prints the result; run-ui starts ComfyUI in the foreground where the
user asks (default 0.0.0.0:8188) with the version's COMFY_HOME and MODELS_DIR.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from builder.atomic import write_atomic
from rp_handler.config import WorkerConfig
from rp_handler.errors import WorkerError, to_payload

log = logging.getLogger(__name__)


def _handler_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="version.py run-handler", description="run one workflow through the handler")
    p.add_argument("id", help="version id (versions/<id>.json, realized at COMFY_HOME)")
    p.add_argument("--workflow", required=True, help="API-format workflow JSON (or a job input / test_input.json)")
    p.add_argument("--output", choices=("base64", "gcs", "local"), help="output sink (default: OUTPUT_MODE)")
    p.add_argument("--out-file", help="write the result: .json = whole result, .b64 = first output's base64, "
                                      "other = first output's bytes")
    p.add_argument("--gcs-bucket")
    p.add_argument("--gcs-prefix")
    p.add_argument("--models-dir")
    p.add_argument("--offline", action="store_true", help="set COMFY_OFFLINE=1 for the run")
    p.add_argument("--timeout", type=float, help="job timeout in seconds")
    p.add_argument("--verbose", action="store_true")
    return p


def _overlay(env: Mapping[str, str], **values: str | None) -> dict[str, str]:
    out = dict(env)
    out.update({k: v for k, v in values.items() if v is not None})
    return out


def _load_job_input(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"run-handler: cannot read workflow {path}: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("input"), dict):
        return data["input"]
    if isinstance(data, dict) and "workflow" in data:
        return data
    return {"workflow": data}


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def run_handler(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    args = _handler_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return _run_handler(args, env)
    except (WorkerError, ValueError) as err:  # no ComfyUI at COMFY_HOME, a bad setting: one line
        if args.verbose:
            raise
        print(f"run-handler: {err}", file=sys.stderr)
        return 1


def _run_handler(args: argparse.Namespace, env: Mapping[str, str] | None) -> int:
    from rp_handler.context import WorkerContext
    from rp_handler.handler import handle
    from rp_handler.main import apply_version_limits, attach_cache, client_factory, open_model_cache, start_comfy
    from rp_handler.version_files import lock_digest, version_lock

    env = _overlay(os.environ if env is None else env, COMFY_VERSION_ID=args.id, MODELS_DIR=args.models_dir,
                   COMFY_OFFLINE="1" if args.offline else None, GCS_BUCKET=args.gcs_bucket,
                   GCS_PREFIX=args.gcs_prefix, OUTPUT_MODE=args.output)
    cfg = apply_version_limits(WorkerConfig.from_env(env))
    job_input = _load_job_input(Path(args.workflow))
    if args.output:
        out = job_input.get("output")
        job_input["output"] = {**(out if isinstance(out, dict) else {}), "mode": args.output}
    if args.timeout:
        job_input["timeout_s"] = args.timeout
    io_dir = cfg.io_dir or Path(tempfile.mkdtemp(prefix="rp_handler-io-"))
    cache = open_model_cache(cfg)  # NVME_CACHE_DIR: the same NVMe cache as the worker
    sup = start_comfy(cfg, io_dir=io_dir, cache=cache)
    if cache is not None:
        cache.start()
    ctx = WorkerContext(cfg=cfg, dirs=sup.proc.dirs, client_factory=client_factory(sup), supervisor=sup,
                        version_id=args.id, lock_digest=lock_digest(version_lock(cfg)))
    attach_cache(ctx, cache, sup)
    try:
        result = handle({"id": f"local-{int(time.time())}", "input": job_input}, ctx)
    finally:
        ctx.close()
        sup.stop(timeout=10)
        if cache is not None:
            cache.close()
        if cfg.io_dir is None:
            shutil.rmtree(io_dir, ignore_errors=True)
    if args.out_file:
        _write_out_file(Path(args.out_file), result)
    print(json.dumps(_summary(result), indent=2))
    return 1 if "error" in result else 0


def _summary(result: dict) -> dict:
    """The result with base64 data shortened (the full data goes to --out-file)."""
    out = json.loads(json.dumps(result))
    for item in out.get("outputs", []) or []:
        if isinstance(item.get("data"), str) and len(item["data"]) > 80:
            item["data"] = item["data"][:60] + f"... ({len(item['data'])} chars)"
    return out


def _write_out_file(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    files = [o for o in result.get("outputs", []) or [] if "data" in o]
    if path.suffix == ".json" or not files:
        data = json.dumps(result, indent=2).encode()
    elif path.suffix == ".b64":
        data = files[0]["data"].encode()
    else:
        data = base64.b64decode(files[0]["data"])
    write_atomic(path, data)


def _split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--extra-args" not in argv:
        return argv, []
    i = argv.index("--extra-args")
    extra = argv[i + 1:]
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return argv[:i], extra


def _ui_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="version.py run-ui", description="start ComfyUI's UI for a realized version")
    p.add_argument("id", help="version id (versions/<id>.json, realized at COMFY_HOME)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8188, help="port (default 8188)")
    p.add_argument("--models-dir", help="models folder (default MODELS_DIR)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--extra-args", nargs=argparse.REMAINDER, metavar="-- ARG",
                   help="last: everything after it goes to ComfyUI's main.py (e.g. --extra-args -- --preview-method auto)")
    return p


def run_ui(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    from rp_handler.main import write_models_yaml
    from rp_handler.process import ComfyProcess

    own, extra = _split_extra(list(argv))
    args = _ui_parser().parse_args(own)
    _setup_logging(args.verbose)
    try:
        cfg = WorkerConfig.from_env(_overlay(os.environ if env is None else env, COMFY_VERSION_ID=args.id,
                                             MODELS_DIR=args.models_dir))
    except ValueError as err:
        print(f"run-ui: {err}", file=sys.stderr)
        return 2
    home = cfg.comfy_home
    extra_paths = None
    if cfg.build.models_dir.is_dir() and cfg.build.models_dir.resolve() != (home / "models").resolve():
        extra_paths = write_models_yaml(cfg.build.models_dir, home / "user" / "rp_handler_extra_model_paths.yaml")
    proc = ComfyProcess(cfg, home, extra_model_paths=extra_paths, host=args.host, port=args.port,
                        extra_args=tuple(cfg.extra_args) + tuple(extra))
    try:
        proc.start()
        signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(s))
        proc.wait_ready(time.monotonic() + cfg.boot_timeout_s)
        shown = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{proc.port}"
        print(f"ComfyUI for {args.id} is up at {shown} (Ctrl-C stops it)", flush=True)
        rc = proc.wait_exit()
        return int(rc or 0)
    except WorkerError as err:
        print(f"run-ui: {to_payload(err)['error']}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        proc.stop(timeout=10)
