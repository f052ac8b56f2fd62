"""Low-Latency HLS end to end: the watch page in headless chromium through the real gateway
plays the pod's LL-HLS within a loose latency bound (the goal itself is measured by
bench/latency.py), drift shows "Jump to live", and classic players — hls.js without
lowLatencyMode, ffprobe, ``ffmpeg -i`` — still play the same stream from its segments."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.e2e]

LATENCY_BOUND_S = 2.5  # loose, so CI does not flake on a shared 2-core box; the goal (<= 1 s) is in the bench
SAMPLE_SECONDS = 10.0


def status(browser) -> dict:
    return browser.execute_script("return window.pbStatus")


def start_watching(stack, browser, extra: str = "") -> None:
    browser.get(stack.watch_url(stack.user_token()) + extra)
    try:
        wait_until(lambda: status(browser)["behind"] is not None and status(browser)["state"] == "playing",
                   timeout=45, interval=0.5, what="playing with a program date-time")
    except TimeoutError:
        pytest.fail(f"video did not start; page status: {status(browser)}")


def behind_samples(browser, seconds: float) -> list[float]:
    """Date.now() - hls.playingDate (pod ingest to screen), every 0.5 s for ``seconds``."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = browser.execute_script("const d = window.pbHls && window.pbHls.playingDate;"
                                       "return d ? (Date.now() - d.getTime()) / 1000 : null")
        if value is not None:
            out.append(value)
        time.sleep(0.5)
    return out


@pytest.mark.browser
def test_watch_page_plays_ll_hls_within_the_latency_bound(stack, browser):
    start_watching(stack, browser)
    time.sleep(4)  # hls.js settles on PART-HOLD-BACK
    samples = behind_samples(browser, SAMPLE_SECONDS)
    st = status(browser)
    print(f"ingest-to-screen over {SAMPLE_SECONDS:g} s: min {min(samples):.2f} max {max(samples):.2f} s; {st}")
    assert st["lowLatency"] is True  # parts, not whole segments
    assert len(samples) >= SAMPLE_SECONDS and max(samples) < LATENCY_BOUND_S
    text = browser.execute_script("return document.getElementById('behind').textContent")
    assert text.endswith("s behind live") and float(text.split()[0]) < LATENCY_BOUND_S


@pytest.mark.browser
def test_drift_offers_jump_to_live(stack, browser):
    start_watching(stack, browser)
    time.sleep(2)
    browser.execute_script("document.getElementById('video').pause()")
    time.sleep(6)
    browser.execute_script("document.getElementById('video').play()")
    wait_until(lambda: browser.execute_script("return !document.getElementById('golive').hidden"), timeout=10,
               interval=0.25, what="the Jump to live button")
    assert status(browser)["behind"] > LATENCY_BOUND_S
    browser.execute_script("document.getElementById('golive').click()")
    wait_until(lambda: (status(browser)["behind"] or 99) < LATENCY_BOUND_S, timeout=10, interval=0.25,
               what="back near the live edge")
    wait_until(lambda: browser.execute_script("return document.getElementById('golive').hidden"), timeout=10,
               interval=0.25, what="the button gone again")


@pytest.mark.browser
def test_hls_js_without_low_latency_mode_plays_the_same_stream(stack, browser):
    start_watching(stack, browser, "&ll=0")
    t1 = browser.execute_script("return document.getElementById('video').currentTime")
    time.sleep(3)
    t2 = browser.execute_script("return document.getElementById('video').currentTime")
    assert t2 > t1 + 1.5
    assert status(browser)["lowLatency"] is False  # whole segments, classic live sync


def test_ffprobe_and_ffmpeg_read_the_ll_playlist_from_its_segments(stack, tmp_path):
    """The pod's LL playlist carries EXT-X-PART/PRELOAD-HINT tags that ffmpeg's HLS demuxer
    does not know: it must skip them and play the segments."""
    from protocol.tokens import mint_pod_token

    token = mint_pod_token(stack.pod_signer(), camera_id=stack.camera_id, pod_id=stack.pod_id, ttl=120)
    url = f"{stack.pod_url}/cameras/{stack.camera_id}/index.m3u8"
    headers = f"Authorization: Bearer {token}\r\n"
    text = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    assert "#EXT-X-PART:" in text and "#EXT-X-PRELOAD-HINT:" in text
    probe = subprocess.run(["ffprobe", "-v", "error", "-headers", headers, "-select_streams", "v:0", "-show_entries",
                            "stream=codec_name,width,height", "-of", "json", url],
                           capture_output=True, text=True, timeout=60)
    assert json.loads(probe.stdout)["streams"][0] == {"codec_name": "h264", "width": 640, "height": 360}, probe.stderr
    out = tmp_path / "grab.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-headers", headers, "-i", url, "-t", "2", "-c", "copy", "-y", str(out)],
                   check=True, capture_output=True, timeout=60)
    dur = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(out)],
                         capture_output=True, text=True, timeout=30).stdout
    assert float(dur) == pytest.approx(2.0, abs=0.6)
