"""PortalClient against the real portal stand-in (deploy/dev/portal_standin.py)
served by uvicorn on 127.0.0.1:<free port>; plus the stand-in's own CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import msgspec
import pytest

from pod.backoff import Backoff
from pod.portal import PortalClient, PortalRejected, PortalUnavailable
from protocol.messages import (
    DetectRequest,
    HeartbeatRequest,
    PlateEntry,
    RecordingConfirm,
    UploadUrlRequest,
)
from protocol.tokens import Keyring, verify_user_token
from tests.pod.standin import ROOT, free_port
from tests.pod.standin import Served as StandIn

API_KEY = "pk_live_SUPERSECRET_4f1c9a7e2b"
SECRET = "s" * 48
GATEWAY = "https://gateway.example"


class Served(StandIn):
    """The stand-in with this module's key, secret and plates."""

    def __init__(self, tmp_path: Path, **kw) -> None:
        super().__init__(tmp_path / "portal" / "standin.db", api_key=API_KEY, stream_secret=SECRET,
                         gateway_url=GATEWAY,
                         plates=[PlateEntry(plate="ABC123", tenant="Ada", unit="4B"),
                                 PlateEntry(plate="XYZ9", enabled=False)], **kw)

    async def admin(self, method: str, path: str, json=None) -> httpx.Response:
        return await self.request(method, path, json=json)


@pytest.fixture
async def portal(tmp_path):
    s = Served(tmp_path, pod_id="fallback-pod")
    await s.start()
    yield s
    await s.stop()


def client(portal: Served, **kw) -> PortalClient:
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff", Backoff(initial=0.02, cap=0.1, jitter=0.0))
    return PortalClient(portal.url, kw.pop("api_key", API_KEY), **kw)


def detect(event_id: str, **over) -> DetectRequest:
    d = dict(site_id="site-1", plate="ABC123", camera="gate", pod_name="Main gate", camera_id="cam1",
             event_id=event_id, decision="allow", reason="whitelisted", detected_at="2025-01-01T12:00:00Z",
             confidence=0.93, plate_raw="ABC 123")
    d.update(over)
    return DetectRequest(**d)


def hb(camera_id="cam1", pod_id="gate-pod-7") -> HeartbeatRequest:
    return HeartbeatRequest(pod_id=pod_id, camera_id=camera_id, status="online",
                            stream_url=f"http://100.64.0.7:8000/{camera_id}/index.m3u8",
                            outbox_depth=0, whitelist_version="1")


def no_key_anywhere(portal: Served, *texts: str) -> None:
    for text in texts:
        assert API_KEY not in text
    for f in portal.db.parent.iterdir():  # the SQLite file, its WAL and anything else written there
        assert API_KEY.encode() not in f.read_bytes(), f.name


async def test_get_plates_returns_entries_and_version(portal):
    async with client(portal) as c:
        resp = await c.get_plates("site-1", "co-1")
    assert resp.config_version == "1"
    assert [(e.plate, e.tenant, e.enabled) for e in resp.entries] == [("ABC123", "Ada", True), ("XYZ9", None, False)]
    r = await portal.admin("PUT", "/__standin/plates", json={"entries": [{"plate": "NEW1"}]})
    assert r.json()["config_version"] == "2"
    async with client(portal) as c:
        resp = await c.get_plates("site-1", "co-1")
    assert resp.config_version == "2" and [e.plate for e in resp.entries] == ["NEW1"]


async def test_bad_api_key_is_rejected_401_and_never_logged(portal, caplog, capsys):
    wrong = "pk_live_WRONGKEY_0000"
    caplog.set_level(logging.DEBUG)
    async with client(portal, api_key=wrong) as c:
        with pytest.raises(PortalRejected) as ei:
            await c.get_plates("site-1", "co-1")
        assert ei.value.status == 401
        with pytest.raises(PortalRejected):
            await c.post_detect(detect("e-401"))
        assert wrong not in repr(c)
    async with client(portal) as c:  # the right key, with everything logged at DEBUG
        await c.get_plates("site-1", "co-1")
        await c.post_detect(detect("e-ok"))
        await c.post_heartbeat(hb())
    logs = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert caplog.records, "expected some log records at DEBUG"
    assert wrong not in logs and wrong not in str(ei.value)
    out = capsys.readouterr()
    no_key_anywhere(portal, logs, out.out, out.err)
    assert "PORTAL: detect allow ABC123 whitelisted event=e-ok" in out.out


async def test_post_detect_sends_idempotency_key_and_standin_dedupes(portal, capsys):
    async with client(portal) as c:
        await c.post_detect(detect("evt-1"))
        await c.post_detect(detect("evt-1"))  # outbox retry after a lost answer
        await c.post_detect(detect("evt-2", decision="deny", reason="not_whitelisted", plate="QQQ1",
                                   near_match=None, confidence=None))
        await c.post_detect(detect("evt-3", decision="deny", reason="no_plate_read", plate=None, plate_raw=None,
                                   confidence=None))
    dets = (await portal.admin("GET", "/__standin/detections")).json()["detections"]
    assert [(d["event_id"], d["count"]) for d in dets] == [("evt-1", 2), ("evt-2", 1), ("evt-3", 1)]
    assert dets[0]["idempotency_key"] == "evt-1"  # the header arrived
    assert dets[0]["plate_raw"] == "ABC 123" and dets[0]["confidence"] == 0.93
    assert dets[1]["decision"] == "deny" and "confidence" not in dets[1]
    out = capsys.readouterr().out
    assert dets[2]["plate"] is None and dets[2]["reason"] == "no_plate_read"
    assert out.count("PORTAL: detect") == 3
    assert "PORTAL: detect deny - no_plate_read event=evt-3" in out
    assert "PORTAL: detect deny QQQ1 not_whitelisted event=evt-2" in out


async def test_standin_dedupes_by_idempotency_header_and_rejects_bad_bodies(portal):
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "idem-1"}
    async with httpx.AsyncClient(base_url=portal.url, trust_env=False) as c:
        r1 = await c.post("/api/pod/detect", content=msgspec.json.encode(detect("a1")), headers=headers)
        r2 = await c.post("/api/pod/detect", content=msgspec.json.encode(detect("a2")), headers=headers)
        assert (r1.json()["duplicate"], r2.json()["duplicate"]) == (False, True)
        bad = await c.post("/api/pod/detect", json={"event_id": "x"}, headers=headers | {"Idempotency-Key": "z"})
        assert bad.status_code == 400
        assert (await c.post("/api/pod/detect", content=b"not json", headers=headers)).status_code == 400
        assert (await c.get("/api/plates", params={"site": "s"})).status_code == 401
    async with client(portal) as pc:
        with pytest.raises(PortalRejected) as ei:
            await pc.post_detect(detect("", plate=""))
        with pytest.raises(PortalRejected):  # a null plate is only fine without a read
            await pc.post_detect(detect("np", plate=None))
    assert ei.value.status == 400


SEED = Path(__file__).resolve().parents[1] / "data" / "seed"


async def test_standin_accepts_the_guides_minimal_detect_body_and_opens_the_gate_on_allow(portal, capsys):
    """The guide's test curl (tests/data/seed/detect_curl_test.json) and its step-5 body
    (detect_request.json) carry only site_id, plate, camera, pod_name: the stand-in takes
    them, decides from its own whitelist as the guide's portal does, and opens the gate
    through the Gatewise stand-in only for an allowed plate."""
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    curl_body = (SEED / "detect_curl_test.json").read_bytes()
    step5 = (SEED / "detect_request.json").read_bytes()
    async with httpx.AsyncClient(base_url=portal.url, trust_env=False) as h:
        r = await h.post("/api/pod/detect", content=curl_body, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["decision"] == "deny" and r.json()["event_id"].startswith("portal-")  # TEST123: not listed
        r = await h.post("/api/pod/detect", content=step5, headers=auth | {"Idempotency-Key": "guide-step5"})
        assert r.status_code == 200 and r.json() == {"success": True, "duplicate": False, "event_id": "guide-step5",
                                                     "decision": "allow"}  # ABC123 is on the whitelist
        again = await h.post("/api/pod/detect", content=step5, headers=auth | {"Idempotency-Key": "guide-step5"})
        assert again.json()["duplicate"] is True
        assert (await h.post("/api/pod/detect", content=curl_body)).status_code == 401
        for missing in ("site_id", "camera", "pod_name", "plate"):
            body = msgspec.json.decode(curl_body)
            body[missing] = ""
            assert (await h.post("/api/pod/detect", json=body, headers=auth)).status_code == 400, missing

        async def openings():
            return (await h.get("/gatewise/__standin/openings")).json()["openings"]

        deadline = time.monotonic() + 10
        while not await openings():
            assert time.monotonic() < deadline, "the gate was never opened"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # a second (wrong) opening would land by now
        assert [(o["gate_id"], o["plate"], o["event_id"], o["site_id"]) for o in await openings()] == [
            ("main-gate", "ABC123", "guide-step5", "xxx")]
        # Gatewise refuses callers without its key
        assert (await h.post("/gatewise/api/v1/gates/main-gate/open", json={})).status_code == 401
    dets = (await portal.admin("GET", "/__standin/detections")).json()["detections"]
    assert [(d["plate"], d["decision"], d["reason"], d["decided_by"], d["count"]) for d in dets] == [
        ("TEST123", "deny", "not_whitelisted", "portal", 1), ("ABC123", "allow", "whitelisted", "portal", 2)]
    out = capsys.readouterr().out
    assert "PORTAL: detect allow ABC123 whitelisted event=guide-step5" in out
    assert "GATE: opened ABC123 gate=main-gate event=guide-step5" in out
    assert out.count("GATE: opened") == 1


async def test_pod_decisions_open_the_gate_only_when_allowed(portal, capsys):
    async with client(portal) as c:
        await c.post_detect(detect("p-allow"))
        await c.post_detect(detect("p-deny", decision="deny", reason="low_confidence"))
        await c.post_detect(detect("p-allow"))  # redelivered: no second opening
    deadline = time.monotonic() + 10
    while "GATE: opened" not in capsys.readouterr().out:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert [o["event_id"] for o in portal.state.gatewise.openings] == ["p-allow"]


async def test_standin_serves_a_numeric_config_version_as_given_and_nudge_bumps_it(tmp_path):
    """The guide's /api/plates answer (tests/data/seed/plates_response.json) has
    "config_version": 42, a number; the stand-in serves it as such, heartbeats answer it, and
    the guide's POST /api/nudge (nudge_request.json) bumps it, staying a number."""
    raw = msgspec.json.decode((SEED / "plates_response.json").read_bytes())
    s = Served(tmp_path, config_version=raw["config_version"])
    s.state.set_plates(raw["entries"], version=raw["config_version"])
    await s.start()
    try:
        async with client(s) as c:
            got = await c.get_plates("site", "company")
            assert got.config_version == "42" and [e.plate for e in got.entries] == ["ABC123"]
            assert (await c.post_heartbeat(hb())).config_version == "42"
        wire = (await s.request("GET", "/api/plates", headers={"Authorization": f"Bearer {API_KEY}"})).json()
        assert wire == raw  # verbatim, number and all
        r = await s.request("POST", "/api/nudge", content=(SEED / "nudge_request.json").read_bytes())
        assert r.status_code == 200 and r.json()["config_version"] == 43
        wire = (await s.request("GET", "/api/plates", headers={"Authorization": f"Bearer {API_KEY}"})).json()
        assert wire["config_version"] == 43 and wire["entries"] == raw["entries"]
        [n] = (await s.request("GET", "/__standin/nudges")).json()["nudges"]
        assert n["body"] == {"property": "main-gate", "reason": "Added new plate"} and n["relayed"] == []
    finally:
        await s.stop()


async def test_commit_hang_after_n_withholds_the_answer_of_the_next_request_only(portal):
    """The stand-in's worst-moment switch: ``after: 2`` answers two detections normally, then
    stores the third and withholds its answer until the switch changes (then 503)."""
    await portal.admin("POST", "/__standin/fault", json={"mode": "commit_hang", "count": 1, "after": 2,
                                                         "scope": "api"})
    async with client(portal, retries=0) as c:
        await c.post_detect(detect("h1"))  # answered (no PortalError)
        await c.post_detect(detect("h2"))
        third = asyncio.create_task(c.post_detect(detect("h3")))
        async with asyncio.timeout(5):
            while (await portal.admin("GET", "/__standin/fault")).json()["faults_served"] == 0:
                await asyncio.sleep(0.01)
        assert not third.done()
        stored = (await portal.admin("GET", "/__standin/detections")).json()["detections"]
        assert {d["event_id"] for d in stored} == {"h1", "h2", "h3"}  # stored before the answer
        await portal.admin("POST", "/__standin/fault", json={"mode": "ok"})
        with pytest.raises(PortalUnavailable) as ei:
            await third
        assert ei.value.status == 503
    r = await portal.admin("POST", "/__standin/fault", json={"mode": "commit_hang", "after": -1})
    assert r.status_code == 400


async def test_error500_is_unavailable_and_get_plates_retries_until_fault_clears(portal):
    await portal.admin("POST", "/__standin/fault", json={"mode": "error500", "count": None})
    async with client(portal, retries=2) as c:
        with pytest.raises(PortalUnavailable) as ei:
            await c.post_detect(detect("e500"))
        assert ei.value.status == 500
        with pytest.raises(PortalUnavailable):
            await c.get_plates("site-1", "co-1")
    assert (await portal.admin("GET", "/__standin/fault")).json()["faults_served"] == 1 + 3  # detect + 1 + 2 retries

    await portal.admin("POST", "/__standin/fault", json={"mode": "error500", "count": 2})
    async with client(portal, retries=3) as c:
        resp = await c.get_plates("site-1", "co-1")
    assert resp.config_version == "1" and len(resp.entries) == 2
    fault = (await portal.admin("GET", "/__standin/fault")).json()
    assert fault["mode"] == "ok" and fault["faults_served"] == 4 + 2
    dets = (await portal.admin("GET", "/__standin/detections")).json()["detections"]
    assert dets == []  # the faulted detect never landed


async def test_hang_is_unavailable_within_client_timeout(portal):
    await portal.admin("POST", "/__standin/fault", json={"mode": "hang", "count": None})
    async with client(portal, timeout=0.5, retries=0) as c:
        t0 = time.monotonic()
        with pytest.raises(PortalUnavailable, match="timed out"):
            await c.post_detect(detect("hang-1"))
        assert time.monotonic() - t0 < 1.5
        t0 = time.monotonic()
        with pytest.raises(PortalUnavailable):
            await c.get_plates("site-1", "co-1")
        assert time.monotonic() - t0 < 1.5
    await portal.admin("POST", "/__standin/fault", json={"mode": "ok"})


async def test_connection_refused_is_unavailable(portal):
    await portal.stop()
    async with client(portal, retries=1) as c:
        with pytest.raises(PortalUnavailable) as ei:
            await c.post_detect(detect("refused"))
        assert ei.value.status is None
        with pytest.raises(PortalUnavailable):
            await c.post_heartbeat(hb())
        with pytest.raises(PortalUnavailable):
            await c.get_plates("site-1", "co-1")


async def test_heartbeat_returns_config_version(portal):
    async with client(portal) as c:
        assert (await c.post_heartbeat(hb())).config_version == "1"
        await portal.admin("PUT", "/__standin/plates", json=[{"plate": "ZZ1"}])
        resp = await c.post_heartbeat(hb())
    assert resp.config_version == "2" and resp.success is True
    beats = (await portal.admin("GET", "/__standin/heartbeats")).json()["heartbeats"]
    assert [(b["pod_id"], b["camera_id"], b["outbox_depth"]) for b in beats] == [("gate-pod-7", "cam1", 0)] * 2


async def test_stream_token_is_a_verifiable_jwt_for_the_heartbeat_pod(portal):
    async with client(portal) as c:
        await c.post_heartbeat(hb("cam1", "gate-pod-7"))
    async with httpx.AsyncClient(base_url=portal.url, trust_env=False) as h:
        r = await h.post("/api/pod/stream-token", json={"camera_id": "cam1"},
                         headers={"Authorization": "Bearer some-user-session"})
        assert r.status_code == 200, r.text
        body = r.json()
        claims = verify_user_token(body["token"], Keyring.single(SECRET))
        assert (claims.camera_id, claims.pod_id) == ("cam1", "gate-pod-7")
        assert body["stream_url"] == f"{GATEWAY}/streams/cam1/index.m3u8?token={body['token']}"
        assert body["watch_url"].startswith(f"{GATEWAY}/watch/cam1?token=")
        assert body["expires_in"] == 600 and abs(body["expires_at"] - (time.time() + 600)) < 5
        # no heartbeat for cam2: falls back to --pod-id
        r2 = await h.post("/api/pod/stream-token", json={"camera_id": "cam2"}, headers={"Authorization": "Bearer u"})
        assert verify_user_token(r2.json()["token"], Keyring.single(SECRET)).pod_id == "fallback-pod"
        assert (await h.post("/api/pod/stream-token", json={"camera_id": "cam1"})).status_code == 401
        assert (await h.post("/api/pod/stream-token", json={"camera_id": "../x"},
                             headers={"Authorization": "Bearer u"})).status_code == 400


async def test_stream_token_with_configured_user_key(tmp_path):
    s = Served(tmp_path, user_key="the-user-key")
    await s.start()
    try:
        async with httpx.AsyncClient(base_url=s.url, trust_env=False) as h:
            bad = await h.post("/api/pod/stream-token", json={"camera_id": "cam1"},
                               headers={"Authorization": "Bearer anything"})
            assert bad.status_code == 401
            no_pod = await h.post("/api/pod/stream-token", json={"camera_id": "cam1"},
                                  headers={"Authorization": "Bearer the-user-key"})
            assert no_pod.status_code == 404  # no heartbeat and no --pod-id
    finally:
        await s.stop()


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in q.items())))


async def test_upload_url_put_confirm_and_list(portal):
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
    async with client(portal) as c:
        up = await c.request_upload_url(UploadUrlRequest(camera_id="cam1", filename="evt-1.mp4"))
        url, path = up.url(), up.path_or_none()
        # Supabase Storage's shape, the guide's bucket and path (recordings/<community>/<camera>/<file>)
        assert path == "recordings/dev-community/cam1/evt-1.mp4"
        assert url.startswith(f"{portal.url}/storage/v1/object/upload/sign/camera-recordings/{path}?token=")

        # tampered token, another object's path, expired (validly signed) token: all refused
        # with storage-api's HTTP 400 and its error names
        for bad, error in ((_with_query(url, token="e30.e30.AAAA"), "Invalid JWT"),
                           (url.replace("evt-1.mp4", "evt-2.mp4"), "InvalidSignature"),
                           (_with_query(url, token=portal.state.storage_token(path, int(time.time()) - 10)),
                            "ExpiredSignature")):
            with pytest.raises(PortalRejected) as ei:
                await c.upload(bad, video)
            assert ei.value.status == 400 and error in str(ei.value), str(ei.value)
        uploads = (await portal.admin("GET", "/__standin/uploads")).json()["uploads"]
        assert uploads == []
        # confirming before the upload is refused
        rc = RecordingConfirm(camera_id="cam1", file_path=path, duration_seconds=30.0, plate_number="ABC123",
                              event_id="evt-1", file_size_bytes=len(video))
        with pytest.raises(PortalRejected):
            await c.confirm_recording(rc)

        await c.upload(url, video)
        uploads = (await portal.admin("GET", "/__standin/uploads")).json()["uploads"]
        assert [(u["path"], u["size"]) for u in uploads] == [(path, len(video))]
        await c.confirm_recording(rc)
        await c.confirm_recording(rc)  # idempotent

    async with httpx.AsyncClient(base_url=portal.url, trust_env=False) as h:
        r = await h.get("/api/pod/recordings", params={"camera_id": "cam1"}, headers={"Authorization": "Bearer u"})
        recs = r.json()["recordings"]
        assert [(x["file_path"], x["duration_seconds"], x["event_id"], x["stored_bytes"]) for x in recs] == [
            (path, 30.0, "evt-1", len(video))]
        other = await h.get("/api/pod/recordings", params={"camera_id": "cam9"}, headers={"Authorization": "Bearer u"})
        assert other.json()["recordings"] == []


async def test_upload_never_sends_the_api_key(portal):
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    async with PortalClient("http://portal.invalid", API_KEY, transport=httpx.MockTransport(handler)) as c:
        await c.upload("https://storage.example/bucket/x.mp4?sig=abc", b"data")
        await c.post_detect(detect("e"))
    assert "authorization" not in seen[0].headers
    assert seen[1].headers["authorization"] == f"Bearer {API_KEY}"
    assert seen[1].headers["idempotency-key"] == "e"
    assert seen[1].headers["user-agent"].startswith("platebridge-pod/")


@pytest.mark.parametrize(("status", "exc"), [
    (500, PortalUnavailable), (502, PortalUnavailable), (503, PortalUnavailable), (408, PortalUnavailable),
    (429, PortalUnavailable), (400, PortalRejected), (401, PortalRejected), (403, PortalRejected),
    (404, PortalRejected), (422, PortalRejected),
])
async def test_status_mapping(status, exc):
    """The mapping table itself, at the transport seam (the stand-in only fakes 500s)."""
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=f"echo Bearer {API_KEY}")

    async with PortalClient("http://portal.invalid", API_KEY, transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(exc) as ei:
            await c.post_detect(detect("e"))
    assert ei.value.status == status and API_KEY not in str(ei.value)


async def test_unreadable_plates_answer_is_unavailable():
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>login</html>")

    async with PortalClient("http://portal.invalid", API_KEY, transport=httpx.MockTransport(handler), retries=0) as c:
        with pytest.raises(PortalUnavailable, match="unreadable"):
            await c.get_plates("s", "c")


def test_cli_serves_and_keeps_the_key_out_of_logs_and_db(tmp_path):
    plates = tmp_path / "plates.json"
    plates.write_text('{"entries": [{"plate": "CLI1", "tenant": "Bo"}]}')
    db = tmp_path / "cli" / "standin.db"
    log_path = tmp_path / "standin.log"
    port = free_port()
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "deploy" / "dev" / "portal_standin.py"), "--host", "127.0.0.1",
             "--port", str(port), "--db", str(db), "--api-key", API_KEY, "--stream-secret", SECRET,
             "--gateway-url", GATEWAY, "--plates-file", str(plates), "--pod-id", "cli-pod"],
            stdout=logf, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/__standin/fault", timeout=1, trust_env=False).status_code == 200:
                    break
            assert time.monotonic() < deadline, "stand-in CLI did not come up"
            time.sleep(0.05)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=base, trust_env=False, timeout=5) as h:
            plates_resp = h.get("/api/plates", params={"site": "s", "company_id": "c"}, headers=auth).json()
            assert plates_resp["entries"] == [{"plate": "CLI1", "unit": None, "tenant": "Bo", "enabled": True,
                                               "starts": None, "ends": None}]
            r = h.post("/api/pod/detect", content=msgspec.json.encode(detect("cli-1")),
                       headers=auth | {"Idempotency-Key": "cli-1"})
            assert r.json() == {"success": True, "duplicate": False, "event_id": "cli-1", "decision": "allow"}
            h.get("/api/plates", headers={"Authorization": "Bearer nope"})
            h.post("/api/pod/detect", content=b"{", headers=auth)
        deadline = time.monotonic() + 5
        while "event=cli-1" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(10)
    text = log_path.read_text()
    assert "PORTAL: detect allow ABC123 whitelisted event=cli-1" in text
    assert API_KEY not in text
    for f in db.parent.iterdir():
        assert API_KEY.encode() not in f.read_bytes()


async def test_a_request_that_cannot_be_built_is_permanent_not_an_outage():
    """Defence in depth behind the parser's id check: an illegal header value must park the
    row (PortalRejected), never be retried forever at the head of the in-order outbox."""
    import asyncio

    from pod.errors import PortalRejected
    from pod.portal import PortalClient
    from protocol.messages import DetectRequest


    received = []

    async def handle(reader, writer):  # a real socket: h11 validates headers before sending
        received.append(await reader.read(1024))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PortalClient(f"http://127.0.0.1:{port}", "k" * 20, timeout=5)
    try:
        for bad in ("bad\nid", "café-1", "a\x00b"):
            req = DetectRequest(site_id="s", plate="X", camera="c", pod_name="p", camera_id="c", event_id=bad,
                                decision="deny", reason="not_whitelisted", detected_at="2026-01-01T00:00:00Z")
            with pytest.raises(PortalRejected):
                await client.post_detect(req)
    finally:
        await client.aclose()
        server.close()
    assert not any(received)  # nothing malformed went on the wire
