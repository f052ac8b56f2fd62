"""Durable outbox of portal messages (SQLite in WAL mode) and its in-order sender.

Every gate decision is written here before anything is sent, so a portal or
network outage, or a pod restart, loses nothing. Each row carries an
idempotency key (for detections: the Frigate tracked-object id, sent as the
``Idempotency-Key`` header); enqueueing the same key twice is a no-op, and the
portal dedupes repeated deliveries, so delivery is effectively exactly-once.

Delivery is strictly in enqueue order: while the oldest pending row waits for
its retry, nothing behind it is sent. Rows the portal refuses for good
(HTTP 4xx other than 408/429) are parked (``state='failed'``) and kept for
inspection; the queue then moves on.

Times stored in the database are wall-clock Unix seconds (``time.time()``), so
retry schedules survive a restart. SQLite is used from the event-loop thread:
each statement is a local, short write (``synchronous=FULL`` fsyncs on commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from pod.backoff import Backoff
from pod.db import open_sqlite, transaction
from pod.errors import PortalRejected, PortalUnavailable
from protocol.redact import redact

log = logging.getLogger("platebridge.pod.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_state_id ON outbox (state, id);
"""
_COLUMNS = "id, kind, key, body, created, attempts, next_attempt, state, last_error"
_MAX_ERROR_CHARS = 500
RETRYABLE_STATUSES = frozenset({408, 429})


class Item(msgspec.Struct, frozen=True):
    """One outbox row. ``id`` gives the delivery order; ``key`` is the idempotency key;
    ``body`` the JSON bytes to send; ``created``/``next_attempt`` Unix seconds;
    ``state`` is ``'pending'`` or ``'failed'`` (parked)."""

    id: int
    kind: str
    key: str
    body: bytes
    created: float
    attempts: int
    next_attempt: float
    state: str
    last_error: str | None


def _item(row: tuple) -> Item:
    return Item(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], row[6], row[7], row[8])


def _clean_error(error: str) -> str:
    return redact(str(error))[:_MAX_ERROR_CHARS]


class Outbox:
    """The durable queue at ``path`` (an SQLite file).

    Creates the parent directory (mode 0700) and the file (mode 0600: bodies hold
    plates, which are personal data) when missing, and tightens an existing
    file to 0600. Sets ``journal_mode=WAL`` and ``synchronous=FULL``.
    ``max_items`` (>= 1) bounds the pending rows: beyond it the oldest pending
    rows are evicted, logged as a warning and counted in :attr:`evicted`.
    Parked rows are bounded by ``max_items`` too (oldest dropped first).
    Raises ``ValueError`` for ``max_items < 1`` and ``sqlite3.Error`` when the
    database cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str], max_items: int = 10_000) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.path = Path(path)
        self.max_items = max_items
        self.evicted = 0
        """Pending rows dropped because the queue was full (since this object was created)."""
        self._db = open_sqlite(self.path, _SCHEMA)

    # --- writes ---

    def put(self, kind: str, key: str, body: bytes, now: float) -> bool:
        """Enqueue ``body`` (JSON bytes) under idempotency ``key`` at ``now`` (Unix s).

        Returns False, changing nothing, when a row with ``key`` already exists
        (pending or parked): exactly-once enqueue. Evicts the oldest pending rows
        beyond ``max_items`` (see :attr:`evicted`).
        """
        with self._tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO outbox (kind, key, body, created, attempts, next_attempt, state) "
                "VALUES (?, ?, ?, ?, 0, ?, 'pending')",
                (kind, key, bytes(body), float(now), float(now)),
            )
            if cur.rowcount == 0:
                return False
            evicted = self._evict_locked()
        if evicted:
            self.evicted += evicted
            log.warning("outbox full (max %d): evicted the %d oldest pending item(s); %d evicted so far",
                        self.max_items, evicted, self.evicted)
        return True

    def _evict_locked(self) -> int:
        n = 0
        for state in ("pending", "failed"):
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = ?", (state,)).fetchone()
            excess = count - self.max_items
            if excess > 0:
                self._db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = ? ORDER BY id LIMIT ?)",
                    (state, excess),
                )
                if state == "pending":
                    n = excess
                else:
                    log.warning("outbox: dropped the %d oldest parked item(s)", excess)
        return n

    def delete(self, item_id: int) -> None:
        """Remove row ``item_id`` (after the portal accepted it). Unknown ids are ignored.

        This one commit runs with ``synchronous=NORMAL`` (WAL: no fsync of its own; the
        next ``put``'s fsync or a checkpoint makes it durable): a power cut can at worst
        bring a delivered row back, which is sent again and deduplicated by the portal on
        its idempotency key. Rows are never lost this way, and the drain after an outage
        no longer pays one fsync per delivered detection.
        """
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._tx():
                self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def retry_later(self, item_id: int, delay_s: float, error: str, *, now: float | None = None) -> None:
        """Count a failed attempt of ``item_id`` and make it due again ``delay_s`` seconds
        after ``now`` (Unix s, default the current time). ``error`` is stored redacted."""
        now = time.time() if now is None else now
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE id = ?",
                (now + max(0.0, float(delay_s)), _clean_error(error), item_id),
            )

    def park(self, item_id: int, error: str) -> None:
        """Mark ``item_id`` failed (never retried, kept for inspection); ``error`` stored redacted."""
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, state = 'failed', last_error = ? WHERE id = ?",
                (_clean_error(error), item_id),
            )

    def requeue_failed(self, now: float) -> int:
        """Move every parked row back to pending, due at ``now`` (Unix s), e.g. after a
        wrong API key (HTTP 401) was fixed. Rows keep their place in delivery order.
        Returns how many rows were requeued."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE outbox SET state = 'pending', next_attempt = ? WHERE state = 'failed'", (float(now),))
        return cur.rowcount

    # --- reads ---

    def next_pending(self, now: float) -> Item | None:
        """The oldest pending row if it is due (``next_attempt <= now``), else None.

        Never returns a row that sits behind a not-yet-due older row: delivery
        order is enqueue order. See :meth:`next_due` for when to look again.
        """
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None or row[6] > now:
            return None
        return _item(row)

    def make_due(self, now: float) -> int:
        """Set ``next_attempt`` of every pending row waiting past ``now`` to ``now``; returns the count."""
        with self._tx():
            cur = self._db.execute("UPDATE outbox SET next_attempt = ? WHERE state = 'pending' AND next_attempt > ?",
                                   (now, now))
        return cur.rowcount

    def next_due(self) -> float | None:
        """``next_attempt`` (Unix s) of the oldest pending row, or None when nothing is pending."""
        row = self._db.execute("SELECT next_attempt FROM outbox WHERE state = 'pending' ORDER BY id LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def get(self, key: str) -> Item | None:
        """The row with idempotency ``key`` (any state), or None."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE key = ?", (key,)).fetchone()
        return None if row is None else _item(row)

    def items(self, state: str = "pending") -> list[Item]:
        """All rows in ``state`` (``'pending'`` or ``'failed'``), in delivery order."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE state = ? ORDER BY id", (state,)).fetchall()
        return [_item(r) for r in rows]

    def depth(self) -> int:
        """Number of pending rows."""
        return self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0]

    def failed(self) -> int:
        """Number of parked (failed) rows."""
        return self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'failed'").fetchone()[0]

    def oldest_age(self, now: float) -> float | None:
        """Seconds since the oldest pending row was enqueued, or None when empty."""
        row = self._db.execute("SELECT MIN(created) FROM outbox WHERE state = 'pending'").fetchone()
        return None if row is None or row[0] is None else max(0.0, now - row[0])

    def close(self) -> None:
        """Close the database (idempotent)."""
        with contextlib.suppress(sqlite3.ProgrammingError):
            self._db.close()

    def _tx(self):
        return transaction(self._db)


class OutboxSender:
    """Delivers outbox rows one at a time, in order, through ``send``.

    ``send(item)`` is awaited for the oldest due row and must raise
    :class:`~pod.errors.PortalUnavailable` for transient failures (the row is
    retried after ``backoff.next_delay()`` seconds and nothing behind it is
    sent meanwhile) or :class:`~pod.errors.PortalRejected` for permanent ones
    (the row is parked with the reason logged; 408/429 are treated as
    transient even when raised as ``PortalRejected``). Any other exception is
    logged and treated as transient. A row is deleted only after ``send``
    returned, so a crash mid-send means a repeat delivery (the portal dedupes
    by idempotency key), never a loss.

    ``clock`` returns Unix seconds (default ``time.time``); ``idle_poll`` bounds
    (seconds) how long the sender sleeps with nothing due before looking at
    the database again. Counters: :attr:`delivered`, :attr:`retried`, :attr:`parked`.
    """

    def __init__(
        self,
        outbox: Outbox,
        send: Callable[[Item], Awaitable[None]],
        backoff: Backoff,
        *,
        clock: Callable[[], float] = time.time,
        idle_poll: float = 30.0,
    ) -> None:
        self.outbox, self.send, self.backoff = outbox, send, backoff
        self.clock, self.idle_poll = clock, idle_poll
        self.delivered = self.retried = self.parked = 0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look at the queue now (call after :meth:`Outbox.put`, from the event-loop thread).
        A row waiting for its retry delay stays waiting."""
        self._wake.set()

    def retry_now(self) -> int:
        """The portal is known to be reachable again (e.g. a heartbeat just succeeded):
        make waiting rows due now, restart the backoff schedule and wake the sender,
        so a backlog drains at once instead of after the last retry delay.
        Returns how many rows were waiting."""
        n = self.outbox.make_due(self.clock())
        self.backoff.reset()
        self._wake.set()
        return n

    async def run(self, stop_event: asyncio.Event) -> None:
        """Deliver until ``stop_event`` is set. Returns after the send in flight (if any) ends."""
        while not stop_event.is_set():
            self._wake.clear()
            now = self.clock()
            item = self.outbox.next_pending(now)
            if item is None:
                due = self.outbox.next_due()
                timeout = self.idle_poll if due is None else min(self.idle_poll, max(0.0, due - now))
                await self._sleep(stop_event, timeout)
                continue
            await self._deliver(item)

    async def _deliver(self, item: Item) -> None:
        try:
            await self.send(item)
        except PortalRejected as exc:
            if exc.status in RETRYABLE_STATUSES:
                self._retry(item, exc)
                return
            self.outbox.park(item.id, f"HTTP {exc.status}: {exc}")
            self.parked += 1
            self.backoff.reset()  # the portal answered: it is reachable
            log.error("outbox: portal rejected %s %s (HTTP %s): %s; parked, moving on",
                      item.kind, item.key, exc.status, redact(str(exc)))
        except PortalUnavailable as exc:
            self._retry(item, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("outbox: unexpected error sending %s %s", item.kind, item.key)
            self._retry(item, exc)
        else:
            self.outbox.delete(item.id)
            self.delivered += 1
            self.backoff.reset()

    def _retry(self, item: Item, exc: BaseException) -> None:
        delay = self.backoff.next_delay()
        self.outbox.retry_later(item.id, delay, f"{type(exc).__name__}: {exc}", now=self.clock())
        self.retried += 1
        log.warning("outbox: %s %s not delivered (%s); attempt %d, retrying in %.1f s",
                    item.kind, item.key, redact(str(exc)) or type(exc).__name__, item.attempts + 1, delay)

    async def _sleep(self, stop_event: asyncio.Event, timeout: float) -> None:
        if timeout <= 0:
            return
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop_event.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
