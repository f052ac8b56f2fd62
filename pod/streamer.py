"""Supervised ffmpeg per camera: RTSP (over TCP) → HLS on disk, with watchdog.

Shape follows Home Assistant's ``stream`` worker: one supervisor per camera,
restart with capped exponential backoff when ffmpeg exits, and a watchdog that
restarts ffmpeg when the media playlist stops advancing for
``watchdog_factor × target duration`` seconds while the process is alive
(e.g. a camera that keeps the TCP session open but sends nothing, or a
SIGSTOP'd ffmpeg). The last ffmpeg stderr lines are logged on failure with
credentials redacted.

On disk (``hls_dir/<camera_id>/``): ``index.m3u8`` (HLS media playlist,
RFC 8216 §4.3.3), ``init_<run>.mp4`` (init segment, EXT-X-MAP, one per ffmpeg run) and
``seg_<n>.m4s`` (or ``.ts``). Segment numbers start at the Unix time of each
ffmpeg start (``-hls_start_number_source epoch``) so a restarted ffmpeg never
reuses a segment name: downstream caches may treat segments as immutable.
``hls_keep_extra_segments`` segments stay on disk past the playlist window so
the recorder can cut pre-roll from them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import Literal

from pod.backoff import Backoff
from pod.config import CameraConfig, PodConfig
from pod.metrics import FFMPEG_RESTARTS, SEGMENT_AGE, SEGMENTS, WATCHDOG_TRIPS
from pod.segments import SegmentIndex, parse_media_playlist
from protocol.redact import redact

log = logging.getLogger("platebridge.pod.streamer")

PLAYLIST = "index.m3u8"
State = Literal["starting", "running", "backoff", "stopped"]
_MEDIA_SEQ = re.compile(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)", re.MULTILINE)
_SEGMENT_FILE = re.compile(r"^(seg_\d+\.(m4s|ts)|init_\d+\.mp4)(\.tmp)?$")


def init_name(run: int) -> str:
    """The init segment (EXT-X-MAP) file name of one ffmpeg run (``run``: its start, Unix s)."""
    return f"init_{run}.mp4"


def ffmpeg_args(cfg: PodConfig, cam: CameraConfig, out_dir: Path, run: int = 0) -> list[str]:
    """The ffmpeg command line for one camera (pure).

    RTSP over TCP, video only, ``-c copy`` (no re-encode; with the camera's
    ``transcode: h264``: libx264 ``veryfast``/``zerolatency``, 8-bit 4:2:0, a keyframe
    every segment — ``-g <fps × hls_segment_seconds>``, forced at segment boundaries
    whatever the camera's real frame rate — and no scene-cut keyframes), HLS with
    ``hls_segment_seconds`` segments, a rolling window of ``hls_list_size``
    and ``hls_keep_extra_segments`` more kept on disk. Each run writes its own
    init segment (``init_<run>.mp4``), so segments kept from an earlier run still
    have theirs and no file name is ever rewritten with other content.
    """
    ext = "m4s" if cfg.hls_segment_type == "fmp4" else "ts"
    args = [
        cfg.ffmpeg_path, "-nostdin", "-hide_banner", "-loglevel", "warning",
        "-rtsp_transport", "tcp",
        "-timeout", str(int(cfg.rtsp_timeout_seconds * 1_000_000)),  # socket I/O timeout, microseconds
        "-i", cam.rtsp_url,
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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class CameraStreamer:
    """Supervises ffmpeg for one camera. ``run()`` loops until ``stop()``.

    ``status()`` returns a dict for ``/health`` (no secrets): state, restarts,
    watchdog trips and ``last_segment_age_s`` (seconds, None before the first).
    """

    def __init__(self, cfg: PodConfig, cam: CameraConfig) -> None:
        self.cfg, self.cam = cfg, cam
        self.dir = Path(cfg.hls_dir) / cam.camera_id
        self.state: State = "stopped"
        self.restarts = 0
        self.watchdog_trips = 0
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._backoff = Backoff(cfg.restart_backoff_initial, cfg.restart_backoff_max)
        self._last_seq: int | None = None
        self._last_advance = time.monotonic()
        self._last_mtime: float | None = None
        self.index = SegmentIndex()
        """Wall-clock index of the segments on disk (from EXT-X-PROGRAM-DATE-TIME), for clips."""
        self.run_id = 0  # start time (Unix s) of the current ffmpeg run; names its init segment

    @property
    def playlist_path(self) -> Path:
        """Absolute path of the camera's HLS media playlist."""
        return self.dir / PLAYLIST

    def last_segment_age(self) -> float | None:
        """Seconds since ffmpeg last rewrote the playlist (i.e. finished a segment)."""
        try:
            return max(0.0, time.time() - self.playlist_path.stat().st_mtime)
        except OSError:
            return None

    def status(self) -> dict:
        """Health snapshot (safe to publish: no URLs, no secrets)."""
        age = self.last_segment_age()
        return {
            "camera_id": self.cam.camera_id,
            "state": self.state,
            "restarts": self.restarts,
            "watchdog_trips": self.watchdog_trips,
            "last_segment_age_s": None if age is None else round(age, 3),
            "pid": self._proc.pid if self._proc and self._proc.returncode is None else None,
        }

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # a stale playlist from a previous run must not look live
        with contextlib.suppress(FileNotFoundError):
            self.playlist_path.unlink()

    def prune(self, now: float | None = None) -> int:
        """Bound the HLS buffer; returns how many files were deleted.

        Deletes segments (and init segments of earlier runs) older than
        ``(hls_list_size + hls_keep_extra_segments + 2) × hls_segment_seconds``,
        then the oldest ones while the directory holds more than
        ``hls_max_bytes``. The current run's init segment and the newest
        ``hls_list_size`` segments are never deleted.
        """
        now = time.time() if now is None else now
        horizon = (self.cfg.hls_list_size + (self.cfg.hls_keep_extra_segments or 0) + 2) * self.cfg.hls_segment_seconds
        try:
            entries = [(e.stat().st_mtime, e.stat().st_size, e)
                       for e in os.scandir(self.dir) if _SEGMENT_FILE.match(e.name)]
        except OSError:
            return 0
        current_init = init_name(self.run_id) if self.run_id else None
        segs = sorted((x for x in entries if x[2].name.startswith("seg_")), key=lambda x: x[0])
        newest = {e.name for _, _, e in segs[-self.cfg.hls_list_size:]}
        removed = 0
        total = sum(size for _, size, _ in entries)
        for mtime, size, e in sorted(entries, key=lambda x: x[0]):
            if e.name == current_init:
                continue
            if now - mtime > horizon or (total > self.cfg.hls_max_bytes and e.name not in newest):
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
                    removed += 1
                    total -= size
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
            tail = " | ".join(redact(line) for line in self.stderr_tail) or "(no stderr)"
            log.warning(
                "camera %s: ffmpeg %s; restarting in %.1fs; last stderr: %s", self.cam.camera_id, reason, delay, tail
            )
            self.state = "backoff"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        self.state = "stopped"

    async def _run_once(self) -> str:
        self.stderr_tail.clear()
        self.run_id = max(int(time.time()), self.run_id + 1)
        args = ffmpeg_args(self.cfg, self.cam, self.dir, self.run_id)
        log.info("camera %s: starting ffmpeg for %s", self.cam.camera_id, redact(self.cam.rtsp_url))
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            return f"could not start ({exc.strerror})"
        self._proc = proc
        self._last_seq, self._last_mtime = None, None
        self._last_advance = time.monotonic()
        reader = asyncio.create_task(self._read_stderr(proc))
        watchdog = asyncio.create_task(self._watchdog(proc))
        stopper = asyncio.create_task(self._stopping.wait())
        waiter = asyncio.create_task(proc.wait())
        done, _ = await asyncio.wait({watchdog, stopper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        reason = f"exited with code {proc.returncode}" if waiter in done else ""
        if watchdog in done and waiter not in done:
            reason = watchdog.result()
        for t in (watchdog, stopper):
            t.cancel()
        await self._terminate(proc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader, timeout=2)
        self._proc = None
        return reason or f"exited with code {proc.returncode}"

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            line = await proc.stderr.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if text:
                self.stderr_tail.append(text)
                log.debug("camera %s ffmpeg: %s", self.cam.camera_id, redact(text))

    async def _watchdog(self, proc: asyncio.subprocess.Process) -> str:
        """Returns a reason string when the playlist stopped advancing."""
        target = self.cfg.hls_segment_seconds
        stall_limit = self.cfg.watchdog_factor * target
        startup_limit = stall_limit + self.cfg.rtsp_timeout_seconds + 5
        tick = min(1.0, target / 2)
        last_prune = 0.0
        while proc.returncode is None:
            await asyncio.sleep(tick)
            now = time.monotonic()
            try:
                st = self.playlist_path.stat()
                mtime = st.st_mtime
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
                    done = 1 if self._last_seq is None else max(1, newest - self._last_seq)
                    SEGMENTS.labels(self.cam.camera_id).inc(done)
                    self._last_seq = newest
                self._last_mtime = mtime
                self._last_advance = now
                self.state = "running"
            if self.state == "running":
                SEGMENT_AGE.labels(self.cam.camera_id).set(now - self._last_advance)
            limit = stall_limit if self._last_mtime is not None else startup_limit
            if now - self._last_advance > limit:
                self.watchdog_trips += 1
                WATCHDOG_TRIPS.labels(self.cam.camera_id).inc()
                return f"stalled: playlist not advanced for {now - self._last_advance:.1f}s (watchdog)"
            if now - last_prune > max(2.0, target):
                last_prune = now
                self.prune()
        return ""

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
            # a stopped (SIGSTOP'd, traced) ffmpeg only acts on SIGTERM once continued: without
            # this the watchdog's restart waited out the full grace period below
            proc.send_signal(signal.SIGCONT)
        try:
            await asyncio.wait_for(proc.wait(), timeout=3)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # also works on a SIGSTOP'd process
            await proc.wait()

    async def stop(self) -> None:
        """Stop supervising and terminate ffmpeg (SIGTERM, then SIGKILL after 3 s)."""
        self._stopping.set()
        if self._proc is not None:
            await self._terminate(self._proc)
