"""The pod's child processes in one place: ffmpeg, ffprobe (and the tailscale CLI).

What every child gets here, and nowhere else:

* **parent-death signal**: ``PR_SET_PDEATHSIG=SIGTERM`` (prctl(2)) between fork and exec,
  so a SIGKILLed pod leaves no orphan ffmpeg;
* **terminate**: SIGTERM *and* SIGCONT (a SIGSTOP'd ffmpeg acts on SIGTERM only once
  continued), ``grace`` seconds, then SIGKILL;
* **stderr tail with redaction**: the last lines, with URL credentials, tokens and
  keys replaced (:func:`protocol.redact.redact`);
* **the ffprobe path**: ffprobe next to the configured ffmpeg binary;
* **RTSP credentials never in argv**: ``/proc/<pid>/cmdline`` (what ``ps`` shows every
  local user) must not carry ``user:password``. FFmpeg 5.1's RTSP demuxer takes
  credentials only from the URL's userinfo (libavformat/rtsp.c: ``av_url_split`` into
  ``rt->auth``; there is no ``-user``/``-password`` option), so a URL with userinfo is
  handed over through **stdin** instead of argv: ffmpeg reads a one-entry ffconcat
  script (FFmpeg formats documentation, "concat" demuxer: ``ffconcat version 1.0``,
  ``file '<url>'``, ``option <key> <value>`` — per-file demuxer options, in FFmpeg since
  5.0) from ``pipe:0`` with ``-f concat -safe 0``. The RTSP demuxer then opens the URL
  with its credentials as usual (Basic and Digest). Only the script travels through
  the pipe; argv shows ``-i pipe:0``. URLs without userinfo go on the command line as
  before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import logging
import math
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pod.errors import FfmpegError
from protocol.redact import redact

__all__ = [
    "Completed", "InputSpec", "StderrTail", "die_with_parent", "ffprobe_duration", "ffprobe_path",
    "has_credentials", "probe_rtsp", "rtsp_input", "run", "start", "tail_text", "terminate",
]

log = logging.getLogger("platebridge.pod.ffmpeg")

TERMINATE_GRACE = 3.0
"""Seconds a SIGTERM'd child gets to finish its output before SIGKILL."""

# protocols an RTSP(S) session may need when opened from a concat script read on pipe:0
_WHITELIST = "pipe,rtsp,rtsps,tcp,tls,udp,rtp,srtp,crypto,data,httpproxy"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: SIGTERM this child when its parent dies (PR_SET_PDEATHSIG, prctl(2)).

    Runs in the child between fork and exec; never raises (a failure leaves the child
    without the signal, as before this existed)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def ffprobe_path(ffmpeg_path: str, explicit: str | None = None) -> str:
    """The ffprobe binary that goes with ``ffmpeg_path``: ``explicit`` when given; else the
    same name with ``ffmpeg`` replaced by ``ffprobe`` (``/opt/ff/bin/ffmpeg`` →
    ``/opt/ff/bin/ffprobe``, ``ffmpeg-5.1`` → ``ffprobe-5.1``); else ``ffprobe`` on PATH."""
    if explicit:
        return explicit
    head, base = os.path.split(ffmpeg_path or "ffmpeg")
    if "ffmpeg" in base:
        i = base.rfind("ffmpeg")
        return os.path.join(head, base[:i] + "ffprobe" + base[i + len("ffmpeg"):])
    return "ffprobe"


# ---------------------------------------------------------------- RTSP input


def has_credentials(url: str) -> bool:
    """True when ``url`` carries userinfo (``scheme://user[:password]@host``)."""
    try:
        return "@" in (urlsplit(url).netloc or "")
    except ValueError:
        return "@" in url


@dataclass(frozen=True)
class InputSpec:
    """How an ffmpeg/ffprobe process gets its RTSP input.

    ``args``: the input options, ending with ``-i <url or pipe:0>`` (no credentials, ever);
    ``stdin``: bytes to write to the child's stdin and close (the ffconcat script holding
    the URL with its credentials), or ``None`` when the URL is on the command line."""

    args: list[str]
    stdin: bytes | None = None


def _concat_quote(value: str) -> str:
    # ffconcat tokens (av_get_token): inside '...' nothing is special but the closing quote
    return "'" + value.replace("'", "'\\''") + "'"


def rtsp_input(url: str, *, timeout_s: float, transport: str = "tcp") -> InputSpec:
    """Input options for an RTSP(S) camera: RTSP over ``transport`` (``tcp``), socket I/O
    timeout ``timeout_s`` seconds (the demuxer's ``timeout``, microseconds).

    A URL with userinfo is passed as an ffconcat script on stdin (see the module doc), so
    the credentials never appear in argv. Raises :class:`FfmpegError` for a URL with
    control characters (it could smuggle a second directive into the script)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise FfmpegError("camera URL contains control characters")
    micros = str(max(1, int(timeout_s * 1_000_000)))
    if not has_credentials(url):
        return InputSpec(["-rtsp_transport", transport, "-timeout", micros, "-i", url])
    script = (f"ffconcat version 1.0\nfile {_concat_quote(url)}\n"
              f"option rtsp_transport {transport}\noption timeout {micros}\n")
    return InputSpec(["-f", "concat", "-safe", "0", "-protocol_whitelist", _WHITELIST, "-i", "pipe:0"],
                     script.encode())


# ------------------------------------------------------------------ processes


async def start(args: Sequence[str], *, stdin: bytes | None = None, stdout: bool = False,
                stderr: bool = True, cwd: Path | None = None, limit: int = 1 << 20) -> asyncio.subprocess.Process:
    """Start ``args`` with the parent-death signal set.

    ``stdin``: bytes written to the child's stdin, which is then closed (else
    ``/dev/null``); ``stdout``/``stderr``: pipes when true (else ``/dev/null``);
    ``limit``: the stream reader buffer (bytes). Raises :class:`FfmpegError` when the
    program cannot be started (missing binary, permissions)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=cwd,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if stderr else asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent, limit=limit,
        )
    except OSError as exc:
        raise FfmpegError(f"cannot run {Path(args[0]).name}: {exc.strerror or exc}") from None
    if stdin is not None and proc.stdin is not None:
        # a few hundred bytes: fits the pipe buffer, so this never waits on the child
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(stdin)
            await proc.stdin.drain()
        proc.stdin.close()
    return proc


async def terminate(proc: asyncio.subprocess.Process, grace: float = TERMINATE_GRACE) -> int:
    """Stop ``proc``: SIGTERM + SIGCONT (a stopped process acts on SIGTERM only once
    continued), then SIGKILL after ``grace`` seconds (at once when ``grace`` <= 0).
    Returns the exit code. Keep draining its stdout/stderr meanwhile, or a child
    blocked on a full pipe waits out the grace."""
    if proc.returncode is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        if grace > 0:
            proc.terminate()
            proc.send_signal(signal.SIGCONT)
        else:
            proc.kill()
    try:
        return await asyncio.wait_for(proc.wait(), timeout=grace if grace > 0 else 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # also works on a SIGSTOP'd process
        return await proc.wait()


class StderrTail:
    """The last ``size`` non-empty stderr lines of a child, redacted as they arrive.

    ``consume(stream)`` reads until EOF; ``on_line(text)`` (optional) sees each redacted
    line too (e.g. a debug log)."""

    def __init__(self, size: int = 20, on_line: Callable[[str], None] | None = None) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self._on_line = on_line

    def clear(self) -> None:
        """Forget what was read (a new run)."""
        self.lines.clear()

    def add(self, raw: str) -> None:
        """Add one line (redacted here)."""
        text = redact(raw.rstrip())
        if text:
            self.lines.append(text)
            if self._on_line:
                self._on_line(text)

    async def consume(self, stream: asyncio.StreamReader | None) -> None:
        """Read ``stream`` line by line until EOF."""
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the reader's limit: skip it
                continue
            if not line:
                return
            self.add(line.decode(errors="replace"))

    def text(self, n: int | None = None) -> str:
        """The last ``n`` (all) lines joined with `` | ``, or ``(no stderr)``."""
        lines = list(self.lines)[-n:] if n else list(self.lines)
        return " | ".join(lines) or "(no stderr)"


def tail_text(stderr: str, n: int = 3) -> str:
    """The last ``n`` non-empty lines of ``stderr``, joined with `` | `` and redacted."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return redact(" | ".join(lines[-n:])) or "(no stderr)"


@dataclass(frozen=True)
class Completed:
    """A finished child: ``returncode`` (-1 when unknown), decoded ``stdout``/``stderr``."""

    returncode: int
    stdout: str
    stderr: str


async def run(args: Sequence[str], *, timeout: float, stdin: bytes | None = None, cwd: Path | None = None,
              capture_stdout: bool = True, grace: float = 0.0) -> Completed:
    """Run a child to the end without blocking the loop.

    On ``timeout`` (seconds) it is stopped with :func:`terminate` (``grace`` 0 = SIGKILL
    at once) and what it printed is returned; on cancellation it is killed. Raises
    :class:`FfmpegError` when it cannot be started."""
    proc = await start(args, stdin=stdin, stdout=capture_stdout, cwd=cwd)
    comm = asyncio.ensure_future(proc.communicate())
    try:
        out, err = await asyncio.wait_for(asyncio.shield(comm), timeout)
    except TimeoutError:
        await terminate(proc, grace)
        out, err = await comm
    except asyncio.CancelledError:
        await terminate(proc, 0)
        with contextlib.suppress(Exception):
            await comm
        raise
    rc = proc.returncode if proc.returncode is not None else -1
    return Completed(rc, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace"))


# ------------------------------------------------------------------- ffprobe


async def probe_rtsp(ffprobe: str, url: str, timeout: float, sample_seconds: float = 0.0) -> dict:
    """ffprobe the first video stream of an RTSP ``url`` over TCP (credentials via
    :func:`rtsp_input`, never argv).

    Returns the ffprobe stream object (``codec_name``, ``profile``, ``width``,
    ``height``, ``avg_frame_rate``, ``r_frame_rate``); with ``sample_seconds`` > 0 it also
    reads that many seconds of packets and adds ``keyframes``: the presentation times (s)
    of the keyframes among them. Raises ``FileNotFoundError`` when ffprobe cannot run,
    ``RuntimeError`` with a redacted reason on failure or after ``timeout`` + 5 seconds
    (+ ``sample_seconds``)."""
    spec = rtsp_input(url, timeout_s=timeout)
    entries = "stream=codec_name,profile,width,height,avg_frame_rate,r_frame_rate"
    sample = ["-read_intervals", f"%+{sample_seconds:g}"] if sample_seconds > 0 else []
    if sample:
        entries += ":packet=pts_time,flags"
    args = [ffprobe, "-v", "error", *spec.args, "-select_streams", "v:0", *sample, "-show_entries", entries,
            "-of", "json"]
    timeout += sample_seconds
    try:
        proc = await start(args, stdin=spec.stdin, stdout=True)
    except FfmpegError as exc:
        raise FileNotFoundError(str(exc)) from None
    comm = asyncio.ensure_future(proc.communicate())
    try:
        out, err = await asyncio.wait_for(asyncio.shield(comm), timeout + 5)
    except TimeoutError:
        await terminate(proc, 0)
        with contextlib.suppress(Exception):
            await comm
        raise RuntimeError(f"no answer within {timeout + 5:g} s") from None
    lines = [redact(line.strip()) for line in err.decode(errors="replace").splitlines() if line.strip()]
    if proc.returncode != 0:
        # the concat wrapper adds "pipe:0: <reason>" / "Impossible to open '<url>'": keep the reason
        reason = lines[-1] if lines else f"ffprobe exited with code {proc.returncode}"
        raise RuntimeError(reason.removeprefix("pipe:0: "))
    try:
        doc = json.loads(out or b"{}")
    except ValueError:
        doc = {}
    streams = doc.get("streams") or []
    if not streams:
        raise RuntimeError("no video stream in the RTSP session")
    stream = dict(streams[0])
    if sample:
        keys = []
        for pkt in doc.get("packets") or []:
            with contextlib.suppress(KeyError, ValueError, TypeError):
                if "K" in pkt["flags"]:
                    keys.append(float(pkt["pts_time"]))
        stream["keyframes"] = keys
    return stream


async def ffprobe_duration(path: Path, *, ffprobe: str = "ffprobe", timeout: float = 60.0) -> float:
    """Container duration of a media file in seconds (ffprobe ``format=duration``).
    Raises :class:`FfmpegError` when ffprobe cannot run, fails or reports no duration."""
    done = await run([ffprobe, "-v", "error", "-show_entries", "format=duration",
                      "-of", "default=noprint_wrappers=1:nokey=1", str(path)], timeout=timeout)
    try:
        d = float(done.stdout.strip().splitlines()[0]) if done.returncode == 0 else math.nan
    except (ValueError, IndexError):
        d = math.nan
    if not math.isfinite(d) or d <= 0:
        raise FfmpegError(f"ffprobe found no duration in {Path(path).name}: {tail_text(done.stderr)}")
    return d
