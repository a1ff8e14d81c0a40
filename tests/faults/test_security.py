"""ComfyUI is reachable on 127.0.0.1 only; secrets never reach logs, errors, results or files.

Jobs and model fetches run with sentinel secrets (HF_TOKEN, CIVITAI_TOKEN, a service-account key
for signed GCS URLs); every log record, stdout/stderr, every result and every file written is then
searched for them. Signed URLs may be in results (that is their purpose) but never whole in logs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from builder.config import BuildConfig
from builder.models import realize_models
from tests.fakes.hf_hub import FakeHfHub
from tests.fakes.model_server import ModelFileServer
from tests.faults.gcs_proxy import GcsFaultProxy
from tests.faults.worker_scenarios import workflow
from tests.helpers import gcs_emulator, storage_client
from tests.worker.conftest import LiveWorker

HF = "hf_SENTINELhfTOKEN0123456789abcdef"
CIV = "civSENTINELcivitaiTOKEN0123456789"
KEY_ID = "SENTINELkeyid0123456789abcdef0123456789"
SIG = "SENTINELsignedQUERY0123456789"


# ------------------------------------------------------------------------ listening address
def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _other_addresses() -> list[tuple[int, tuple]]:
    """Every address of this machine except loopback (from `ip -o addr` and the host name)."""
    found: list[tuple[int, tuple]] = []
    try:
        out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        m = re.match(r"\d+:\s+(\S+)\s+(inet6?)\s+([0-9a-fA-F:.]+)/", line)
        if not m:
            continue
        ifname, fam, addr = m.groups()
        if addr.startswith("127.") or addr == "::1":
            continue
        if fam == "inet":
            found.append((socket.AF_INET, (addr, 0)))
        else:
            scope = socket.if_nametoindex(ifname) if addr.lower().startswith("fe80") else 0
            found.append((socket.AF_INET6, (addr, 0, 0, scope)))
    try:
        for fam, _, _, _, sa in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM):
            if not (sa[0].startswith("127.") or sa[0] == "::1"):
                found.append((fam, sa))
    except OSError:
        pass
    return list(dict.fromkeys(found))


def _connect(fam: int, sa: tuple, port: int) -> str:
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect((sa[0], port, *sa[2:]) if fam == socket.AF_INET6 else (sa[0], port))
        except ConnectionRefusedError:
            return "refused"
        except OSError as err:
            return f"error {err.errno}"
        return "connected"


@pytest.mark.slow
@pytest.mark.parametrize("extra", ["", "--listen 0.0.0.0", "--listen=:: --port 1", "--listen"])
def test_comfyui_listens_on_127_0_0_1_only(tmp_path, extra):
    w = LiveWorker(tmp_path, COMFY_EXTRA_ARGS=extra)
    try:
        pid, port = w.sup.proc.pid, w.sup.proc.port
        argv = _cmdline(pid)
        listens = [argv[i + 1] if i + 1 < len(argv) else "" for i, a in enumerate(argv) if a == "--listen"]
        assert listens == ["127.0.0.1"], argv
        assert not any(a.startswith("--listen=") for a in argv) and argv.count("--port") == 1, argv
        assert _connect(socket.AF_INET, ("127.0.0.1", 0), port) == "connected"
        others = _other_addresses()
        for fam, sa in others:
            assert _connect(fam, sa, port) == "refused", f"ComfyUI answered on {sa[0]}:{port}"
    finally:
        w.close()


# ------------------------------------------------------------------------ secrets
def _service_account(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "project_id": "faults", "private_key_id": KEY_ID,
                                "private_key": pem, "client_email": "worker@faults.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}))
    return pem


def _key_fragments(pem: str) -> list[str]:
    body = "".join(pem.strip().splitlines()[1:-1])
    return [body[i:i + 24] for i in range(0, len(body) - 24, 200)]


class Captured:
    def __init__(self, caplog, capfd):
        self.caplog, self.capfd = caplog, capfd
        self.results: list[dict] = []
        self.errors: list[str] = []

    def text(self) -> str:
        fmt = logging.Formatter("%(name)s %(message)s")
        records = "\n".join(fmt.format(r) + (r.exc_text or "") for r in self.caplog.records)
        out, err = self.capfd.readouterr()
        return records + out + err

    def search(self, secrets: list[str], *, where: str, text: str) -> None:
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"secret material in {where}: {[s[:12] + '…' for s in leaked]}"


def _files_text(root: Path, skip: set[Path]) -> str:
    chunks = []
    for p in root.rglob("*"):
        if p.is_file() and p not in skip and p.stat().st_size < 50_000_000:
            chunks.append(p.read_bytes().decode("latin-1"))
    return "\n".join(chunks)


@pytest.mark.slow
def test_worker_jobs_never_leak_secrets(tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    sa = tmp_path / "secret" / "sa.json"
    sa.parent.mkdir()
    pem = _service_account(sa)
    secrets = [HF, CIV, KEY_ID, *_key_fragments(pem)]
    cap = Captured(caplog, capfd)
    with gcs_emulator() as url:
        client = storage_client(url)
        client.create_bucket("sec")
        proxy = GcsFaultProxy(url).start()
        w = LiveWorker(tmp_path / "w", HF_TOKEN=HF, CIVITAI_TOKEN=CIV, GOOGLE_APPLICATION_CREDENTIALS=str(sa),
                       GCS_BUCKET="sec", STORAGE_EMULATOR_HOST=proxy.url, OUTPUT_MODE="gcs",
                       GCS_RETRY_BASE_SLEEP="0.01", COMFY_MAX_RESTARTS="5",
                       OUTPUT_LOCAL_DIR=str(tmp_path / "w" / "local"))
        try:
            ok = w.run({"workflow": workflow(0x445566)}, "sec-ok")
            assert "error" not in ok, ok
            urls = [o["url"] for o in ok["outputs"]]
            assert all("X-Goog-Signature=" in u for u in urls), urls  # signed with the sentinel key
            signatures = [u.split("X-Goog-Signature=", 1)[1].split("&")[0] for u in urls]
            cap.results.append(ok)
            proxy.set(always=403)
            cap.results.append(w.run({"workflow": workflow(1)}, "sec-403"))
            proxy.set()
            cap.results.append(w.run({"workflow": workflow(1), "output": "local"}, "sec-local"))
            cap.results.append(w.run({"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}, "sec-bad"))
            for img in (f"https://169.254.169.254/latest?token={CIV}", f"https://user:{HF}@127.0.0.1/x.png",
                        f"https://localhost/x.png?sig={SIG}"):
                cap.results.append(w.run({"workflow": workflow(1), "images": [{"name": "a.png", "image": img}]},
                                         "sec-url"))
            w.faults({"die_during_prompt": 1})
            cap.results.append(w.run({"workflow": workflow(1)}, "sec-died"))
            w.sup.ensure_ready(30)
            cap.results.append(w.run({"action": "status"}, "sec-status"))
        finally:
            w.close()
            proxy.stop()
    # the died job is retried on the restarted ComfyUI; its first failure (with the log tail) is in "retried"
    assert sum("error" in r for r in cap.results) >= 5
    assert any(f["details"].get("log_tail") for r in cap.results for f in r.get("retried", ()))
    logs = cap.text()
    cap.search(secrets, where="logs/stdout/stderr", text=logs)
    cap.search(secrets, where="results", text=json.dumps(cap.results))
    cap.search(signatures + [SIG, "X-Goog-Signature"], where="logs (signed URL)", text=logs)
    for u in urls:
        assert u not in logs and u.split("?", 1)[1] not in logs
    cap.search(secrets + signatures, where="files written", text=_files_text(tmp_path, {sa}))


def test_model_fetches_never_leak_tokens(tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    cap = Captured(caplog, capfd)
    data = os.urandom(100_000)
    records: list[dict] = []
    with ModelFileServer() as srv, FakeHfHub() as hub:
        srv.add("/cdn/m.safetensors", data)
        srv.add("/api/download/models/1", require_token=CIV,
                redirect=srv.alt_url + f"/cdn/m.safetensors?sig={SIG}")
        srv.add("/api/download/models/2", require_token="another-token")
        hub.add_repo("org/private", {"m.safetensors": data}, token=HF)
        hub.add_repo("org/other", {"m.safetensors": data}, token="other-token")
        cfg = BuildConfig.from_env({"HOME": str(tmp_path / "home"), "COMFY_CACHE_ROOT": str(tmp_path / "cache"),
                                    "HF_TOKEN": HF, "CIVITAI_TOKEN": CIV, "CIVITAI_ENDPOINT": srv.url,
                                    "HF_ENDPOINT": hub.url, "MODEL_DOWNLOAD_CONNECTIONS": "1"},
                                   volume_root=tmp_path / "nv", container=False)
        entries = [
            {"source": "civitai:1", "name": "ok.safetensors", "target_subdir": "loras"},
            {"source": "civitai:2", "name": "denied.safetensors", "target_subdir": "loras"},
            {"source": "hf://org/private/m.safetensors", "target_subdir": "unet"},
            {"source": "hf://org/other/m.safetensors", "name": "other.safetensors", "target_subdir": "unet"},
            {"source": srv.url + f"/missing.bin?token={CIV}&sig={SIG}", "name": "q.bin"},
        ]
        for entry in entries:  # one by one: each failure is its own record
            records += realize_models([entry], cfg=cfg, models_dir=tmp_path / "models", offline=False,
                                      raise_on_error=False)
    statuses = [r["status"] for r in records]
    assert statuses[0] == "fetched" and statuses[2] == "fetched", records
    assert all(s in ("missing", "mismatch") for s in (statuses[1], statuses[3], statuses[4])), records
    text = cap.text()
    # A record's "source" is the spec's own text, echoed into the lock (a URL the user wrote with a query in
    # it stays theirs); everything the fetch adds (errors, resolved sources) is searched.
    derived = [{k: v for k, v in r.items() if k != "source"} for r in records]
    for where, blob in (("logs/stdout/stderr", text), ("records/errors", json.dumps(derived)),
                        ("files written", _files_text(tmp_path, set()))):
        cap.search([HF, CIV, SIG], where=where, text=blob)
