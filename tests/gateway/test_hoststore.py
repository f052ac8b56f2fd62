"""The host store (gateway/hoststore.py): one pod fetch per key per host, whichever worker asks.

Each :class:`HostStore` below stands for one worker process: it opens its own descriptors, so
``flock(2)`` keeps them apart exactly as it keeps processes apart (locks belong to open file
descriptions). No sockets: the "pod" is a fetch function the test drives chunk by chunk.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import math
import os
import stat

import pytest

from gateway.cache import Flight
from gateway.errors import ConfigError, UpstreamError, UpstreamTimeout
from gateway.hoststore import HostStore, key_name

KEY = ("pod-1", "gate-camera-1", "seg_00042.m4s", "")
FOREVER = lambda _f: math.inf  # noqa: E731 - media segments are immutable


class Pod:
    """A fetch function answering ``status`` with ``chunks``; each chunk waits for :meth:`step`
    when ``gated``. Counts the fetches it served and records the ``stale`` flights it was given."""

    def __init__(self, chunks: list[bytes], *, status: int = 200, gated: bool = False,
                 headers: dict[str, str] | None = None, error: Exception | None = None) -> None:
        self.chunks, self.status, self.gated, self.error = chunks, status, gated, error
        self.headers = headers or {"content-type": "video/iso.segment", "etag": '"v1"'}
        self.calls = 0
        self.stale: list[Flight | None] = []
        self._gate = asyncio.Semaphore(0)
        self.not_modified = False

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self._gate.release()

    async def __call__(self, flight: Flight, stale: Flight | None) -> None:
        self.calls += 1
        self.stale.append(stale)
        if self.not_modified and stale is not None:
            flight.start(200, dict(stale.headers))
            flight.append(stale.complete_body())
            flight.finish()
            return
        flight.start(self.status, dict(self.headers))
        for chunk in self.chunks:
            if self.gated:
                await self._gate.acquire()
            flight.append(chunk)
        flight.finish(self.error)


async def wait_for(pred, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.002)


def held() -> Flight:
    """A flight as a cache holds it (a finished flight nobody holds lets its body go)."""
    f = Flight()
    f.cached = True
    return f


def body(flight: Flight) -> bytes:
    return b"".join(flight.chunks)


@pytest.fixture
def root(tmp_path):
    d = tmp_path / "store"
    d.mkdir(mode=0o700)
    return d


async def test_one_fetch_for_two_workers_and_the_follower_streams_before_the_end(root):
    a, b = HostStore(root, max_bytes=1 << 20), HostStore(root, max_bytes=1 << 20)
    pod = Pod([b"x" * 1000, b"y" * 1000, b"z" * 1000], gated=True)
    fa, fb = held(), held()
    ta = asyncio.create_task(a.fill(KEY, fa, pod, ttl=FOREVER))
    await wait_for(lambda: fa.ready.is_set())
    tb = asyncio.create_task(b.fill(KEY, fb, pod, ttl=FOREVER))
    pod.step()
    await wait_for(lambda: fb.size == 1000)  # the follower has the first chunk while the fetch runs
    assert not fb.done and fb.status == 200 and fb.headers["etag"] == '"v1"'
    pod.step(2)
    assert await ta == "fetched" and await tb == "followed"
    assert pod.calls == 1
    assert body(fa) == body(fb) == b"x" * 1000 + b"y" * 1000 + b"z" * 1000
    assert fb.error is None


async def test_a_kept_entry_is_a_hit_for_every_worker_with_private_files(root):
    a, c = HostStore(root, max_bytes=1 << 20), HostStore(root, max_bytes=1 << 20)
    pod = Pod([b"segment-bytes"])
    await a.fill(KEY, held(), pod, ttl=FOREVER)
    f = held()
    assert await c.fill(KEY, f, pod, ttl=FOREVER) == "hit"
    assert pod.calls == 1 and body(f) == b"segment-bytes" and f.headers["content-type"] == "video/iso.segment"
    entry = c.lookup(key_name(KEY))
    assert entry is not None and entry.size == 13 and entry.fresh(1e12)
    assert c.read(entry) == b"segment-bytes"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in root.iterdir()}
    assert modes and all(m == 0o600 for m in modes.values()), modes  # camera footage: personal data


async def test_a_dead_writer_is_reported_to_its_follower_and_the_next_request_fetches_again(root):
    """The writing worker is killed mid-body: its lock goes with it and no end file is written."""
    b = HostStore(root, max_bytes=1 << 20)
    name = key_name(KEY)
    lock = os.open(root / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    (root / f"{name}.hdr").write_text('{"gen":"g1","status":200,"headers":{"content-type":"video/mp4"}}')
    (root / f"{name}.part").write_bytes(b"half a segm")
    fb = held()
    tb = asyncio.create_task(b.fill(KEY, fb, Pod([b"never"]), ttl=FOREVER))
    await wait_for(lambda: fb.size == 11)
    os.close(lock)  # the writer dies
    assert await tb == "followed"
    assert isinstance(fb.error, UpstreamError) and "stopped mid-transfer" in str(fb.error)
    pod = Pod([b"whole segment"])
    again = held()
    assert await b.fill(KEY, again, pod, ttl=FOREVER) == "fetched" and body(again) == b"whole segment"


async def test_errors_and_non_200_answers_reach_the_follower_but_are_not_kept(root):
    a, b = HostStore(root, max_bytes=1 << 20), HostStore(root, max_bytes=1 << 20)
    for pod in (Pod([b"not found"], status=404, gated=True),
                Pod([b"12345"], gated=True, error=UpstreamTimeout("pod did not deliver within 20 s"))):
        fa, fb = held(), held()
        ta = asyncio.create_task(a.fill(KEY, fa, pod, ttl=FOREVER))
        await wait_for(lambda fa=fa: fa.ready.is_set())
        tb = asyncio.create_task(b.fill(KEY, fb, pod, ttl=FOREVER))
        await wait_for(lambda fb=fb: fb.ready.is_set())  # following: it has the pod's status
        pod.step()
        await ta, await tb
        assert pod.calls == 1 and fb.status == pod.status and body(fb) == pod.chunks[0]
        assert type(fb.error) is type(pod.error) and str(fb.error) == str(pod.error)
        assert a.lookup(key_name(KEY)) is None and b.follows == 1  # the next request asks the pod again
        b.follows = 0


async def test_a_fetch_that_fails_before_the_pod_answers_fails_its_followers_too(root):
    """No headers ever come (the pod is unreachable): the followers get the same error at once
    instead of each trying the pod again after it."""
    a, b = HostStore(root, max_bytes=1 << 20), HostStore(root, max_bytes=1 << 20)
    gate = asyncio.Event()
    calls = 0

    async def unreachable(flight: Flight, stale: Flight | None) -> None:
        nonlocal calls
        calls += 1
        await gate.wait()
        flight.finish(UpstreamError("pod unreachable: ConnectError"))

    fa, fb = held(), held()
    ta = asyncio.create_task(a.fill(KEY, fa, unreachable, ttl=FOREVER))
    await wait_for(lambda: calls == 1)
    tb = asyncio.create_task(b.fill(KEY, fb, unreachable, ttl=FOREVER))
    await asyncio.sleep(0.05)
    gate.set()
    assert await ta == "fetched" and await tb == "followed"
    assert calls == 1 and fb.status == 0
    assert isinstance(fb.error, UpstreamError) and "pod unreachable: ConnectError" in str(fb.error)


async def test_a_follower_never_mixes_two_fetches(root):
    """A kept playlist is fetched again while a slow follower of the previous fetch is still
    reading: the follower gets the whole previous body, never bytes of the new one."""
    a, b = HostStore(root, max_bytes=1 << 20), HostStore(root, max_bytes=1 << 20)
    key = ("playlist", "cam", None)
    first = Pod([b"#EXTM3U\n#first\n", b"#rest-of-first\n"], gated=True)
    fa, fb = held(), held()
    ta = asyncio.create_task(a.fill(key, fa, first, ttl=lambda _f: -1.0))  # stale at once: fetched again
    await wait_for(lambda: fa.ready.is_set())
    tb = asyncio.create_task(b.fill(key, fb, first, ttl=lambda _f: -1.0))
    await wait_for(lambda: fb.ready.is_set())
    first.step(2)
    await ta
    second = Pod([b"#EXTM3U\n#second\n"])
    await a.fill(key, held(), second, ttl=lambda _f: -1.0)
    await tb
    assert body(fb) == b"#EXTM3U\n#first\n#rest-of-first\n" and fb.error is None


async def test_revalidation_sends_the_kept_answer_as_stale_and_refreshes_it(root):
    a, b = HostStore(root, max_bytes=1 << 20), HostStore(root, max_bytes=1 << 20)
    init = ("pod-1", "gate-camera-1", "init.mp4", "")
    pod = Pod([b"moov"])
    await a.fill(init, held(), pod, ttl=lambda _f: 0.0, revalidate=True)  # fresh for 0 s: always revalidated
    pod.not_modified = True
    f = held()
    assert await b.fill(init, f, pod, ttl=lambda _f: 0.0, revalidate=True) == "fetched"
    stale = pod.stale[-1]
    assert pod.calls == 2 and stale is not None and stale.etag == '"v1"' and body(f) == b"moov"
    entry = b.lookup(key_name(init))
    assert entry is not None and entry.size == 4


async def test_the_store_is_bounded_least_recently_used_first(root):
    s = HostStore(root, max_bytes=4000)
    names = []
    for i in range(4):
        key = ("p", "c", f"seg_{i}.m4s", "")
        names.append(key_name(key))
        await s.fill(key, held(), Pod([bytes([i]) * 1000]), ttl=FOREVER)
        os.utime(root / f"{names[-1]}.data", (1000 + i, 1000 + i))  # used in this order
    os.utime(root / f"{names[0]}.data", (2000, 2000))  # seg_0 used again: now the newest
    assert s.size_bytes() == 4000 and s.evicted == 0
    await s.fill(("p", "c", "seg_4.m4s", ""), held(), Pod([b"4" * 1000]), ttl=FOREVER)
    left = {n for n in names if (root / f"{n}.data").exists()}
    assert left == {names[0], names[2], names[3]}  # seg_1, the least recently used, went
    assert s.size_bytes() == 4000 and s.evicted == 1
    assert not (root / f"{names[1]}.meta").exists() and s.lookup(names[1]) is None


async def test_a_lookup_marks_the_entry_used(root):
    s = HostStore(root, max_bytes=2000)
    first, second = ("p", "c", "first.m4s", ""), ("p", "c", "second.m4s", "")
    await s.fill(first, held(), Pod([b"f" * 500]), ttl=FOREVER)
    await s.fill(second, held(), Pod([b"s" * 500]), ttl=FOREVER)
    for key, t in ((first, 1000), (second, 1001)):
        os.utime(root / f"{key_name(key)}.data", (t, t))
    other = HostStore(root, max_bytes=2000)  # another worker serves `first`
    assert other.lookup(key_name(first)) is not None
    for i in range(3):
        await s.fill(("p", "c", f"more_{i}.m4s", ""), held(), Pod([b"m" * 500]), ttl=FOREVER)
    assert (root / f"{key_name(first)}.data").exists() and not (root / f"{key_name(second)}.data").exists()


async def test_bodies_over_a_quarter_of_the_bound_are_streamed_not_kept(root):
    a, b = HostStore(root, max_bytes=4000), HostStore(root, max_bytes=4000)
    pod = Pod([b"b" * 1001])
    f = held()
    await a.fill(KEY, f, pod, ttl=FOREVER)
    assert body(f) == b"b" * 1001 and a.lookup(key_name(KEY)) is None
    await b.fill(KEY, held(), pod, ttl=FOREVER)
    assert pod.calls == 2


async def test_playlist_ttl_ends_the_reuse(root):
    a, b = HostStore(root, max_bytes=1 << 20), HostStore(root, max_bytes=1 << 20)
    key = ("playlist", ("pod-1", "gate-camera-1", "index.m3u8", "", None), None)
    pod = Pod([b"#EXTM3U\n"])
    await a.fill(key, held(), pod, ttl=lambda _f: 60.0)
    f = held()
    assert await b.fill(key, f, pod, ttl=lambda _f: 60.0) == "hit" and pod.calls == 1
    await a.fill(("playlist", "other"), held(), pod, ttl=lambda _f: -1.0)  # already stale when kept
    assert await b.fill(("playlist", "other"), held(), pod, ttl=lambda _f: -1.0) == "fetched"
    assert pod.calls == 3


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o777])
def test_a_store_directory_others_can_enter_or_write_is_refused(tmp_path, mode):
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(ConfigError, match=r"\$\.host_cache_dir: .* mode 0700"):
        HostStore(d, max_bytes=1 << 20)


def test_a_missing_store_directory_is_made_private(tmp_path):
    HostStore(tmp_path / "new" / "store", max_bytes=1 << 20)
    assert stat.S_IMODE((tmp_path / "new" / "store").stat().st_mode) == 0o700


def test_key_names_are_fixed_length_hex_whatever_the_key_holds():
    for key in [("../../etc/passwd",), ("a/b", "\x00", "c" * 5000), "é"]:
        name = key_name(key)
        assert len(name) == 64 and set(name) <= set("0123456789abcdef")


def test_a_small_tmpfs_caps_the_store_with_a_warning(tmp_path, monkeypatch, caplog):
    """Docker's default /dev/shm is 64 MiB: the store keeps at most 3/4 of its filesystem, and says so."""
    real = os.statvfs

    class Small:
        f_blocks, f_frsize = 16384, 4096  # 64 MiB

    monkeypatch.setattr("gateway.hoststore.os.statvfs",
                        lambda p: Small() if str(p).startswith(str(tmp_path)) else real(p))
    s = HostStore(tmp_path / "shm", max_bytes=256 << 20)
    assert s.max_bytes == 48 << 20
    assert "holds 64 MiB" in caplog.text and "--shm-size" in caplog.text


async def test_a_follower_of_a_dead_fetch_stops_when_another_worker_fetches_again(root):
    """The writer died (SIGKILL: no end file) and another worker has already taken the lock for a
    new fetch: the old fetch's follower reports the break at once, and never reads the new
    fetch's bytes as the rest of its body."""
    name = key_name(KEY)
    dead = os.open(root / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(dead, fcntl.LOCK_EX)
    (root / f"{name}.hdr").write_text('{"gen":"old","status":200,"headers":{}}')
    (root / f"{name}.part").write_bytes(b"OLD-BYTES")
    b = HostStore(root, max_bytes=1 << 20)
    fb = held()
    tb = asyncio.create_task(b.fill(KEY, fb, Pod([b"never"]), ttl=FOREVER))
    await wait_for(lambda: fb.size == 9)
    os.close(dead)  # the writer dies ...
    a = HostStore(root, max_bytes=1 << 20)
    pod = Pod([b"NEW-" * 10], gated=True)
    ta = asyncio.create_task(a.fill(KEY, held(), pod, ttl=FOREVER))  # ... and a new fetch starts at once
    assert await asyncio.wait_for(tb, 5) == "followed"  # at once, not after the follow timeout
    assert isinstance(fb.error, UpstreamError) and body(fb) == b"OLD-BYTES"
    pod.step()
    assert await ta == "fetched"


@pytest.mark.parametrize("where", ["body", "header"])
async def test_no_room_for_the_body_means_each_worker_fetches_for_itself_never_a_cut_off_body(
        root, monkeypatch, where):
    """A full tmpfs (ENOSPC): the fetching worker cannot reserve the body (or write its header),
    so it stops sharing at once and the follower fetches from the pod itself, getting a whole
    body, instead of waiting for a fetch it cannot follow or streaming a body that breaks off."""
    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "body":
        monkeypatch.setattr("gateway.hoststore._reserve", full)
    else:
        real = HostStore._write_json

        def no_header(self, name, kind, doc):
            if kind == "hdr":
                full()
            return real(self, name, kind, doc)

        monkeypatch.setattr(HostStore, "_write_json", no_header)
    a, b = HostStore(root, max_bytes=1 << 20), HostStore(root, max_bytes=1 << 20)
    pod = Pod([b"x" * 4000, b"y" * 4000], gated=True, headers={"content-length": "8000"})
    fa, fb = held(), held()
    ta = asyncio.create_task(a.fill(KEY, fa, pod, ttl=FOREVER))
    await wait_for(lambda: fa.ready.is_set())
    tb = asyncio.create_task(b.fill(KEY, fb, pod, ttl=FOREVER))
    await wait_for(lambda: pod.calls == 2, 2.0)  # B did not wait for A's transfer to end
    pod.step(4)
    assert await ta == "fetched" and await tb == "fetched"
    assert body(fa) == body(fb) == b"x" * 4000 + b"y" * 4000 and fb.error is None
    assert a.lookup(key_name(KEY)) is None  # nothing half-written kept


async def test_a_stale_error_is_not_replayed_to_the_followers_of_a_new_fetch(root):
    """The header of a fetch that failed before the pod answered stays until the next fetch
    replaces it; a follower that finds it while a new fetch holds the lock waits for the new
    fetch rather than report the old error."""
    name = key_name(KEY)
    (root / f"{name}.hdr").write_text('{"gen":"old","status":0,"headers":{}}')
    (root / f"{name}.end-old").write_text('{"size":0,"error":"UpstreamError: pod unreachable: ConnectError"}')
    new_writer = os.open(root / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(new_writer, fcntl.LOCK_EX)  # the new fetch took the lock, has not replaced the header yet
    b = HostStore(root, max_bytes=1 << 20)
    fb = held()
    pod = Pod([b"fresh"])
    tb = asyncio.create_task(b.fill(KEY, fb, pod, ttl=FOREVER))
    await asyncio.sleep(0.2)
    assert not fb.done  # no replay of the old error
    (root / f"{name}.hdr").unlink()
    os.close(new_writer)  # (that fetch gave up; B fetches itself)
    assert await tb == "fetched" and body(fb) == b"fresh" and fb.error is None


def test_a_symlinked_store_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        HostStore(tmp_path / "link", max_bytes=1 << 20)


async def test_a_clock_stepped_back_does_not_keep_an_entry_fresh(root, monkeypatch):
    s = HostStore(root, max_bytes=1 << 20)
    await s.fill(("playlist", "cam"), held(), Pod([b"#EXTM3U\n"]), ttl=lambda _f: 1.0)
    entry = s.lookup(key_name(("playlist", "cam")))
    assert entry is not None and entry.fresh(entry.fetched_at + 0.5)
    assert not entry.fresh(entry.fetched_at - 3600)  # an hour back: stale, asked again


async def test_a_held_lock_file_is_never_swept_and_an_idle_one_is(root, monkeypatch):
    s = HostStore(root, max_bytes=1 << 20)
    name = key_name(KEY)
    fd = s._try_lock(name)
    assert fd is not None
    lock = root / f"{name}.lock"
    os.utime(lock, (1000, 1000))
    s._evict_locked()
    assert lock.exists()  # held: kept
    os.close(fd)
    s._evict_locked()
    assert not lock.exists()  # idle and old: swept
    assert s._try_lock(name) is not None  # and taken again on a fresh file


async def test_lookups_reuse_what_they_read(root, monkeypatch):
    s = HostStore(root, max_bytes=1 << 20)
    await s.fill(KEY, held(), Pod([b"z" * 100]), ttl=FOREVER)
    loads = []
    real = HostStore._load
    monkeypatch.setattr(HostStore, "_load", lambda self, *a: loads.append(1) or real(self, *a))
    for _ in range(50):
        assert s.lookup(key_name(KEY)) is not None
    assert len(loads) <= 1
