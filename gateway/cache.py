"""Single-flight caches for segments and playlists, under one byte budget (no sockets here).

:class:`Flight` is one upstream fetch shared by every viewer who asks while it
runs: the body is appended chunk by chunk and each reader streams from the
shared buffer as bytes arrive (nothing waits for the whole segment). When a
200 finishes, the flight stays in :class:`SegmentCache`, an LRU, so N concurrent
viewers cause exactly one pod fetch per segment.

Memory: every body byte the gateway holds for a pod — flights still in progress,
cached segments and cached playlists, and bodies that left the cache while a
viewer is still being sent them — is charged to one :class:`ByteBudget`
(``cache_max_bytes``). A flight's bytes are given back when it is complete, in no
cache and no viewer reads it any more. When a chunk would overflow the budget, the
least recently used complete entries are evicted; if bodies in flight and in
viewers' hands alone fill it, the flight that asked for more fails with
:class:`~gateway.errors.Overloaded` (→ 503) instead of growing the process.

Segments are immutable (the pod never reuses a segment name). Init segments
are not: ffmpeg rewrites ``init.mp4`` under the same name on restart, so
entries marked ``revalidate`` are re-checked with ``If-None-Match`` once older
than ``revalidate_after`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import Overloaded
from gateway.llhls import PlaylistInfo

log = logging.getLogger("platebridge.gateway.cache")


class ByteBudget:
    """Bytes of upstream bodies held by the gateway, bounded by ``limit``.

    Caches register an evictor (``evict(needed_bytes) -> freed_bytes``) that drops
    complete entries, least recently used first.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refused = 0
        self._evictors: list[Callable[[int], int]] = []

    def add_evictor(self, evict: Callable[[int], int]) -> None:
        """Register a cache's evictor."""
        self._evictors.append(evict)

    def charge(self, n: int) -> bool:
        """Account ``n`` more bytes; evicts if needed. False (nothing charged) when even
        after evicting every complete entry the bytes would not fit."""
        self.used += n
        if self.used > self.limit:
            for evict in self._evictors:
                evict(self.used - self.limit)
                if self.used <= self.limit:
                    break
        if self.used > self.limit:
            self.used -= n
            self.refused += 1
            return False
        self.peak = max(self.peak, self.used)
        return True

    def release(self, n: int) -> None:
        """Give back ``n`` bytes."""
        self.used -= n


class FlightSink(Protocol):
    """Told of a :class:`Flight`'s progress as it happens (see ``Flight.sink``). Must not raise."""

    def started(self, status: int, headers: dict[str, str]) -> None:
        """The pod answered ``status`` with ``headers``."""

    def wrote(self, chunk: bytes) -> None:
        """``chunk`` was appended to the body."""

    def finished(self, flight: Flight) -> None:
        """The flight is complete (``flight.error`` set if it broke)."""


class Flight:
    """One shared upstream response.

    ``status``/``headers`` are set once the upstream answered (``ready``);
    ``chunks`` grow until ``done``; ``error`` is set if the transfer broke.
    With a ``budget``, every appended byte is charged to it until :meth:`release`.
    ``verdict``: what the proxy concluded about a playlist body, once per upstream response
    (None: not looked at yet; otherwise the proxy's checked view of it or the error it maps to).
    ``born``: :func:`time.monotonic` seconds when the pod's answer began (its headers); a body
    copied from the host store (:mod:`gateway.hoststore`) is back-dated to its fetch.
    ``sink``: an optional :class:`FlightSink` told of every start, chunk and finish (the host
    store writes the body to a file for the other worker processes as it arrives).
    """

    __slots__ = (
        "_joined",
        "_waiters",
        "born",
        "budget",
        "cached",
        "charged",
        "chunks",
        "counted",
        "created",
        "done",
        "error",
        "etag",
        "headers",
        "readers",
        "ready",
        "sink",
        "size",
        "status",
        "task",
        "verdict",
    )

    def __init__(self, budget: ByteBudget | None = None) -> None:
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
        self.budget = budget
        self.charged = 0
        self.cached = False  # held by a cache (its bytes stay charged)
        self.readers = 0  # viewers being sent this body (its bytes stay charged)
        self.counted = False  # its size is in SegmentCache.size_bytes
        self.verdict: object = None
        self.born = self.created
        self.sink: FlightSink | None = None

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def start(self, status: int, headers: dict[str, str]) -> None:
        """Record the upstream status line and headers; wakes header waiters."""
        self.status, self.headers = status, headers
        self.etag = headers.get("etag")
        self.born = time.monotonic()
        if self.sink is not None:
            self.sink.started(status, headers)
        self.ready.set()

    def append(self, chunk: bytes) -> None:
        """Add body bytes and wake readers. Raises :class:`Overloaded` when the budget refuses them."""
        if chunk:
            if self.budget is not None:
                if not self.budget.charge(len(chunk)):
                    raise Overloaded("gateway memory budget (cache_max_bytes) is full of bodies in flight")
                self.charged += len(chunk)
            if self.sink is not None:
                self.sink.wrote(chunk)
            self.chunks.append(chunk)
            self.size += len(chunk)
            self._wake()

    def release(self) -> int:
        """Give this flight's bytes back to the budget once nothing holds them (complete, in no
        cache, no reader); returns the bytes given back (0 while still held)."""
        if not self.done or self.cached or self.readers:
            return 0
        self.chunks, self._joined = [], None  # nobody can read it any more: free the body now, not at a GC
        if self.budget is None or not self.charged:
            return 0
        freed, self.charged = self.charged, 0
        self.budget.release(freed)
        return freed

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Keep this flight's bytes charged while a viewer is sent them outside :meth:`body`."""
        self.readers += 1
        try:
            yield
        finally:
            self.readers -= 1
            self.release()

    def uncache(self) -> int:
        """A cache let go of this flight; returns the bytes given back (see :meth:`release`)."""
        self.cached = False
        return self.release()

    def finish(self, error: BaseException | None = None) -> None:
        """Mark complete (or broken with ``error``); wakes everyone."""
        if error is not None:  # its traceback's frames hold this flight: a cycle only the GC would break
            error.__traceback__ = error.__context__ = error.__cause__ = None
        self.error = error
        self.done = True
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.finished(self)
        self.ready.set()
        self._wake()
        self.release()

    async def _changed(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut

    async def body(self, start: int = 0) -> AsyncIterator[bytes]:
        """Yield the body from byte ``start`` on, as it arrives. Raises the transfer error, if any.
        While the iteration runs, the flight's bytes stay charged to the budget. A reader keeps
        its place by byte position, so :meth:`complete_body` joining the chunks meanwhile (another
        viewer of the finished flight) neither cuts its body short nor repeats bytes."""
        pos = start  # the next byte to yield
        chunks, i, offset = self.chunks, 0, 0  # chunks[i] starts at byte ``offset``
        self.readers += 1
        try:
            while True:
                if self.chunks is not chunks:  # joined or replaced: find ``pos`` in the new list
                    chunks, i, offset = self.chunks, 0, 0
                while i < len(chunks):
                    chunk = chunks[i]
                    i += 1
                    end = offset + len(chunk)
                    if end > pos:
                        piece = chunk if offset >= pos else chunk[pos - offset:]
                        pos = end
                        yield piece
                        if self.chunks is not chunks:
                            break
                    offset = end
                else:
                    if self.done:
                        if self.error is not None:
                            raise _fresh(self.error)
                        return
                    await self._changed()
        finally:
            self.readers -= 1
            self.release()

    def complete_body(self) -> bytes:
        """The whole body of a flight that finished without error (joined once, then reused)."""
        if self._joined is None:
            self._joined = b"".join(self.chunks)
            self.chunks = [self._joined] if self._joined else []
        return self._joined

    async def read_all(self) -> bytes:
        """Wait for completion and return the whole body. Raises the transfer error."""
        with self.held():
            while not self.done:
                await self._changed()
            if self.error is not None:
                raise _fresh(self.error)
            return self.complete_body()


def _fresh(error: BaseException) -> BaseException:
    """A copy of a flight's stored error to raise: raising the stored one would tie the raiser's
    frames (and their flight) to it through its traceback."""
    return copy.copy(error)


Fetcher = Callable[[Flight, "Flight | None"], Awaitable[None]]


def _kept(flight: Flight) -> bool:
    return flight.done and flight.error is None and flight.status == 200


class SegmentCache:
    """Single-flight LRU of :class:`Flight` objects; bodies are charged to ``budget``
    (a :class:`ByteBudget`, or an int limit for a private one).

    Only complete 200 responses stay cached; errors and non-200s are shared by
    the requests that overlapped them, then dropped. Entries bigger than a
    quarter of the budget are streamed but not kept.
    """

    def __init__(self, budget: ByteBudget | int, *, revalidate_after: float = 1.0) -> None:
        self.budget = budget if isinstance(budget, ByteBudget) else ByteBudget(budget)
        self.budget.add_evictor(self._evict)
        self.max_bytes = self.budget.limit
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
        flight = Flight(self.budget)
        if stale is not None:
            stale.readers += 1  # the revalidating fetch reads it on 304: keep its body past _put
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
            if stale is not None:
                stale.readers -= 1
                stale.release()
            self._settle(key, flight)

    def _drop(self, key: Any) -> int:
        old = self._entries.pop(key)
        if old.counted:
            self._bytes -= old.size
            old.counted = False
        return old.uncache()

    def _put(self, key: Any, flight: Flight) -> None:
        if key in self._entries:
            self._drop(key)  # the stale entry being revalidated: the new flight copies it on 304
        flight.cached = True
        self._entries[key] = flight

    def _settle(self, key: Any, flight: Flight) -> None:
        if self._entries.get(key) is not flight:
            flight.uncache()
            return
        if not _kept(flight) or flight.size > self.max_bytes // 4:
            self._drop(key)
            return
        self._bytes += flight.size
        flight.counted = True

    def _evict(self, needed: int) -> int:
        """Drop complete entries, least recently used first, until ``needed`` bytes are freed."""
        freed = 0
        for k in [k for k, f in self._entries.items() if f.counted]:
            if freed >= needed:
                break
            freed += self._drop(k)
        return freed


@dataclass(frozen=True, slots=True)
class Newest:
    """The newest complete playlist of a channel: its ``flight``, what it says (``info``)
    and when it arrived (``at``, :func:`time.monotonic` seconds)."""

    flight: Flight
    info: PlaylistInfo
    at: float


class PlaylistCache:
    """Live playlists: one upstream fetch per key at a time, and the newest answer per channel.

    A *channel* is one playlist of one camera as a viewer reloads it (the caller's tuple,
    e.g. pod, camera, path and query without LL-HLS directives). A *key* is ``(channel,
    generation)``: ``generation`` is None for a plain reload, or the request's canonical
    delivery directives (:class:`gateway.llhls.Directives`), so every viewer waiting on the
    same ``(_HLS_msn, _HLS_part)`` shares one upstream blocking request
    (RFC 8216bis §6.2.5.2). A fetch still running after ``max_inflight`` seconds no longer
    holds its key.

    When a fetch completes, ``settle(flight)`` (the caller's check, run once per upstream
    response) says what the playlist holds (:class:`~gateway.llhls.PlaylistInfo`) or None
    for a response that must not be reused (an error status, a malformed or hostile body).
    A usable one becomes the channel's :class:`Newest` unless the channel already holds a
    newer one (:meth:`PlaylistInfo.newer_than`); the caller answers later requests from it
    while it is fresh enough for them (:meth:`newest`). Channels are kept least recently
    used first, at most ``max_entries``; their bodies are charged to ``budget`` and evicted
    under memory pressure like cached segments.
    """

    def __init__(self, max_entries: int = 4096, *, budget: ByteBudget | None = None,
                 max_inflight: float = 60.0) -> None:
        self._flights: dict[Hashable, Flight] = {}
        self._newest: OrderedDict[Hashable, Newest] = OrderedDict()
        self.max_entries = max_entries
        self.max_inflight = max_inflight
        self.budget = budget
        if budget is not None:
            budget.add_evictor(self._evict)
        self.fetches = 0

    def __len__(self) -> int:
        return len(self._newest)

    def inflight(self) -> int:
        """Upstream playlist fetches running now."""
        return len(self._flights)

    def newest(self, channel: Hashable) -> Newest | None:
        """The channel's newest complete playlist, if any (marked recently used)."""
        item = self._newest.get(channel)
        if item is not None:
            self._newest.move_to_end(channel)
        return item

    def drop(self, channel: Hashable) -> None:
        """Forget the channel's newest playlist (the caller found it too old to keep)."""
        item = self._newest.pop(channel, None)
        if item is not None:
            item.flight.uncache()

    def get_or_fetch(self, key: tuple[Hashable, Hashable], fetch: Callable[[Flight], Awaitable[None]],
                     settle: Callable[[Flight], PlaylistInfo | None]) -> tuple[Flight, bool]:
        """``(flight, started)``: the running fetch for ``key`` (``started`` False), or a new one
        running ``fetch(flight)`` (``started`` True). ``key`` is ``(channel, generation)``;
        ``settle`` is called once the response is complete (see the class doc)."""
        now = time.monotonic()
        flight = self._flights.get(key)
        if flight is not None and now - flight.created < self.max_inflight:
            return flight, False
        flight = Flight(self.budget)
        flight.cached = True
        self.fetches += 1
        self._flights[key] = flight

        async def run() -> None:
            try:
                await fetch(flight)
            except Exception as exc:  # noqa: BLE001
                if not flight.done:
                    flight.finish(exc)
            finally:
                if not flight.done:
                    flight.finish(RuntimeError("fetch ended without finishing"))
                if self._flights.get(key) is flight:
                    del self._flights[key]
                info = None
                if flight.error is None and flight.status == 200:
                    try:
                        info = settle(flight)
                    except Exception as exc:  # noqa: BLE001 - a bad body must never pin the entry
                        log.warning("playlist %r not kept: %r", key[0], exc)
                if info is None or not self._offer(key[0], flight, info):
                    flight.uncache()

        flight.task = asyncio.create_task(run())
        return flight, True

    def _offer(self, channel: Hashable, flight: Flight, info: PlaylistInfo) -> bool:
        current = self._newest.get(channel)
        if current is not None and not info.newer_than(current.info):
            return False
        self._newest[channel] = Newest(flight, info, flight.born)  # a copy from the host store: its age
        self._newest.move_to_end(channel)
        if current is not None:
            current.flight.uncache()
        while len(self._newest) > self.max_entries:
            self._newest.popitem(last=False)[1].flight.uncache()
        return True

    def _evict(self, needed: int) -> int:
        freed = 0
        for channel in list(self._newest):
            if freed >= needed:
                break
            freed += self._newest.pop(channel).flight.uncache()
        return freed
