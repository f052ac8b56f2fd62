"""Single-flight caches, without sockets: one fetch per key, streaming fan-out, byte bound."""

import asyncio

from gateway.cache import Flight, PlaylistCache, SegmentCache


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


async def test_playlist_cache_shares_within_ttl_and_keys_on_query():
    pc = PlaylistCache()
    calls = []

    def fetch_for(key):
        async def fetch(flight):
            calls.append(key)
            flight.start(200, {})
            flight.append(b"#EXTM3U\n")
            flight.finish()
        return fetch

    fs = [pc.get_or_fetch(("c", ""), fetch_for("a"), lambda f: 5.0) for _ in range(30)]
    await asyncio.gather(*(f.read_all() for f in fs))
    await pc.get_or_fetch(("c", ""), fetch_for("a"), lambda f: 5.0).read_all()
    assert calls == ["a"]
    await pc.get_or_fetch(("c", "_HLS_msn=5"), fetch_for("b"), lambda f: 0.0).read_all()
    await pc.get_or_fetch(("c", "_HLS_msn=6"), fetch_for("c"), lambda f: 0.0).read_all()
    assert calls == ["a", "b", "c"]
