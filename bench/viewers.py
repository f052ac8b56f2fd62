"""Simulated HLS viewers for the benchmarks: asyncio clients that behave like hls.js on a live
stream (development only).

Each :class:`Viewer` opens a session the way a browser does — ``index.m3u8?token=<JWT>`` →
``302`` → the playlist with its grant — fetches the ``EXT-X-MAP`` init segment once, starts 3
segments from the live edge (hls.js ``liveSyncDurationCount``), then reloads the playlist
every target duration (half of it when the playlist did not change; the time the load took
is subtracted, as hls.js does) and fetches each new segment once, in order.

HTTP goes through :class:`HttpConn`, a minimal keep-alive HTTP/1.1 client on asyncio streams
(one connection per viewer): far cheaper per request than a general-purpose client, so 500
viewers fit next to the servers under test on a small machine.
"""

from __future__ import annotations

import asyncio
import collections
import random
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

_SEQ = re.compile(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)", re.MULTILINE)
_TD = re.compile(r"^#EXT-X-TARGETDURATION:([\d.]+)", re.MULTILINE)
_MAP = re.compile(r'^#EXT-X-MAP:.*URI="([^"]+)"', re.MULTILINE)
LIVE_SYNC_COUNT = 3
START_RETRY_S = 1.0


class HttpConn:
    """One keep-alive HTTP/1.1 connection (GET only; Content-Length or chunked bodies)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """``GET target``; returns ``(status, lower-case headers, body)``. Reconnects once when a
        kept-alive connection turns out to be closed."""
        for attempt in (0, 1):
            fresh = self.writer is None
            try:
                return await asyncio.wait_for(self._get(target), self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                await self.close()
                if fresh or attempt:
                    raise ConnectionError(str(exc) or type(exc).__name__) from None
            except BaseException:
                await self.close()
                raise
        raise AssertionError("unreachable")

    async def _get(self, target: str) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          "User-Agent: platebridge-bench-viewer\r\n\r\n".encode("latin-1"))
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")  # no trailers are sent
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = b""
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def close(self) -> None:
        """Close the connection (if open)."""
        w, self.writer, self.reader = self.writer, None, None
        if w is not None:
            w.close()
            try:
                await asyncio.wait_for(w.wait_closed(), 1.0)
            except (Exception, asyncio.CancelledError):
                pass


@dataclass
class ViewerStats:
    """What one group of viewers saw (shared by all viewers of a run)."""

    sessions: int = 0
    playlists: int = 0
    segments: int = 0
    inits: int = 0
    bytes: int = 0
    errors: int = 0
    missed: int = 0
    by_seq: collections.Counter = field(default_factory=collections.Counter)  # segment sequence -> fetches
    segment_ms: list[float] = field(default_factory=list)
    playlist_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        """Count an error, keeping the first few for the report."""
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


def parse_media_playlist(text: str) -> tuple[int, float | None, str | None, list[tuple[int, str]]]:
    """``(media sequence, target duration, EXT-X-MAP URI, [(sequence, URI), …])``."""
    m = _SEQ.search(text)
    seq = int(m.group(1)) if m else 0
    td = _TD.search(text)
    mp = _MAP.search(text)
    segs: list[tuple[int, str]] = []
    expect_uri = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXTINF"):
            expect_uri = True
        elif line and not line.startswith("#") and expect_uri:
            segs.append((seq + len(segs), line))
            expect_uri = False
    return seq, float(td.group(1)) if td else None, mp.group(1) if mp else None, segs


class Viewer:
    """One hls.js-like viewer of ``start_url`` (``http://host:port/streams/<cam>/index.m3u8?token=…``)."""

    def __init__(self, start_url: str, stats: ViewerStats, *, timeout: float = 10.0) -> None:
        u = urlsplit(start_url)
        self.base = f"{u.scheme}://{u.netloc}"
        self.start_target = u.path + ("?" + u.query if u.query else "")
        self.conn = HttpConn(u.hostname or "127.0.0.1", u.port or 80, timeout)
        self.stats = stats
        self.last_seq: int | None = None

    def _target(self, current: str, ref: str) -> str:
        u = urlsplit(urljoin(self.base + current, ref))
        return u.path + ("?" + u.query if u.query else "")

    async def _get(self, target: str, kind: str) -> tuple[int, dict[str, str], bytes] | None:
        t = time.perf_counter()
        try:
            status, headers, body = await self.conn.get(target)
        except (TimeoutError, ConnectionError, OSError, ValueError) as exc:
            self.stats.error(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        ms = (time.perf_counter() - t) * 1000
        if status not in (200, 302):
            self.stats.error(f"{kind}: HTTP {status}: {body[:80]!r}")
            return None
        self.stats.bytes += len(body)
        if kind == "segment":
            self.stats.segments += 1
            self.stats.segment_ms.append(ms)
        elif kind == "playlist":
            self.stats.playlists += 1
            self.stats.playlist_ms.append(ms)
        elif kind == "init":
            self.stats.inits += 1
        return status, headers, body

    async def run(self, stop: asyncio.Event, start_delay: float = 0.0) -> None:
        """Watch until ``stop`` is set (after ``start_delay`` seconds)."""
        loop = asyncio.get_running_loop()
        try:
            if start_delay:
                await asyncio.sleep(start_delay)
            if stop.is_set():
                return
            while True:  # hls.js retries a failed manifest load
                r = await self._get(self.start_target, "start")
                if r is not None and r[0] == 302:
                    break
                if r is not None:
                    self.stats.error(f"start: HTTP {r[0]} (expected 302)")
                try:
                    await asyncio.wait_for(stop.wait(), START_RETRY_S)
                    return
                except TimeoutError:
                    pass
            self.stats.sessions += 1
            playlist = self._target(self.start_target, r[1]["location"])
            td = 2.0
            first = True
            while not stop.is_set():
                t0 = loop.time()
                r = await self._get(playlist, "playlist")
                updated = False
                if r is not None:
                    _seq, tdv, map_uri, segs = parse_media_playlist(r[2].decode("utf-8", "replace"))
                    td = tdv or td
                    if first and segs:
                        first = False
                        if map_uri:
                            await self._get(self._target(playlist, map_uri), "init")
                        self.last_seq = segs[max(0, len(segs) - LIVE_SYNC_COUNT)][0] - 1
                    if segs and self.last_seq is not None:
                        new = [(s, u) for s, u in segs if s > self.last_seq]
                        if new:
                            updated = True
                            self.stats.missed += max(0, new[0][0] - self.last_seq - 1)
                        for s, uri in new:
                            if stop.is_set():
                                break
                            if await self._get(self._target(playlist, uri), "segment") is not None:
                                self.stats.by_seq[s] += 1
                            self.last_seq = s
                wait = (td if updated else td / 2) - (loop.time() - t0)
                if wait > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), wait)
                    except TimeoutError:
                        pass
        finally:
            await self.conn.close()


async def watch(urls: list[str], stats: ViewerStats, stop: asyncio.Event, *, spread: float,
                seed: int = 1) -> list[asyncio.Task]:
    """Start one :class:`Viewer` per URL, their starts spread uniformly at random over
    ``spread`` seconds (viewers join at random phases of the segment clock). Returns the tasks;
    set ``stop`` and await them to end the session."""
    rng = random.Random(seed)
    return [asyncio.create_task(Viewer(u, stats).run(stop, rng.uniform(0, spread))) for u in urls]
