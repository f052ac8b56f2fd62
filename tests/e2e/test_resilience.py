"""Pod resilience with real processes: camera restart, stalled ffmpeg (watchdog), clean SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import pytest

from tests.e2e.conftest import ffprobe_streams, make_stack, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def fresh_stack(tmp_path):
    s = make_stack(tmp_path)
    try:
        s.start_camera()
        s.start_pod(timeout=60)
        s.start_gateway()
        yield s
    finally:
        s.stop()


def health(s):
    return httpx.get(f"http://127.0.0.1:{s.pod_port}/health", timeout=5).json()["cameras"][s.camera_id]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def media_sequence(text: str) -> int:
    return int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1))


def test_camera_stopped_and_restarted_stream_resumes(fresh_stack, tmp_path):
    s = fresh_stack
    token = s.user_token()
    r = httpx.get(f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?token={token}", timeout=10)
    url = f"{s.gateway_url}/streams/{s.camera_id}/{r.headers['location']}"
    seq_before = media_sequence(httpx.get(url, timeout=10).text)
    s.procs["camera"].stop()
    wait_until(lambda: health(s)["state"] != "running", timeout=20, what="pod to notice the camera is gone")
    down = httpx.get(url, timeout=10)
    assert down.status_code in (503, 200)  # 503 while ffmpeg restarts (players retry 5xx), never 401/404
    time.sleep(3)
    s.start_camera()
    back = time.monotonic()
    wait_until(lambda: health(s)["state"] == "running", timeout=30, what="stream back after camera return")

    def resumed():
        resp = httpx.get(url, timeout=10)
        return resp if resp.status_code == 200 and media_sequence(resp.text) > seq_before else None

    resp = wait_until(resumed, timeout=20, what="new segments through the gateway")
    print(f"stream back {time.monotonic() - back:.1f}s after the camera returned")
    seg = [line for line in resp.text.splitlines() if line and not line.startswith("#")][-1]
    init = re.search(r'URI="([^"]+)"', resp.text).group(1)
    base = f"{s.gateway_url}/streams/{s.camera_id}/"
    out = tmp_path / "after.mp4"
    out.write_bytes(httpx.get(base + init, timeout=10).content + httpx.get(base + seg, timeout=10).content)
    assert ffprobe_streams(out) == "h264,640,360"
    assert health(s)["restarts"] >= 1


def test_stalled_ffmpeg_is_restarted_by_watchdog(fresh_stack):
    s = fresh_stack
    h = health(s)
    pid, trips = h["pid"], h["watchdog_trips"]
    assert pid and alive(pid)
    os.kill(pid, signal.SIGSTOP)  # alive but stalled
    t0 = time.monotonic()
    wait_until(lambda: health(s)["watchdog_trips"] > trips, timeout=15, what="watchdog trip")
    elapsed = time.monotonic() - t0
    print(f"watchdog tripped {elapsed:.1f}s after SIGSTOP (limit 3 x target duration = {3 * s.segment_seconds}s + 1s tick)")
    assert elapsed <= 3 * s.segment_seconds + 2.5
    wait_until(lambda: not alive(pid), timeout=10, what="stalled ffmpeg to be killed")
    wait_until(lambda: health(s)["state"] == "running" and health(s)["pid"] != pid, timeout=30, what="new ffmpeg running")


def test_sigterm_stops_ffmpeg_without_orphans(fresh_stack):
    s = fresh_stack
    pid = health(s)["pid"]
    assert pid and alive(pid)
    code = s.procs["pod"].stop(timeout=15)
    assert code == 0
    wait_until(lambda: not alive(pid), timeout=5, what="ffmpeg gone after pod SIGTERM")


def test_sigkilled_pod_leaves_no_orphan_ffmpeg(fresh_stack):
    s = fresh_stack
    pid = health(s)["pid"]
    s.procs["pod"].popen.kill()
    s.procs["pod"].popen.wait()
    wait_until(lambda: not alive(pid), timeout=5, what="ffmpeg to die with its parent (PR_SET_PDEATHSIG)")
