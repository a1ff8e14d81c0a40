"""Progress updates: throttled, coalesced, in order, nothing after close."""

from __future__ import annotations

import threading
import time

from rp_handler.progress import ProgressReporter


def test_throttled_in_order_and_coalesced():
    got: list[dict] = []
    lock = threading.Lock()

    def send(payload):
        with lock:
            got.append(payload)

    rep = ProgressReporter(send, interval=0.05, node_count=3)
    rep.node_started("1", "EmptyImage")
    for v in range(1, 101):
        rep.step("1", v, 100)
    time.sleep(0.2)
    rep.node_started("2", "SaveImage")
    time.sleep(0.2)
    rep.close()
    seqs = [p["seq"] for p in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len(got) < 20  # 102 updates were coalesced
    assert got[-1]["node"] == "2" and got[-1]["node_index"] == 2 and got[-1]["node_count"] == 3
    before = len(got)
    rep.step("2", 1, 1)  # after close: dropped
    time.sleep(0.1)
    assert len(got) == before


def test_no_sender_is_a_no_op():
    rep = ProgressReporter(None, interval=0.0, node_count=1)
    rep.node_started("1")
    rep.close()
    assert rep.sent == []


def test_cached_nodes_lower_the_count():
    got = []
    rep = ProgressReporter(got.append, interval=0.0, node_count=5)
    rep.cached(3)
    rep.node_started("4")
    deadline = time.monotonic() + 2
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    rep.close()
    assert got[0]["node_count"] == 2 and got[0]["node_index"] == 1
