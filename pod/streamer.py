"""Supervised ffmpeg per camera: RTSP (over TCP) → (LL-)HLS, with watchdog.

Shape follows Home Assistant's ``stream`` worker: one supervisor per camera,
restart with capped exponential backoff when ffmpeg exits, and a watchdog that
restarts ffmpeg when the stream stops advancing for ``watchdog_factor × target
duration`` seconds while the process is alive (e.g. a camera that keeps the TCP
session open but sends nothing, or a SIGSTOP'd ffmpeg). The last ffmpeg stderr
lines are logged on failure with credentials redacted. Processes (start with a
parent-death signal, terminate, stderr tail, credentials kept out of argv) go
through :mod:`pod.ffmpeg`.

Two ways of packaging, chosen by ``hls_segment_type``:

* ``fmp4`` (default): **the pod packages**. ffmpeg remuxes (``-c copy``) into one
  fragmented MP4 on its stdout, one ``moof``+``mdat`` per frame
  (``-movflags empty_moov+default_base_moof+frag_every_frame``); :mod:`pod.fmp4`
  splits it and :class:`pod.llhls.Packager` groups the frames into LL-HLS parts
  (``part_seconds``) and segments (first keyframe after ``hls_segment_seconds``),
  with EXT-X-PROGRAM-DATE-TIME from the frames' arrival at the pod. Recent parts stay
  in memory (served by :mod:`pod.hls_server`, blocking reloads included); complete
  segments and the init section are written to disk, and a classic media playlist
  (no part tags) too, so clips, pre-roll and any file-based reader keep working.
  ``low_latency: false`` serves the same output without the LL-HLS tags.
* ``mpegts``: ffmpeg's own HLS muxer writes the playlist and ``.ts`` segments to disk
  (classic HLS only: LL-HLS parts are fMP4 here, and MPEG-TS parts would need a TS
  packager of our own for players that rarely ask for them).

On disk (``hls_dir/<camera_id>/``): ``index.m3u8`` (HLS media playlist,
RFC 8216 §4.3.3), ``init_<run>.mp4`` (init segment, EXT-X-MAP, one per ffmpeg run) and
``seg_<n>.m4s`` (or ``.ts``). Segment numbers start at the Unix time of each
ffmpeg start so a restarted ffmpeg never reuses a segment name: downstream caches
may treat segments (and parts) as immutable.
``hls_keep_extra_segments`` segments stay on disk past the playlist window so
the recorder can cut pre-roll from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Literal

from pod import ffmpeg as ff
from pod.backoff import Backoff
from pod.config import CameraConfig, PodConfig
from pod.errors import FfmpegError, Fmp4Error
from pod.fmp4 import BoxSplitter, InitInfo, parse_fragment, parse_init
from pod.llhls import Packager, SegmentDone, expected_latency
from pod.metrics import FFMPEG_RESTARTS, SEGMENT_AGE, SEGMENTS, WATCHDOG_TRIPS
from pod.segments import SegmentIndex, SegmentInfo, parse_media_playlist
from protocol.redact import redact

log = logging.getLogger("platebridge.pod.streamer")

PLAYLIST = "index.m3u8"
State = Literal["starting", "running", "backoff", "stopped"]
_MEDIA_SEQ = re.compile(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)", re.MULTILINE)
_SEGMENT_FILE = re.compile(r"^(seg_\d+\.(m4s|ts)|init_\d+\.mp4)(\.tmp)?$")
_INIT_FILE = re.compile(r"^init_(\d+)\.mp4$")
READ_CHUNK = 256 * 1024
"""Bytes asked of ffmpeg's stdout per read."""


def init_name(run: int) -> str:
    """The init segment (EXT-X-MAP) file name of one ffmpeg run (``run``: its start, Unix s)."""
    return f"init_{run}.mp4"


def packaged(cfg: PodConfig) -> bool:
    """True when the pod packages HLS itself (fMP4, LL-HLS capable); False for ffmpeg's
    own HLS muxer (``hls_segment_type: mpegts``)."""
    return cfg.hls_segment_type == "fmp4"


def _input(cfg: PodConfig, cam: CameraConfig) -> ff.InputSpec:
    return ff.rtsp_input(cam.rtsp_url, timeout_s=cfg.rtsp_timeout_seconds)


def ffmpeg_args(cfg: PodConfig, cam: CameraConfig, out_dir: Path, run: int = 0) -> list[str]:
    """The ffmpeg command line of ffmpeg's own HLS muxer for one camera (pure; the pod
    uses it for ``hls_segment_type: mpegts``).

    RTSP over TCP, video only, ``-c copy`` (no re-encode; with the camera's
    ``transcode: h264``: libx264 ``veryfast``/``zerolatency``, 8-bit 4:2:0, a keyframe
    every segment — ``-g <fps × hls_segment_seconds>``, forced at segment boundaries
    whatever the camera's real frame rate — and no scene-cut keyframes), HLS with
    ``hls_segment_seconds`` segments, a rolling window of ``hls_list_size``
    and ``hls_keep_extra_segments`` more kept on disk. Each run writes its own
    init segment (``init_<run>.mp4``), so segments kept from an earlier run still
    have theirs and no file name is ever rewritten with other content. A camera URL
    with credentials becomes ``-i pipe:0`` (see :func:`pod.ffmpeg.rtsp_input`: the
    caller writes :func:`_input`'s ``stdin`` bytes).
    """
    ext = "m4s" if cfg.hls_segment_type == "fmp4" else "ts"
    args = [
        cfg.ffmpeg_path, "-nostdin", "-hide_banner", "-loglevel", "warning",
        *_input(cfg, cam).args,
        "-map", "0:v:0", *_codec_args(cfg, cam),
        "-f", "hls",
        "-hls_time", f"{cfg.hls_segment_seconds:g}",
        "-hls_list_size", str(cfg.hls_list_size),
        # no delete_segments: ffmpeg 5.1 kept far fewer than hls_delete_threshold segments;
        # the streamer's own prune() bounds the buffer by age and bytes instead
        "-hls_flags", "independent_segments+program_date_time+temp_file",
        "-hls_start_number_source", "epoch",
        "-hls_segment_type", "fmp4" if cfg.hls_segment_type == "fmp4" else "mpegts",
    ]
    if cfg.hls_segment_type == "fmp4":
        args += ["-hls_fmp4_init_filename", init_name(run)]
    args += ["-hls_segment_filename", str(out_dir / f"seg_%d.{ext}"), str(out_dir / PLAYLIST)]
    return args


def packager_args(cfg: PodConfig, cam: CameraConfig) -> list[str]:
    """The ffmpeg command line when the pod packages (pure): the same input and codec
    options as :func:`ffmpeg_args`, written as one fragmented MP4 to stdout with a
    fragment per frame (ISO/IEC 14496-12 ``moof``+``mdat``), ``default_base_moof`` so
    each fragment stands alone, and packets flushed as they are written."""
    return [
        cfg.ffmpeg_path, "-nostdin", "-hide_banner", "-loglevel", "warning",
        "-fflags", "nobuffer", *_input(cfg, cam).args,
        "-map", "0:v:0", *_codec_args(cfg, cam),
        "-f", "mp4", "-movflags", "empty_moov+default_base_moof+frag_every_frame", "-flush_packets", "1",
        "pipe:1",
    ]


TRANSCODE_FPS = 25
"""Frame rate assumed for the keyframe interval (``-g``) when ``transcode: h264``;
``-force_key_frames`` keeps segment boundaries right for cameras at other rates."""


def _codec_args(cfg: PodConfig, cam: CameraConfig) -> list[str]:
    """Video codec arguments: ``-c copy``, or libx264 for ``transcode: h264`` with the
    camera's ``video_bitrate`` (bits/s: ``-b:v``, and ``-maxrate`` with a one-second
    ``-bufsize`` so the rate holds over any second, not only on average) and ``max_height``
    (``scale=-2:min(ih,H)``: down only, aspect kept, even width)."""
    if cam.transcode != "h264":
        return ["-c", "copy"]
    gop = max(1, round(TRANSCODE_FPS * cfg.hls_segment_seconds))
    seg = f"{cfg.hls_segment_seconds:g}"
    args = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
            "-g", str(gop), "-sc_threshold", "0", "-force_key_frames", f"expr:gte(t,n_forced*{seg})"]
    if cam.video_bitrate is not None:
        bps = int(cam.video_bitrate)  # normalised to bits/s by pod.config
        args += ["-b:v", str(bps), "-maxrate", str(bps), "-bufsize", str(bps)]
    if cam.max_height is not None:
        args += ["-vf", f"scale=w=-2:h=min(ih\\,{int(cam.max_height)})"]
    return args


def media_sequence(text: str) -> int | None:
    """EXT-X-MEDIA-SEQUENCE of a media playlist (RFC 8216 §4.3.3.2), or None."""
    m = _MEDIA_SEQ.search(text)
    return int(m.group(1)) if m else None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


class CameraStreamer:
    """Supervises ffmpeg for one camera. ``run()`` loops until ``stop()``.

    ``status()`` returns a dict for ``/health`` (no secrets): state, restarts,
    watchdog trips, ``last_segment_age_s`` (seconds, None before the first) and, when
    the pod packages, the effective part/segment durations and the expected latency.
    ``live`` is the current run's :class:`~pod.llhls.Packager` (None for mpegts or
    before the first run); ``changed()`` returns an event set at its next change.
    """

    def __init__(self, cfg: PodConfig, cam: CameraConfig) -> None:
        self.cfg, self.cam = cfg, cam
        self.dir = Path(cfg.hls_dir) / cam.camera_id
        self.state: State = "stopped"
        self.restarts = 0
        self.watchdog_trips = 0
        self.tail = ff.StderrTail(20, on_line=lambda t: log.debug("camera %s ffmpeg: %s", cam.camera_id, t))
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._backoff = Backoff(cfg.restart_backoff_initial, cfg.restart_backoff_max)
        self._last_seq: int | None = None
        self._last_advance = time.monotonic()
        self._last_mtime: float | None = None
        self._last_segment_at: float | None = None
        self.index = SegmentIndex()
        """Wall-clock index of the segments on disk (from EXT-X-PROGRAM-DATE-TIME), for clips."""
        self.run_id = 0  # start time (Unix s) of the current ffmpeg run; names its init segment
        self.packaged = packaged(cfg)
        self.low_latency = self.packaged and cfg.low_latency
        self.live: Packager | None = None
        self._changed = asyncio.Event()
        self._recent: list[SegmentDone] = []

    @property
    def stderr_tail(self) -> list[str]:
        """The last ffmpeg stderr lines, redacted."""
        return list(self.tail.lines)

    @property
    def playlist_path(self) -> Path:
        """Absolute path of the camera's HLS media playlist on disk."""
        return self.dir / PLAYLIST

    def changed(self) -> asyncio.Event:
        """An event set at the live packager's next change (a new frame, part or segment)."""
        return self._changed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def last_segment_age(self) -> float | None:
        """Seconds since the newest segment was completed (the playlist last rewritten)."""
        if self.packaged:
            return None if self._last_segment_at is None else max(0.0, time.time() - self._last_segment_at)
        try:
            return max(0.0, time.time() - self.playlist_path.stat().st_mtime)
        except OSError:
            return None

    def timing(self) -> dict:
        """Effective timing of the current run (seconds): ``part_target_s`` (None without
        parts), ``segment_s`` (mean of the recent segments), ``target_duration_s``,
        ``frame_interval_s``, ``low_latency`` and ``expected_latency_s`` (see
        :func:`expected_latency`), ``ingest_lag_s`` (the newest frame's delay past the
        earliest-arriving ones); ``notes`` says where the configured goal cannot be met."""
        cfg = self.cfg
        live = self.live
        part = live.part_target if live and self.low_latency else None
        recent = [d.duration for d in self._recent[-5:]]
        seg = sum(recent) / len(recent) if recent else None
        td = live.target_duration if live else None
        frame = live.frame_duration if live else None
        out: dict = {"low_latency": self.low_latency, "part_target_s": _r(part), "segment_s": _r(seg),
                     "target_duration_s": td, "frame_interval_s": _r(frame), "expected_latency_s": None,
                     "notes": []}
        if seg is not None and td is not None:
            out["expected_latency_s"] = _r(expected_latency(self.low_latency, part or 0.0, td, seg))
            if seg > cfg.hls_segment_seconds * 1.25:
                out["notes"].append(f"segments are {seg:.1f} s, not {cfg.hls_segment_seconds:g} s: the camera sends a "
                                    f"keyframe only every {seg:.1f} s (set its GOP/I-frame interval to "
                                    f"{cfg.hls_segment_seconds:g} s or less)")
        if part is not None and part > cfg.part_seconds * 1.25:
            out["notes"].append(f"parts are {part:.3f} s, not {cfg.part_seconds:g} s: one frame lasts "
                                f"{frame or 0:.3f} s at this camera's frame rate")
        if live is not None:
            out["ingest_lag_s"] = _r(live.ingest_lag)
            if part is not None and live.ingest_lag > 2 * part:
                out["notes"].append(f"frames reach the pod {live.ingest_lag:.1f} s later than they could (CPU load "
                                    "or network): live view is that much further behind")
        if live is not None and live.forced_splits:
            out["notes"].append(f"{live.forced_splits} segments cut without a keyframe (keyframes too far apart)")
        return out

    def status(self) -> dict:
        """Health snapshot (safe to publish: no URLs, no secrets)."""
        age = self.last_segment_age()
        out = {
            "camera_id": self.cam.camera_id,
            "state": self.state,
            "restarts": self.restarts,
            "watchdog_trips": self.watchdog_trips,
            "last_segment_age_s": None if age is None else round(age, 3),
            "pid": self._proc.pid if self._proc and self._proc.returncode is None else None,
        }
        if self.packaged:
            out.update(self.timing())
        return out

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # a stale playlist from a previous run must not look live
        with contextlib.suppress(FileNotFoundError):
            self.playlist_path.unlink()

    def prune(self, now: float | None = None) -> int:
        """Bound the HLS buffer; returns how many files were deleted.

        Deletes segments older than
        ``(hls_list_size + hls_keep_extra_segments + 2) × hls_segment_seconds``,
        then the oldest ones while the directory holds more than
        ``hls_max_bytes``, and the init segment of an earlier run once none of its
        segments is left. The current run's init segment and the newest
        ``hls_list_size`` segments are never deleted.
        """
        now = time.time() if now is None else now
        keep = self.cfg.hls_list_size + (self.cfg.hls_keep_extra_segments or 0) + 2
        horizon = keep * self.cfg.hls_segment_seconds
        try:
            entries = [(e.stat().st_mtime, e.stat().st_size, e) for e in os.scandir(self.dir)
                       if _SEGMENT_FILE.match(e.name)]
        except OSError:
            return 0
        current_init = init_name(self.run_id) if self.run_id else None
        segs = sorted((x for x in entries if x[2].name.startswith("seg_")), key=lambda x: x[0])
        newest = {e.name for _, _, e in segs[-self.cfg.hls_list_size:]}
        removed = 0
        total = sum(size for _, size, _ in entries)
        kept: list[int] = []
        for mtime, size, e in segs:
            if now - mtime > horizon or (total > self.cfg.hls_max_bytes and e.name not in newest):
                try:
                    os.unlink(e.path)
                except OSError:
                    kept.append(_msn(e.name))
                    continue
                removed += 1
                total -= size
            else:
                kept.append(_msn(e.name))
        # an earlier run's init segment goes with the last of its segments, not by its own
        # age: a run's init is older than all of its segments (the recorder, after a pod
        # restart, cuts clips from the previous run's segments); a half-written one by age
        runs = sorted(int(m.group(1)) for _, _, e in entries if (m := _INIT_FILE.match(e.name)))
        needed = {init_name(r) for msn in kept if (r := max((x for x in runs if x <= msn), default=None)) is not None}
        for mtime, _, e in entries:
            if not e.name.startswith("init_") or e.name == current_init or e.name in needed:
                continue
            if _INIT_FILE.match(e.name) or now - mtime > horizon:
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
                    removed += 1
        return removed

    async def run(self) -> None:
        """Supervise ffmpeg until :meth:`stop` is called. Never raises on ffmpeg failure."""
        while not self._stopping.is_set():
            self.state = "starting"
            started = time.monotonic()
            try:
                self._prepare_dir()
            except OSError as exc:
                reason = f"cannot use {self.dir}: {exc.strerror}"
            else:
                reason = await self._run_once()
            if self._stopping.is_set():
                break
            if time.monotonic() - started > 4 * self.cfg.watchdog_factor * self.cfg.hls_segment_seconds + 30:
                self._backoff.reset()  # a long healthy run: start the schedule over
            delay = self._backoff.next_delay()
            self.restarts += 1
            FFMPEG_RESTARTS.labels(self.cam.camera_id).inc()
            log.warning("camera %s: ffmpeg %s; restarting in %.1fs; last stderr: %s", self.cam.camera_id, reason,
                        delay, self.tail.text())
            self.state = "backoff"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        self.state = "stopped"
        self._notify()

    async def _run_once(self) -> str:
        self.tail.clear()
        # segment numbers start at the run's start (Unix s) and must never go back, even when
        # segments are shorter than a second and the last run got ahead of the clock
        last = self.live.state().next_msn + 1 if self.live is not None else 0
        self.run_id = max(int(time.time()), self.run_id + 1, last)
        try:
            source = _input(self.cfg, self.cam)
        except FfmpegError as exc:
            return f"cannot start: {exc}"
        if self.packaged:
            args = packager_args(self.cfg, self.cam)
            self.live = Packager(first_msn=self.run_id, init_name=init_name(self.run_id),
                                 part_target=self.cfg.part_seconds, segment_seconds=self.cfg.hls_segment_seconds,
                                 list_size=self.cfg.hls_list_size)
            self._recent = []
            self._notify()
        else:
            args = ffmpeg_args(self.cfg, self.cam, self.dir, self.run_id)
        log.info("camera %s: starting ffmpeg for %s", self.cam.camera_id, redact(self.cam.rtsp_url))
        try:
            proc = await ff.start(args, stdin=source.stdin, stdout=self.packaged)
        except FfmpegError as exc:
            return f"could not start ({exc})"
        self._proc = proc
        self._last_seq, self._last_mtime = None, None
        self._last_advance = time.monotonic()
        reader = asyncio.create_task(self.tail.consume(proc.stderr))
        pump = asyncio.create_task(self._read_fmp4(proc)) if self.packaged else None
        watchdog = asyncio.create_task(self._watchdog(proc))
        stopper = asyncio.create_task(self._stopping.wait())
        waiter = asyncio.create_task(proc.wait())
        watched = {watchdog, stopper, waiter} | ({pump} if pump else set())
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        reason = f"exited with code {proc.returncode}" if waiter in done else ""
        if watchdog in done and waiter not in done:
            reason = watchdog.result()
        if pump is not None and pump in done and not pump.cancelled() and pump.result():
            reason = pump.result()
        for t in (watchdog, stopper):
            t.cancel()
        await ff.terminate(proc)  # the pump keeps draining stdout meanwhile
        drains: list[asyncio.Task[None] | asyncio.Task[str]] = [reader] + ([pump] if pump else [])
        for drain in drains:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drain, timeout=2)
        self._proc = None
        self._notify()
        return reason or f"exited with code {proc.returncode}"

    # ------------------------------------------------------------ packaging

    async def _read_fmp4(self, proc: asyncio.subprocess.Process) -> str:
        """Read ffmpeg's fragmented MP4 until EOF; returns "" at EOF, else why it stopped."""
        stream = proc.stdout
        if stream is None or self.live is None:
            return "no stdout"
        live = self.live
        splitter = BoxSplitter()
        init_boxes: list[bytes] = []
        info: InitInfo | None = None
        moof: bytes | None = None
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                return ""
            try:
                for box in splitter.feed(chunk):
                    if info is None:
                        if box.type in (b"ftyp", b"moov"):
                            init_boxes.append(box.data)
                        if box.type == b"moov":
                            data = b"".join(init_boxes)
                            info = parse_init(data)
                            _write_atomic(self.dir / init_name(self.run_id), data)
                            live.set_init(data)
                        continue
                    if box.type == b"moof":
                        moof = box.data
                    elif box.type == b"mdat" and moof is not None:
                        frag = parse_fragment(moof, box.data, info)
                        moof = None
                        for seg in live.add_fragment(frag, time.time()):
                            self._segment_done(seg)
                        self._last_advance = time.monotonic()
                        self._notify()
            except Fmp4Error as exc:
                return f"sent unreadable fMP4 ({exc})"
            except OSError as exc:
                return f"cannot write to {self.dir}: {exc.strerror}"

    def _segment_done(self, seg: SegmentDone) -> None:
        _write_atomic(self.dir / seg.name, seg.data)
        self._recent = [*self._recent, seg][-self.cfg.hls_list_size:]
        self.index.update([SegmentInfo(name=seg.name, start=seg.pdt, duration=seg.duration,
                                       init=init_name(self.run_id), sequence=seg.msn)])
        if self.live is not None:
            # the classic playlist on disk: for clips (pre-roll) and any file-based reader
            _write_atomic(self.playlist_path, self.live.playlist(low_latency=False).encode())
        self._last_segment_at = time.time()
        SEGMENTS.labels(self.cam.camera_id).inc()
        self.state = "running"

    # ------------------------------------------------------------- watchdog

    async def _watchdog(self, proc: asyncio.subprocess.Process) -> str:
        """Returns a reason string when the stream stopped advancing."""
        target = self.cfg.hls_segment_seconds
        stall_limit = self.cfg.watchdog_factor * target
        startup_limit = stall_limit + self.cfg.rtsp_timeout_seconds + 5
        tick = min(1.0, target / 2)
        last_prune = 0.0
        started = False
        while proc.returncode is None:
            await asyncio.sleep(tick)
            now = time.monotonic()
            started = (started or self.state == "running") if self.packaged else self._look_at_playlist(now)
            if self.state == "running":
                SEGMENT_AGE.labels(self.cam.camera_id).set(now - self._last_advance)
            limit = stall_limit if started else startup_limit
            if now - self._last_advance > limit:
                self.watchdog_trips += 1
                WATCHDOG_TRIPS.labels(self.cam.camera_id).inc()
                what = "no frames from ffmpeg" if self.packaged else "playlist not advanced"
                return f"stalled: {what} for {now - self._last_advance:.1f}s (watchdog)"
            if now - last_prune > max(2.0, target):
                last_prune = now
                self.prune()
        return ""

    def _look_at_playlist(self, now: float) -> bool:
        """ffmpeg's HLS muxer: note a rewritten playlist; True once one was seen."""
        try:
            mtime: float | None = self.playlist_path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime is not None and mtime != self._last_mtime:
            try:
                text = self.playlist_path.read_text(errors="replace")
            except OSError:
                text = ""
            segments = parse_media_playlist(text)
            self.index.update(segments)  # the rolling buffer index clips are cut from
            newest = segments[-1].sequence if segments else media_sequence(text)
            if newest is not None and newest != self._last_seq:
                # segments completed since the last look (the first one of a run counts too)
                count = 1 if self._last_seq is None else max(1, newest - self._last_seq)
                SEGMENTS.labels(self.cam.camera_id).inc(count)
                self._last_seq = newest
            self._last_mtime = mtime
            self._last_advance = now
            self.state = "running"
        return self._last_mtime is not None

    async def stop(self) -> None:
        """Stop supervising and terminate ffmpeg (SIGTERM, then SIGKILL after 3 s)."""
        self._stopping.set()
        if self._proc is not None:
            await ff.terminate(self._proc)


def _msn(name: str) -> int:
    """The media sequence number in a segment file name (``seg_<n>.m4s``)."""
    return int(name[4:].split(".", 1)[0])


def _r(value: float | None, nd: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, nd)
