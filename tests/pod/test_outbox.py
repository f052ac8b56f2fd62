"""Outbox: durable exactly-once enqueue (real SQLite files) and the in-order sender
driven by a fake ``send``."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import stat
import time

import pytest

from pod.backoff import Backoff
from pod.errors import PortalAuthRejected, PortalRejected, PortalUnavailable, QueueItemInvalid
from pod.outbox import Item, Outbox, OutboxSender
from pod.worker import WorkerSettings


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def box(tmp_path):
    ob = Outbox(str(tmp_path / "state" / "outbox.db"))
    yield ob
    ob.close()


def test_put_is_exactly_once_by_key(box):
    assert box.put("detect", "evt-1", b'{"a":1}', now=100.0) is True
    assert box.put("detect", "evt-1", b'{"a":2}', now=101.0) is False
    assert box.depth() == 1
    item = box.next_pending(now=200.0)
    assert item.key == "evt-1" and item.body == b'{"a":1}' and item.created == 100.0
    # a parked key is still "there": enqueueing it again changes nothing
    box.park(item.id, "HTTP 400")
    assert box.put("detect", "evt-1", b'{"a":3}', now=102.0) is False
    assert box.depth() == 0 and box.failed() == 1


def test_due_rows_come_in_order_and_a_waiting_row_is_overtaken(box):
    for i in range(5):
        box.put("detect", f"k{i}", f"{i}".encode(), now=10.0 + i)
    seen = []
    while (item := box.next_pending(now=1000.0)) is not None:
        seen.append(item.key)
        box.delete(item.id)
    assert seen == ["k0", "k1", "k2", "k3", "k4"]

    for k in ("a", "b", "c"):
        box.put("detect", k, k.encode(), now=1.0)
    head = box.next_pending(now=1.0)
    box.retry_later(head.id, 50.0, "down", now=10.0, strike=True)
    assert [i.key for i in box.due(now=20.0, limit=5)] == ["b", "c"]  # "a" waits: the others go first, in order
    assert [i.key for i in box.due(now=20.0, limit=5, busy=["b"])] == ["c"]  # in flight: not handed out twice
    assert box.next_due() == 1.0 and box.next_due(busy=["b", "c"]) == 60.0
    again = box.due(now=60.0)[0]
    assert (again.key, again.attempts, again.strikes, again.failed_at, again.last_error) == ("a", 1, 1, 10.0, "down")
    assert box.make_due(now=30.0) == 0  # a row with strikes keeps its own delay


def test_not_due_until_next_attempt(box):
    box.put("detect", "x", b"x", now=100.0)
    assert box.next_pending(now=99.0) is None
    assert box.next_pending(now=100.0).key == "x"


def test_survives_close_and_reopen(tmp_path):
    path = str(tmp_path / "outbox.db")
    ob = Outbox(path)
    ob.put("detect", "e1", b"one", now=1.0)
    ob.put("detect", "e2", b"two", now=2.0)
    ob.retry_later(ob.next_pending(now=5.0).id, 3.0, "PortalUnavailable: boom", now=5.0)
    ob.close()

    ob2 = Outbox(path)  # the pod restarted
    try:
        assert ob2.depth() == 2
        assert [i.key for i in ob2.due(now=7.0, limit=5)] == ["e2"]  # the retry schedule survived too
        first = ob2.next_pending(now=8.0)
        assert (first.key, first.body, first.attempts) == ("e1", b"one", 1)
        assert ob2.put("detect", "e1", b"dup", now=9.0) is False
        ob2.delete(first.id)
        assert ob2.next_pending(now=9.0).key == "e2"
    finally:
        ob2.close()


def test_wal_mode_and_private_file_modes(tmp_path):
    parent = tmp_path / "newdir"
    path = parent / "outbox.db"
    ob = Outbox(str(path))
    try:
        ob.put("detect", "k", b"x", now=1.0)
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert (parent / "outbox.db-wal").exists()
        assert mode(path) == 0o600
        assert mode(parent / "outbox.db-wal") & 0o077 == 0
        assert mode(parent) == 0o700
    finally:
        ob.close()


def test_enqueues_stay_fsynced_after_a_relaxed_delete(tmp_path):
    """Only the delete of a delivered row skips its fsync; the connection is back to
    synchronous=FULL (2) for every put, so a queued detection survives a power cut."""
    ob = Outbox(str(tmp_path / "outbox.db"))
    try:
        ob.put("detect", "a", b"x", now=1.0)
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2
        ob.delete(ob.next_pending(now=2.0).id)
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2
        ob.put("detect", "b", b"y", now=3.0)
        assert ob.next_pending(now=4.0).key == "b"
    finally:
        ob.close()


def test_existing_world_readable_file_is_tightened(tmp_path):
    path = tmp_path / "outbox.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    Outbox(str(path)).close()
    assert mode(path) == 0o600


def test_eviction_beyond_max_items_is_counted_and_logged(tmp_path, caplog):
    ob = Outbox(str(tmp_path / "o.db"), max_items=3)
    try:
        with caplog.at_level(logging.WARNING, logger="platebridge.pod.outbox"):
            for i in range(5):
                assert ob.put("detect", f"k{i}", b"x", now=float(i))
        assert ob.depth() == 3 and ob.evicted == 2
        assert [i.key for i in ob.items()] == ["k2", "k3", "k4"]  # the oldest went
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "dropped the 1 oldest pending" in
                    r.getMessage()]
        assert len(warnings) == 2 and "k0" in warnings[0].getMessage()
        assert ob.oldest_age(now=10.0) == 8.0
        assert ob.dropped() == {"detect:pending_cap": 2}
    finally:
        ob.close()
    again = Outbox(str(tmp_path / "o.db"), max_items=3)  # the count outlives the process (the metric reads it)
    try:
        assert again.dropped() == {"detect:pending_cap": 2} and again.evicted == 0
    finally:
        again.close()
    with pytest.raises(ValueError):
        Outbox(str(tmp_path / "bad.db"), max_items=0)


def test_parked_rows_have_their_own_cap(tmp_path, caplog):
    """Parked rows never push pending ones out (and the other way round): each kind has
    its own cap, and what goes over it is logged and counted by reason."""
    ob = Outbox(str(tmp_path / "o.db"), max_items=3, max_parked=2)
    try:
        for i in range(3):
            ob.put("detect", f"p{i}", b"x", now=float(i))
        for item in ob.items():
            ob.park(item.id, "HTTP 401", reason="auth", now=5.0)
        assert ob.failed() == 2 and ob.dropped() == {"detect:parked_cap": 1}
        assert [i.key for i in ob.items("failed")] == ["p1", "p2"]
        for i in range(3):  # a full pending queue next to a full parked one
            ob.put("detect", f"n{i}", b"x", now=10.0 + i)
        assert ob.depth() == 3 and ob.failed() == 2 and ob.parked_by_reason() == {"auth": 2}
        with caplog.at_level(logging.WARNING, logger="platebridge.pod.outbox"):
            dropped = ob.drop(keys=["p1"])
        assert [d.key for d in dropped] == ["p1"] and ob.failed() == 1
        assert ob.dropped() == {"detect:parked_cap": 1, "detect:operator": 1}
        assert any("dropped detect p1" in r.getMessage() and "auth" in r.getMessage() for r in caplog.records)
        assert ob.requeue(now=20.0, reason="auth") == 1 and ob.items()[0].key == "p2"  # back in its old place
        with pytest.raises(ValueError):
            ob.drop()
    finally:
        ob.close()


def test_counters(box):
    assert box.oldest_age(now=5.0) is None and box.next_due() is None
    box.put("detect", "a", b"a", now=1.0)
    box.put("detect", "b", b"b", now=2.0)
    box.park(box.next_pending(now=3.0).id, "HTTP 400: bad body Bearer abc.def")
    assert box.depth() == 1 and box.failed() == 1
    parked = box.items("failed")[0]
    assert parked.state == "failed" and "abc.def" not in parked.last_error  # stored redacted
    assert parked.park_reason == "rejected" and box.parked_by_reason() == {"rejected": 1}
    assert box.oldest_age(now=5.0) == 3.0
    assert box.requeue_failed(now=6.0) == 1
    assert box.failed() == 0 and box.next_pending(now=6.0).key == "a"  # back in its original place


# --- sender ---


class FakePortal:
    """A fake ``send``: scripted outcomes per key (exceptions raised in turn, then success)."""

    def __init__(self, script: dict[str, list[BaseException]] | None = None) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.attempts: list[tuple[str, float]] = []
        self.delivered: list[str] = []
        self.changed = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def send(self, item: Item) -> None:
        self.attempts.append((item.key, time.monotonic()))
        self.changed.set()
        if self.gate is not None:
            await self.gate.wait()
        outcomes = self.script.get(item.key)
        if outcomes:
            raise outcomes.pop(0)
        self.delivered.append(item.key)
        self.changed.set()


async def wait_for(pred, timeout: float = 5.0, fake: FakePortal | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("condition not met in time")
        if fake is not None:
            fake.changed.clear()
            try:
                await asyncio.wait_for(fake.changed.wait(), min(left, 0.05))
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(0.01)


class Running:
    def __init__(self, sender: OutboxSender) -> None:
        self.sender, self.stop = sender, asyncio.Event()

    async def __aenter__(self):
        self.task = asyncio.create_task(self.sender.run(self.stop))
        return self

    async def __aexit__(self, *exc):
        self.stop.set()
        await asyncio.wait_for(self.task, 5)


def fast_backoff(initial=0.05, cap=0.2) -> Backoff:
    return Backoff(initial=initial, cap=cap, jitter=0.0, rng=random.Random(1))


async def test_sender_delivers_in_order(box):
    fake = FakePortal()
    for k in ("a", "b", "c"):
        box.put("detect", k, k.encode(), now=time.time())
    async with Running(OutboxSender(box, fake.send, fast_backoff())):
        await wait_for(lambda: box.depth() == 0, fake=fake)
    assert fake.delivered == ["a", "b", "c"]


async def test_a_failing_row_moves_behind_and_the_others_keep_their_order(box):
    """No head-of-line block: "a" fails (connect refused); "b" goes out after the short
    pause that follows a failure. That success shows the portal is back, so "a" — which
    failed only because of it — is due again at once; it fails again (503 while "b" went
    through: a strike against "a"), so "c" goes on and "a" waits its own, longer delay."""
    fake = FakePortal({"a": [PortalUnavailable("connect refused"), PortalUnavailable("HTTP 503", status=503)]})
    for k in ("a", "b", "c"):
        box.put("detect", k, k.encode(), now=time.time())
    sender = OutboxSender(box, fake.send, fast_backoff(initial=0.1, cap=1.0))
    async with Running(sender):
        await wait_for(lambda: box.depth() == 0, fake=fake)
    keys = [k for k, _ in fake.attempts]
    assert keys == ["a", "b", "a", "c", "a"]
    assert fake.delivered == ["b", "c", "a"]
    times = [t for _, t in fake.attempts]
    assert times[1] - times[0] >= 0.09  # the queue paused 0.1 s after the failure
    assert times[4] - times[2] >= 0.39  # after its strike "a" waited its own delay (2 x 0.2 s)
    assert sender.retried == 2 and sender.delivered == 3 and sender.backoff.attempt == 0
    assert box.failed() == 0 and box.get("a") is None


async def test_a_poison_row_is_parked_after_max_attempts_while_others_flow(box, caplog):
    """One row the portal answers 500 for, forever: it never blocks the others, and once it
    failed ``max_attempts`` times while other rows were delivered it is parked with the
    reason — never retried for ever, never dropped."""
    fake = FakePortal({"poison": [PortalUnavailable("HTTP 500", status=500)] * 100})
    box.put("detect", "poison", b"p", now=time.time())
    for i in range(30):
        box.put("detect", f"ok{i}", b"o", now=time.time())
    sender = OutboxSender(box, fake.send, settings=WorkerSettings(concurrency=1, retry_initial=0.01, retry_max=0.02,
                                                                  max_attempts=3, idle_poll=0.05))

    async def trickle():  # detections keep coming while the poison row is retried
        for i in range(30, 60):
            box.put("detect", f"ok{i}", b"o", now=time.time())
            sender.wake()
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR, logger="platebridge.pod.worker"):
        async with Running(sender):
            await trickle()
            await wait_for(lambda: box.depth() == 0, fake=fake)
    poison = box.get("poison")
    assert poison.state == "failed" and poison.park_reason == "attempts" and "HTTP 500" in poison.last_error
    assert poison.strikes == 2 and poison.attempts == 4  # the first failure is no strike; the 3rd strike parks
    assert sorted(fake.delivered) == sorted(f"ok{i}" for i in range(60))
    assert fake.delivered[:30] == [f"ok{i}" for i in range(30)]  # the rest kept their order
    assert [k for k, _ in fake.attempts].count("poison") == 4 and sender.parked == 1
    assert any("parked after 3 failed attempts" in r.getMessage() for r in caplog.records)


async def test_an_outage_parks_nothing_and_the_order_holds(box):
    """Every request fails (portal down) for many rounds: no row collects strikes (nothing
    was delivered in between), nothing is parked, and afterwards every row goes out in order."""
    up = False
    sent: list[str] = []

    async def send(item):
        if not up:
            raise PortalUnavailable("connect refused")
        sent.append(item.key)

    for i in range(5):
        box.put("detect", f"k{i}", b"x", now=time.time())
    sender = OutboxSender(box, send, settings=WorkerSettings(retry_initial=0.005, retry_max=0.01, max_attempts=2,
                                                             idle_poll=0.05))
    async with Running(sender):
        await wait_for(lambda: sender.retried >= 20)
        assert box.failed() == 0 and all(i.strikes == 0 for i in box.items())
        up = True
        await wait_for(lambda: box.depth() == 0)
    assert sorted(sent) == [f"k{i}" for i in range(5)] and sent[2:] == ["k2", "k3", "k4"]


async def test_401_holds_the_queue_parks_for_auth_and_comes_back_in_place(box, caplog):
    """A refused API key: the row is parked ``auth`` and nothing more is sent (no other row
    is parked, no request hammers the portal); when an authenticated call succeeds the
    parked row is re-queued in its old place and everything goes out in order."""
    ok = False
    tries: list[str] = []
    sent: list[str] = []

    async def send(item):
        tries.append(item.key)
        if not ok:
            raise PortalAuthRejected(401, "POST /api/pod/detect: HTTP 401: unauthorized")
        sent.append(item.key)

    for k in ("a", "b", "c"):
        box.put("detect", k, k.encode(), now=time.time())
    sender = OutboxSender(box, send, fast_backoff(), idle_poll=0.05)
    with caplog.at_level(logging.ERROR, logger="platebridge.pod.worker"):
        async with Running(sender):
            await wait_for(lambda: sender.held == "auth")
            await asyncio.sleep(0.3)
            assert box.parked_by_reason() == {"auth": 1} and box.depth() == 2 and tries == ["a"]
            ok = True  # e.g. a heartbeat with the new key succeeded
            assert sender.authenticated() == 1
            assert sender.authenticated() == 0  # cheap when there is nothing to do
            await wait_for(lambda: box.depth() == 0)
    assert sent == ["a", "b", "c"] and sender.held is None and box.failed() == 0
    assert any("refused the API key" in r.getMessage() for r in caplog.records)


async def test_concurrency_is_bounded(box):
    fake = FakePortal()
    fake.gate = asyncio.Event()
    for i in range(10):
        box.put("detect", f"k{i}", b"x", now=time.time())
    sender = OutboxSender(box, fake.send, settings=WorkerSettings(concurrency=4, idle_poll=0.05))
    async with Running(sender):
        await wait_for(lambda: len(fake.attempts) == 4, fake=fake)
        await asyncio.sleep(0.1)
        assert [k for k, _ in fake.attempts] == ["k0", "k1", "k2", "k3"] and len(sender.in_flight) == 4
        fake.gate.set()
        await wait_for(lambda: box.depth() == 0, fake=fake)
    assert sorted(fake.delivered) == [f"k{i}" for i in range(10)] and len(fake.attempts) == 10


async def test_an_unreadable_body_is_parked_invalid(box):
    async def send(item):
        raise QueueItemInvalid("stored body is not a detect request")

    box.put("detect", "bad", b"\x00garbage", now=time.time())
    async with Running(OutboxSender(box, send, fast_backoff())):
        await wait_for(lambda: box.depth() == 0)
    assert box.get("bad").park_reason == "invalid"


@pytest.mark.parametrize("exc", [PortalUnavailable("HTTP 429", status=429), PortalRejected(408), PortalRejected(429)])
async def test_408_and_429_are_retried_not_parked(box, exc):
    fake = FakePortal({"a": [exc]})
    box.put("detect", "a", b"a", now=time.time())
    box.put("detect", "b", b"b", now=time.time())
    async with Running(OutboxSender(box, fake.send, fast_backoff(initial=0.01))):
        await wait_for(lambda: box.depth() == 0, fake=fake)
    assert [k for k, _ in fake.attempts] == ["a", "b", "a"]  # "a" waits its delay, "b" goes meanwhile
    assert box.failed() == 0 and fake.delivered == ["b", "a"]


async def test_rejected_400_is_parked_with_reason_and_queue_moves_on(box, caplog):
    fake = FakePortal({"a": [PortalRejected(400, "POST /api/pod/detect: HTTP 400: missing plate")]})
    box.put("detect", "a", b"a", now=time.time())
    box.put("detect", "b", b"b", now=time.time())
    sender = OutboxSender(box, fake.send, fast_backoff())
    with caplog.at_level(logging.ERROR, logger="platebridge.pod.outbox"):
        async with Running(sender):
            await wait_for(lambda: box.depth() == 0, fake=fake)
    assert [k for k, _ in fake.attempts] == ["a", "b"]  # a was tried once, never again
    assert box.failed() == 1 and sender.parked == 1
    parked = box.get("a")
    assert parked.state == "failed" and "400" in parked.last_error and "missing plate" in parked.last_error
    assert any("missing plate" in r.getMessage() and "a" in r.getMessage() for r in caplog.records)


async def test_deleted_only_after_success(tmp_path):
    path = str(tmp_path / "o.db")
    box = Outbox(path)
    fake = FakePortal()
    fake.gate = asyncio.Event()
    box.put("detect", "a", b"a", now=time.time())
    task = asyncio.create_task(OutboxSender(box, fake.send, fast_backoff()).run(asyncio.Event()))
    await wait_for(lambda: len(fake.attempts) == 1, fake=fake)
    assert box.depth() == 1  # in flight: still in the outbox
    task.cancel()  # the pod dies mid-send
    with pytest.raises(asyncio.CancelledError):
        await task
    box.close()
    box = Outbox(path)  # restart: the row is still there and goes out again
    fake.gate = None
    try:
        async with Running(OutboxSender(box, fake.send, fast_backoff())):
            await wait_for(lambda: box.depth() == 0, fake=fake)
        assert fake.delivered == ["a"] and [k for k, _ in fake.attempts] == ["a", "a"]
    finally:
        box.close()


async def test_unexpected_exception_is_retried_not_lost(box):
    fake = FakePortal({"a": [RuntimeError("bug")]})
    box.put("detect", "a", b"a", now=time.time())
    async with Running(OutboxSender(box, fake.send, fast_backoff(initial=0.01))):
        await wait_for(lambda: box.depth() == 0, fake=fake)
    assert fake.delivered == ["a"] and box.failed() == 0


async def test_wake_delivers_promptly(box):
    fake = FakePortal()
    sender = OutboxSender(box, fake.send, fast_backoff(), idle_poll=60.0)
    async with Running(sender):
        await asyncio.sleep(0.05)  # the sender is idle, waiting up to idle_poll
        assert fake.attempts == []
        t0 = time.monotonic()
        box.put("detect", "late", b"x", now=time.time())
        sender.wake()
        await wait_for(lambda: fake.delivered == ["late"], timeout=2.0, fake=fake)
        assert time.monotonic() - t0 < 1.0
        # once the sender is back asleep, without wake() nothing is looked at before idle_poll
        await wait_for(lambda: sender.sleeping and not sender.in_flight, timeout=2.0, fake=fake)
        box.put("detect", "unwoken", b"y", now=time.time())
        await asyncio.sleep(0.2)
        assert fake.delivered == ["late"] and box.depth() == 1


async def test_stop_returns_promptly_while_idle(box):
    sender = OutboxSender(box, FakePortal().send, fast_backoff(), idle_poll=60.0)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 1.0)


async def test_retry_now_drains_a_backlog_without_waiting_for_the_backoff(tmp_path):
    """A heartbeat that succeeds after an outage must not leave the backlog waiting for
    the last retry delay (found by bench/decisions.py)."""
    import asyncio

    from pod.backoff import Backoff
    from pod.errors import PortalUnavailable
    from pod.outbox import Outbox, OutboxSender

    box = Outbox(tmp_path / "o.sqlite3")
    for i in range(3):
        box.put("detect", f"k{i}", b"{}", 0.0)
    up = False
    sent = []

    async def send(item):
        if not up:
            raise PortalUnavailable("down")
        sent.append(item.key)

    sender = OutboxSender(box, send, Backoff(30.0, 60.0, jitter=0.0))
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        for _ in range(100):
            if sender.retried:
                break
            await asyncio.sleep(0.01)
        assert sender.retried >= 1 and sent == []  # now waiting ~30 s for the next try
        up = True
        assert sender.retry_now() >= 1
        for _ in range(200):
            if len(sent) == 3:
                break
            await asyncio.sleep(0.01)
        assert sent == ["k0", "k1", "k2"] and box.depth() == 0
    finally:
        stop.set()
        sender.wake()
        await asyncio.wait_for(task, 5)
        box.close()
