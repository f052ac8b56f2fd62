"""Several cameras on one pod (issue 11, point 6), end to end: two GStreamer RTSP cameras (640x360
and 320x240, so each stream is recognisably its own), one pod process with both under
``cameras:``, the gateway and the portal stand-in. Both stream through the gateway and both
heartbeat; when one camera dies, the other keeps streaming and both keep heartbeating (the dead
one as ``degraded``)."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from stack import free_port

from protocol.tokens import Keyring, mint_user_token
from tests.e2e.conftest import ffprobe_streams, make_stack, wait_until

pytestmark = pytest.mark.e2e

CAM_A, CAM_B = "gate-camera-1", "exit-camera-2"


def open_session(s, camera_id: str) -> str:
    token = mint_user_token(Keyring.single(s.secret), user_id="viewer", camera_id=camera_id, pod_id=s.pod_id)
    r = httpx.get(f"{s.gateway_url}/streams/{camera_id}/index.m3u8", params={"token": token}, timeout=10)
    assert r.status_code == 302, r.text
    return f"{s.gateway_url}/streams/{camera_id}/{r.headers['location']}"


def newest_media(s, camera_id: str, url: str, out) -> str:
    """Fetch the granted playlist, its init segment and newest segment; ffprobe them."""
    text = httpx.get(url, timeout=10).text
    base = f"{s.gateway_url}/streams/{camera_id}/"
    init = httpx.get(base + re.search(r'#EXT-X-MAP:URI="([^"]+)"', text).group(1), timeout=10)
    seg = httpx.get(base + [ln for ln in text.splitlines() if ln and not ln.startswith("#")][-1], timeout=10)
    assert init.status_code == seg.status_code == 200
    out.write_bytes(init.content + seg.content)
    return ffprobe_streams(out)


def media_sequence(url: str) -> int:
    return int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", httpx.get(url, timeout=10).text).group(1))


def heartbeats_since(s, t: float) -> dict[str, list[dict]]:
    hbs = httpx.get(f"{s.portal_url}/__standin/heartbeats", timeout=5).json()["heartbeats"]
    out: dict[str, list[dict]] = {}
    for h in hbs:
        if h["received_at"] > t:
            out.setdefault(h["camera_id"], []).append(h)
    return out


def test_two_cameras_stream_and_heartbeat_and_one_failing_stops_neither_for_the_other(tmp_path):
    s = make_stack(tmp_path)
    port_b = free_port(s.camera_host)
    s.pod_overrides = {
        "camera_id": None, "camera_rtsp_url": None, "heartbeat_interval": 1, "rtsp_timeout_seconds": 2,
        "cameras": [{"camera_id": CAM_A, "rtsp_url": s.rtsp_url, "frigate_camera": "gate_cam"},
                    {"camera_id": CAM_B, "rtsp_url": f"rtsp://{s.camera_host}:{port_b}/exit",
                     "frigate_camera": "exit_cam"}]}
    try:
        s.start_portal([{"plate": "TEST123"}])
        s.start_camera()
        s.start_camera(name="camera2", port=port_b, path="/exit", args=("--width", "320", "--height", "240"))
        s.start_pod(timeout=60)
        s.start_gateway()
        wait_until(lambda: all(s.pod_health()["cameras"][c]["state"] == "running" for c in (CAM_A, CAM_B)), 60,
                   what="both cameras running")

        # both stream through the gateway, each its own picture
        url_a, url_b = open_session(s, CAM_A), open_session(s, CAM_B)
        assert newest_media(s, CAM_A, url_a, tmp_path / "a.mp4") == "h264,640,360"
        assert newest_media(s, CAM_B, url_b, tmp_path / "b.mp4") == "h264,320,240"

        # both heartbeat, each with its own tailnet playlist URL and status online
        t0 = time.time()
        hb = wait_until(lambda: (h := heartbeats_since(s, t0)) and all(c in h for c in (CAM_A, CAM_B)) and h, 15,
                        what="a heartbeat for each camera")
        for cam in (CAM_A, CAM_B):
            last = hb[cam][-1]
            assert last["pod_id"] == s.pod_id and last["status"] == "online"
            assert last["stream_url"] == f"http://{s.pod_host}:{s.pod_port}/cameras/{cam}/index.m3u8"

        # camera B dies
        s.procs["camera2"].stop()
        wait_until(lambda: s.pod_health()["cameras"][CAM_B]["state"] != "running", 30, what="camera B down at the pod")
        t_dead = time.time()
        # A keeps streaming through the gateway: its media sequence advances, its media decodes
        seq = media_sequence(url_a)
        wait_until(lambda: media_sequence(url_a) > seq + 2, 20, what="camera A's playlist advancing")
        assert newest_media(s, CAM_A, url_a, tmp_path / "a2.mp4") == "h264,640,360"
        # both keep heartbeating: A online, B degraded
        hb = wait_until(lambda: (h := heartbeats_since(s, t_dead)) and len(h.get(CAM_A, [])) >= 2
                        and any(x["status"] == "degraded" for x in h.get(CAM_B, [])) and h, 20,
                        what="heartbeats of both cameras after camera B died")
        assert {x["status"] for x in hb[CAM_A]} == {"online"}
        assert hb[CAM_B][-1]["status"] == "degraded"
        assert s.procs["pod"].popen.poll() is None
    finally:
        s.stop()
