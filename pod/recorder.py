"""Detection clips: an MP4 from ``pre_roll`` s before a plate read to
``recording_duration`` s after it, cut from the HLS segments on disk.

The streamer's ffmpeg keeps ``hls_keep_extra_segments`` segments on disk past
the live window; a :class:`~pod.segments.SegmentIndex` places them on the wall
clock from their EXT-X-PROGRAM-DATE-TIME (RFC 8216 §4.3.2.6). For a detection
at ``t`` the :class:`Recorder` waits until the index reaches ``t +
recording_duration``, selects the contiguous run of segments covering
``[t - pre_roll, t + recording_duration]`` and :func:`build_clip` makes the
clip:

1. every selected segment is checked once with ffprobe (init + segment for
   fMP4): a missing, truncated or garbage segment is skipped and logged; if that
   leaves a gap, the good run containing the event (else the longest) is kept;
2. the init segment and the segments' bytes are concatenated into a temporary
   file next to the clip (fMP4 = ISO/IEC 14496-12 fragmented MP4: ``ftyp``+``moov``
   then ``moof``+``mdat`` pairs, so byte concatenation is a valid file; MPEG-TS
   is byte-concatenable too). The copy runs in a worker thread and also
   snapshots segments the streamer may delete meanwhile;
3. ``ffmpeg -c copy -movflags +faststart`` remuxes it into ``<clip>.mp4.part``
   (``moov`` before ``mdat``, playable while downloading), renamed to the clip;
4. ffprobe reads the clip's duration.

Clips are cut on segment boundaries (``-c copy`` cannot cut between keyframes),
so a clip usually starts a little before and ends a little after the window.

Overlapping windows are NOT merged: each detection gets its own clip, so the
audit trail stays one clip per detection (event id) even when two cars pass
within seconds.

Jobs are durable (:mod:`pod.clipjobs`): each is a row written with its detection, so a
stop, crash or upgrade does not lose the clips of the last seconds' detections. At the
next start the finished-but-unqueued clips are adopted, and the jobs still waiting are
built from the segments still on disk (placed on the wall clock by
:func:`pod.clipjobs.scan_segments`), or end ``lost`` with the reason when those are gone.
A job that cannot be built ends ``failed`` with the reason (e.g. the disk was full).

Without live streaming (``enable_streaming: false``) there are no segments: the clip is captured directly from RTSP for
``recording_duration`` s, and the missing pre-roll is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import re
import shutil
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pod import ffmpeg as ff  # "ff": parameters named ffmpeg (the binary) would shadow the module
from pod.clipjobs import ClipJob, ClipJobs
from pod.errors import FfmpegError, RecorderError
from pod.metrics import CLIP_JOBS_ENDED
from pod.segments import SegmentIndex, SegmentInfo, Selection, contiguous, parse_media_playlist
from protocol.redact import redact

__all__ = [
    "ClipJobResult", "ClipResult", "Recorder", "build_clip", "capture_direct", "clip_name", "ffprobe_duration",
    "refresh_index",
]

log = logging.getLogger("platebridge.pod.recorder")

PLAYLIST = "index.m3u8"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")  # a file directly in the HLS dir
# ffprobe messages that mean "this segment is damaged" (they come with exit code 0)
_CORRUPT = ("partial file", "invalid data", "moov atom not found", "error reading header", "truncat")


@dataclass(frozen=True)
class ClipResult:
    """A finished clip. ``path``: the MP4; ``duration_s``: its duration by ffprobe
    (seconds); ``size_bytes``; ``segments_used``: how many HLS segments went in (0
    for a direct capture); ``segments_skipped``: names of selected segments left
    out (missing, damaged, or cut off by a gap); ``preroll_missing_s`` /
    ``postroll_missing_s``: seconds of the requested window not covered at the
    start / end; ``covered_start`` / ``covered_end``: Unix seconds of the footage
    by the playlist's PDTs (``None`` for a direct capture)."""

    path: Path
    duration_s: float
    size_bytes: int
    segments_used: int
    segments_skipped: list[str]
    preroll_missing_s: float
    postroll_missing_s: float = 0.0
    covered_start: float | None = None
    covered_end: float | None = None


@dataclass(frozen=True)
class ClipJobResult:
    """What :class:`Recorder` hands to ``on_clip`` for one detection.

    ``path``/``filename``: the local MP4 (inside ``recordings_dir``);
    ``duration_s`` (ffprobe) and ``size_bytes``; ``plate``: the normalised plate
    (else the raw read, else ``None``); ``detected_at``: Unix seconds;
    ``metadata``: JSON-ready dict with ``preroll_missing_s``,
    ``postroll_missing_s``, ``segments_skipped`` (list of names),
    ``segments_used``, ``source`` (``"hls"`` | ``"rtsp"``), ``window_start``,
    ``window_end``."""

    event_id: str
    camera_id: str
    plate: str | None
    detected_at: float
    path: Path
    filename: str
    duration_s: float
    size_bytes: int
    metadata: dict[str, Any]
    clip: ClipResult = field(repr=False)


def clip_name(event_time: float, camera_id: str, event_id: str) -> str:
    """``recording_<YYYYmmdd_HHMMSS UTC>_<camera_id>_<event id>.mp4``.

    Every character of ``event_id`` (and ``camera_id``) outside ``[A-Za-z0-9._-]``
    becomes ``_``; the event part is cut to 80 characters. Raises ``ValueError``
    (or ``OverflowError``/``OSError``) for a time ``time.gmtime`` cannot represent.
    """
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(event_time))
    cam = _UNSAFE.sub("_", camera_id) or "_"
    ev = _UNSAFE.sub("_", event_id)[:80] or "_"
    return f"recording_{stamp}_{cam}_{ev}.mp4"


def refresh_index(index: SegmentIndex, camera_dir: Path) -> int:
    """Read ``camera_dir/index.m3u8`` and add its segments to ``index``. Returns the
    number of segments in the playlist (0 when it is missing or unreadable)."""
    try:
        text = (Path(camera_dir) / PLAYLIST).read_text(errors="replace")
    except OSError:
        return 0
    segs = parse_media_playlist(text)
    index.update(segs)
    return len(segs)


# ---------------------------------------------------------------- processes


async def _run(args: list[str], *, timeout: float, cwd: Path | None = None, capture_stdout: bool = True,
               grace: float = 0.0, stdin: bytes | None = None) -> tuple[int, str, str]:
    """:func:`pod.ffmpeg.run` as ``(returncode, stdout, stderr)``; raises
    :class:`RecorderError` when the program cannot start."""
    try:
        done = await ff.run(args, timeout=timeout, cwd=cwd, capture_stdout=capture_stdout, grace=grace,
                                stdin=stdin)
    except FfmpegError as exc:
        raise RecorderError(str(exc)) from None
    return done.returncode, done.stdout, done.stderr


_tail = ff.tail_text


async def ffprobe_duration(path: Path, *, ffprobe: str = "ffprobe", timeout: float = 60.0) -> float:
    """Container duration of a media file in seconds (:func:`pod.ffmpeg.ffprobe_duration`).
    Raises :class:`RecorderError` when ffprobe fails or reports no duration."""
    try:
        return await ff.ffprobe_duration(path, ffprobe=ffprobe, timeout=timeout)
    except FfmpegError as exc:
        raise RecorderError(str(exc)) from None


async def _probe_segment(hls_dir: Path, init: str | None, seg: SegmentInfo, ffprobe: str,
                         timeout: float) -> str | None:
    """``None`` when the segment (with its init) reads cleanly, else why not."""
    try:
        if (hls_dir / seg.name).stat().st_size == 0:
            return "empty file"
    except OSError:
        return "missing"
    src = f"concat:{init}|{seg.name}" if init else seg.name
    rc, out, err = await _run([ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries",
                               "packet=dts_time,duration_time", "-of", "compact=p=0", src],
                              cwd=hls_dir, timeout=timeout)
    if rc != 0:
        return f"ffprobe exit {rc}: {_tail(err, 1)}"
    low = err.lower()
    for marker in _CORRUPT:
        if marker in low:
            return f"damaged ({_tail(err, 1)})"
    dts: list[float] = []
    durs: list[float] = []
    for line in out.splitlines():
        kv = dict(p.split("=", 1) for p in line.strip().split("|") if "=" in p)
        with contextlib.suppress(ValueError, KeyError):
            dts.append(float(kv["dts_time"]))
        with contextlib.suppress(ValueError, KeyError):
            durs.append(float(kv["duration_time"]))
    if not dts:
        return "no video packets"
    frame = sorted(durs)[len(durs) // 2] if durs else 0.0
    span = max(dts) - min(dts) + frame
    if seg.duration > 0 and span < 0.5 * seg.duration - 0.05:
        return f"only {span:.2f}s of {seg.duration:.2f}s readable"
    return None


class _Vanished(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _concat_files(hls_dir: Path, names: list[str], dest: Path) -> int:
    """Byte-concatenate ``hls_dir/<name>`` files into ``dest`` (runs in a thread).
    Raises :class:`_Vanished` naming a file that disappeared."""
    total = 0
    with open(dest, "wb") as out:
        for name in names:
            try:
                src = open(hls_dir / name, "rb")  # noqa: SIM115
            except FileNotFoundError:
                raise _Vanished(name) from None
            with src:
                shutil.copyfileobj(src, out, 1 << 20)
                total = out.tell()
    return total


def _good_runs(segments: list[SegmentInfo], bad: set[str]) -> list[list[SegmentInfo]]:
    runs: list[list[SegmentInfo]] = []
    prev: SegmentInfo | None = None
    for s in segments:
        if s.name in bad:
            prev = None
            continue
        if prev is not None and runs and contiguous(prev, s):
            runs[-1].append(s)
        else:
            runs.append([s])
        prev = s
    return runs


def _pick_run(runs: list[list[SegmentInfo]], event: float | None) -> list[SegmentInfo]:
    if event is not None:
        for run in runs:
            if run[0].start <= event <= run[-1].end:
                return run
    best = runs[0]
    for run in runs[1:]:
        if run[-1].end - run[0].start > best[-1].end - best[0].start:  # ties keep the first
            best = run
    return best


def _cleanup(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


async def _remux(src: Path, part: Path, ffmpeg: str, timeout: float) -> None:
    rc, _, err = await _run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
                             "-map", "0:v:0", "-map", "0:a?", "-c", "copy", "-movflags", "+faststart",
                             "-f", "mp4", str(part)], timeout=timeout, capture_stdout=False)
    if rc != 0:
        raise RecorderError(f"ffmpeg remux failed (exit {rc}): {_tail(err)}")


async def build_clip(hls_dir: Path, selection: Selection, out_path: Path, *, ffmpeg: str = "ffmpeg",
                     ffprobe: str = "ffprobe", segment_type: Literal["fmp4", "mpegts"] = "fmp4",
                     probe_concurrency: int = 2, timeout: float = 120.0) -> ClipResult:
    """Make ``out_path`` (MP4, ``+faststart``) from the selected segments in ``hls_dir``.

    Each segment is ffprobed once (``probe_concurrency`` at a time, ``timeout`` s
    per process); damaged/missing ones are skipped with a warning. The clip is
    written to ``<out_path>.part`` and renamed; temporary files are removed on
    every path. Raises :class:`RecorderError` when no segment is usable (also: the
    init segment is missing, a segment name is not a plain file name, ffmpeg
    fails).
    """
    hls_dir, out_path = Path(hls_dir), Path(out_path)
    segs = list(selection.segments)
    if not segs:
        raise RecorderError("no HLS segments cover the requested window")
    skipped: dict[str, str] = {}
    for s in segs:
        if not _PLAIN_NAME.match(s.name):
            skipped[s.name] = "not a plain file name"
    init: str | None = None
    if segment_type == "fmp4":
        inits = {s.init for s in segs if s.name not in skipped}
        if len(inits) > 1:
            raise RecorderError("selection mixes init segments; select one run")
        init = inits.pop() if inits else None
        if init is None or not _PLAIN_NAME.match(init) or not (hls_dir / init).is_file():
            raise RecorderError(f"init segment {init!r} missing in {hls_dir.name}")

    sem = asyncio.Semaphore(max(1, probe_concurrency))

    async def probe(s: SegmentInfo) -> None:
        async with sem:
            reason = await _probe_segment(hls_dir, init, s, ffprobe, timeout)
        if reason is not None:
            skipped[s.name] = reason

    await asyncio.gather(*(probe(s) for s in segs if s.name not in skipped))
    for s in segs:
        if s.name in skipped:
            log.warning("clip %s: skipping segment %s (%s)", out_path.name, s.name, skipped[s.name])

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.concat")
    part = out_path.with_name(out_path.name + ".part")
    try:
        while True:
            runs = _good_runs(segs, set(skipped))
            if not runs:
                raise RecorderError(f"no usable segment among {len(segs)} selected ({len(skipped)} skipped)")
            run = _pick_run(runs, selection.event)
            names = ([init] if init else []) + [s.name for s in run]
            try:
                await asyncio.to_thread(_concat_files, hls_dir, names, tmp)
                break
            except _Vanished as gone:
                if gone.name == init:
                    raise RecorderError(f"init segment {init!r} vanished") from None
                skipped[gone.name] = "deleted before it could be copied"
                log.warning("clip %s: skipping segment %s (deleted before it could be copied)", out_path.name,
                            gone.name)
            except OSError as exc:
                raise RecorderError(f"cannot write {tmp.name}: {exc.strerror or exc}") from None
        await _remux(tmp, part, ffmpeg, timeout)
        os.replace(part, out_path)
    except BaseException:
        _cleanup(tmp, part)
        raise
    _cleanup(tmp)
    try:
        duration = await ffprobe_duration(out_path, ffprobe=ffprobe, timeout=timeout)
        size = out_path.stat().st_size
    except (RecorderError, OSError) as exc:
        _cleanup(out_path)
        raise RecorderError(f"clip {out_path.name} unreadable after remux: {exc}") from None

    used = {s.name for s in run}
    for s in segs:  # good segments cut off by a gap are skipped too
        if s.name not in used and s.name not in skipped:
            skipped[s.name] = "not contiguous with the kept run"
    cs, ce = run[0].start, run[-1].end
    # missing = what the buffer lacked (selection) + what skipped segments cost; the
    # selection's trimming to the nearest segment boundary is not "missing"
    pre = selection.preroll_missing_s + max(0.0, cs - selection.covered_start)
    post = selection.postroll_missing_s + max(0.0, selection.covered_end - ce)
    return ClipResult(path=out_path, duration_s=duration, size_bytes=size, segments_used=len(run),
                      segments_skipped=[s.name for s in segs if s.name in skipped],
                      preroll_missing_s=pre, postroll_missing_s=post, covered_start=cs, covered_end=ce)


async def capture_direct(rtsp_url: str, seconds: float, out_path: Path, *, ffmpeg: str = "ffmpeg",
                         ffprobe: str = "ffprobe", rtsp_timeout: float = 10.0,
                         preroll_missing_s: float = 0.0) -> ClipResult:
    """Record ``seconds`` of the camera's first video stream straight from RTSP (over
    TCP, ``-c copy``, ``+faststart``) into ``out_path`` (via ``<out_path>.part``).

    For pods without live streaming. ``rtsp_timeout``: socket I/O timeout (s); the
    whole capture is stopped after ``seconds + rtsp_timeout + 30`` s (SIGTERM, so
    ffmpeg still finishes the file). A capture cut short by the camera is kept if
    readable. Raises :class:`RecorderError` (credentials redacted) otherwise.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    part = out_path.with_name(out_path.name + ".part")
    log.info("clip %s: capturing %.1fs directly from %s", out_path.name, seconds, redact(rtsp_url))
    try:
        source = ff.rtsp_input(rtsp_url, timeout_s=rtsp_timeout)
    except FfmpegError as exc:
        raise RecorderError(str(exc)) from None
    args = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *source.args,
            "-t", f"{seconds:g}", "-map", "0:v:0", "-c", "copy",
            "-movflags", "+faststart", "-f", "mp4", str(part)]
    try:
        rc, _, err = await _run(args, timeout=seconds + rtsp_timeout + 30, capture_stdout=False, grace=10,
                                stdin=source.stdin)
        try:
            duration = await ffprobe_duration(part, ffprobe=ffprobe)
        except RecorderError:
            raise RecorderError(f"direct capture from {redact(rtsp_url)} failed (exit {rc}): {_tail(err)}") from None
        if rc != 0:
            log.warning("clip %s: capture ended early (exit %d, %.1fs kept): %s", out_path.name, rc, duration,
                        _tail(err))
        os.replace(part, out_path)
        size = out_path.stat().st_size
    except BaseException:
        _cleanup(part)
        raise
    return ClipResult(path=out_path, duration_s=duration, size_bytes=size, segments_used=0, segments_skipped=[],
                      preroll_missing_s=preroll_missing_s, postroll_missing_s=max(0.0, seconds - duration))


# ----------------------------------------------------------------- recorder


def _ffprobe_for(cfg: Any) -> str:
    return ff.ffprobe_path(str(getattr(cfg, "ffmpeg_path", "ffmpeg") or "ffmpeg"),
                                    getattr(cfg, "ffprobe_path", None))


class Recorder:
    """Makes one clip per detection, in the background; with ``jobs``, durably.

    ``cfg``: a :class:`pod.config.PodConfig` (reads ``pre_roll`` (default 5 s),
    ``recording_duration``, ``recordings_dir``, ``hls_dir``, ``hls_segment_seconds``,
    ``hls_segment_type``, ``ffmpeg_path``, ``enable_streaming``,
    ``rtsp_timeout_seconds`` and the cameras). ``index_for(camera_id)`` returns
    that camera's :class:`SegmentIndex`; with ``refresh_from_disk`` (default) the
    recorder also reads the camera's playlist into it while a job waits, so an
    index nobody else updates still works (keep it updated continuously anyway, or
    pre-roll older than the live playlist window is unknown).
    ``on_clip(ClipJobResult)`` (sync or async) is called for every clip made; it raises
    to refuse the clip (the job then fails with that reason).

    ``jobs`` (:class:`pod.clipjobs.ClipJobs`): every accepted job is a row written by
    :meth:`request` (inside the caller's transaction, if one is open), finished ``done``,
    ``failed`` or ``lost`` with its reason, and still ``waiting`` after a stop or crash —
    :meth:`resume` picks those up at the next start. At most ``max_pending`` jobs run at a
    time; the others wait in the table (never dropped). Without ``jobs`` (tests) jobs live
    in memory only and a job beyond ``max_pending`` is dropped and counted.

    A job waits (polling every ``poll_interval`` s) until
    ``index.latest_end() >= t + recording_duration`` or, by the wall clock (``clock``),
    ``t + recording_duration + 3 × hls_segment_seconds + wait_slack``; then at most
    ``max_concurrent`` jobs build (or capture) at a time. Waiting jobs do not hold a
    build slot.

    Counters: ``requested``, ``built``, ``failed``, ``lost``, ``dropped``, ``duplicates``,
    ``adopted``.
    """

    def __init__(self, cfg: Any, index_for: Callable[[str], SegmentIndex],
                 on_clip: Callable[[ClipJobResult], Awaitable[None] | None], *, max_concurrent: int = 2,
                 max_pending: int = 16, poll_interval: float | None = None, wait_slack: float = 10.0,
                 refresh_from_disk: bool = True, hls_dir_for: Callable[[str], Path] | None = None,
                 clock: Callable[[], float] = time.time, jobs: ClipJobs | None = None) -> None:
        if max_concurrent < 1 or max_pending < 1:
            raise ValueError("max_concurrent and max_pending must be >= 1")
        self.cfg = cfg
        self._index_for = index_for
        self._on_clip = on_clip
        self._sem = asyncio.Semaphore(max_concurrent)
        self.max_pending = max_pending
        seg = float(getattr(cfg, "hls_segment_seconds", 2.0))
        self.poll_interval = poll_interval if poll_interval is not None else max(0.1, min(0.5, seg / 4))
        self.wait_slack = wait_slack
        self.refresh_from_disk = refresh_from_disk
        self._hls_dir_for = hls_dir_for or (lambda cam: Path(cfg.hls_dir) / cam)
        self._clock = clock
        self.ffmpeg = str(getattr(cfg, "ffmpeg_path", "ffmpeg") or "ffmpeg")
        self.ffprobe = _ffprobe_for(cfg)
        self.jobs = jobs
        self._tasks: dict[str, asyncio.Task] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._closed = False
        self.requested = self.built = self.failed = self.lost = self.dropped = self.duplicates = self.adopted = 0
        if getattr(cfg, "enable_streaming", True):
            keep = (getattr(cfg, "hls_list_size", 6) + getattr(cfg, "hls_keep_extra_segments", 30)) * seg
            need = self.pre_roll + float(cfg.recording_duration) + 3 * seg + wait_slack
            if keep < need:
                log.warning("recorder: segments stay on disk for about %.0fs but a clip needs up to %.0fs; "
                            "raise hls_keep_extra_segments or pre-roll may be lost", keep, need)

    @property
    def pre_roll(self) -> float:
        """Seconds of footage wanted before the plate read."""
        return float(getattr(self.cfg, "pre_roll", 5.0))

    def pending(self) -> int:
        """Jobs accepted and not finished (waiting for footage, building, or queued)."""
        if self.jobs is not None:
            try:
                return self.jobs.counts()["waiting"]
            except sqlite3.Error:
                return len(self._tasks)
        return len(self._tasks)

    def job_for(self, decision: Any) -> ClipJob:
        """The clip job of a :class:`pod.passages.PassageDecision` (uses ``event_id``,
        ``camera_id``, ``plate``/``plate_raw``, ``detected_at``)."""
        t = float(decision.detected_at)
        return ClipJob(event_id=decision.event_id, camera_id=decision.camera_id,
                       plate=getattr(decision, "plate", None) or getattr(decision, "plate_raw", None),
                       detected_at=t, window_start=t - self.pre_roll,
                       window_end=t + float(self.cfg.recording_duration),
                       filename=clip_name(t, decision.camera_id, decision.event_id))

    def request(self, decision: Any) -> bool:
        """Accept a clip job for a decision (see :meth:`job_for`). Must be called from the
        running event loop; with ``jobs`` the row is written in the caller's transaction
        when one is open (:mod:`pod.decisions` writes it with the detection). Returns
        whether a new job was accepted (False: a duplicate event id, or stopped)."""
        if self._closed:
            return False
        job = self.job_for(decision)
        if self.jobs is not None:
            if not self.jobs.add(job, now=self._clock()):
                self.duplicates += 1
                return False
            self.requested += 1
            self._fill()
            return True
        if job.event_id in self._recent:
            self.duplicates += 1
            return False
        if len(self._tasks) >= self.max_pending:
            self.dropped += 1
            log.warning("recorder: %d clips already pending; no clip for event %s on %s (%d dropped so far)",
                        len(self._tasks), job.event_id, job.camera_id, self.dropped)
            return False
        self._recent[job.event_id] = None
        while len(self._recent) > 4096:
            self._recent.popitem(last=False)
        self.requested += 1
        self._start(job)
        return True

    def _start(self, job: ClipJob) -> None:
        task = asyncio.get_running_loop().create_task(self._job(job), name=f"clip-{job.event_id}")
        self._tasks[job.event_id] = task
        task.add_done_callback(functools.partial(self._done, job.event_id))

    def _done(self, event_id: str, _task: asyncio.Task | None = None) -> None:
        self._tasks.pop(event_id, None)
        if not self._closed:
            self._fill()

    def _fill(self) -> None:
        """Start waiting jobs from the table up to ``max_pending`` running."""
        if self.jobs is None or self._closed:
            return
        room = self.max_pending - len(self._tasks)
        if room <= 0:
            return
        try:
            waiting = self.jobs.waiting(limit=room, exclude=tuple(self._tasks))
        except sqlite3.Error as exc:
            log.error("recorder: cannot read clip jobs: %s", exc)
            return
        for job in waiting:
            self._start(job)

    async def resume(self, adopt: Iterable[tuple[ClipJob, Path]] = ()) -> int:
        """At start (with ``jobs``): queue the finished clips of ``adopt`` (``(job, path)``
        pairs from :func:`pod.clipjobs.sweep_recordings`) when ffprobe reads them (else they
        are deleted and rebuilt), then start the jobs still waiting from before the stop.
        Returns how many jobs were waiting."""
        if self.jobs is None:
            return 0
        waiting = self.jobs.restarted(now=self._clock())
        for job, path in adopt:
            await self._adopt(job, path)
        if waiting:
            log.info("recorder: %d clip job(s) waiting from before the restart; rebuilding from the segments on disk",
                     waiting)
        self._fill()
        return waiting

    async def _adopt(self, job: ClipJob, path: Path) -> None:
        try:
            duration = await ffprobe_duration(path, ffprobe=self.ffprobe)
            size = os.stat(path).st_size
        except (RecorderError, OSError) as exc:
            log.warning("recorder: %s left by an interrupted build is unreadable (%s); deleting it and building the "
                        "clip again", path.name, exc)
            _cleanup(path)
            return
        clip = ClipResult(path=path, duration_s=duration, size_bytes=size, segments_used=0, segments_skipped=[],
                          preroll_missing_s=0.0)
        meta = {"adopted": True, "source": "hls" if getattr(self.cfg, "enable_streaming", True) else "rtsp",
                "window_start": round(job.window_start, 3), "window_end": round(job.window_end, 3)}
        if await self._deliver(job, clip, meta):
            self.adopted += 1
            log.info("recorder: adopted %s (%.1f s, %d bytes), finished before the restart", path.name, duration, size)

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is running (True) or ``timeout`` s pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(set(self._tasks.values()), timeout=left)
        return True

    async def stop(self, drain: float = 0.0) -> None:
        """Stop accepting jobs; give running ones ``drain`` s to finish, cancel the rest
        (their ffmpeg is killed and partial files removed). With ``jobs``, cancelled jobs
        stay ``waiting`` for the next start."""
        self._closed = True
        if drain > 0:
            await self.wait_idle(drain)
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------- internals

    async def _wait_for(self, index: SegmentIndex, hls_dir: Path, end: float, deadline: float) -> None:
        while True:
            if self.refresh_from_disk:
                refresh_index(index, hls_dir)
            latest = index.latest_end()
            if latest is not None and latest >= end:
                return
            now = self._clock()
            if now >= deadline:
                log.warning("clip for window ending %.1f: segments reach only %s after waiting; using what exists",
                            end, "nothing" if latest is None else f"{end - latest:.1f}s short")
                return
            await asyncio.sleep(max(0.01, min(self.poll_interval, deadline - now)))

    async def _job(self, job: ClipJob) -> None:
        cfg = self.cfg
        t, start, end = job.detected_at, job.window_start, job.window_end
        try:
            out = Path(cfg.recordings_dir) / job.filename
            if getattr(cfg, "enable_streaming", True):
                source = "hls"
                hls_dir = Path(self._hls_dir_for(job.camera_id))
                index = self._index_for(job.camera_id)
                seg = float(cfg.hls_segment_seconds)
                await self._wait_for(index, hls_dir, end, end + 3 * seg + self.wait_slack)
                selection = index.select(start, end, event=t)
                async with self._sem:
                    clip = await build_clip(hls_dir, selection, out, ffmpeg=self.ffmpeg, ffprobe=self.ffprobe,
                                            segment_type=cfg.hls_segment_type)
            else:
                source = "rtsp"
                url = next((c.rtsp_url for c in cfg.camera_list() if c.camera_id == job.camera_id), None)
                if url is None:
                    raise RecorderError(f"unknown camera {job.camera_id!r}")
                if job.restarts and self._clock() > end:
                    raise RecorderError("the pod restarted after the window; a direct capture cannot go back in time")
                async with self._sem:
                    late = max(0.0, self._clock() - t)
                    clip = await capture_direct(url, float(cfg.recording_duration), out, ffmpeg=self.ffmpeg,
                                                ffprobe=self.ffprobe,
                                                rtsp_timeout=float(getattr(cfg, "rtsp_timeout_seconds", 10.0)),
                                                preroll_missing_s=self.pre_roll + late)
        except asyncio.CancelledError:
            raise
        except RecorderError as exc:
            self._fail(job, str(exc))
            return
        except Exception as exc:
            log.exception("no clip for event %s on %s: unexpected error", job.event_id, job.camera_id)
            self._fail(job, f"unexpected error: {type(exc).__name__}: {exc}")
            return
        meta = {
            "preroll_missing_s": round(clip.preroll_missing_s, 3),
            "postroll_missing_s": round(clip.postroll_missing_s, 3),
            "segments_skipped": list(clip.segments_skipped),
            "segments_used": clip.segments_used,
            "source": source,
            "window_start": round(start, 3),
            "window_end": round(end, 3),
        }
        if job.restarts:
            meta["rebuilt_after_restart"] = True
        if clip.preroll_missing_s > 0.5:
            log.info("clip %s: %.1fs of pre-roll not available", clip.path.name, clip.preroll_missing_s)
        log.info("clip %s: %.1fs, %d bytes, %d segments (%d skipped)%s", clip.path.name, clip.duration_s,
                 clip.size_bytes, clip.segments_used, len(clip.segments_skipped),
                 " — rebuilt after a restart" if job.restarts else "")
        if await self._deliver(job, clip, meta):
            self.built += 1

    async def _deliver(self, job: ClipJob, clip: ClipResult, meta: dict[str, Any]) -> bool:
        """Hand a finished clip to ``on_clip`` and mark the job done — one transaction with
        ``jobs`` and a synchronous ``on_clip`` (the upload row and the job's end commit
        together). Returns whether the clip was accepted."""
        result = ClipJobResult(event_id=job.event_id, camera_id=job.camera_id, plate=job.plate,
                               detected_at=job.detected_at, path=clip.path, filename=clip.path.name,
                               duration_s=clip.duration_s, size_bytes=clip.size_bytes, metadata=meta, clip=clip)
        try:
            if self.jobs is not None:
                with self.jobs.tx():
                    ret = self._on_clip(result)
                    if not inspect.isawaitable(ret):
                        self.jobs.finish(job.event_id, "done", now=self._clock())
                if inspect.isawaitable(ret):
                    await ret
                    self.jobs.finish(job.event_id, "done", now=self._clock())
            else:
                ret = self._on_clip(result)
                if inspect.isawaitable(ret):
                    await ret
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("on_clip failed for %s", clip.path.name)
            self._fail(job, f"the finished clip could not be queued: {type(exc).__name__}: {exc}")
            return False
        return True

    def _fail(self, job: ClipJob, error: str) -> None:
        gone = job.restarts > 0 and any(s in error for s in _SEGMENTS_GONE)
        state = "lost" if gone else "failed"
        reason = (f"the pod restarted and the footage of the window is gone: {error}" if gone else error)
        if gone:
            self.lost += 1
        else:
            self.failed += 1
        CLIP_JOBS_ENDED.labels(state).inc()
        log.warning("no clip for event %s on %s: %s (%s)", job.event_id, job.camera_id, reason, state)
        if self.jobs is not None:
            try:
                self.jobs.finish(job.event_id, state, redact(reason), now=self._clock())
            except sqlite3.Error as exc:
                log.error("recorder: cannot record the end of clip job %s: %s", job.event_id, exc)


_SEGMENTS_GONE = ("no HLS segments cover", "no usable segment", "init segment", "cannot go back in time")
"""Build errors that, after a restart, mean the footage was deleted while the pod was down."""
