"""Single-flight caches for segments and playlists (no sockets here).

:class:`Flight` is one upstream fetch shared by every viewer who asks while it
runs: the body is appended chunk by chunk and each reader streams from the
shared buffer as bytes arrive (nothing waits for the whole segment). When a
200 finishes, the flight stays in :class:`SegmentCache`, an LRU bounded in
bytes, so N concurrent viewers cause exactly one pod fetch per segment.

Segments are immutable (the pod never reuses a segment name). Init segments
are not: ffmpeg rewrites ``init.mp4`` under the same name on restart, so
entries marked ``revalidate`` are re-checked with ``If-None-Match`` once older
than ``revalidate_after`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any


class Flight:
    """One shared upstream response.

    ``status``/``headers`` are set once the upstream answered (``ready``);
    ``chunks`` grow until ``done``; ``error`` is set if the transfer broke.
    """

    __slots__ = (
        "_joined",
        "_waiters",
        "chunks",
        "created",
        "done",
        "error",
        "etag",
        "headers",
        "ready",
        "scanned",
        "size",
        "status",
        "task",
    )

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.error: BaseException | None = None
        self.ready = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self.created = time.monotonic()
        self.etag: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._joined: bytes | None = None
        self.scanned = False  # the gateway recorded the URIs of this playlist

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def start(self, status: int, headers: dict[str, str]) -> None:
        """Record the upstream status line and headers; wakes header waiters."""
        self.status, self.headers = status, headers
        self.etag = headers.get("etag")
        self.ready.set()

    def append(self, chunk: bytes) -> None:
        """Add body bytes and wake readers."""
        if chunk:
            self.chunks.append(chunk)
            self.size += len(chunk)
            self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        """Mark complete (or broken with ``error``); wakes everyone."""
        self.error = error
        self.done = True
        self.ready.set()
        self._wake()

    async def _changed(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut

    async def body(self) -> AsyncIterator[bytes]:
        """Yield the body from the start as it arrives. Raises the transfer error, if any."""
        i = 0
        while True:
            while i < len(self.chunks):
                yield self.chunks[i]
                i += 1
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            await self._changed()

    def complete_body(self) -> bytes:
        """The whole body of a flight that finished without error (joined once, then reused)."""
        if self._joined is None:
            self._joined = b"".join(self.chunks)
            self.chunks = [self._joined] if self._joined else []
        return self._joined

    async def read_all(self) -> bytes:
        """Wait for completion and return the whole body. Raises the transfer error."""
        while not self.done:
            await self._changed()
        if self.error is not None:
            raise self.error
        return self.complete_body()


Fetcher = Callable[[Flight, "Flight | None"], Awaitable[None]]


class SegmentCache:
    """Single-flight LRU of :class:`Flight` objects bounded by ``max_bytes`` of body.

    Only complete 200 responses stay cached; errors and non-200s are shared by
    the requests that overlapped them, then dropped. Entries bigger than a
    quarter of the budget are streamed but not kept.
    """

    def __init__(self, max_bytes: int, *, revalidate_after: float = 1.0) -> None:
        self.max_bytes = max_bytes
        self.revalidate_after = revalidate_after
        self._entries: OrderedDict[Any, Flight] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.fetches = 0

    @property
    def size_bytes(self) -> int:
        """Bytes of body currently held by complete cached entries."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_fetch(self, key: Any, fetch: Fetcher, *, revalidate: bool = False) -> Flight:
        """Return the flight for ``key``, starting ``fetch(new_flight, stale_or_None)`` if needed.

        ``fetch`` must call ``start``/``append``/``finish`` on the new flight and never
        raise. With ``revalidate``, a complete entry older than ``revalidate_after``
        starts a conditional fetch; the old entry is passed as ``stale`` so the
        fetcher can send ``If-None-Match`` and reuse it on 304.
        """
        entry = self._entries.get(key)
        stale = None
        if entry is not None:
            fresh = not revalidate or not entry.done or time.monotonic() - entry.created < self.revalidate_after
            if fresh:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
            stale = entry
        self.misses += 1
        self.fetches += 1
        flight = Flight()
        self._put(key, flight)
        flight.task = asyncio.create_task(self._run(key, flight, fetch, stale))
        return flight

    async def _run(self, key: Any, flight: Flight, fetch: Fetcher, stale: Flight | None) -> None:
        try:
            await fetch(flight, stale)
        except BaseException as exc:
            if not flight.done:
                flight.finish(exc if isinstance(exc, Exception) else RuntimeError("fetch cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            if not flight.done:
                flight.finish(RuntimeError("fetch ended without finishing"))
            self._settle(key, flight)

    def _put(self, key: Any, flight: Flight) -> None:
        old = self._entries.pop(key, None)
        if old is not None and old.done and old.error is None and old.status == 200:
            self._bytes -= old.size
        self._entries[key] = flight

    def _settle(self, key: Any, flight: Flight) -> None:
        if self._entries.get(key) is not flight:
            return
        if flight.error is not None or flight.status != 200 or flight.size > self.max_bytes // 4:
            del self._entries[key]
            return
        self._bytes += flight.size
        while self._bytes > self.max_bytes and self._entries:
            k, old = next(iter(self._entries.items()))
            if old is flight:
                break
            del self._entries[k]
            if old.done and old.error is None and old.status == 200:
                self._bytes -= old.size


class PlaylistCache:
    """Shares live playlist fetches: at most one upstream fetch per key per ``ttl``.

    ``ttl`` is chosen per response by the caller (half the target duration, RFC
    8216 §6.3.4 reload interval); keys include the full upstream query, so
    LL-HLS blocking requests (``_HLS_msn``/``_HLS_part``) never share a response
    with another media sequence.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[Any, tuple[float, Flight]] = OrderedDict()
        self.max_entries = max_entries
        self.fetches = 0

    def get_or_fetch(self, key: Any, fetch: Callable[[Flight], Awaitable[None]],
                     ttl_of: Callable[[Flight], float]) -> Flight:
        """Return a fresh or in-flight response for ``key``, or start ``fetch``.

        ``ttl_of(flight)`` (seconds) is asked once the response is complete.
        """
        now = time.monotonic()
        item = self._entries.get(key)
        if item is not None:
            expires, flight = item
            if not flight.done or now < expires:
                return flight
        flight = Flight()
        self.fetches += 1
        self._entries[key] = (float("inf"), flight)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

        async def run() -> None:
            try:
                await fetch(flight)
            except Exception as exc:  # noqa: BLE001
                if not flight.done:
                    flight.finish(exc)
            finally:
                if not flight.done:
                    flight.finish(RuntimeError("fetch ended without finishing"))
                if self._entries.get(key, (0, None))[1] is flight:
                    ttl = ttl_of(flight) if flight.error is None and flight.status == 200 else 0.0
                    if ttl > 0:
                        self._entries[key] = (time.monotonic() + ttl, flight)
                    else:
                        del self._entries[key]

        flight.task = asyncio.create_task(run())
        return flight
