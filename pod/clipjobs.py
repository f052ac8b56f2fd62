"""Durable clip jobs, the start-up sweep of ``recordings_dir`` and the segment index rebuilt
from disk — what lets a clip survive a pod restart.

* **Jobs.** A clip job is a row of table ``clip_jobs`` in the pod's state file, written in
  the same transaction as the detection's outbox row (:mod:`pod.decisions`), so a decision
  and its clip are durable together. States: ``waiting`` (to be built), ``done`` (built and
  queued for upload: :mod:`pod.uploads` takes over), ``failed`` (could not be built:
  ``reason`` says why, e.g. the disk was full) and ``lost`` (the pod restarted and the
  segments of the window were gone: ``reason`` says so). Nothing is dropped silently:
  every job ends ``done``, ``failed`` or ``lost``, each with its reason in ``/health``,
  the log and ``platebridge-pod outbox list``.
* **Sweep** (:func:`sweep_recordings`, at start, before any clip is built): temporary
  files a killed build left behind (``.<clip>.concat``, ``<clip>.part``) are removed;
  finished clips not in the upload queue are adopted when a waiting job names them (the
  build had finished, the hand-over to the upload queue had not) and deleted otherwise;
  other files are left alone but counted (the disk quota counts every byte of the
  directory, :func:`pod.uploads.dir_bytes`).
* **Segments on disk** (:func:`scan_segments`): the streamer's index of segments lives in
  memory and the playlist on disk covers only the live window, so after a restart the
  segments still on disk are placed on the wall clock from their file modification times
  (a segment is written when it is complete, so its mtime is its end and the previous
  segment's end is its start), grouped into runs by their init segment
  (``init_<run>.mp4``: segment numbers of a run start at its run id). Waiting jobs are
  then rebuilt from them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import statistics
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from pod.db import StateDB, Table
from pod.segments import SegmentInfo

log = logging.getLogger("platebridge.pod.clipjobs")

STATES = ("waiting", "done", "failed", "lost")
TABLE = Table(
    name="clip_jobs",
    schema="""
CREATE TABLE IF NOT EXISTS clip_jobs (
    event_id TEXT PRIMARY KEY,
    camera_id TEXT NOT NULL,
    plate TEXT,
    detected_at REAL NOT NULL,
    window_start REAL NOT NULL,
    window_end REAL NOT NULL,
    filename TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting',
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS clip_jobs_state ON clip_jobs (state, detected_at);
""",
    key="event_id",
    min_columns=12,
)
_COLUMNS = ("event_id, camera_id, plate, detected_at, window_start, window_end, filename, state, reason, created, "
            "updated, restarts")
_MAX_REASON = 300
_CLIP = re.compile(r"^recording_\d{8}_\d{6}_.+\.mp4$")
_SEGMENT = re.compile(r"^seg_(\d+)\.(m4s|ts)$")
_INIT = re.compile(r"^init_(\d+)\.mp4$")


class ClipJob(msgspec.Struct, frozen=True):
    """One clip job: the detection (``event_id``, ``camera_id``, ``plate``, ``detected_at``
    Unix s), the footage wanted (``window_start``..``window_end``, Unix s), the clip's
    ``filename`` in ``recordings_dir``, its ``state`` (:data:`STATES`) and ``reason`` (why it
    failed or was lost), ``created``/``updated`` (Unix s) and ``restarts`` (pod starts it
    has waited through)."""

    event_id: str
    camera_id: str
    plate: str | None
    detected_at: float
    window_start: float
    window_end: float
    filename: str
    state: str = "waiting"
    reason: str | None = None
    created: float = 0.0
    updated: float = 0.0
    restarts: int = 0


def _job(r: tuple) -> ClipJob:
    return ClipJob(r[0], r[1], r[2], float(r[3]), float(r[4]), float(r[5]), r[6], r[7], r[8], float(r[9]),
                   float(r[10]), int(r[11] or 0))


class ClipJobs:
    """Table ``clip_jobs`` in ``db`` (:class:`~pod.db.StateDB`). Every method is one short
    transaction (re-entrant: inside an outer one it joins it)."""

    def __init__(self, db: StateDB) -> None:
        self.state = db

    def tx(self) -> contextlib.AbstractContextManager[None]:
        """A (re-entrant) transaction on the state file."""
        return self.state.tx()

    def add(self, job: ClipJob, *, now: float | None = None) -> bool:
        """Record ``job`` as ``waiting``. Returns False, changing nothing, when a job for its
        ``event_id`` exists already (any state)."""
        now = time.time() if now is None else now
        with self.state.tx():
            cur = self.state.conn.execute(
                f"INSERT OR IGNORE INTO clip_jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 'waiting', NULL, ?, ?, 0)",
                (job.event_id, job.camera_id, job.plate, job.detected_at, job.window_start, job.window_end,
                 job.filename, now, now))
        return cur.rowcount == 1

    def finish(self, event_id: str, state: str, reason: str | None = None, *, now: float | None = None) -> bool:
        """``waiting`` → ``state`` (``done``, ``failed`` or ``lost``) with ``reason``.
        Returns False when the job is not waiting."""
        if state not in STATES or state == "waiting":
            raise ValueError(f"cannot finish a job as {state!r}")
        now = time.time() if now is None else now
        with self.state.tx():
            cur = self.state.conn.execute(
                "UPDATE clip_jobs SET state = ?, reason = ?, updated = ? WHERE event_id = ? AND state = 'waiting'",
                (state, None if reason is None else reason[:_MAX_REASON], now, event_id))
        return cur.rowcount == 1

    def restarted(self, *, now: float | None = None) -> int:
        """Count a pod start for every waiting job; returns how many are waiting."""
        now = time.time() if now is None else now
        with self.state.tx():
            return self.state.conn.execute(
                "UPDATE clip_jobs SET restarts = restarts + 1, updated = ? WHERE state = 'waiting'", (now,)).rowcount

    def get(self, event_id: str) -> ClipJob | None:
        """The job of ``event_id``, or None."""
        r = self.state.conn.execute(f"SELECT {_COLUMNS} FROM clip_jobs WHERE event_id = ?", (event_id,)).fetchone()
        return None if r is None else _job(r)

    def waiting(self, limit: int | None = None, exclude: Collection[str] = ()) -> list[ClipJob]:
        """Waiting jobs, oldest detection first, at most ``limit``, none of ``exclude``."""
        ex = list(exclude)
        skip = f" AND event_id NOT IN ({', '.join('?' * len(ex))})" if ex else ""
        sql = f"SELECT {_COLUMNS} FROM clip_jobs WHERE state = 'waiting'{skip} ORDER BY detected_at, event_id"
        args: list[object] = list(ex)
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_job(r) for r in self.state.conn.execute(sql, args).fetchall()]

    def by_filename(self, filename: str) -> ClipJob | None:
        """The job whose clip is ``filename``, or None."""
        r = self.state.conn.execute(f"SELECT {_COLUMNS} FROM clip_jobs WHERE filename = ? LIMIT 1",
                                    (filename,)).fetchone()
        return None if r is None else _job(r)

    def rows(self, states: Collection[str] = STATES, limit: int | None = None) -> list[ClipJob]:
        """Jobs in ``states``, newest first, at most ``limit``."""
        st = list(states)
        sql = (f"SELECT {_COLUMNS} FROM clip_jobs WHERE state IN ({', '.join('?' * len(st))}) "
               "ORDER BY detected_at DESC")
        args: list[object] = list(st)
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_job(r) for r in self.state.conn.execute(sql, args).fetchall()]

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state present)."""
        out = dict.fromkeys(STATES, 0)
        for state, n in self.state.conn.execute("SELECT state, COUNT(*) FROM clip_jobs GROUP BY state"):
            out[str(state)] = int(n)
        return out

    def prune(self, older_than: float) -> int:
        """Delete finished jobs (``done``, ``failed``, ``lost``) last changed before
        ``older_than`` (Unix s). Returns how many."""
        with self.state.tx():
            return self.state.conn.execute(
                "DELETE FROM clip_jobs WHERE state != 'waiting' AND updated < ?", (older_than,)).rowcount


# ------------------------------------------------------------------ sweep


@dataclass
class Sweep:
    """What :func:`sweep_recordings` found: temporary files removed (``temp_removed``, their
    ``temp_bytes``), finished clips to adopt (``adopt``: (job, path) pairs), orphan clips
    deleted (``orphans_deleted``, ``orphan_bytes``) and files left alone (``foreign``,
    ``foreign_bytes``)."""

    temp_removed: list[str] = field(default_factory=list)
    temp_bytes: int = 0
    adopt: list[tuple[ClipJob, Path]] = field(default_factory=list)
    orphans_deleted: list[str] = field(default_factory=list)
    orphan_bytes: int = 0
    foreign: list[str] = field(default_factory=list)
    foreign_bytes: int = 0

    def summary(self) -> dict[str, int]:
        """Counts for ``/health``."""
        return {"temp_removed": len(self.temp_removed), "temp_bytes": self.temp_bytes, "adopted": len(self.adopt),
                "orphans_deleted": len(self.orphans_deleted), "orphan_bytes": self.orphan_bytes,
                "foreign_files": len(self.foreign), "foreign_bytes": self.foreign_bytes}


def is_temp_clip_file(name: str) -> bool:
    """A temporary file of a clip build (``.<clip>.concat``, ``<clip>.part``)."""
    return name.endswith((".concat", ".part"))


def sweep_recordings(directory: str | os.PathLike[str], known_paths: Collection[str],
                     jobs: ClipJobs | None) -> Sweep:
    """Clean ``directory`` (``recordings_dir``) at start, before any clip is built (see the
    module docs). ``known_paths``: absolute paths of the clips in the upload queue
    (kept). Finished clips not among them are returned in :attr:`Sweep.adopt` when a job
    names them and is not ``done`` (the caller checks and queues them), else deleted.
    Logs each action; never raises for a file it cannot remove (logged)."""
    out = Sweep()
    d = Path(directory)
    try:
        entries = list(os.scandir(d))
    except OSError:
        return out
    known = {os.path.abspath(p) for p in known_paths}
    for e in entries:
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            size = e.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        path = os.path.abspath(e.path)
        if is_temp_clip_file(e.name):
            try:
                os.unlink(path)
            except OSError as exc:
                log.error("recordings: cannot remove leftover %s: %s", e.name, exc.strerror or exc)
                continue
            out.temp_removed.append(e.name)
            out.temp_bytes += size
            continue
        if path in known:
            continue
        if _CLIP.match(e.name):
            job = jobs.by_filename(e.name) if jobs is not None else None
            if job is not None and job.state == "waiting":
                out.adopt.append((job, Path(path)))
                continue
            try:
                os.unlink(path)
            except OSError as exc:
                log.error("recordings: cannot remove orphan clip %s: %s", e.name, exc.strerror or exc)
                continue
            out.orphans_deleted.append(e.name)
            out.orphan_bytes += size
            log.warning("recordings: deleted %s (%d bytes): a finished clip neither queued for upload nor named by a "
                        "waiting clip job%s", e.name, size, f" (its job is {job.state})" if job else "")
            continue
        out.foreign.append(e.name)
        out.foreign_bytes += size
    if out.temp_removed:
        log.warning("recordings: removed %d temporary file(s) left by an interrupted clip build (%d bytes): %s",
                    len(out.temp_removed), out.temp_bytes, ", ".join(out.temp_removed[:10]))
    if out.foreign:
        log.warning("recordings: %d file(s) that are not the pod's clips (%d bytes) are in %s; they count toward "
                    "recordings_max_bytes: %s", len(out.foreign), out.foreign_bytes, d,
                    ", ".join(out.foreign[:10]))
    return out


# ------------------------------------------------------------ segments on disk


def scan_segments(camera_dir: str | os.PathLike[str], *, segment_seconds: float) -> list[SegmentInfo]:
    """The HLS segments in ``camera_dir`` placed on the wall clock from their mtimes (see
    the module docs), in playback order. fMP4 segments without an init segment on disk are
    left out (unplayable); MPEG-TS segments need none. ``segment_seconds`` is the duration
    assumed for a run's first segment when the run has no other to measure."""
    d = Path(camera_dir)
    segs: list[tuple[int, str, float]] = []
    runs: list[int] = []
    try:
        for e in os.scandir(d):
            m = _SEGMENT.match(e.name)
            try:
                if m:
                    segs.append((int(m.group(1)), e.name, e.stat().st_mtime))
                elif im := _INIT.match(e.name):
                    runs.append(int(im.group(1)))
            except OSError:
                continue
    except OSError:
        return []
    runs.sort()
    segs.sort()
    grouped: dict[str | None, list[tuple[int, str, float]]] = {}
    for msn, name, mtime in segs:
        init: str | None = None
        if name.endswith(".m4s"):
            run = max((r for r in runs if r <= msn), default=None)
            if run is None:
                continue
            init = f"init_{run}.mp4"
        grouped.setdefault(init, []).append((msn, name, mtime))
    out: list[SegmentInfo] = []
    for init, items in grouped.items():
        gaps = [b[2] - a[2] for a, b in itertools.pairwise(items) if b[0] == a[0] + 1 and b[2] > a[2]]
        typical = statistics.median(gaps) if gaps else segment_seconds
        prev: tuple[int, str, float] | None = None
        for msn, name, mtime in items:
            if prev is not None and msn == prev[0] + 1 and 0 < mtime - prev[2] <= 4 * max(typical, segment_seconds):
                start = prev[2]
            else:
                start = mtime - typical
            out.append(SegmentInfo(name=name, start=start, duration=mtime - start, init=init, sequence=msn))
            prev = (msn, name, mtime)
    out.sort(key=lambda s: (s.start, s.sequence))
    return out
