"""One durable worker for the pod's queues (detections to the portal, clip uploads).

A :class:`Worker` takes due rows from a :class:`Source` (a durable SQLite queue plus the step
that delivers one row), runs up to ``concurrency`` of them at a time, and decides what a
failure means **by exception class** (:func:`classify`):

==========================================  ===========  ==========================================
exception                                   action       what happens to the row
==========================================  ===========  ==========================================
:class:`~pod.errors.PortalAuthRejected`     ``hold``     parked ``auth``; the worker stops sending
(401/403)                                                until an authenticated call succeeds
                                                         (:meth:`Worker.authenticated`), then every
                                                         ``auth`` row is re-queued in its old place
:class:`~pod.errors.PortalRejected` 408/429 ``retry``    retried (see below)
:class:`~pod.errors.PortalNotFound` (404)   ``retry``    retried: a route missing during a deploy
other :class:`~pod.errors.PortalRejected`   ``park``     parked ``rejected`` (a 400: the portal
                                                         refuses this body for good)
:class:`~pod.errors.QueueItemInvalid`       ``park``     parked ``invalid`` (cannot be sent as stored)
:class:`~pod.errors.PortalUnavailable`,     ``retry``    retried; unexpected exceptions are logged
any other ``Exception``                                  with their traceback
==========================================  ===========  ==========================================

**Retry without head-of-line blocking.** After a failure the whole worker pauses for the
next delay of its own :class:`~pod.backoff.Backoff` (``retry_initial`` doubling to
``retry_max``, jittered; reset by any success) and then sends one row at a time until one
goes through, so an outage is probed, not hammered (rows already in flight when a pause
begins do not lengthen it). The
failed row itself waits longer — twice that schedule by its own attempt count, capped at
``retry_max`` — so the next probe is usually another row: if that one goes through, the
portal is up and only the first row is at fault; it has "moved behind the others", whose
order among themselves is kept. A failure counts as a **strike** against the row only when
the worker delivered something else since the row's previous failure (the portal was
answering, this row was not); after ``max_attempts`` strikes the row is parked
``attempts`` with its last error — never dropped. During an outage nothing is delivered, so
no row collects strikes however long it lasts.

**Order.** Rows are started in queue order (oldest first), at most ``concurrency`` at a
time, so the portal may see a row up to ``concurrency - 1`` places early or late. A row that
failed waits behind the rows that did not; when the failure was the portal's (an outage:
the row has no strike), the first success afterwards makes it due again at once, so it
goes out with the next rows: at most ``2 × concurrency - 1`` places late. A poison row
(with strikes) keeps its own delay. Receivers that need the exact order have each
detection's ``detected_at``. Every row keeps its idempotency key, so a repeat (a crash after the portal
answered, before the row was marked done) is deduplicated there.

**Self-healing.** A damaged state file (:func:`pod.db.is_corruption`) met while reading or
writing the queue is healed in place (:meth:`pod.db.StateDB.heal`) and the worker goes on.

Times are Unix seconds from ``clock``; rows keep their ``next_attempt`` across restarts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from pod.backoff import Backoff
from pod.db import StateDB, is_corruption
from pod.errors import PortalAuthRejected, PortalNotFound, PortalRejected, PortalUnavailable, QueueItemInvalid
from protocol.redact import redact

log = logging.getLogger("platebridge.pod.worker")

Action = Literal["retry", "park", "hold"]
RETRYABLE_STATUSES = frozenset({408, 429})
PARK_REASONS = ("auth", "rejected", "invalid", "attempts")
"""Why a row can be parked by the worker (sources add their own, e.g. ``missing_file``)."""
MAX_ERROR_CHARS = 500


def classify(exc: BaseException) -> tuple[Action, str]:
    """What a failure means, by exception class (see the module table): ``(action, reason)``
    with action ``retry``, ``park`` or ``hold`` and the park reason (or, for retries, a
    short word for logs)."""
    if isinstance(exc, PortalAuthRejected):
        return "hold", "auth"
    if isinstance(exc, PortalNotFound):
        return "retry", "not_found"
    if isinstance(exc, PortalRejected):
        if exc.status in RETRYABLE_STATUSES:
            return "retry", f"http_{exc.status}"
        return "park", "rejected"
    if isinstance(exc, QueueItemInvalid):
        return "park", "invalid"
    if isinstance(exc, PortalUnavailable):
        return "retry", "unavailable"
    return "retry", "error"


def clean_error(error: object) -> str:
    """An error text fit for the database and logs: secrets redacted, at most 500 chars."""
    return redact(str(error))[:MAX_ERROR_CHARS]


class Row(Protocol):
    """What the worker reads of a queued row."""

    @property
    def attempts(self) -> int: ...

    @property
    def strikes(self) -> int: ...

    @property
    def failed_at(self) -> float | None: ...


T = TypeVar("T", bound=Row)
R = TypeVar("R")


class Source(Protocol[T]):
    """A durable queue and the step that works one of its rows (see :class:`Worker`).

    ``process(row)`` does the work and records its success itself (e.g. deletes the row);
    it raises to report a failure. The other methods are short synchronous transactions.
    """

    name: str
    """Short name for logs (``outbox``, ``uploads``)."""

    def key(self, row: T) -> str:
        """The row's idempotency key (unique in the queue)."""
        ...

    def describe(self, row: T) -> str:
        """The row for a log line (no secrets)."""
        ...

    def due(self, now: float, limit: int, busy: Collection[str]) -> list[T]:
        """Up to ``limit`` rows due at ``now`` (Unix s), oldest first, none of ``busy`` (keys)."""
        ...

    def next_wakeup(self, busy: Collection[str]) -> float | None:
        """Earliest ``next_attempt`` (Unix s) of a waiting row not in ``busy``, or None."""
        ...

    async def process(self, row: T) -> None:
        """Work the row; raise on failure."""
        ...

    def retry(self, row: T, next_attempt: float, error: str, strike: bool, now: float) -> None:
        """Count a failed attempt; due again at ``next_attempt``; ``strike``: count it
        against the row (``strikes + 1``)."""
        ...

    def park(self, row: T, reason: str, error: str, now: float) -> None:
        """Set the row aside with ``reason`` (never retried until re-queued)."""
        ...

    def requeue_parked(self, reason: str, now: float) -> int:
        """Put rows parked for ``reason`` back in the queue, due at ``now``; returns the count."""
        ...

    def make_due(self, now: float) -> int:
        """Make rows waiting only because of an outage (no strikes) due at ``now``; returns the count."""
        ...


@dataclass(frozen=True)
class WorkerSettings:
    """Tunables of one worker (from the pod config, :mod:`pod.config`): ``concurrency``
    (rows in flight), ``retry_initial``/``retry_max`` (seconds: the pause after a failure,
    doubling), ``max_attempts`` (strikes before a row is parked ``attempts``),
    ``idle_poll`` (seconds between looks at the queue with nothing due: rows another process
    re-queued are seen within this), ``jitter`` (0–1, see :class:`~pod.backoff.Backoff`)."""

    concurrency: int = 1
    retry_initial: float = 1.0
    retry_max: float = 10.0
    max_attempts: int = 10
    idle_poll: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_attempts < 1 or self.idle_poll <= 0:
            raise ValueError("concurrency and max_attempts must be >= 1, idle_poll > 0")
        if not 0 < self.retry_initial <= self.retry_max:
            raise ValueError("need 0 < retry_initial <= retry_max")


class Worker(Generic[T]):
    """Works a :class:`Source` until stopped (see the module docs for the policy).

    ``backoff``: the worker-wide pause schedule (default from ``settings``); ``db``: the
    :class:`~pod.db.StateDB` to heal when the queue's file turns out damaged; ``clock``:
    Unix seconds; ``rng``: jitter of the per-row delays; ``housekeeping()``: called before
    each look at the queue (e.g. the disk quota), exceptions logged.

    Counters since creation: :attr:`done` (rows processed without error), :attr:`retried`,
    :attr:`parked`, :attr:`holds` (times sending stopped for auth). State:
    :attr:`held` (``"auth"`` while waiting for the key to work, else None),
    :attr:`in_flight` (keys being processed), :attr:`streak` (failures since the last
    success), :attr:`paused_until` (Unix s), :attr:`sleeping` (True while the loop waits
    for a wake, a due row or ``idle_poll``).
    """

    def __init__(self, source: Source[T], settings: WorkerSettings | None = None, *,
                 backoff: Backoff | None = None, db: StateDB | None = None, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, housekeeping: Callable[[], object] | None = None) -> None:
        self.source = source
        self.settings = settings or WorkerSettings()
        s = self.settings
        self.backoff = backoff or Backoff(s.retry_initial, s.retry_max, s.jitter)
        self.db, self.clock, self.housekeeping = db, clock, housekeeping
        self._rng = rng or random.Random()
        self.done = self.retried = self.parked = self.holds = 0
        self.held: str | None = None
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        self.streak = 0
        self.paused_until = 0.0
        self.last_ok: float | None = None
        self._auth_parked = True  # unknown until the first requeue: check once
        self._fatal: BaseException | None = None
        self._wake = asyncio.Event()
        self.sleeping = False

    # --- signals from outside ---

    def wake(self) -> None:
        """Look at the queue now (a row was added or re-queued). A row waiting for its
        retry delay stays waiting."""
        self._wake.set()

    def retry_now(self) -> int:
        """The portal is known to answer again (a heartbeat succeeded): rows waiting only
        because of an outage are made due, the pause ends and the backoff starts over, so
        a backlog drains at once. Rows with strikes keep their own delay. Returns how many
        rows were made due."""
        n = self._safe(lambda: self.source.make_due(self.clock()), 0)
        if n or self.streak:
            self.streak, self.paused_until = 0, 0.0
            self.backoff.reset()
            self._wake.set()
        return n

    def authenticated(self) -> int:
        """An authenticated portal call succeeded (the API key works): leave the ``auth``
        hold and re-queue every row parked ``auth``, in its old place. Cheap when there is
        nothing to do (called after every authenticated 2xx). Returns how many rows came back."""
        if self.held is None and not self._auth_parked:
            return 0
        return self.requeue_auth()

    def requeue_auth(self) -> int:
        """Leave the ``auth`` hold and re-queue every row parked ``auth`` (a new API key was
        loaded, the pod started, or the key works again). Returns how many rows came back."""
        n = self._safe(lambda: self.source.requeue_parked("auth", self.clock()), 0)
        self._auth_parked = False
        if self.held is not None:
            log.info("%s: the portal accepts the API key again: sending resumes", self.source.name)
        if n:
            log.info("%s: %d row(s) parked for auth re-queued", self.source.name, n)
        self.held = None
        self._wake.set()
        return n

    # --- the loop ---

    async def run(self, stop: asyncio.Event) -> None:
        """Work the queue until ``stop`` is set; then wait for the rows in flight to finish.
        Cancelled, it cancels the rows in flight too (they stay queued: a crash mid-send)."""
        try:
            while not stop.is_set():
                self._wake.clear()
                if self.housekeeping is not None:
                    try:
                        self.housekeeping()
                    except Exception:
                        log.exception("%s: housekeeping failed", self.source.name)
                if self._fatal is not None:
                    raise self._fatal
                now = self.clock()
                started = self._dispatch(now)
                if started:
                    continue
                await self._sleep(stop, self._timeout(now))
                if self._fatal is not None:
                    raise self._fatal
        except asyncio.CancelledError:
            for t in self.in_flight.values():
                t.cancel()
            raise
        finally:
            if self.in_flight:
                await asyncio.gather(*self.in_flight.values(), return_exceptions=True)

    def _dispatch(self, now: float) -> int:
        # after a failure, probe with one row at a time until something goes through
        room = (self.settings.concurrency if self.streak == 0 else 1) - len(self.in_flight)
        if self.held is not None or room <= 0 or now < self.paused_until:
            return 0
        none: list[T] = []
        rows = self._safe(lambda: self.source.due(now, room, tuple(self.in_flight)), none)
        for row in rows:
            key = self.source.key(row)
            if key in self.in_flight:
                continue
            self.in_flight[key] = asyncio.get_running_loop().create_task(self._one(key, row),
                                                                         name=f"{self.source.name}-{key}")
        return len(rows)

    def _timeout(self, now: float) -> float:
        timeout = self.settings.idle_poll
        if self.held is not None:
            return timeout
        if now < self.paused_until:
            return min(timeout, self.paused_until - now)
        if len(self.in_flight) < self.settings.concurrency:
            due = self._safe(lambda: self.source.next_wakeup(tuple(self.in_flight)), None)
            if due is not None:
                timeout = min(timeout, max(0.0, due - now))
        if timeout <= 0 and self.in_flight:
            # the due rows are the ones in flight: wait for one to finish (it wakes us)
            timeout = self.settings.idle_poll
        return max(timeout, 0.001)

    async def _sleep(self, stop: asyncio.Event, timeout: float) -> None:
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        self.sleeping = True
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.sleeping = False
            for w in waits:
                w.cancel()

    async def _one(self, key: str, row: T) -> None:
        try:
            await self.source.process(row)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a row is classified, never fatal to the queue
            failure: Exception = exc
            try:
                self._safe(lambda: self._failed(row, failure), None)
            except Exception:
                log.exception("%s: could not record the failure of %s", self.source.name, self.source.describe(row))
        except BaseException as exc:  # SystemExit, KeyboardInterrupt…: not the row's error; run() re-raises it
            self._fatal = exc
            raise
        else:
            self.done += 1
            self.last_ok = self.clock()
            if self.streak:  # the portal answers again: rows that waited only for it go first again
                self.streak = 0
                self.paused_until = 0.0
                self.backoff.reset()
                self._safe(lambda: self.source.make_due(self.clock()), 0)
        finally:
            self.in_flight.pop(key, None)
            self._wake.set()

    def _failed(self, row: T, exc: BaseException) -> None:
        action, reason = classify(exc)
        error = clean_error(f"{type(exc).__name__}: {exc}")
        now = self.clock()
        what = self.source.describe(row)
        if action == "hold":
            self.source.park(row, "auth", error, now)
            self._auth_parked = True
            self.parked += 1
            if self.held is None:
                self.held = "auth"
                self.holds += 1
                log.error("%s: the portal refused the API key (%s) on %s: parked it, holding the queue until an "
                          "authenticated call succeeds (heartbeat) or a new key is loaded (SIGHUP, restart)",
                          self.source.name, error, what)
            return
        if action == "park":
            self.source.park(row, reason, error, now)
            self.parked += 1
            log.error("%s: %s parked (%s): %s", self.source.name, what, reason, error)
            return
        if reason == "error":
            log.error("%s: unexpected error on %s", self.source.name, what, exc_info=exc)
        strike = row.failed_at is not None and self.last_ok is not None and self.last_ok > row.failed_at
        strikes = row.strikes + int(strike)
        if strikes >= self.settings.max_attempts:
            self.source.park(row, "attempts", clean_error(
                f"failed {strikes} times while other rows went through; last: {error}"), now)
            self.parked += 1
            log.error("%s: %s parked after %d failed attempts while the portal answered others (last: %s)",
                      self.source.name, what, strikes, error)
            return
        if now >= self.paused_until:  # failures of rows already in flight when the pause began add nothing
            self.streak += 1
            self.paused_until = now + self.backoff.next_delay()
        pause = max(0.0, self.paused_until - now)
        own = self.row_delay(row.attempts + 1)
        delay = max(pause, own)
        self.source.retry(row, now + delay, error, strike, now)
        self.retried += 1
        log.warning("%s: %s not done (%s); attempt %d%s, retrying it in %.1f s (queue paused %.1f s)",
                    self.source.name, what, redact(str(exc)) or type(exc).__name__, row.attempts + 1,
                    f", strike {strikes}/{self.settings.max_attempts}" if strike else "", delay, pause)

    def row_delay(self, attempt: int) -> float:
        """A failed row's own delay before attempt ``attempt + 1`` (seconds): twice the
        worker's pause schedule at that count, capped at ``retry_max``, jittered."""
        s = self.settings
        base = min(s.retry_max, 2 * s.retry_initial * 2 ** min(max(attempt, 1) - 1, 30))
        return base * (1.0 - s.jitter * self._rng.random())

    def _safe(self, fn: Callable[[], R], default: R) -> R:
        """Run a queue operation; heal a damaged state file and return ``default`` then."""
        try:
            return fn()
        except sqlite3.DatabaseError as exc:
            if self.db is not None and is_corruption(exc):
                try:
                    self.db.heal(exc)
                except Exception:
                    log.exception("%s: the damaged state file could not be replaced", self.source.name)
                self._auth_parked = True
                self._wake.set()
                return default
            log.error("%s: queue database error: %s", self.source.name, exc)
            return default
