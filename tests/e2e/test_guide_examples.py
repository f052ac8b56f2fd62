"""The PlateBridge POD connection guide's own examples, end to end (issue 11).

Every example in tests/data/seed/ (copied verbatim from the guide; README there) drives this
module's stack: mosquitto, the portal stand-in serving the guide's /api/plates answer as it
is (``"config_version": 42``, plain dates), the GStreamer camera, a pod started from the
guide's config.yaml (only addresses, ports, paths and secrets made local) and the gateway
with ``accept_legacy_tokens`` on. Each works as the guide describes, except where issue 11
says otherwise: the stream URL is the gateway's (option B), the pod's detect body has more
fields than the guide's, and a plain ``ends`` date counts through the end of that day in the
site's time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from datetime import date
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import yaml
from frigate_sim import Publisher

from tests.e2e.conftest import ffprobe_streams, make_stack, wait_until

pytestmark = pytest.mark.e2e

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"
CAMERA, POD, SITE = "camera-uuid", "main-gate-pod", "site-uuid"  # the guide's config.yaml


def seed_json(name: str):
    return json.loads((SEED / name).read_text())


def guide_window_decision(today: date) -> tuple[str, str]:
    """What the guide's whitelist (ABC123, starts 2025-01-01, ends 2026-01-01) says about ABC123
    read at 0.95 today: the rule of pod/plates.py, written out (both days count whole)."""
    inside = date(2025, 1, 1) <= today <= date(2026, 1, 1)
    return ("allow", "whitelisted") if inside else ("deny", "outside_validity")


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    """The stack, its pod configured from the guide's config.yaml."""
    s = make_stack(tmp_path_factory.mktemp("guide"), pod_id=POD, camera_id=CAMERA, legacy=True,  # one shared secret
                   gateway_overrides={"accept_legacy_tokens": True})
    cfg = yaml.safe_load((SEED / "guide_config.yaml").read_text())
    local = {  # what only this machine can say: where things are, and the stack's own secrets
        "portal_url": s.portal_url, "pod_api_key": s.api_key, "stream_secret": s.secret,
        "camera_rtsp_url": s.rtsp_url, "stream_port": s.pod_port, "stream_bind": s.pod_host,
        "mqtt_host": "127.0.0.1", "mqtt_port": s.mqtt_port, "state_dir": str(s.workdir / "state"),
        "hls_dir": str(s.hls_dir), "recordings_dir": str(s.workdir / "recordings"),
        "hls_segment_seconds": s.segment_seconds, "heartbeat_interval": 2,  # compressed from the guide's 60
    }
    s.pod_config = lambda: cfg | local  # type: ignore[method-assign]  # the guide's file, nothing of the stack's
    s.start_mosquitto()
    s.start_portal(seed_json("plates_response.json"))
    s.start_camera()
    s.start_pod(timeout=60)
    s.start_gateway()
    try:
        yield s
    finally:
        s.stop()


def pod_metric(s, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{s.pod_port}/metrics", timeout=5).text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def api(s, method: str, path: str, *, body: bytes | None = None, headers: dict | None = None) -> httpx.Response:
    h = {"Authorization": f"Bearer {s.api_key}", "Content-Type": "application/json", **(headers or {})}
    return httpx.request(method, f"{s.portal_url}{path}", content=body, headers=h, timeout=10)


def test_guide_config_yaml_runs_the_pod(guide):
    """guide_config.yaml: the pod runs from it (whitelist, MQTT, streaming, heartbeats)."""
    health = guide.pod_health()
    assert health["pod_id"] == POD and list(health["cameras"]) == [CAMERA]
    assert health["cameras"][CAMERA]["state"] == "running" and health["mqtt"]["connected"]
    written = yaml.safe_load((guide.workdir / "pod.yaml").read_text())
    guide_cfg = yaml.safe_load((SEED / "guide_config.yaml").read_text())
    unchanged = {"pod_id", "camera_id", "site_id", "company_id", "min_confidence", "enable_streaming",
                 "public_ip", "record_on_detection", "enable_mqtt", "whitelist_refresh_interval"}
    assert {k: written[k] for k in unchanged} == {k: guide_cfg[k] for k in unchanged}


def test_plates_example_with_numeric_version_and_plain_dates_loads(guide):
    """plates_response.json: "config_version": 42 (a number) and date-only bounds load; the
    heartbeat answer's 42 counts as a heartbeat, not a failure, and matches the whitelist."""
    wait_until(lambda: guide.pod_health()["whitelist"] == {"version": "42", "entries": 1}, 15,
               what="the guide's whitelist loaded")
    wait_until(lambda: pod_metric(guide, 'platebridge_pod_heartbeats_total{result="ok"}') >= 2, 15,
               what="two heartbeats answered with config_version 42")
    assert pod_metric(guide, 'platebridge_pod_heartbeats_total{result="failed"}') == 0
    assert guide.pod_health()["whitelist"]["version"] == "42"  # 42 == "42": no refresh storm


def test_heartbeat_example(guide):
    """heartbeat_request.json: the pod's heartbeats carry the guide's fields (status "online"
    while the camera streams; stream_url is the camera's tailnet playlist, option B), and the
    guide's own body is accepted and answered with the whitelist's version."""
    guide_hb = seed_json("heartbeat_request.json")

    def latest():  # the camera streams by now (the fixture waited for it): the next heartbeat says so
        hbs = httpx.get(f"{guide.portal_url}/__standin/heartbeats", timeout=5).json()["heartbeats"]
        mine = [h for h in hbs if h["camera_id"] == CAMERA]
        return mine[-1] if mine and mine[-1]["status"] == "online" else None

    hb = wait_until(latest, 10, what="an online heartbeat")
    assert set(guide_hb) <= set(hb) and hb["pod_id"] == POD
    assert hb["stream_url"] == f"http://{guide.pod_host}:{guide.pod_port}/cameras/{CAMERA}/index.m3u8"
    r = api(guide, "POST", "/api/pod/heartbeat", body=(SEED / "heartbeat_request.json").read_bytes())
    assert r.status_code == 200 and r.json() == {"success": True, "config_version": 42}


def publish_guide_event(s) -> float:
    pub = Publisher("127.0.0.1", s.mqtt_port)
    try:
        t = time.time()
        pub.publish("frigate/events", (SEED / "mqtt_event.json").read_text())  # verbatim, indentation and all
        return t
    finally:
        pub.close()


def detections_after(s, t: float, plate: str = "ABC123") -> list[dict]:
    return [d for d in s.detections() if d["received_at"] >= t and d.get("plate") == plate]


def test_mqtt_example_decides_and_sends_the_guides_detect_fields(guide):
    """mqtt_event.json (no id, no camera; license_plate, sub_label ABC123, score 0.95) against
    the guide's whitelist as it is: one decision for ABC123 at confidence 0.95, by the dates
    rule for today, whose detect body carries detect_request.json's fields."""
    wait_until(lambda: guide.pod_health()["whitelist"]["version"] == "42", 15, what="whitelist")
    today = date.today()  # the pod's system zone: the guide's config names no timezone
    t = publish_guide_event(guide)
    [d] = wait_until(lambda: detections_after(guide, t), 15, what="the guide's event decided")
    assert (d["decision"], d["reason"]) == guide_window_decision(today)
    assert (d["plate"], d["confidence"], d["camera_id"], d["decided_by"]) == ("ABC123", 0.95, CAMERA, "pod")
    step5 = seed_json("detect_request.json")
    assert set(step5) <= set(d)
    assert (d["site_id"], d["camera"], d["pod_name"]) == (SITE, CAMERA, POD)


def test_ends_today_allows_and_the_portal_opens_the_gate(guide):
    """The same whitelist with ends = today (a plain date: valid through the end of today),
    pushed with the guide's nudge (nudge_request.json, relayed to the pod through the gateway):
    the guide's MQTT example is now an allow, and the portal opens the gate via Gatewise."""
    answer = seed_json("plates_response.json")
    answer["entries"][0]["ends"] = date.today().isoformat()
    answer["config_version"] = 42  # the nudge bumps it
    r = httpx.put(f"{guide.portal_url}/__standin/plates", json=answer, timeout=5)
    assert r.status_code == 200
    nudge = httpx.post(f"{guide.portal_url}/api/nudge", content=(SEED / "nudge_request.json").read_bytes(), timeout=10)
    assert nudge.status_code == 200 and nudge.json()["config_version"] == 43
    assert nudge.json()["relayed"] == [{"pod_id": POD, "status": 202}]
    wait_until(lambda: guide.pod_health()["whitelist"]["version"] == "43", 5, what="the nudge reached the pod")
    t = publish_guide_event(guide)
    [d] = wait_until(lambda: detections_after(guide, t), 15, what="the guide's event decided")
    assert (d["decision"], d["reason"], d["plate"]) == ("allow", "whitelisted", "ABC123")
    [opened] = wait_until(lambda: [o for o in guide.gate_openings() if o["event_id"] == d["event_id"]], 10,
                          what="the gate opened")
    assert (opened["plate"], opened["site_id"]) == ("ABC123", SITE)


def test_detect_examples_post_to_the_portal(guide):
    """detect_curl_test.json (the guide's Verification curl) and detect_request.json, posted as
    the guide shows: accepted, logged in the audit log, decided by the portal from its own
    whitelist; the gate opens only for an allowed plate."""
    for name, plate in (("detect_curl_test.json", "TEST123"), ("detect_request.json", "ABC123")):
        t = time.time()
        r = api(guide, "POST", "/api/pod/detect", body=(SEED / name).read_bytes())
        assert r.status_code == 200 and r.json()["success"] is True, r.text
        [d] = detections_after(guide, t, plate)
        assert d["decided_by"] == "portal" and d["site_id"] == "xxx" and d["decision"] == r.json()["decision"]

        def opened(event_id=d["event_id"]):
            return [o for o in guide.gate_openings() if o["event_id"] == event_id]

        if d["decision"] == "allow":
            wait_until(opened, 10, what="the gate opened for the allowed plate")
        else:
            time.sleep(0.5)  # an opening for a denied plate would have landed by now
            assert opened() == [], d


def test_stream_token_examples_and_the_gateway_stream(guide, tmp_path):
    """stream_token_request.json → an answer with stream_token_response.json's fields
    (expires_in 600, as the guide says); its stream_url is the gateway's (option B), which
    plays the guide's camera."""
    user = {"Authorization": "Bearer a-user-session"}
    r = httpx.post(f"{guide.portal_url}/api/pod/stream-token",
                   content=(SEED / "stream_token_request.json").read_bytes(), headers=user, timeout=10)
    assert r.status_code == 200, r.text
    assert set(seed_json("stream_token_response.json")) <= set(r.json()) and r.json()["expires_in"] == 600
    r = httpx.post(f"{guide.portal_url}/api/pod/stream-token", json={"camera_id": CAMERA}, headers=user, timeout=10)
    url = r.json()["stream_url"]
    assert url.startswith(f"{guide.gateway_url}/streams/{CAMERA}/index.m3u8?token=")
    assert ffprobe_streams_via(guide, url, tmp_path / "jwt.mp4") == "h264,640,360"


def ffprobe_streams_via(s, url: str, out: Path) -> str:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 302, r.text
    playlist = httpx.get(f"{s.gateway_url}/streams/{CAMERA}/{r.headers['location']}", timeout=10).text
    base = f"{s.gateway_url}/streams/{CAMERA}/"
    init = httpx.get(base + re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist).group(1), timeout=10)
    seg = httpx.get(base + [ln for ln in playlist.splitlines() if ln and not ln.startswith("#")][-1], timeout=10)
    out.write_bytes(init.content + seg.content)
    return ffprobe_streams(out)


def test_guides_own_stream_token_plays_through_the_gateway(guide, tmp_path):
    """stream_token_claims.txt: a token made exactly as the guide's portal makes it
    (base64(json(token)) + "." + sha256(json(token) + secret)) opens the stream through the
    gateway (accept_legacy_tokens), so such a portal switches to the gateway without a rewrite."""
    names = re.findall(r'"(\w+)":', (SEED / "stream_token_claims.txt").read_text())
    values = {"user_id": "guide-user", "camera_id": CAMERA, "pod_id": POD, "exp": int(time.time()) + 600}
    claims = {n: values[n] for n in names}
    text = json.dumps(claims).encode()
    token = base64.b64encode(text).decode() + "." + hashlib.sha256(text + guide.secret.encode()).hexdigest()
    url = f"{guide.gateway_url}/streams/{CAMERA}/index.m3u8?token={quote(token, safe='')}"
    assert ffprobe_streams_via(guide, url, tmp_path / "legacy.mp4") == "h264,640,360"
    forged = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    assert httpx.get(f"{guide.gateway_url}/streams/{CAMERA}/index.m3u8?token={quote(forged, safe='')}",
                     timeout=10).status_code == 401


def test_recording_examples_upload_url_put_confirm(guide):
    """upload_url_request.json and upload_url_curl_test.json get signed Supabase Storage URLs
    (bucket camera-recordings); the guide's PUT of the bytes and its confirm
    (recording_confirm.json, with the path the portal handed out for "file_path") create the
    recording the guide describes; a second PUT of the same file is "already exists"."""
    for name in ("upload_url_curl_test.json", "upload_url_request.json"):
        r = api(guide, "POST", "/api/pod/recordings/upload-url", body=(SEED / name).read_bytes())
        assert r.status_code == 200, r.text
        up = r.json()
        assert "/storage/v1/object/upload/sign/camera-recordings/recordings/" in up["upload_url"]
    data = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64
    put = httpx.put(up["upload_url"], content=data, headers={"Content-Type": "video/mp4"}, timeout=10)
    assert put.status_code == 200, put.text
    again = httpx.put(up["upload_url"], content=data, headers={"Content-Type": "video/mp4"}, timeout=10)
    assert again.status_code == 409 and again.json()["message"] == "The resource already exists"
    confirm = seed_json("recording_confirm.json")
    confirm["file_path"] = up["file_path"]  # the guide's "recordings/community/camera/file.mp4" is a placeholder
    r = api(guide, "POST", "/api/pod/recordings/confirm", body=json.dumps(confirm).encode())
    assert r.status_code == 200, r.text
    recs = httpx.get(f"{guide.portal_url}/api/pod/recordings", params={"camera_id": "xxx"},
                     headers={"Authorization": "Bearer a-user-session"}, timeout=10).json()["recordings"]
    [rec] = [x for x in recs if x["file_path"] == up["file_path"]]
    assert (rec["plate_number"], rec["duration_seconds"], rec["event_type"]) == ("ABC123", 30, "plate_detection")
    assert httpx.get(rec["video_url"], timeout=10).content == data
