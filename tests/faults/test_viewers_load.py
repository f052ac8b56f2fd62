"""500 concurrent viewers on one gateway, 50 of them deliberately slow readers: the other
viewers' segment latency stays within a bound of the same run's baseline, and the
gateway's memory stays bounded."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from tests.faults.conftest import make_stack, raise_fd_limit, started, tree_rss_bytes, wait_until

VIEWERS = 500
SLOW = 50  # half of them read 1 KB/s, half never read
NORMAL = VIEWERS - SLOW
CACHE_MAX = 8 * 1024 * 1024  # gateway cache_max_bytes for this test
PER_VIEWER = 50 * 1024  # memory budget per viewer (bytes)
WARMUP = 3.0  # s before anything is measured
CYCLES, WINDOW, SETTLE = 5, 2.0, 0.5  # B S B S … B windows (s); the first SETTLE s of each is not measured
MIN_SAMPLES, WINDOW_MAX = 100, 8.0  # a window runs on until it holds enough samples for a p99 (busy machines)
EXTRA_REQUESTS = 8  # pipelined by each extra viewer: init + segments, cycled (~8 x 28 KB >> 24 KB of socket buffers)
RELOAD = 1.0  # s: players reload the live playlist every target duration (1 s in the dev stack)
SLOW_RCVBUF = 4096
P99_FACTOR, P99_SLACK = 3.0, 0.025  # p99(with slow readers) <= 3 x p99(baseline) + 25 ms

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop comes with the gateway's dependencies
    uvloop = None


@pytest.fixture
def load_stack(tmp_path):
    raise_fd_limit(8192)  # 500 client sockets here, 500 more in the gateway (it inherits the limit)
    with started(make_stack(tmp_path, gateway_overrides={"cache_max_bytes": CACHE_MAX,
                                                         "limit_concurrency": 4096})) as s:
        yield s


class Conn:
    """One keep-alive HTTP/1.1 connection with a minimal client (cheap enough that 500 of
    them in one asyncio process measure the gateway, not the client)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None or self.writer.is_closing():
            await self.connect()
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Results:
    windows: list[tuple[str, list[float]]] = field(default_factory=list)  # (phase, latencies) in time order
    errors: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    extra_bytes: dict[str, list[int]] = field(default_factory=dict)  # mode -> bytes each extra viewer read
    extra_requests: list[int] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)  # viewer tasks that ended with an exception
    phase: str = "warmup"
    window: list[float] | None = None  # the measuring window's latency list (None: not measuring)


def newest_segment(playlist: str) -> str:
    return [ln for ln in playlist.splitlines() if ln and not ln.startswith("#")][-1]


async def normal_viewer(conn: Conn, playlist_path: str, base: str, res: Results, stop: asyncio.Event) -> None:
    await asyncio.sleep(random.uniform(0, RELOAD))  # players are not in lockstep
    last = None
    while not stop.is_set():
        started = time.monotonic()
        try:
            status, _, body = await conn.get(playlist_path)
            res.statuses[status] = res.statuses.get(status, 0) + 1
            if status == 200:
                seg = newest_segment(body.decode())
                if seg != last:
                    window = res.window
                    t0 = time.perf_counter()
                    st, headers, data = await conn.get(base + seg)
                    elapsed = time.perf_counter() - t0
                    res.statuses[st] = res.statuses.get(st, 0) + 1
                    if st == 200 and len(data) == int(headers["content-length"]):
                        last = seg
                        if window is not None and window is res.window:
                            window.append(elapsed)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            res.errors.append(repr(exc))
            conn.close()
        await asyncio.sleep(max(0.0, RELOAD - (time.monotonic() - started)))


async def extra_viewer(host: str, port: int, playlist_path: str, base: str, res: Results, stop: asyncio.Event,
                       *, mode: str) -> None:
    """One of the 50 extra viewers of a window. It loads the playlist, then asks, pipelined
    on one socket, for ``EXTRA_REQUESTS`` URIs: the init segment and the media segments in
    it, cycled (so the load does not depend on how many segments the playlist holds at that
    moment, e.g. right after an ffmpeg restart on a busy machine), ~8 x 28 KB here, and
    reads the answers until the window ends: ``fast`` at full speed, ``slow`` over a socket
    with a 4 KiB receive buffer at 1 KB/s, ``stall`` the same but never reading. For slow
    and stall that is far more than the ~24 KB both kernel socket buffers hold, so the
    gateway must keep the rest and stop writing to that viewer."""
    loop = asyncio.get_running_loop()
    conn = Conn(host, port)
    _, _, body = await conn.get(playlist_path)
    conn.close()
    text = body.decode()
    available = [re.search(r'#EXT-X-MAP:URI="([^"]+)"', text).group(1)]
    available += [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    uris = [available[i % len(available)] for i in range(EXTRA_REQUESTS)]
    sock = socket.socket()
    if mode != "fast":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)  # before connect: a small window
    sock.setblocking(False)
    got = 0
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, b"".join(f"GET {base + u} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                                               for u in uris))
        res.extra_requests.append(len(uris))
        while not stop.is_set():
            if mode == "stall":
                await stop.wait()
                break
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536 if mode == "fast" else 1024), 0.25)
            except TimeoutError:
                continue
            if not chunk:
                break
            got += len(chunk)
            if mode == "slow":
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
    finally:
        res.extra_bytes.setdefault(mode, []).append(got)
        sock.close()


async def open_sessions(host: str, port: int, tokens: list[str], camera_id: str) -> list[tuple[Conn, str]]:
    """JWT → 302 → grant URL for every viewer, on the viewer's own keep-alive connection."""
    sem = asyncio.Semaphore(64)

    async def one(token: str) -> tuple[Conn, str]:
        async with sem:
            conn = Conn(host, port)
            status, headers, _ = await conn.get(f"/streams/{camera_id}/index.m3u8?token={token}")
            assert status == 302, status
            return conn, f"/streams/{camera_id}/{headers['location']}"

    return await asyncio.gather(*(one(t) for t in tokens))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def run_load(s, tokens: list[str], res: Results) -> None:
    host, port = s.gateway_host, s.gateway_port
    base = f"/streams/{s.camera_id}/"
    sessions = await open_sessions(host, port, tokens, s.camera_id)
    for c, _ in sessions[NORMAL:]:
        c.close()  # the slow readers' sessions are open; their reads use fresh sockets with a small window
    stop_all = asyncio.Event()
    normal = [asyncio.create_task(normal_viewer(c, p, base, res, stop_all)) for c, p in sessions[:NORMAL]]
    await asyncio.sleep(WARMUP)
    for phase in ["baseline", "slow"] * CYCLES + ["baseline"]:
        stop_extra = asyncio.Event()
        modes = ["fast"] * SLOW if phase == "baseline" else ["slow", "stall"] * (SLOW // 2)
        extra = [asyncio.create_task(extra_viewer(host, port, p, base, res, stop_extra, mode=m))
                 for m, (_, p) in zip(modes, sessions[NORMAL:])]
        res.window = None
        await asyncio.sleep(SETTLE)  # the 50 extra viewers arrive (the same requests in both phases)
        res.window = window = []
        res.windows.append((phase, window))
        opened = time.monotonic()
        await asyncio.sleep(WINDOW - SETTLE)
        while len(window) < MIN_SAMPLES and time.monotonic() - opened < WINDOW_MAX:
            await asyncio.sleep(0.1)  # a busy machine: run on until the window holds a meaningful p99
        res.window = None
        stop_extra.set()
        res.crashed += crashes("extra viewer", await asyncio.gather(*extra, return_exceptions=True))
    stop_all.set()
    res.crashed += crashes("normal viewer", await asyncio.gather(*normal, return_exceptions=True))
    for c, _ in sessions:
        c.close()


def crashes(kind: str, results: list) -> list[str]:
    """The viewer tasks that ended with an exception. Nothing cancels a viewer (each one
    returns once its stop event is set, the slow and stalled readers included), so any
    exception — CancelledError too — is a crashed viewer."""
    return [f"{kind}: {r!r}" for r in results if isinstance(r, BaseException)]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def test_500_viewers_with_slow_readers_latency_and_memory_bounded(load_stack, figure):
    """One real stack; 500 viewer sessions (user JWT → 302 → grant URL). 450 normal viewers
    reload the playlist every target duration (1 s, as hls.js does; random phase) and fetch
    each new segment once, over keep-alive connections from one asyncio process. After a
    3 s warm-up, 2 s windows (longer on a busy machine, until each holds 100 samples) alternate
    B S B S … B (5 slow windows, 6 baseline windows). In every window the other 50 viewers
    arrive and pipeline 8 requests for the init segment and the segments of their playlist
    (see ``extra_viewer``): in a baseline window they read at
    full speed, in a slow window 25 read at 1 KB/s through a 4 KiB receive buffer and 25
    never read. So both phases carry the same arrivals and requests and differ only in
    the readers being slow. The first 0.5 s of each window (the arrivals) is not measured.

    Latency bound: the normal viewers' p99 segment latency in a slow window <= 3 x the p99
    of the baseline windows either side of it + 25 ms, in the median over the 5 slow
    windows (figure: median excess <= 0). Pairing neighbouring windows and taking the
    median keeps bursts from the other jobs on this shared 2-CPU machine (the load client
    runs on it too) from deciding the result, while a gateway that let slow readers block
    its event loop or the shared single-flight fetch would slow every slow window down to
    the readers' pace (seconds), which 3x + 25 ms does not hide. The phase p99s shown are
    the medians of the per-window p99s.
    Memory bound: gateway RSS growth (peak during the run minus idle before the sessions
    opened) <= cache_max_bytes (8 MiB here) + 50 KB per viewer."""
    s = load_stack
    gw_pid = s.procs["gateway"].popen.pid
    tokens = [s.user_token(user_id=f"user{i}") for i in range(VIEWERS)]
    warm = httpx.get(f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?token={tokens[0]}", timeout=10)
    assert warm.status_code == 302
    wait_until(lambda: s.pod_health()["cameras"][s.camera_id]["state"] == "running", 20, what="camera running")
    rss_before = tree_rss_bytes(gw_pid)
    peak = [rss_before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_bytes(gw_pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    res = Results()
    try:
        (uvloop.run if uvloop else asyncio.run)(run_load(s, tokens, res))
    finally:
        stop.set()
        sampler.join()
    metrics = httpx.get(s.gateway_metrics_url, timeout=5).text
    cache_bytes = float(re.search(r"^platebridge_gateway_cache_bytes ([0-9.e+]+)$", metrics, re.MULTILINE).group(1))
    gateway_alive = s.procs["gateway"].popen.poll() is None

    seq = [(phase, p99(w)) for phase, w in res.windows]  # B S B S … B, each window's p99 (s)
    pairs = []  # (slow window p99, p99 of the baseline windows either side of it)
    for i, (phase, value) in enumerate(seq):
        if phase == "slow":
            pairs.append((value, (seq[i - 1][1] + seq[i + 1][1]) / 2))
    p99_base = median([v for ph, v in seq if ph == "baseline"])
    p99_slow = median([v for ph, v in seq if ph == "slow"])
    ratio = median([sl / nb for sl, nb in pairs])
    excess = median([sl - (P99_FACTOR * nb + P99_SLACK) for sl, nb in pairs])  # <= 0: the bound holds
    growth = peak[0] - rss_before
    budget = CACHE_MAX + PER_VIEWER * VIEWERS
    per_viewer = max(0.0, growth - cache_bytes) / VIEWERS
    print("per-window p99 ms: " + " ".join(f"{ph[0].upper()}{v * 1000:.0f}" for ph, v in seq)
          + f"; samples per window {min(len(w) for _, w in res.windows)}..{max(len(w) for _, w in res.windows)}"
          f"; statuses {res.statuses}; errors {len(res.errors)}; crashed {len(res.crashed)}; extra viewers: "
          f"{min(res.extra_requests)}..{max(res.extra_requests)} requests, read "
          + ", ".join(f"{m} {min(v)}..{max(v)}" for m, v in res.extra_bytes.items()) + " bytes; "
          f"RSS {rss_before / 2**20:.1f} -> {peak[0] / 2**20:.1f} MiB, cache {cache_bytes / 2**20:.1f} MiB")
    figure("p99 segment latency, baseline (450 viewers)", p99_base * 1000, "ms", "reference", True)
    figure("p99 segment latency with 50 slow readers", p99_slow * 1000, "ms",
           f"<= 3 x baseline + 25 ms (paired: median excess {excess * 1000:+.1f} ms <= 0)", excess <= 0)
    figure("p99 ratio slow/baseline (median of paired windows)", ratio, "x", "<= 3 (+ 25 ms)", excess <= 0)
    figure("gateway RSS growth, 500 viewers", growth / 2**20, "MiB",
           f"<= cache {CACHE_MAX / 2**20:g} MiB + 50 KB x {VIEWERS} = {budget / 2**20:.1f} MiB", growth <= budget)
    figure("gateway memory per viewer (growth minus cache)", per_viewer / 1024, "KiB", "<= 50 KB",
           per_viewer <= PER_VIEWER)
    assert gateway_alive
    assert not res.crashed, res.crashed[:5]
    assert not res.errors, res.errors[:5]
    assert set(res.statuses) == {200}, res.statuses
    assert len(pairs) == CYCLES  # every window measured enough segments for a p99 (~675 when nothing lags)
    assert min(len(w) for _, w in res.windows) >= MIN_SAMPLES, [len(w) for _, w in res.windows]
    assert res.extra_requests == [EXTRA_REQUESTS] * (SLOW * (2 * CYCLES + 1))  # every extra viewer asked for it all
    assert max(res.extra_bytes["slow"] + res.extra_bytes["stall"]) < 16 * 1024  # the slow ones really were slow,
    assert median(res.extra_bytes["fast"]) >= 5 * 10 * 1024  # the fast ones got everything (CPU bursts aside)
    assert excess <= 0, (f"p99 with slow readers exceeds 3 x the neighbouring baseline + 25 ms in most windows: "
                         f"{[(round(sl * 1000), round(nb * 1000)) for sl, nb in pairs]} ms")
    assert growth <= budget, f"gateway RSS grew {growth / 2**20:.1f} MiB (budget {budget / 2**20:.1f} MiB)"
    assert per_viewer <= PER_VIEWER
