"""Durable clip uploads: recorded clip → signed URL → streamed PUT → confirm → local delete.

One row per detection clip in table ``uploads`` of the outbox's SQLite file
(``cfg.outbox_path``; own connection, WAL, ``synchronous=FULL``), keyed by the
detection's ``event_id`` (the idempotency key: a clip is queued at most once).
Each step is recorded before the next one starts, so a restart resumes where
the pod stopped and a confirmed clip is never uploaded again::

    recorded ──upload-url──▶ url ──PUT 2xx / 409──▶ uploaded ──confirm 2xx──▶ confirmed
       ▲                      │                                    (local file deleted)
       └──PUT 4xx (expired or bad signature: a fresh URL next time)┘

plus ``failed`` (the portal refused for good — HTTP 4xx other than 408/429 on
upload-url or confirm, the local file vanished, or too many fresh URLs were
refused; the file is kept, see :meth:`UploadQueue.requeue_failed`) and
``evicted`` (the local file was deleted by the disk quota before the upload).

The portal contract (seed portal, :mod:`protocol.messages`):

1. ``POST /api/pod/recordings/upload-url {camera_id, filename}`` →
   ``{upload_url, file_path, expires_in}`` (Supabase's ``signedUrl``/``signed_url``/``path``
   accepted); ``url_expires_at`` = receipt time + ``expires_in`` (absent: unknown).
2. ``PUT`` the raw bytes (``Content-Type: video/mp4``), streamed from disk
   (:meth:`pod.portal.PortalClient.upload_file`). "The resource already exists"
   (:class:`pod.errors.StorageConflict`: HTTP 409, or Supabase Storage's HTTP 400 with
   ``"statusCode": "409"`` in the body) means an earlier PUT of this clip landed but the
   pod did not record it (crash, lost answer, or a portal whose paths follow the file
   name, so a fresh URL names the same object): it counts as uploaded, the clip is
   confirmed and deleted, and no new URL is asked for.
3. ``POST /api/pod/recordings/confirm {camera_id, file_path, duration_seconds,
   event_type: "plate_detection", plate_number, event_id, file_size_bytes}``.
4. Delete the local file, only after the confirm answered 2xx.

Transient failures (connect errors, timeouts, 5xx, 408, 429) are retried with
capped, jittered exponential backoff; the signed URL is reused until it expires.
Known limit: when a PUT's outcome is unknown (crash or timeout) *and* its URL
expires before the retry, the retry uses a fresh URL — the portal may then
hold an orphan object from the first attempt, but still one recording.

Disk quota (:meth:`UploadQueue.evict_for_quota`): while the clips on disk
exceed ``max_bytes`` or the file system's free space is below
``free_floor_bytes``, delete the oldest clip already uploaded, then the oldest
refused (``failed``) one, then the oldest not yet uploaded; each eviction is
logged (warning) and counted. Evicting an uploaded but unconfirmed clip keeps
its row in ``uploaded``: the confirm needs no local file.

Times in the database are wall-clock Unix seconds (``time.time()``), so retry
schedules survive a restart. Signed URLs are stored (the file is mode 0600)
but never logged: log lines name the event, camera and storage path only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from msgspec.structs import replace

from pod.backoff import Backoff
from pod.db import open_sqlite, transaction
from pod.errors import PortalRejected, PortalUnavailable, StorageConflict
from pod.portal import PortalClient
from protocol.messages import RecordingConfirm, UploadUrlRequest
from protocol.redact import redact

log = logging.getLogger("platebridge.pod.uploads")

STATES = ("recorded", "url", "uploaded", "confirmed", "evicted", "failed")
ACTIVE_STATES = ("recorded", "url", "uploaded")
"""States the uploader still works on."""
RETRYABLE_STATUSES = frozenset({408, 429})
_MAX_ERROR_CHARS = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    event_id TEXT PRIMARY KEY,
    camera_id TEXT NOT NULL,
    local_path TEXT NOT NULL,
    filename TEXT NOT NULL,
    plate TEXT,
    duration_s REAL NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'recorded',
    upload_url TEXT,
    file_path TEXT,
    url_expires_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    size_bytes INTEGER NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    on_disk INTEGER NOT NULL DEFAULT 1,
    url_requests INTEGER NOT NULL DEFAULT 0,
    put_refusals INTEGER NOT NULL DEFAULT 0,
    uploaded_at REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_state_due ON uploads (state, next_attempt);
CREATE INDEX IF NOT EXISTS uploads_on_disk ON uploads (on_disk, created);
"""
_COLUMNS = ("event_id, camera_id, local_path, filename, plate, duration_s, created, state, upload_url, file_path, "
            "url_expires_at, attempts, next_attempt, last_error, size_bytes, metadata, on_disk, url_requests, "
            "put_refusals, uploaded_at, updated")
_ACTIVE_SQL = "('recorded', 'url', 'uploaded')"


class Upload(msgspec.Struct, frozen=True):
    """One ``uploads`` row.

    ``event_id`` (idempotency key), ``camera_id``, ``local_path`` (absolute path of the
    clip on disk), ``filename`` (its base name, sent to upload-url), ``plate``,
    ``duration_s`` (seconds, from ffprobe), ``created`` (Unix s), ``state`` (one of
    :data:`STATES`), ``upload_url`` (signed; secret — never log it), ``file_path``
    (portal storage path), ``url_expires_at`` (Unix s or None when unknown),
    ``attempts`` (failures since the last step forward), ``next_attempt`` (Unix s),
    ``last_error`` (redacted), ``size_bytes``, ``metadata`` (e.g. ``preroll_missing_s``,
    ``segments_skipped``), ``on_disk`` (the local file still exists as far as the queue
    knows), ``url_requests`` (upload URLs obtained so far), ``put_refusals`` (PUTs storage
    refused with a 4xx so far), ``uploaded_at`` (Unix s of the successful PUT, or None),
    ``updated`` (Unix s of the last change).
    """

    event_id: str
    camera_id: str
    local_path: str
    filename: str
    plate: str | None
    duration_s: float
    created: float
    state: str
    upload_url: str | None
    file_path: str | None
    url_expires_at: float | None
    attempts: int
    next_attempt: float
    last_error: str | None
    size_bytes: int
    metadata: dict[str, Any]
    on_disk: bool
    url_requests: int
    put_refusals: int
    uploaded_at: float | None
    updated: float

    def __repr__(self) -> str:  # never show the signed URL
        return (f"Upload(event_id={self.event_id!r}, camera_id={self.camera_id!r}, state={self.state!r}, "
                f"file_path={self.file_path!r}, size_bytes={self.size_bytes}, on_disk={self.on_disk})")

    __str__ = __repr__


class Evicted(msgspec.Struct, frozen=True):
    """One clip deleted by :meth:`UploadQueue.evict_for_quota`: its ``event_id``,
    ``camera_id``, ``local_path``, ``size_bytes``, the row's ``state`` before eviction,
    whether it had been ``uploaded`` already, and ``reason`` (``"quota"``: recordings
    over ``max_bytes``; ``"disk_free"``: free space below the floor)."""

    event_id: str
    camera_id: str
    local_path: str
    size_bytes: int
    state: str
    uploaded: bool
    reason: str


@dataclass(frozen=True)
class Quota:
    """Disk bound for the recordings directory: at most ``max_bytes`` of queued clips on
    disk, and at least ``free_floor_bytes`` free on the file system as reported by
    ``disk_free()`` (bytes; None: no floor check). See :func:`disk_free_for`."""

    max_bytes: int
    free_floor_bytes: int = 0
    disk_free: Callable[[], int] | None = None


def disk_free_for(path: str | os.PathLike[str]) -> Callable[[], int]:
    """A ``disk_free`` callable: free bytes (for unprivileged users) of the file system
    holding ``path`` (``shutil.disk_usage``). Raises ``OSError`` when called if ``path``
    does not exist."""
    return lambda: shutil.disk_usage(path).free


def _clean_error(error: object) -> str:
    return redact(str(error))[:_MAX_ERROR_CHARS]


def _row(r: tuple) -> Upload:
    try:
        meta = msgspec.json.decode(r[15]) if r[15] else {}
    except msgspec.DecodeError:
        meta = {}
    return Upload(r[0], r[1], r[2], r[3], r[4], float(r[5]), float(r[6]), r[7], r[8], r[9],
                  None if r[10] is None else float(r[10]), int(r[11]), float(r[12]), r[13], int(r[14]),
                  meta if isinstance(meta, dict) else {}, bool(r[16]), int(r[17]), int(r[18]),
                  None if r[19] is None else float(r[19]), float(r[20]))


class UploadQueue:
    """The ``uploads`` table in the SQLite file at ``db_path`` (normally the outbox file).

    Creates the parent directory (0700) and the file (0600) when missing; sets WAL and
    ``synchronous=FULL``. Every transition is one short transaction and applies only
    from the state(s) it names, returning False otherwise (so a stale step never
    overwrites a newer state). :attr:`evicted` counts evictions since this object was
    created. Raises ``sqlite3.Error`` when the database cannot be opened.
    """

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.path = Path(db_path)
        self.evicted = 0
        self._db = open_sqlite(self.path, _SCHEMA)

    # --- enqueue ---

    def add(
        self,
        event_id: str,
        camera_id: str,
        local_path: str | os.PathLike[str],
        plate: str | None,
        duration_s: float,
        metadata: dict[str, Any] | None = None,
        *,
        now: float | None = None,
    ) -> bool:
        """Queue the clip at ``local_path`` (an existing file) for upload under ``event_id``.

        ``duration_s`` is the clip's duration in seconds (ffprobe), ``metadata`` a JSON-able
        dict kept with the row, ``now`` Unix seconds (default: the current time). The size
        is taken from the file now. Returns False, changing nothing, when ``event_id`` is
        already queued (in any state): the caller still owns the file it passed.
        Raises ``ValueError`` for an empty id or a negative/non-finite duration and
        ``OSError`` (``FileNotFoundError``) when the file cannot be stat'ed.
        """
        if not event_id or not camera_id:
            raise ValueError("event_id and camera_id must not be empty")
        if not math.isfinite(duration_s) or duration_s < 0:
            raise ValueError("duration_s must be a finite number >= 0")
        path = os.path.abspath(os.fspath(local_path))
        size = os.stat(path).st_size
        now = time.time() if now is None else float(now)
        meta = msgspec.json.encode(metadata or {}).decode()
        with self._tx():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO uploads (event_id, camera_id, local_path, filename, plate, duration_s, created, "
                "state, next_attempt, size_bytes, metadata, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'recorded', ?, ?, ?, ?)",
                (event_id, camera_id, path, os.path.basename(path), plate, float(duration_s), now, now, size,
                 meta, now),
            )
        return cur.rowcount == 1

    # --- transitions ---

    def set_url(self, event_id: str, upload_url: str, file_path: str, expires_at: float | None, *,
                now: float | None = None) -> bool:
        """``recorded`` → ``url``: store the signed URL, the storage path and the URL's expiry
        (Unix s, None = unknown); due at once."""
        now = time.time() if now is None else now
        return self._update(
            "state = 'url', upload_url = ?, file_path = ?, url_expires_at = ?, url_requests = url_requests + 1, "
            "attempts = 0, next_attempt = ?, last_error = NULL, updated = ?",
            (upload_url, file_path, expires_at, now, now), event_id, ("recorded",))

    def drop_url(self, event_id: str, error: str, *, next_attempt: float, refused: bool = False,
                 now: float | None = None) -> bool:
        """``url`` → ``recorded`` (the URL expired, or storage ``refused`` the PUT — counted in
        ``put_refusals``): forget URL and path; a fresh URL is requested at ``next_attempt``
        (Unix s). ``error`` is stored redacted."""
        now = time.time() if now is None else now
        return self._update(
            "state = 'recorded', upload_url = NULL, file_path = NULL, url_expires_at = NULL, "
            "put_refusals = put_refusals + ?, next_attempt = ?, last_error = ?, updated = ?",
            (int(refused), next_attempt, _clean_error(error), now), event_id, ("url",))

    def mark_uploaded(self, event_id: str, *, now: float | None = None) -> bool:
        """``url`` → ``uploaded`` (the PUT answered 2xx or 409); forgets the signed URL.
        Also applies to a row evicted while its PUT was in flight (the bytes did arrive)."""
        now = time.time() if now is None else now
        return self._update(
            "state = 'uploaded', upload_url = NULL, url_expires_at = NULL, uploaded_at = ?, attempts = 0, "
            "next_attempt = ?, last_error = NULL, updated = ?",
            (now, now, now), event_id, ("url", "evicted"), extra="AND file_path IS NOT NULL")

    def mark_confirmed(self, event_id: str, *, now: float | None = None) -> bool:
        """``uploaded`` → ``confirmed`` (the portal recorded the clip). Final: never uploaded again."""
        now = time.time() if now is None else now
        return self._update("state = 'confirmed', attempts = 0, last_error = NULL, updated = ?", (now,),
                            event_id, ("uploaded",))

    def mark_deleted(self, event_id: str, *, now: float | None = None) -> bool:
        """Record that the local file is gone (``on_disk`` false), whatever the state."""
        now = time.time() if now is None else now
        return self._update("on_disk = 0, updated = ?", (now,), event_id, STATES)

    def retry_later(self, event_id: str, delay_s: float, error: str, *, now: float | None = None) -> bool:
        """Count a failed attempt of an active row and make it due ``delay_s`` seconds after
        ``now``. ``error`` is stored redacted."""
        now = time.time() if now is None else now
        return self._update("attempts = attempts + 1, next_attempt = ?, last_error = ?, updated = ?",
                            (now + max(0.0, float(delay_s)), _clean_error(error), now), event_id, ACTIVE_STATES)

    def mark_failed(self, event_id: str, error: str, *, now: float | None = None) -> bool:
        """Active row → ``failed`` (never retried unless requeued; the file is kept)."""
        now = time.time() if now is None else now
        return self._update("state = 'failed', attempts = attempts + 1, last_error = ?, updated = ?",
                            (_clean_error(error), now), event_id, ACTIVE_STATES)

    def requeue_failed(self, now: float | None = None) -> int:
        """Retry every ``failed`` row from where it can continue (e.g. after a wrong API key
        was fixed): rows whose bytes were uploaded go back to ``uploaded`` (confirm again),
        rows whose file is on disk to ``recorded``; the others stay failed.
        Returns how many rows were requeued."""
        now = time.time() if now is None else now
        with self._tx():
            a = self._db.execute(
                "UPDATE uploads SET state = 'uploaded', attempts = 0, next_attempt = ?, updated = ? "
                "WHERE state = 'failed' AND uploaded_at IS NOT NULL AND file_path IS NOT NULL", (now, now)).rowcount
            b = self._db.execute(
                "UPDATE uploads SET state = 'recorded', upload_url = NULL, file_path = NULL, url_expires_at = NULL, "
                "put_refusals = 0, attempts = 0, next_attempt = ?, updated = ? "
                "WHERE state = 'failed' AND uploaded_at IS NULL AND on_disk = 1", (now, now)).rowcount
        return a + b

    def prune(self, older_than: float) -> int:
        """Delete finished rows (``confirmed``, ``evicted``, or ``failed`` with no local file)
        last changed before ``older_than`` (Unix s). Returns how many were deleted."""
        with self._tx():
            return self._db.execute(
                "DELETE FROM uploads WHERE updated < ? AND on_disk = 0 AND state IN ('confirmed', 'evicted', 'failed')",
                (older_than,)).rowcount

    # --- reads ---

    def get(self, event_id: str) -> Upload | None:
        """The row of ``event_id`` (any state), or None."""
        r = self._db.execute(f"SELECT {_COLUMNS} FROM uploads WHERE event_id = ?", (event_id,)).fetchone()
        return None if r is None else _row(r)

    def next_due(self, now: float) -> Upload | None:
        """The oldest (by ``created``) active row whose ``next_attempt <= now``, or None.
        Rows do not block each other: one waiting for its retry is overtaken."""
        r = self._db.execute(
            f"SELECT {_COLUMNS} FROM uploads WHERE state IN {_ACTIVE_SQL} AND next_attempt <= ? "
            "ORDER BY created, event_id LIMIT 1", (now,)).fetchone()
        return None if r is None else _row(r)

    def next_wakeup(self) -> float | None:
        """Earliest ``next_attempt`` (Unix s) over active rows, or None when none is active."""
        r = self._db.execute(f"SELECT MIN(next_attempt) FROM uploads WHERE state IN {_ACTIVE_SQL}").fetchone()
        return None if r is None or r[0] is None else float(r[0])

    def pending(self) -> list[Upload]:
        """Active rows (``recorded``, ``url``, ``uploaded``), oldest first."""
        return self.rows(ACTIVE_STATES)

    def rows(self, states: Collection[str] = STATES) -> list[Upload]:
        """Rows in any of ``states``, oldest first."""
        states = tuple(states)
        if not states:
            return []
        marks = ", ".join("?" * len(states))
        rs = self._db.execute(
            f"SELECT {_COLUMNS} FROM uploads WHERE state IN ({marks}) ORDER BY created, event_id", states).fetchall()
        return [_row(r) for r in rs]

    def counts(self) -> dict[str, int]:
        """Number of rows per state (every state present, 0 when none)."""
        out = dict.fromkeys(STATES, 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM uploads GROUP BY state"):
            out[state] = n
        return out

    def total_local_bytes(self) -> int:
        """Bytes of the queued clips still on disk (sizes recorded at :meth:`add`)."""
        return int(self._db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM uploads WHERE on_disk = 1").fetchone()[0])

    # --- disk quota ---

    def evict_for_quota(
        self,
        max_bytes: int,
        free_floor_bytes: int = 0,
        disk_free: Callable[[], int] | None = None,
        *,
        busy: Collection[str] = (),
        now: float | None = None,
    ) -> list[Evicted]:
        """Delete local clips until :meth:`total_local_bytes` ``<= max_bytes`` and
        ``disk_free()`` (bytes; None: not checked) ``>= free_floor_bytes``.

        Order: the oldest clip already uploaded (bytes in portal storage: ``uploaded``,
        or ``confirmed`` whose delete failed), then the oldest ``failed`` one, then the
        oldest not yet uploaded (``recorded``/``url``); ``busy`` event ids (an upload in
        flight) go last. Rows not yet uploaded become ``evicted``; uploaded ones keep their
        state (the confirm needs no file). Each eviction is logged as a warning and
        counted in :attr:`evicted`. Stops (logging an error) when nothing is left to
        evict or a file cannot be deleted. Returns the evictions, in order.
        """
        now = time.time() if now is None else now
        out: list[Evicted] = []
        busy = tuple(busy)
        while True:
            total = self.total_local_bytes()
            free = disk_free() if disk_free is not None else None
            if total <= max_bytes and (free is None or free >= free_floor_bytes):
                return out
            reason = "quota" if total > max_bytes else "disk_free"
            victim = self._eviction_candidate(busy)
            if victim is None:
                log.error("uploads: %s exceeded (clips on disk %d bytes, max %d; free %s, floor %d) and no clip "
                          "is left to evict", reason, total, max_bytes, free, free_floor_bytes)
                return out
            try:
                os.unlink(victim.local_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("uploads: cannot delete %s to free space: %s", victim.local_path, exc.strerror or exc)
                return out
            with self._tx():
                new_state = "evicted" if victim.uploaded_at is None and victim.state in ("recorded", "url", "failed") \
                    else victim.state
                self._db.execute(
                    "UPDATE uploads SET on_disk = 0, state = ?, last_error = ?, updated = ? WHERE event_id = ?",
                    (new_state, f"evicted ({reason})" if new_state == "evicted" else victim.last_error, now,
                     victim.event_id))
            self.evicted += 1
            ev = Evicted(victim.event_id, victim.camera_id, victim.local_path, victim.size_bytes, victim.state,
                         victim.uploaded_at is not None, reason)
            out.append(ev)
            log.warning(
                "uploads: evicted clip %s (camera %s, %d bytes, %s%s) — %s: clips on disk %d bytes, max %d; "
                "free %s bytes, floor %d; evictions so far: %d",
                ev.event_id, ev.camera_id, ev.size_bytes, ev.state, ", already uploaded" if ev.uploaded else
                ", NOT uploaded", reason, total, max_bytes, free, free_floor_bytes, self.evicted)

    def _eviction_candidate(self, busy: tuple[str, ...]) -> Upload | None:
        marks = ", ".join("?" * len(busy)) or "NULL"
        r = self._db.execute(
            f"SELECT {_COLUMNS} FROM uploads WHERE on_disk = 1 "
            f"ORDER BY event_id IN ({marks}), uploaded_at IS NULL, state != 'failed', created, event_id LIMIT 1",
            busy).fetchone()
        return None if r is None else _row(r)

    # --- plumbing ---

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with contextlib.suppress(sqlite3.ProgrammingError):
            self._db.close()

    def _update(self, assignments: str, args: tuple, event_id: str, states: Collection[str], extra: str = "") -> bool:
        marks = ", ".join("?" * len(states))
        with self._tx():
            cur = self._db.execute(
                f"UPDATE uploads SET {assignments} WHERE event_id = ? AND state IN ({marks}) {extra}",
                (*args, event_id, *states))
        return cur.rowcount == 1

    def _tx(self):
        return transaction(self._db)


class Uploader:
    """Works the :class:`UploadQueue` through ``portal`` (a :class:`PortalClient`), one
    step of one clip at a time (oldest due first).

    ``backoff`` gives the delay (seconds) after a transient failure (reset after every
    success). ``clock`` returns Unix seconds. ``idle_poll`` (s) bounds the sleep with
    nothing due. ``quota`` (optional) is enforced before every step
    (:meth:`enforce_quota`). An expired URL (by the portal's ``expires_in``) is not
    used: a fresh one is requested, at once when the old one had been tried, else after a
    backoff (a portal handing out too-short URLs is not hammered). After
    ``max_put_refusals`` PUTs of one clip were refused by storage (4xx) the clip is
    parked as ``failed``. ``retain_seconds``: finished rows older than this are pruned
    (checked hourly).

    Counters (since this object was created): :attr:`uploaded` (PUTs that stored the
    clip, including 409s), :attr:`conflicts` (409s among them), :attr:`confirmed`,
    :attr:`retried` (transient failures and refused URLs), :attr:`failed`,
    :attr:`url_requests`, :attr:`evicted` (the queue's). :attr:`busy` is the
    ``event_id`` whose PUT is in flight, if any.
    """

    def __init__(
        self,
        queue: UploadQueue,
        portal: PortalClient,
        backoff: Backoff,
        *,
        clock: Callable[[], float] = time.time,
        idle_poll: float = 30.0,
        quota: Quota | None = None,
        max_put_refusals: int = 8,
        retain_seconds: float = 30 * 86400.0,
    ) -> None:
        self.queue, self.portal, self.backoff = queue, portal, backoff
        self.clock, self.idle_poll, self.quota = clock, idle_poll, quota
        self.max_put_refusals = max(1, int(max_put_refusals))
        self.retain_seconds = retain_seconds
        self.uploaded = self.conflicts = self.confirmed = self.retried = self.failed = self.url_requests = 0
        self.busy: str | None = None
        self._wake = asyncio.Event()
        self._next_prune = 0.0

    @property
    def evicted(self) -> int:
        """Clips evicted by the queue's disk quota (since the queue object was created)."""
        return self.queue.evicted

    def wake(self) -> None:
        """Look at the queue now (call after :meth:`UploadQueue.add`, from the event-loop thread)."""
        self._wake.set()

    def enforce_quota(self) -> list[Evicted]:
        """Apply :attr:`quota` now (no-op without one); the clip being uploaded is evicted last."""
        if self.quota is None:
            return []
        return self.queue.evict_for_quota(self.quota.max_bytes, self.quota.free_floor_bytes, self.quota.disk_free,
                                          busy=(self.busy,) if self.busy else (), now=self.clock())

    async def run(self, stop_event: asyncio.Event) -> None:
        """Upload until ``stop_event`` is set; returns after the step in flight (if any) ends."""
        while not stop_event.is_set():
            self._wake.clear()
            try:
                self.enforce_quota()
                self._maybe_prune()
            except (OSError, sqlite3.Error):
                log.exception("uploads: quota enforcement failed")
            now = self.clock()
            row = self.queue.next_due(now)
            if row is None:
                due = self.queue.next_wakeup()
                timeout = self.idle_poll if due is None else min(self.idle_poll, max(0.0, due - now))
                await self._sleep(stop_event, timeout)
                continue
            await self.step(row)

    async def step(self, row: Upload) -> None:
        """Advance ``row`` by one step (URL, PUT or confirm); failures are recorded on the row."""
        try:
            if row.state == "recorded":
                await self._get_url(row)
            elif row.state == "url":
                await self._put(row)
            elif row.state == "uploaded":
                await self._confirm(row)
        except PortalRejected as exc:
            if exc.status in RETRYABLE_STATUSES:
                self._retry(row, exc)
            else:
                self._fail(row, f"portal refused (HTTP {exc.status}): {exc}")
        except PortalUnavailable as exc:
            self._retry(row, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("uploads: unexpected error on %s (%s)", row.event_id, row.state)
            self._retry(row, exc)

    # --- steps ---

    async def _get_url(self, row: Upload) -> None:
        if not self._file_present(row):
            return
        resp = await self.portal.request_upload_url(UploadUrlRequest(camera_id=row.camera_id, filename=row.filename))
        now = self.clock()
        url, path = resp.url(), resp.path_or_none()
        assert url and path  # request_upload_url guarantees both
        ttl = resp.expires_in
        expires_at = now + float(ttl) if ttl is not None and math.isfinite(ttl) and ttl > 0 else None  # else unknown
        self.queue.set_url(row.event_id, url, path, expires_at, now=now)
        self.url_requests += 1
        self.backoff.reset()
        log.info("uploads: %s: upload URL #%d for %s (%s)", row.event_id, row.url_requests + 1, path,
                 f"expires in {resp.expires_in:g} s" if resp.expires_in is not None else "expiry unknown")

    async def _put(self, row: Upload) -> None:
        now = self.clock()
        assert row.upload_url is not None
        if row.url_expires_at is not None and row.url_expires_at <= now:
            # Tried and failed until it expired: renew at once. Expired untried: the portal's
            # URLs are too short-lived for this pod — back off instead of spinning.
            delay = 0.0 if row.attempts > 0 else self._delay(row.url_requests - 1)
            self.queue.drop_url(row.event_id, "upload URL expired before the PUT", next_attempt=now + delay, now=now)
            self.retried += 1
            log.info("uploads: %s: upload URL for %s expired; requesting a new one in %.1f s",
                     row.event_id, row.file_path, delay)
            return
        if not self._file_present(row):
            return
        self.busy = row.event_id
        t0 = time.monotonic()
        try:
            size = await self.portal.upload_file(row.upload_url, row.local_path, "video/mp4")
        except StorageConflict as exc:
            self.conflicts += 1
            log.info("uploads: %s: storage already holds %s (HTTP %d, \"The resource already exists\"): an "
                     "earlier PUT landed; counting it as uploaded", row.event_id, row.file_path, exc.status)
            self._uploaded(row)
            return
        except PortalRejected as exc:
            if exc.status in RETRYABLE_STATUSES:
                raise
            self._refused_put(row, exc)
            return
        except FileNotFoundError:
            self.queue.mark_deleted(row.event_id, now=self.clock())
            self._fail(row, "local clip vanished before the upload")
            return
        finally:
            self.busy = None
        log.info("uploads: %s: uploaded %d bytes to %s in %.1f s", row.event_id, size, row.file_path,
                 time.monotonic() - t0)
        self._uploaded(row)

    async def _confirm(self, row: Upload) -> None:
        assert row.file_path is not None
        await self.portal.confirm_recording(RecordingConfirm(
            camera_id=row.camera_id, file_path=row.file_path, duration_seconds=round(row.duration_s, 3),
            event_type="plate_detection", plate_number=row.plate, event_id=row.event_id,
            file_size_bytes=row.size_bytes))
        now = self.clock()
        self.queue.mark_confirmed(row.event_id, now=now)
        self.confirmed += 1
        self.backoff.reset()
        log.info("uploads: %s: recording %s confirmed (%.1f s, %d bytes)", row.event_id, row.file_path,
                 row.duration_s, row.size_bytes)
        if row.on_disk:
            try:
                os.unlink(row.local_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("uploads: %s: cannot delete confirmed clip %s: %s (the quota will retry)",
                          row.event_id, row.local_path, exc.strerror or exc)
                return
            self.queue.mark_deleted(row.event_id, now=now)

    # --- helpers ---

    def _uploaded(self, row: Upload) -> None:
        self.queue.mark_uploaded(row.event_id, now=self.clock())
        self.uploaded += 1
        self.backoff.reset()

    def _refused_put(self, row: Upload, exc: PortalRejected) -> None:
        now = self.clock()
        refusals = row.put_refusals + 1
        if refusals >= self.max_put_refusals:
            self.queue.drop_url(row.event_id, f"PUT refused: HTTP {exc.status}: {exc}", next_attempt=now,
                                refused=True, now=now)
            self._fail(replace(row, state="recorded"),
                       f"storage refused {refusals} PUTs; last: HTTP {exc.status}: {exc}")
            return
        # The first refusal is usually an expired URL: ask again at once; repeated refusals back off.
        delay = self._delay(refusals - 1)
        self.queue.drop_url(row.event_id, f"PUT refused: HTTP {exc.status}: {exc}", next_attempt=now + delay,
                            refused=True, now=now)
        self.retried += 1
        log.warning("uploads: %s: storage refused the PUT of %s (HTTP %d: expired or invalid signature?); "
                    "requesting a new URL in %.1f s", row.event_id, row.file_path, exc.status, delay)

    def _delay(self, n: int) -> float:
        """0 for ``n <= 0``, else the un-jittered backoff delay of attempt ``n`` (seconds)."""
        if n <= 0:
            return 0.0
        return min(self.backoff.cap, self.backoff.initial * 2 ** min(n - 1, 30))

    def _file_present(self, row: Upload) -> bool:
        if row.on_disk and os.path.isfile(row.local_path):
            return True
        self.queue.mark_deleted(row.event_id, now=self.clock())
        self._fail(row, "local clip is missing")
        return False

    def _retry(self, row: Upload, exc: BaseException) -> None:
        delay = self.backoff.next_delay()
        self.queue.retry_later(row.event_id, delay, f"{type(exc).__name__}: {exc}", now=self.clock())
        self.retried += 1
        log.warning("uploads: %s (%s) not done (%s); attempt %d, retrying in %.1f s", row.event_id, row.state,
                    redact(str(exc)) or type(exc).__name__, row.attempts + 1, delay)

    def _fail(self, row: Upload, error: str) -> None:
        self.queue.mark_failed(row.event_id, error, now=self.clock())
        self.failed += 1
        log.error("uploads: %s (camera %s) parked as failed in state %s: %s", row.event_id, row.camera_id,
                  row.state, redact(error))

    def _maybe_prune(self) -> None:
        now = self.clock()
        if now >= self._next_prune:
            self._next_prune = now + 3600.0
            n = self.queue.prune(now - self.retain_seconds)
            if n:
                log.info("uploads: pruned %d finished row(s) older than %.0f days", n, self.retain_seconds / 86400)

    async def _sleep(self, stop_event: asyncio.Event, timeout: float) -> None:
        if timeout <= 0:
            return
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop_event.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
