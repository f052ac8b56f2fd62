"""Durable outbox of portal messages (SQLite in WAL mode) and its sender.

Every gate decision is written here before anything is sent, so a portal or network
outage, or a pod restart, loses nothing. Each row carries an idempotency key (for
detections: the Frigate tracked-object id, sent as the ``Idempotency-Key`` header);
enqueueing the same key twice is a no-op, and the portal dedupes repeated deliveries, so
delivery is effectively exactly-once.

Rows are ``pending`` (waiting to be sent) or parked (``state='failed'``) with a
``park_reason``:

* ``auth`` — the portal refused the API key (401/403). Re-queued automatically, in their
  old place, as soon as an authenticated call succeeds (a heartbeat) or a new key is
  loaded (SIGHUP), and at every start.
* ``rejected`` — the portal refused the body for good (a 4xx other than 401/403/404/408/429).
* ``attempts`` — failed ``max_attempts`` times while other rows went through (a poison row).
* ``invalid`` — cannot be sent as stored (e.g. a body salvaged from a damaged file).

Parked rows are kept for the operator (``platebridge-pod outbox list|retry|drop``).
Pending and parked rows have separate caps (``max_items``, ``max_parked``): beyond them the
oldest rows of that kind are dropped — each drop logged (warning) and counted, in this
object (:attr:`Outbox.evicted`) and persistently (``dropped:<kind>:<reason>`` counters of
the state file, also the ``platebridge_pod_dropped_total`` metric).

Delivery (:class:`OutboxSender`, a :class:`pod.worker.Worker`): oldest first, a few rows in
flight, a row that keeps failing moves behind the others — see :mod:`pod.worker` for the
retry policy and the order the portal sees.

Times stored in the database are wall-clock Unix seconds (``time.time()``), so retry
schedules survive a restart. SQLite is used from the event-loop thread: each statement is a
short local write (``synchronous=FULL`` fsyncs on commit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Iterable

import msgspec

from pod.backoff import Backoff
from pod.db import StateDB, Table
from pod.worker import Worker, WorkerSettings, clean_error

log = logging.getLogger("platebridge.pod.outbox")

TABLE = Table(
    name="outbox",
    schema="""
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    park_reason TEXT,
    strikes INTEGER NOT NULL DEFAULT 0,
    failed_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_state_id ON outbox (state, id);
""",
    key="key",
    min_columns=9,
    added={"park_reason": "TEXT", "strikes": "INTEGER NOT NULL DEFAULT 0", "failed_at": "REAL"},
)
_COLUMNS = "id, kind, key, body, created, attempts, next_attempt, state, last_error, park_reason, strikes, failed_at"


class Item(msgspec.Struct, frozen=True):
    """One outbox row. ``id`` gives the queue order; ``key`` is the idempotency key; ``body``
    the JSON bytes to send; ``created``/``next_attempt``/``failed_at`` Unix seconds
    (``failed_at``: the last failed attempt, None before one); ``state`` is ``'pending'`` or
    ``'failed'`` (parked, with ``park_reason``); ``attempts`` counts failed attempts,
    ``strikes`` those that counted against the row (see :mod:`pod.worker`)."""

    id: int
    kind: str
    key: str
    body: bytes
    created: float
    attempts: int
    next_attempt: float
    state: str
    last_error: str | None
    park_reason: str | None = None
    strikes: int = 0
    failed_at: float | None = None


def _item(row: tuple) -> Item:
    body = row[3] if isinstance(row[3], bytes) else str(row[3]).encode()
    return Item(row[0], row[1], row[2], body, row[4], row[5], row[6], row[7], row[8], row[9], int(row[10] or 0),
                row[11])


class Outbox:
    """The durable queue in ``db``: a :class:`~pod.db.StateDB` (shared with the other
    stores of the agent) or the path of an SQLite file of its own.

    A path creates the parent directory (mode 0700) and the file (mode 0600: bodies hold
    plates, which are personal data), tightens an existing file to 0600, sets
    ``journal_mode=WAL`` and ``synchronous=FULL``, and heals a damaged file
    (:meth:`pod.db.StateDB.heal`). ``max_items`` (>= 1) bounds the pending rows and
    ``max_parked`` (>= 1, default ``max_items``) the parked ones, separately; beyond each the
    oldest rows of that kind are dropped, logged and counted. Raises ``ValueError`` for a
    bound < 1 and ``sqlite3.Error`` when the database cannot be opened.
    """

    def __init__(self, db: StateDB | str | os.PathLike[str], max_items: int = 10_000,
                 max_parked: int | None = None) -> None:
        if max_items < 1 or (max_parked is not None and max_parked < 1):
            raise ValueError("max_items and max_parked must be >= 1")
        self.state = db if isinstance(db, StateDB) else StateDB(db, [TABLE], name="outbox")
        self.path = self.state.path
        self.max_items = max_items
        self.max_parked = max_items if max_parked is None else max_parked
        self.evicted = 0
        """Rows dropped because a cap was reached (since this object was created)."""

    @property
    def _db(self) -> sqlite3.Connection:
        """The live connection (replaced when the file is healed)."""
        return self.state.conn

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A transaction on the state file (re-entrant), e.g. to enqueue a detection and its
        clip job in one commit."""
        return self.state.tx()

    # --- writes ---

    def put(self, kind: str, key: str, body: bytes, now: float) -> bool:
        """Enqueue ``body`` (JSON bytes) under idempotency ``key`` at ``now`` (Unix s).

        Returns False, changing nothing, when a row with ``key`` already exists
        (pending or parked): exactly-once enqueue. Drops the oldest pending rows beyond
        ``max_items`` (see :attr:`evicted`).
        """
        with self.state.tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO outbox (kind, key, body, created, attempts, next_attempt, state) "
                "VALUES (?, ?, ?, ?, 0, ?, 'pending')",
                (kind, key, bytes(body), float(now), float(now)),
            )
            if cur.rowcount == 0:
                return False
            self._enforce_cap("pending", self.max_items, "pending_cap")
        return True

    def _enforce_cap(self, state: str, cap: int, reason: str) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = ?", (state,)).fetchone()
        excess = count - cap
        if excess <= 0:
            return 0
        victims = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE state = ? ORDER BY id LIMIT ?",
                                   (state, excess)).fetchall()
        self._db.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = ? ORDER BY id LIMIT ?)",
            (state, excess))
        self._count_drops([_item(v) for v in victims], reason)
        self.evicted += excess
        log.warning("outbox full (%s %d, max %d): dropped the %d oldest %s row(s): %s; %d dropped so far",
                    state, count, cap, excess, "pending" if state == "pending" else "parked",
                    ", ".join(_item(v).key for v in victims[:10]) + (" …" if excess > 10 else ""), self.evicted)
        return excess

    def _count_drops(self, items: Iterable[Item], reason: str) -> None:
        per_kind: dict[str, int] = {}
        for it in items:
            per_kind[it.kind] = per_kind.get(it.kind, 0) + 1
        for kind, n in per_kind.items():
            self.state.bump(f"dropped:{kind}:{reason}", n)

    def delete(self, item_id: int) -> None:
        """Remove row ``item_id`` (after the portal accepted it). Unknown ids are ignored.

        This one commit runs with ``synchronous=NORMAL`` (WAL: no fsync of its own; the
        next ``put``'s fsync or a checkpoint makes it durable): a power cut can at worst
        bring a delivered row back, which is sent again and deduplicated by the portal on
        its idempotency key. Rows are never lost this way, and the drain after an outage
        does not pay one fsync per delivered detection.
        """
        db = self._db
        if db.in_transaction:
            db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            return
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self.state.tx():
                db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
        finally:
            db.execute("PRAGMA synchronous=FULL")

    def retry_later(self, item_id: int, delay_s: float, error: str, *, now: float | None = None,
                    strike: bool = False) -> None:
        """Count a failed attempt of ``item_id`` and make it due again ``delay_s`` seconds
        after ``now`` (Unix s, default the current time); ``strike`` counts it against the
        row. ``error`` is stored redacted."""
        now = time.time() if now is None else now
        with self.state.tx():
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, strikes = strikes + ?, next_attempt = ?, last_error = ?, "
                "failed_at = ? WHERE id = ?",
                (int(strike), now + max(0.0, float(delay_s)), clean_error(error), now, item_id),
            )

    def park(self, item_id: int, error: str, *, reason: str = "rejected", now: float | None = None) -> None:
        """Set ``item_id`` aside (``state='failed'``, never retried until re-queued) with
        ``reason`` and ``error`` (stored redacted); drops the oldest parked rows beyond
        ``max_parked``."""
        now = time.time() if now is None else now
        with self.state.tx():
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, state = 'failed', park_reason = ?, last_error = ?, "
                "failed_at = ? WHERE id = ?",
                (reason, clean_error(error), now, item_id),
            )
            self._enforce_cap("failed", self.max_parked, "parked_cap")

    def requeue(self, now: float, *, reason: str | None = None, keys: Collection[str] | None = None) -> int:
        """Move parked rows back to pending, due at ``now`` (Unix s), in their old place in
        the queue, with their strikes cleared: all of them, or those parked for ``reason``,
        or those with one of ``keys``. Returns how many rows were re-queued."""
        sql = ("UPDATE outbox SET state = 'pending', park_reason = NULL, strikes = 0, failed_at = NULL, "
               "next_attempt = ? WHERE state = 'failed'")
        args: list[object] = [float(now)]
        if reason is not None:
            sql += " AND COALESCE(park_reason, 'rejected') = ?"
            args.append(reason)
        if keys is not None:
            keys = list(keys)
            if not keys:
                return 0
            sql += f" AND key IN ({', '.join('?' * len(keys))})"
            args += keys
        with self.state.tx():
            cur = self._db.execute(sql, args)
        return cur.rowcount

    def requeue_failed(self, now: float) -> int:
        """Move every parked row back to pending (see :meth:`requeue`). Returns the count."""
        return self.requeue(now)

    def drop(self, *, keys: Collection[str] | None = None, state: str | None = None,
             reason: str | None = None, why: str = "operator") -> list[Item]:
        """Delete rows for good: those with one of ``keys``, and/or in ``state``
        (``pending``/``failed``), and/or parked for ``reason``; at least one filter is
        required. Each drop is logged (warning) and counted as ``dropped:<kind>:<why>``.
        Returns the dropped rows. Raises ``ValueError`` without a filter."""
        where, args = [], []
        if keys is not None:
            keys = list(keys)
            if not keys:
                return []
            where.append(f"key IN ({', '.join('?' * len(keys))})")
            args += keys
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if reason is not None:
            where.append("COALESCE(park_reason, 'rejected') = ?")
            args.append(reason)
        if not where:
            raise ValueError("drop needs keys, a state or a reason")
        cond = " AND ".join(where)
        with self.state.tx():
            rows = [_item(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE {cond} ORDER BY id",
                                                       args).fetchall()]
            if rows:
                self._db.execute(f"DELETE FROM outbox WHERE {cond}", args)
                self._count_drops(rows, why)
        for it in rows:
            log.warning("outbox: dropped %s %s (%s%s) by %s; last error: %s", it.kind, it.key,
                        "pending" if it.state == "pending" else "parked",
                        f" {it.park_reason}" if it.park_reason else "", why, it.last_error or "-")
        return rows

    # --- reads ---

    def due(self, now: float, limit: int = 1, busy: Collection[str] = ()) -> list[Item]:
        """Up to ``limit`` pending rows with ``next_attempt <= now``, in queue order,
        skipping the keys in ``busy`` (in flight). A row waiting for its retry is overtaken."""
        busy = list(busy)
        skip = f" AND key NOT IN ({', '.join('?' * len(busy))})" if busy else ""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' AND next_attempt <= ?{skip} ORDER BY id LIMIT ?",
            (float(now), *busy, int(limit))).fetchall()
        return [_item(r) for r in rows]

    def next_pending(self, now: float) -> Item | None:
        """The first due pending row (see :meth:`due`), or None."""
        rows = self.due(now, 1)
        return rows[0] if rows else None

    def make_due(self, now: float, *, keys: Collection[str] | None = None) -> int:
        """Set ``next_attempt`` of every pending row without strikes waiting past ``now`` to
        ``now`` (the portal is back); with ``keys``, of those rows whatever their strikes
        (which are cleared: an operator's retry). Returns the count."""
        args: list[object] = [now, now]
        if keys is None:
            sql = "UPDATE outbox SET next_attempt = ? WHERE state = 'pending' AND next_attempt > ? AND strikes = 0"
        else:
            keys = list(keys)
            if not keys:
                return 0
            sql = ("UPDATE outbox SET next_attempt = ?, strikes = 0 WHERE state = 'pending' AND next_attempt > ? "
                   f"AND key IN ({', '.join('?' * len(keys))})")
            args += keys
        with self.state.tx():
            cur = self._db.execute(sql, args)
        return cur.rowcount

    def next_due(self, busy: Collection[str] = ()) -> float | None:
        """Earliest ``next_attempt`` (Unix s) of a pending row not in ``busy``, or None."""
        busy = list(busy)
        skip = f" AND key NOT IN ({', '.join('?' * len(busy))})" if busy else ""
        row = self._db.execute(f"SELECT MIN(next_attempt) FROM outbox WHERE state = 'pending'{skip}",
                               busy).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def get(self, key: str) -> Item | None:
        """The row with idempotency ``key`` (any state), or None."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE key = ?", (key,)).fetchone()
        return None if row is None else _item(row)

    def items(self, state: str = "pending", *, reason: str | None = None, limit: int | None = None) -> list[Item]:
        """Rows in ``state`` (``'pending'`` or ``'failed'``; with ``reason``: parked for it),
        in queue order, at most ``limit``."""
        sql = f"SELECT {_COLUMNS} FROM outbox WHERE state = ?"
        args: list[object] = [state]
        if reason is not None:
            sql += " AND COALESCE(park_reason, 'rejected') = ?"
            args.append(reason)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_item(r) for r in self._db.execute(sql, args).fetchall()]

    def depth(self) -> int:
        """Number of pending rows."""
        return int(self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0])

    def failed(self) -> int:
        """Number of parked rows."""
        return int(self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'failed'").fetchone()[0])

    def parked_by_reason(self) -> dict[str, int]:
        """Parked rows per ``park_reason`` (rows parked before reasons existed: ``rejected``)."""
        out: dict[str, int] = {}
        for reason, n in self._db.execute(
                "SELECT COALESCE(park_reason, 'rejected'), COUNT(*) FROM outbox WHERE state = 'failed' "
                "GROUP BY 1"):
            out[str(reason)] = int(n)
        return out

    def oldest_age(self, now: float) -> float | None:
        """Seconds since the oldest pending row was enqueued, or None when empty."""
        row = self._db.execute("SELECT MIN(created) FROM outbox WHERE state = 'pending'").fetchone()
        return None if row is None or row[0] is None else max(0.0, now - row[0])

    def dropped(self) -> dict[str, int]:
        """Rows dropped for good so far (this file, every process): ``{"<kind>:<reason>": n}``."""
        return self.state.counters("dropped:")

    def close(self) -> None:
        """Close the database (idempotent)."""
        self.state.close()


class OutboxSource:
    """The outbox as a :class:`pod.worker.Source`: ``send(item)`` delivers one row (raises
    :class:`~pod.errors.PortalUnavailable`, :class:`~pod.errors.PortalRejected` and its
    subclasses, or :class:`~pod.errors.QueueItemInvalid`); the row is deleted only after
    ``send`` returned, so a crash mid-send means a repeat delivery (deduplicated by the
    portal on the idempotency key), never a loss."""

    name = "outbox"

    def __init__(self, outbox: Outbox, send: Callable[[Item], Awaitable[None]]) -> None:
        self.outbox, self.send = outbox, send

    def key(self, row: Item) -> str:
        return row.key

    def describe(self, row: Item) -> str:
        return f"{row.kind} {row.key}"

    def due(self, now: float, limit: int, busy: Collection[str]) -> list[Item]:
        return self.outbox.due(now, limit, busy)

    def next_wakeup(self, busy: Collection[str]) -> float | None:
        return self.outbox.next_due(busy)

    async def process(self, row: Item) -> None:
        await self.send(row)
        self.outbox.delete(row.id)

    def retry(self, row: Item, next_attempt: float, error: str, strike: bool, now: float) -> None:
        self.outbox.retry_later(row.id, next_attempt - now, error, now=now, strike=strike)

    def park(self, row: Item, reason: str, error: str, now: float) -> None:
        self.outbox.park(row.id, error, reason=reason, now=now)

    def requeue_parked(self, reason: str, now: float) -> int:
        return self.outbox.requeue(now, reason=reason)

    def make_due(self, now: float) -> int:
        return self.outbox.make_due(now)


class OutboxSender(Worker[Item]):
    """Delivers outbox rows through ``send`` (see :class:`OutboxSource`) with the retry
    policy of :class:`pod.worker.Worker`.

    ``backoff`` is the worker-wide pause schedule after a failure (default from
    ``settings``); ``settings`` carries concurrency, ``max_attempts`` and ``idle_poll``
    (``idle_poll`` here overrides it: seconds between looks at the queue with nothing due).
    ``clock`` returns Unix seconds. Counters: :attr:`delivered`, :attr:`retried`,
    :attr:`parked`.
    """

    def __init__(self, outbox: Outbox, send: Callable[[Item], Awaitable[None]], backoff: Backoff | None = None, *,
                 settings: WorkerSettings | None = None, clock: Callable[[], float] = time.time,
                 idle_poll: float | None = None, **kw: object) -> None:
        s = settings or (WorkerSettings(retry_initial=backoff.initial, retry_max=backoff.cap, jitter=backoff.jitter)
                         if backoff is not None else WorkerSettings())
        if idle_poll is not None:
            s = WorkerSettings(s.concurrency, s.retry_initial, s.retry_max, s.max_attempts, idle_poll, s.jitter)
        super().__init__(OutboxSource(outbox, send), s, backoff=backoff, db=outbox.state, clock=clock,
                         **kw)  # type: ignore[arg-type]
        self.outbox = outbox

    @property
    def delivered(self) -> int:
        """Rows the portal accepted (since this object was created)."""
        return self.done
