"""Single-flight caches, without sockets: one fetch per key, streaming fan-out, byte bound."""

import asyncio

from gateway.cache import Flight, PlaylistCache, SegmentCache
from gateway.llhls import PlaylistInfo


async def test_concurrent_readers_share_one_fetch_and_stream_as_bytes_arrive():
    cache = SegmentCache(10_000_000)
    calls = 0
    release = asyncio.Event()

    async def fetch(flight: Flight, stale):
        nonlocal calls
        calls += 1
        flight.start(200, {"content-length": "6"})
        flight.append(b"abc")
        await release.wait()
        flight.append(b"def")
        flight.finish()

    flights = [cache.get_or_fetch("k", fetch) for _ in range(50)]
    assert len({id(f) for f in flights}) == 1
    first = []

    async def read_first_chunk():
        async for chunk in flights[0].body():
            first.append(chunk)
            return

    await asyncio.wait_for(read_first_chunk(), 2)
    assert first == [b"abc"]  # delivered before the fetch finished
    release.set()
    bodies = await asyncio.gather(*(f.read_all() for f in flights))
    assert set(bodies) == {b"abcdef"} and calls == 1
    assert cache.get_or_fetch("k", fetch) is flights[0] and calls == 1  # now a hit
    assert cache.size_bytes == 6


async def test_errors_and_non_200_are_not_cached():
    cache = SegmentCache(10_000_000)
    calls = 0

    async def fetch(flight, stale):
        nonlocal calls
        calls += 1
        flight.start(404, {})
        flight.finish()

    f = cache.get_or_fetch("k", fetch)
    await f.read_all()
    await asyncio.sleep(0)
    cache.get_or_fetch("k", fetch)
    await asyncio.sleep(0.01)
    assert calls == 2

    async def boom(flight, stale):
        raise RuntimeError("x")

    f = cache.get_or_fetch("e", boom)
    await asyncio.sleep(0.01)
    assert f.done and isinstance(f.error, RuntimeError) and len(cache) == 0  # neither 404 nor error kept


async def test_lru_bound_in_bytes():
    cache = SegmentCache(4 * 1024 * 1024)

    def fetcher(n):
        async def fetch(flight, stale):
            flight.start(200, {})
            flight.append(b"x" * n)
            flight.finish()
        return fetch

    for i in range(20):
        await cache.get_or_fetch(i, fetcher(600_000)).read_all()
        await asyncio.sleep(0)
    assert cache.size_bytes <= 4 * 1024 * 1024
    assert 19 in cache._entries and 0 not in cache._entries
    await cache.get_or_fetch("big", fetcher(2_000_000)).read_all()  # > 1/4 of the budget: streamed, not kept
    await asyncio.sleep(0)
    assert "big" not in cache._entries


async def test_revalidation_passes_stale_entry_and_reuses_it():
    cache = SegmentCache(10_000_000, revalidate_after=0.0)
    seen = []

    async def fetch(flight, stale):
        seen.append(stale)
        if stale is None:
            flight.start(200, {"etag": '"v1"'})
            flight.append(b"init-v1")
        else:
            flight.start(200, dict(stale.headers))
            for c in stale.chunks:
                flight.append(c)
        flight.finish()

    a = await cache.get_or_fetch("init", fetch, revalidate=True).read_all()
    await asyncio.sleep(0)
    b = await cache.get_or_fetch("init", fetch, revalidate=True).read_all()
    assert a == b == b"init-v1" and seen[0] is None and seen[1] is not None and seen[1].etag == '"v1"'


def info(next_msn, next_part=0, first=None):
    return PlaylistInfo(next_msn, next_part, None, next_msn - 3 if first is None else first, 2.0, 0.2, True, False)


async def test_playlist_cache_one_fetch_per_key_and_the_newest_answer_per_channel():
    pc = PlaylistCache()
    calls = []
    gate = asyncio.Event()

    def fetch_for(name, wait=False):
        async def fetch(flight):
            calls.append(name)
            if wait:
                await gate.wait()
            flight.start(200, {})
            flight.append(name.encode())
            flight.finish()
        return fetch

    edges = {"a": info(10, 2), "b": info(10, 3), "old": info(10, 1), "bad": None}
    settle = lambda f: edges[f.complete_body().decode()]  # noqa: E731
    got = [pc.get_or_fetch(("c", (10, 2)), fetch_for("a", wait=True), settle) for _ in range(30)]
    assert [started for _, started in got] == [True] + [False] * 29 and len({id(f) for f, _ in got}) == 1
    assert pc.inflight() == 1 and pc.newest("c") is None
    gate.set()
    await asyncio.gather(*(f.read_all() for f, _ in got))
    await asyncio.sleep(0)
    assert calls == ["a"] and pc.inflight() == 0
    assert pc.newest("c").flight is got[0][0] and pc.newest("c").info == edges["a"]

    # another generation is another fetch; its newer edge replaces the newest
    f, started = pc.get_or_fetch(("c", (10, 3)), fetch_for("b"), settle)
    await f.read_all()
    await asyncio.sleep(0)
    assert started and pc.newest("c").flight is f and got[0][0].cached is False
    # an older edge, or a response the caller refused, never replaces it
    for name in ("old", "bad"):
        g, _ = pc.get_or_fetch(("c", None), fetch_for(name), settle)
        await g.read_all()
        await asyncio.sleep(0)
        assert pc.newest("c").flight is f and not g.cached
    # a window that does not overlap (the pod's stream restarted with lower numbers) does
    edges["restart"] = info(5, 0, first=2)
    g, _ = pc.get_or_fetch(("c", None), fetch_for("restart"), settle)
    await g.read_all()
    await asyncio.sleep(0)
    assert pc.newest("c").flight is g
    assert calls == ["a", "b", "old", "bad", "restart"]


async def test_a_reader_mid_body_keeps_its_place_when_another_viewer_joins_the_chunks():
    """A viewer still streaming a segment while the flight finishes, and another viewer of the
    same worker is sent the finished body whole (``complete_body`` joins the chunks): the first
    one still gets every byte, once. (Seen in the bench with 4 workers: bodies cut after the
    first 64 KB chunk, Content-Length unmet, nothing logged.)"""
    flight = Flight()
    flight.cached = True
    flight.start(200, {"content-length": "9"})
    for part in (b"abc", b"def", b"ghi"):
        flight.append(part)
    got = []
    reader = flight.body()
    got.append(await anext(reader))  # the first viewer has sent one chunk
    flight.finish()
    assert flight.complete_body() == b"abcdefghi"  # the second viewer
    got += [chunk async for chunk in reader]
    assert b"".join(got) == b"abcdefghi"
    # and from a start offset inside a chunk, joined before the reader began
    assert b"".join([c async for c in flight.body(start=4)]) == b"efghi"
