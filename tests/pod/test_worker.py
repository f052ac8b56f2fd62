"""The durable worker's policy (pod/worker.py): failures by exception class, a damaged
queue file healed without stopping. The outbox and upload tests drive it end to end."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from pod.errors import (
    PortalAuthRejected,
    PortalNotFound,
    PortalRejected,
    PortalUnavailable,
    QueueItemInvalid,
    StorageConflict,
)
from pod.outbox import Outbox, OutboxSender
from pod.worker import Worker, WorkerSettings, classify


@pytest.mark.parametrize(("exc", "want"), [
    (PortalAuthRejected(401), ("hold", "auth")),
    (PortalAuthRejected(403), ("hold", "auth")),
    (PortalNotFound(404), ("retry", "not_found")),
    (PortalRejected(429), ("retry", "http_429")),
    (PortalRejected(408), ("retry", "http_408")),
    (PortalRejected(400), ("park", "rejected")),
    (StorageConflict(409), ("park", "rejected")),  # the uploader handles it before the worker sees it
    (QueueItemInvalid("x"), ("park", "invalid")),
    (PortalUnavailable("down", status=503), ("retry", "unavailable")),
    (RuntimeError("bug"), ("retry", "error")),
])
def test_failures_are_classified_by_exception_class(exc, want):
    assert classify(exc) == want


def test_a_failed_row_waits_longer_than_the_queue_pauses():
    """So the next probe after a failure is usually another row (see the module docs)."""
    w = Worker(source=None, settings=WorkerSettings(retry_initial=1.0, retry_max=10.0, jitter=0.0))  # type: ignore[arg-type]
    assert [w.row_delay(n) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert [w.backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    with pytest.raises(ValueError):
        WorkerSettings(concurrency=0)
    with pytest.raises(ValueError):
        WorkerSettings(retry_initial=5, retry_max=1)


async def test_a_damaged_queue_file_is_healed_and_the_worker_goes_on(tmp_path):
    """The queue's file turns out damaged while the worker runs (a read raises
    ``database disk image is malformed``): it is healed in place and delivery goes on."""
    box = Outbox(tmp_path / "o.sqlite3")
    for k in ("a", "b"):
        box.put("detect", k, b"{}", now=time.time())
    real_due = box.due
    calls = {"n": 0}

    def flaky_due(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return real_due(*a, **kw)

    box.due = flaky_due  # type: ignore[method-assign]
    sent: list[str] = []

    async def send(item):
        sent.append(item.key)

    sender = OutboxSender(box, send, settings=WorkerSettings(idle_poll=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        for _ in range(200):
            if box.depth() == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert sent == ["a", "b"] and len(box.state.recoveries) == 1
    assert box.state.recoveries[0].method == "sqlite"  # the file itself was fine: read back whole
    box.close()
