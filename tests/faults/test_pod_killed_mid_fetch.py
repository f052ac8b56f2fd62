"""The pod dies while the gateway is fetching a segment from it: the viewer gets a clean
502/504 (never a 200 with a cut body, never a 500, never a hang past the upstream read
timeout; a fetch in flight when the pod dies ends at once with 502), and the same viewer
session plays again once the pod is back."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.conftest import (
    ffprobe_streams,
    gateway_upstream_fetches,
    make_stack,
    map_uri,
    media_uris,
    open_session,
    pod_metric,
    started,
    wait_until,
)

READ_TIMEOUT = 5.0  # gateway upstream_read_timeout for this test (default 10 s)
BACK_LIMIT = 10.0  # s from the pod healthy again to the first 200 playlist of the same session


@pytest.fixture
def stack(tmp_path):
    with started(make_stack(tmp_path, gateway_overrides={"upstream_read_timeout": READ_TIMEOUT})) as s:
        yield s


def fetch(url: str) -> tuple[int, dict, bytes, float]:
    t0 = time.monotonic()
    r = httpx.get(url, timeout=READ_TIMEOUT + 20)
    return r.status_code, dict(r.headers), r.content, time.monotonic() - t0


def test_pod_killed_mid_segment_fetch_gateway_502_then_recovers(stack, tmp_path, figure):
    """The pod is SIGSTOP'd, so segment fetches the gateway has not cached yet hang at the
    pod (its kernel still accepts the connection): one is left to hang and must end as 504
    after the upstream read timeout (5 s here). Then a second one is sent and, as soon as
    the gateway's upstream-fetch counter (/metrics) shows its fetch from the pod in flight,
    the pod is SIGKILLed (its ffmpeg dies with it). The kernel resets the pod's sockets, so
    the in-flight request must end at once — within 1.5 s of the kill, far inside the read
    timeout, which ends it only ~5 s after it started — with 502 (gateway/upstream.py: a
    connection error, not a timeout, is "pod unreachable"). Later requests of the same
    session — playlist reloads, other uncached segments — get 502/504 while the pod is
    down. Then the pod is started again (Stack.start_pod: healthy, camera running) and the
    same grant URL must get a 200 playlist (within 10 s) and a decodable segment. Figures:
    seconds from the kill to the in-flight answer; seconds from the pod being back to the
    first 200 playlist of that session."""
    s = stack
    url = open_session(s)
    base = f"{s.gateway_url}/streams/{s.camera_id}/"
    pl = wait_until(lambda: (r := httpx.get(url, timeout=10)).status_code == 200 and len(media_uris(r.text)) >= 3
                    and r, 20, what="a playlist with 3 segments")
    uris = media_uris(pl.text)
    newest, older = uris[-1], uris[-3]  # nobody has fetched either: not in the gateway's cache
    fetched_before = pod_metric(s, "segment")
    fetches0 = gateway_upstream_fetches(s, "segment")

    pod = s.procs["pod"].popen
    os.kill(pod.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(2) as ex:
            hung = ex.submit(fetch, base + uris[-2])  # left to hang: the read timeout must end it
            wait_until(lambda: gateway_upstream_fetches(s, "segment") >= fetches0 + 1, 5, interval=0.02,
                       what="the gateway fetching the first segment from the stopped pod")
            hung_status, _, _, hung_secs = hung.result(timeout=READ_TIMEOUT + 20)
            print(f"segment fetch from the stopped pod: {hung_status} after {hung_secs:.2f}s")
            figure("stalled pod -> segment answered (read timeout)", hung_secs, "s", f"<= {READ_TIMEOUT:g} + 1 s",
                   hung_status == 504 and hung_secs <= READ_TIMEOUT + 1)
            assert hung_status == 504 and hung_secs <= READ_TIMEOUT + 1, (hung_status, hung_secs)
            inflight = ex.submit(fetch, base + newest)
            t_sent = time.monotonic()
            wait_until(lambda: gateway_upstream_fetches(s, "segment") >= fetches0 + 2, READ_TIMEOUT / 2,
                       interval=0.02, what="the gateway's fetch of the second segment in flight")
            assert not inflight.done(), "the fetch should hang at the stopped pod"
            pod.kill()  # SIGKILL, delivered even to a stopped process
            t_kill = time.monotonic()
            status, headers, body, total = inflight.result(timeout=READ_TIMEOUT + 20)
            after_kill = time.monotonic() - t_kill
            pod.wait(10)
    finally:
        if pod.poll() is None:
            pod.kill()
    print(f"in-flight segment: {status} {after_kill:.2f}s after the kill ({total:.2f}s in all, "
          f"kill {t_kill - t_sent:.2f}s after it was sent)")
    figure("pod SIGKILL -> in-flight segment answered", after_kill, "s",
           f"<= 1.5 s, with 502 (read timeout {READ_TIMEOUT:g} s)", status == 502 and after_kill <= 1.5)
    assert status == 502, (status, body[:200])
    assert headers.get("content-type", "").startswith("text/plain")
    assert after_kill <= 1.5, f"in-flight fetch answered {after_kill:.2f}s after the kill ({total:.2f}s in all)"

    # while the pod is down: playlist reloads and other uncached segments of the same session
    down_statuses = []
    for _ in range(3):
        time.sleep(0.6)  # past the shared playlist's reuse window (half a target duration)
        for u in (url, base + older):
            st, hd, bd, secs = fetch(u)
            down_statuses.append(st)
            assert secs <= READ_TIMEOUT + 1
            if st == 200:  # only a complete, cached body may ever be a 200
                assert int(hd["content-length"]) == len(bd)
    assert all(st in (502, 504) for st in down_statuses), down_statuses

    s.start_pod(timeout=60)
    t_back = time.monotonic()
    resp = wait_until(lambda: (r := httpx.get(url, timeout=10)).status_code == 200 and r, 30, interval=0.05,
                      what="200 playlist for the same session")
    secs = time.monotonic() - t_back
    seg = httpx.get(base + media_uris(resp.text)[-1], timeout=10)
    init = httpx.get(base + map_uri(resp.text), timeout=10)
    assert seg.status_code == init.status_code == 200
    # the failed fetch was not cached: the segment that was in flight loads now (still on the pod's disk)
    again = httpx.get(base + newest, timeout=10)
    assert again.status_code == 200 and int(again.headers["content-length"]) == len(again.content) > 0
    out = tmp_path / "after.mp4"
    out.write_bytes(init.content + seg.content)
    print(f"same session played again {secs:.2f}s after the pod was back; statuses while down: {down_statuses}")
    figure("pod back -> first 200 playlist (same session)", secs, "s", f"<= {BACK_LIMIT:g} s", secs <= BACK_LIMIT)
    assert ffprobe_streams(out) == "h264,640,360"
    assert pod_metric(s, "segment") >= 1 and fetched_before == 0
    assert secs <= BACK_LIMIT
