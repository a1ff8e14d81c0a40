"""``WorkerContext``: everything a job needs (config, directories, the supervised ComfyUI, its clients,
the cache, counters), built once by ``main``, ``localrun`` or a test and passed to ``handler.handle``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from rp_handler.clients import ClientPool
from rp_handler.config import WorkerConfig
from rp_handler.process import ComfyDirs
from rp_handler.supervisor import Supervisor

if TYPE_CHECKING:
    from rp_handler.cache.worker import WorkerCache
    from rp_handler.comfy import ComfyClient

log = logging.getLogger("rp_handler.handler")  # records keep the logger name they had before the split


@dataclass
class WorkerContext:
    """Everything a job needs, built once by ``main`` (or a test)."""

    cfg: WorkerConfig
    dirs: ComfyDirs
    client_factory: Callable[[str], ComfyClient]  # base_url -> connected client
    supervisor: Supervisor | None = None
    base_url: str = ""
    progress_sender: Callable[[dict, dict], None] | None = None  # (job, payload), e.g. runpod's progress_update
    lock_digest: str | None = None
    version_id: str = ""
    status_hooks: list[Callable[[], dict]] = field(default_factory=list)
    cache: WorkerCache | None = None  # when NVME_CACHE_DIR is set
    jobs_done: int = 0
    jobs_since_free: int = 0
    cold_reported: bool = False
    _history_ids: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    clients: ClientPool = field(init=False)

    def __post_init__(self) -> None:
        # One connected client (keep-alive HTTP + websocket) per job in flight, per ComfyUI incarnation.
        self.clients = ClientPool(lambda: self.client_factory(self.url))

    @property
    def url(self) -> str:
        return self.supervisor.proc.url if self.supervisor is not None else self.base_url

    def count_job(self) -> None:
        with self._lock:
            self.jobs_done += 1

    def first_result(self) -> bool:
        """True once: for the job whose result carries the cold-start timings."""
        with self._lock:
            first, self.cold_reported = not self.cold_reported, True
            return first

    def preconnect_when_ready(self) -> None:
        """Open the client on a thread as soon as ComfyUI is ready, so the first job finds it connected."""
        sup = self.supervisor
        if sup is None:
            return

        def run() -> None:
            try:
                with self.clients.lease(sup.ensure_ready(self.cfg.boot_timeout_s)):
                    pass
            except Exception as err:  # the first job reports it properly
                log.debug("pre-connect to ComfyUI failed: %s", err)

        threading.Thread(target=run, name="comfy-preconnect", daemon=True).start()

    def close(self) -> None:
        self.clients.close()
