"""Durable clip uploads — the store: the upload queue and the recordings disk quota.

The steps themselves (signed URL, streamed PUT, confirm, local delete) are in
:mod:`pod.uploader`; this module keeps the rows and the bytes on disk.

One row per detection clip in table ``uploads`` of the pod's state file
(``cfg.outbox_path``, a :class:`pod.db.StateDB`: WAL, ``synchronous=FULL``, healed when
damaged), keyed by the detection's ``event_id`` (the idempotency key: a clip is queued at
most once). Each step is recorded before the next one starts, so a restart resumes where
the pod stopped and a confirmed clip is never uploaded again::

    recorded ──upload-url──▶ url ──PUT 2xx / 409──▶ uploaded ──confirm 2xx──▶ confirmed
       ▲                      │                                    (local file deleted)
       └──PUT 4xx (expired or bad signature: a fresh URL next time)┘

plus ``failed`` — parked, with a ``park_reason``: ``auth`` (401/403: re-queued as soon as
the API key works again), ``rejected`` (another 4xx on upload-url or confirm), ``attempts``
(kept failing while other clips went through), ``storage_refused`` (storage refused the PUT
under ``max_put_refusals`` fresh URLs), ``missing_file`` (the local clip vanished); the file
is kept, see :meth:`UploadQueue.requeue` — and ``evicted`` (the local file was deleted by the
disk quota before the upload).

Disk quota (:meth:`UploadQueue.evict_for_quota`): while the recordings directory holds
more than ``max_bytes`` — **every byte in it** (:func:`dir_bytes`: clips, temporary files of
clips being built, anything else) when the quota names the directory, else the sizes of the
queued clips — or the file system's free space is below ``free_floor_bytes``, delete the
oldest clip already uploaded, then the oldest refused (``failed``) one, then the oldest not
yet uploaded; each eviction is logged (warning) and counted. Evicting an uploaded but
unconfirmed clip keeps its row in ``uploaded``: the confirm needs no local file.

Times in the database are wall-clock Unix seconds (``time.time()``), so retry
schedules survive a restart. Signed URLs are stored (the file is mode 0600)
but never logged: log lines name the event, camera and storage path only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import msgspec

from pod.db import StateDB, Table
from pod.worker import clean_error

log = logging.getLogger("platebridge.pod.uploads")

STATES = ("recorded", "url", "uploaded", "confirmed", "evicted", "failed")
ACTIVE_STATES = ("recorded", "url", "uploaded")
"""States the uploader still works on."""
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
    updated REAL NOT NULL,
    park_reason TEXT,
    strikes INTEGER NOT NULL DEFAULT 0,
    failed_at REAL
);
CREATE INDEX IF NOT EXISTS uploads_state_due ON uploads (state, next_attempt);
CREATE INDEX IF NOT EXISTS uploads_on_disk ON uploads (on_disk, created);
"""
TABLE = Table("uploads", _SCHEMA, key="event_id", min_columns=21,
              added={"park_reason": "TEXT", "strikes": "INTEGER NOT NULL DEFAULT 0", "failed_at": "REAL"})
_COLUMNS = ("event_id, camera_id, local_path, filename, plate, duration_s, created, state, upload_url, file_path, "
            "url_expires_at, attempts, next_attempt, last_error, size_bytes, metadata, on_disk, url_requests, "
            "put_refusals, uploaded_at, updated, park_reason, strikes, failed_at")
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
    ``updated`` (Unix s of the last change), ``park_reason`` (why it is ``failed``),
    ``strikes`` (failures counted against it, :mod:`pod.worker`), ``failed_at`` (Unix s of
    the last failed attempt, or None).
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
    park_reason: str | None = None
    strikes: int = 0
    failed_at: float | None = None

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
    """Disk bound for the recordings directory: at most ``max_bytes`` on disk — every byte
    under ``directory`` when given (:func:`dir_bytes`), else the queued clips' sizes — and at
    least ``free_floor_bytes`` free on the file system as reported by ``disk_free()``
    (bytes; None: no floor check). See :func:`disk_free_for`."""

    max_bytes: int
    free_floor_bytes: int = 0
    disk_free: Callable[[], int] | None = None
    directory: str | os.PathLike[str] | None = None


def dir_bytes(directory: str | os.PathLike[str]) -> int:
    """Bytes of every regular file under ``directory`` (recursively; files vanishing while
    counted are skipped; a missing directory holds 0)."""
    total = 0
    stack = [os.fspath(directory)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def disk_free_for(path: str | os.PathLike[str]) -> Callable[[], int]:
    """A ``disk_free`` callable: free bytes (for unprivileged users) of the file system
    holding ``path`` (``shutil.disk_usage``). Raises ``OSError`` when called if ``path``
    does not exist."""
    return lambda: shutil.disk_usage(path).free


_clean_error = clean_error


def _row(r: tuple) -> Upload:
    try:
        meta = msgspec.json.decode(r[15]) if r[15] else {}
    except msgspec.DecodeError:
        meta = {}
    return Upload(r[0], r[1], r[2], r[3], r[4], float(r[5]), float(r[6]), r[7], r[8], r[9],
                  None if r[10] is None else float(r[10]), int(r[11]), float(r[12]), r[13], int(r[14]),
                  meta if isinstance(meta, dict) else {}, bool(r[16]), int(r[17]), int(r[18]),
                  None if r[19] is None else float(r[19]), float(r[20]), r[21], int(r[22] or 0),
                  None if r[23] is None else float(r[23]))


class UploadQueue:
    """The ``uploads`` table in ``db``: the agent's :class:`~pod.db.StateDB`, or the path of
    an SQLite file (normally the outbox file) opened on its own.

    A path creates the parent directory (0700) and the file (0600) when missing; sets WAL
    and ``synchronous=FULL``; heals a damaged file. Every transition is one short
    transaction and applies only from the state(s) it names, returning False otherwise (so
    a stale step never overwrites a newer state). :attr:`evicted` counts evictions since
    this object was created. Raises ``sqlite3.Error`` when the database cannot be opened.
    """

    def __init__(self, db: StateDB | str | os.PathLike[str]) -> None:
        self.state = db if isinstance(db, StateDB) else StateDB(db, [TABLE], name="uploads")
        self.path = self.state.path
        self.evicted = 0

    @property
    def _db(self) -> sqlite3.Connection:
        return self.state.conn

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

    def retry_later(self, event_id: str, delay_s: float, error: str, *, now: float | None = None,
                    strike: bool = False) -> bool:
        """Count a failed attempt of an active row and make it due ``delay_s`` seconds after
        ``now``; ``strike`` counts it against the row. ``error`` is stored redacted."""
        now = time.time() if now is None else now
        return self._update(
            "attempts = attempts + 1, strikes = strikes + ?, next_attempt = ?, last_error = ?, failed_at = ?, "
            "updated = ?", (int(strike), now + max(0.0, float(delay_s)), _clean_error(error), now, now),
            event_id, ACTIVE_STATES)

    def mark_failed(self, event_id: str, error: str, *, now: float | None = None, reason: str = "rejected") -> bool:
        """Active row → ``failed`` with ``reason`` (never retried unless re-queued; the file
        is kept)."""
        now = time.time() if now is None else now
        return self._update("state = 'failed', attempts = attempts + 1, park_reason = ?, last_error = ?, "
                            "failed_at = ?, updated = ?", (reason, _clean_error(error), now, now), event_id,
                            ACTIVE_STATES)

    def requeue(self, now: float | None = None, *, reason: str | None = None,
                keys: Collection[str] | None = None) -> int:
        """Retry ``failed`` rows — all, those parked for ``reason``, or those with one of
        ``keys`` — from where they can continue: rows whose bytes were uploaded go back to
        ``uploaded`` (confirm again), rows whose file is on disk to ``recorded``; the others
        (file gone, never uploaded) stay failed. Returns how many rows were re-queued."""
        now = time.time() if now is None else now
        cond, args = "", []
        if reason is not None:
            cond += " AND COALESCE(park_reason, 'rejected') = ?"
            args.append(reason)
        if keys is not None:
            keys = list(keys)
            if not keys:
                return 0
            cond += f" AND event_id IN ({', '.join('?' * len(keys))})"
            args += keys
        reset = "attempts = 0, strikes = 0, failed_at = NULL, park_reason = NULL, next_attempt = ?, updated = ?"
        with self._tx():
            a = self._db.execute(
                f"UPDATE uploads SET state = 'uploaded', {reset} "
                f"WHERE state = 'failed' AND uploaded_at IS NOT NULL AND file_path IS NOT NULL{cond}",
                (now, now, *args)).rowcount
            b = self._db.execute(
                "UPDATE uploads SET state = 'recorded', upload_url = NULL, file_path = NULL, url_expires_at = NULL, "
                f"put_refusals = 0, {reset} WHERE state = 'failed' AND uploaded_at IS NULL AND on_disk = 1{cond}",
                (now, now, *args)).rowcount
        return a + b

    def requeue_failed(self, now: float | None = None) -> int:
        """Re-queue every ``failed`` row that can continue (see :meth:`requeue`)."""
        return self.requeue(now)

    def make_due(self, now: float) -> int:
        """Active rows without strikes waiting past ``now`` become due at ``now``."""
        with self._tx():
            return self._db.execute(
                f"UPDATE uploads SET next_attempt = ? WHERE state IN {_ACTIVE_SQL} AND next_attempt > ? "
                "AND strikes = 0", (now, now)).rowcount

    def drop(self, keys: Collection[str], *, why: str = "operator", now: float | None = None) -> list[Upload]:
        """Give up on the clips with ``keys`` for good: their local files are deleted and
        their rows removed; each is logged (warning) and counted as ``dropped:clip:<why>``.
        Returns the dropped rows (as they were)."""
        keys = list(keys)
        if not keys:
            return []
        marks = ", ".join("?" * len(keys))
        with self._tx():
            rows = [_row(r) for r in self._db.execute(
                f"SELECT {_COLUMNS} FROM uploads WHERE event_id IN ({marks}) ORDER BY created", keys).fetchall()]
            if rows:
                self._db.execute(f"DELETE FROM uploads WHERE event_id IN ({marks})", keys)
                self.state.bump(f"dropped:clip:{why}", len(rows))
        for r in rows:
            if r.on_disk:
                with contextlib.suppress(OSError):
                    os.unlink(r.local_path)
            log.warning("uploads: dropped clip %s (camera %s, %s%s) by %s; last error: %s", r.event_id, r.camera_id,
                        r.state, f" {r.park_reason}" if r.park_reason else "", why, r.last_error or "-")
        return rows

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

    def due(self, now: float, limit: int = 1, busy: Collection[str] = ()) -> list[Upload]:
        """Up to ``limit`` active rows with ``next_attempt <= now``, oldest (by ``created``)
        first, skipping the ``busy`` event ids. Rows do not block each other: one waiting
        for its retry is overtaken."""
        busy = list(busy)
        skip = f" AND event_id NOT IN ({', '.join('?' * len(busy))})" if busy else ""
        rs = self._db.execute(
            f"SELECT {_COLUMNS} FROM uploads WHERE state IN {_ACTIVE_SQL} AND next_attempt <= ?{skip} "
            "ORDER BY created, event_id LIMIT ?", (now, *busy, int(limit))).fetchall()
        return [_row(r) for r in rs]

    def next_due(self, now: float) -> Upload | None:
        """The oldest active row due at ``now`` (see :meth:`due`), or None."""
        rows = self.due(now, 1)
        return rows[0] if rows else None

    def next_wakeup(self, busy: Collection[str] = ()) -> float | None:
        """Earliest ``next_attempt`` (Unix s) over active rows not in ``busy``, or None."""
        busy = list(busy)
        skip = f" AND event_id NOT IN ({', '.join('?' * len(busy))})" if busy else ""
        r = self._db.execute(f"SELECT MIN(next_attempt) FROM uploads WHERE state IN {_ACTIVE_SQL}{skip}",
                             busy).fetchone()
        return None if r is None or r[0] is None else float(r[0])

    def parked_by_reason(self) -> dict[str, int]:
        """``failed`` rows per ``park_reason`` (rows from before reasons existed: ``rejected``)."""
        return {str(k): int(n) for k, n in self._db.execute(
            "SELECT COALESCE(park_reason, 'rejected'), COUNT(*) FROM uploads WHERE state = 'failed' GROUP BY 1")}

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

    def known_paths(self) -> set[str]:
        """Absolute local paths of every queued clip (any state)."""
        return {r[0] for r in self._db.execute("SELECT local_path FROM uploads")}

    # --- disk quota ---

    def evict_for_quota(
        self,
        max_bytes: int,
        free_floor_bytes: int = 0,
        disk_free: Callable[[], int] | None = None,
        *,
        busy: Collection[str] = (),
        now: float | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> list[Evicted]:
        """Delete local clips until the bytes on disk are ``<= max_bytes`` — every byte under
        ``directory`` when given (:func:`dir_bytes`), else :meth:`total_local_bytes` — and
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
            total = dir_bytes(directory) if directory is not None else self.total_local_bytes()
            free = disk_free() if disk_free is not None else None
            if total <= max_bytes and (free is None or free >= free_floor_bytes):
                return out
            reason = "quota" if total > max_bytes else "disk_free"
            victim = self._eviction_candidate(busy)
            if victim is None:
                clips = self.total_local_bytes()
                log.error("uploads: %s exceeded (recordings on disk %d bytes, of which queued clips %d; max %d; free "
                          "%s, floor %d) and no clip is left to evict", reason, total, clips, max_bytes, free,
                          free_floor_bytes)
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
        self.state.close()

    def _update(self, assignments: str, args: tuple, event_id: str, states: Collection[str], extra: str = "") -> bool:
        marks = ", ".join("?" * len(states))
        with self._tx():
            cur = self._db.execute(
                f"UPDATE uploads SET {assignments} WHERE event_id = ? AND state IN ({marks}) {extra}",
                (*args, event_id, *states))
        return cur.rowcount == 1

    def _tx(self) -> contextlib.AbstractContextManager[None]:
        return self.state.tx()
