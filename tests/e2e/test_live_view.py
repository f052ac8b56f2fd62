"""Live view end to end on loopback with the real camera, ffmpeg, pod and gateway."""

from __future__ import annotations

import asyncio
import re
import socket

import httpx
import pytest

from protocol.tokens import SigningKey, mint_pod_token
from tests.e2e.conftest import ffprobe_streams, pod_metric, pod_requests_total, wait_until

pytestmark = pytest.mark.e2e


def media_uris(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def map_uri(text: str) -> str:
    return re.search(r'#EXT-X-MAP:URI="([^"]+)"', text).group(1)


def test_playlist_and_segments_through_gateway_decode_with_ffprobe(stack, viewer, tmp_path):
    url = viewer()
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    text = r.text
    assert text.startswith("#EXTM3U") and "#EXT-X-TARGETDURATION" in text
    assert stack.pod_host not in text and str(stack.pod_port) not in text
    base = f"{stack.gateway_url}/streams/{stack.camera_id}/"
    init = httpx.get(base + map_uri(text), timeout=10)
    seg = httpx.get(base + media_uris(text)[-1], timeout=10)
    assert init.status_code == seg.status_code == 200
    assert seg.headers["content-type"] == "video/mp4"
    out = tmp_path / "sample.mp4"
    out.write_bytes(init.content + seg.content)
    assert ffprobe_streams(out) == "h264,640,360"


def test_playlist_advances(stack, viewer):
    url = viewer()

    def seq():
        return int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", httpx.get(url, timeout=10).text).group(1))

    first = seq()
    wait_until(lambda: seq() > first, timeout=10, what="media sequence to advance")


def test_pod_not_reachable_on_another_loopback_address(stack):
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.3", stack.pod_port), timeout=2).close()
    token = mint_pod_token(stack.pod_signer(), camera_id=stack.camera_id, pod_id=stack.pod_id)
    # the local listener answers /health only, even with a valid gateway→pod token
    local = f"http://127.0.0.1:{stack.pod_port}"
    r = httpx.get(f"{local}/cameras/{stack.camera_id}/index.m3u8", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404
    health = httpx.get(f"{local}/health", timeout=5)
    assert health.status_code == 200 and health.json()["cameras"][stack.camera_id]["state"] == "running"
    assert health.json()["cameras"][stack.camera_id]["last_segment_age_s"] < 10
    assert stack.secret not in health.text and "rtsp://" not in health.text
    r = httpx.get(f"{stack.pod_url}/cameras/{stack.camera_id}/index.m3u8", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_pod_demands_gateway_token_for_its_camera(stack):
    ring = stack.pod_signer()
    base = f"{stack.pod_url}/cameras/{stack.camera_id}/index.m3u8"
    assert httpx.get(base).status_code == 401
    assert httpx.get(base, headers={"Authorization": f"Bearer {stack.user_token()}"}).status_code == 401
    other = mint_pod_token(ring, camera_id="other-cam", pod_id=stack.pod_id)
    assert httpx.get(base, headers={"Authorization": f"Bearer {other}"}).status_code == 403
    wrong_key = SigningKey.generate(stack.signing_kid)  # another gateway's key under the same kid
    wrong_secret = mint_pod_token(wrong_key, camera_id=stack.camera_id, pod_id=stack.pod_id)
    assert httpx.get(base, headers={"Authorization": f"Bearer {wrong_secret}"}).status_code == 401
    good = mint_pod_token(ring, camera_id=stack.camera_id, pod_id=stack.pod_id)
    trav = f"{stack.pod_url}/cameras/{stack.camera_id}/..%2f..%2fpod.yaml"
    assert httpx.get(trav, headers={"Authorization": f"Bearer {good}"}).status_code in (400, 404)


def test_bad_tokens_cause_zero_pod_requests(stack):
    before = pod_requests_total(stack)
    gw = f"{stack.gateway_url}/streams/{stack.camera_id}"
    bad = [f"{gw}/index.m3u8", f"{gw}/index.m3u8?token=abc", f"{gw}/index.m3u8?token={stack.user_token()}x",
           f"{gw}/seg_1.m4s", f"{gw}/seg_1.m4s?pb_grant=v1.AAAA.BBBB", f"{gw}/init.mp4?token={stack.user_token()}"]
    for u in bad:
        assert httpx.get(u, timeout=5).status_code in (401, 403), u
    assert pod_requests_total(stack) == before


async def test_50_concurrent_viewers_one_pod_fetch_per_segment(stack, viewer):
    urls = [viewer(f"user{i}") for i in range(50)]
    base = f"{stack.gateway_url}/streams/{stack.camera_id}/"
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=100)) as client:
        # wait for a segment no viewer has fetched yet, then let all 50 fetch it at once
        seg_before = pod_metric(stack, "segment")
        pl_before = pod_metric(stack, "playlist")
        playlists = await asyncio.gather(*(client.get(u) for u in urls))
        assert all(p.status_code == 200 for p in playlists)
        newest = {media_uris(p.text)[-1].split("?")[0] for p in playlists}
        pairs = [(p, base + media_uris(p.text)[-1]) for p in playlists]
        results = await asyncio.gather(*(client.get(u) for _, u in pairs))
    assert all(r.status_code == 200 for r in results)
    assert len({r.content for r in results if r.url.path.endswith(min(newest))}) == 1
    fetched = pod_metric(stack, "segment") - seg_before
    assert fetched == len(newest), f"{fetched} pod fetches for {len(newest)} distinct segments"
    # 50 playlist loads within ~a second share one or two upstream fetches, never 50
    assert pod_metric(stack, "playlist") - pl_before <= 3


def test_nudge_through_gateway_refreshes_pod_whitelist_at_once(stack):
    health = lambda: httpx.get(f"http://127.0.0.1:{stack.pod_port}/health", timeout=5).json()  # noqa: E731
    wait_until(lambda: health()["whitelist"]["version"], 10, what="first whitelist")
    v0 = health()["whitelist"]["version"]
    httpx.put(f"{stack.portal_url}/__standin/plates", json={"entries": [{"plate": "TEST123"}, {"plate": "NEW42"}]})
    url = f"{stack.gateway_url}/pods/{stack.pod_id}/nudge"
    assert httpx.post(url, json={"reason": "whitelist_changed"}).status_code == 401
    assert health()["whitelist"]["version"] == v0  # heartbeat is 300 s here: only a nudge can refresh now
    r = httpx.post(url, json={"reason": "whitelist_changed"}, headers={"Authorization": f"Bearer {stack.admin_token}"})
    assert r.status_code == 202, r.text
    wait_until(lambda: health()["whitelist"]["version"] != v0, 5, what="whitelist refreshed by the nudge")
    assert health()["whitelist"]["entries"] == 2
    # the pod's own /nudge is tailnet-only and needs a pod-wide gateway→pod token
    assert httpx.post(f"http://127.0.0.1:{stack.pod_port}/nudge").status_code == 404
    assert httpx.post(f"{stack.pod_url}/nudge").status_code == 401
    cam_token = mint_pod_token(stack.pod_signer(), camera_id=stack.camera_id, pod_id="other-pod")
    assert httpx.post(f"{stack.pod_url}/nudge", headers={"Authorization": f"Bearer {cam_token}"}).status_code == 403


def test_metrics_cover_the_operational_signals(stack, viewer):
    httpx.get(viewer(), timeout=10)
    pod = httpx.get(f"http://127.0.0.1:{stack.pod_port}/metrics", timeout=5).text
    for name in ("platebridge_pod_segments_total", "platebridge_pod_ffmpeg_restarts_total",
                 "platebridge_pod_watchdog_trips_total", "platebridge_pod_mqtt_messages_total",
                 "platebridge_pod_decisions_total", "platebridge_pod_outbox_depth",
                 "platebridge_pod_outbox_oldest_age_seconds", "platebridge_pod_uploads_confirmed",
                 "platebridge_pod_hls_requests_total"):
        assert name in pod, name
    assert re.search(r'platebridge_pod_segments_total\{camera_id="gate-camera-1"\} [1-9]', pod)
    gw = httpx.get(stack.gateway_metrics_url, timeout=5).text
    for name in ("platebridge_gateway_requests_total", "platebridge_gateway_cache_total",
                 "platebridge_gateway_upstream_fetches_total", "platebridge_gateway_bytes_out_total",
                 "platebridge_gateway_active_viewers"):
        assert name in gw, name
    assert stack.secret not in gw + pod
