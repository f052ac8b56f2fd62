"""No secret in any log after a full run of the real stack.

Stack: mosquitto, the portal stand-in, the GStreamer camera, the pod and the gateway as
processes (pod and gateway at DEBUG). Scenario: a viewer gets a user JWT from the
portal and opens sessions with it in the query and as ``Authorization: Bearer``, loads
playlists and segments with the grants they carry and the watch page; a forged token,
a bad grant and a wrong admin token are refused; the portal nudges the pod through the
gateway; a car passes (MQTT) and its decision reaches the portal, its clip is uploaded
through a signed URL, confirmed and downloaded through another.

Then every log file in the stack's work directory (all processes; the pod's and the
gateway's are JSON lines) is searched for every secret string of the run, collected
from the stack's config and from the answers received: stream secret, admin token,
portal API key, storage signing key, the user session key, each JWT (and its signature),
each grant (and its MAC), every gateway→pod token the gateway can have minted during
the run (they are deterministic per second), the signatures of the signed upload and
download URLs. The logs must also show the redacted forms, so the requests that carried
secrets were logged at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import httpx
import jwt
import pytest

from protocol.tokens import mint_pod_token
from tests.e2e.conftest import started
from tests.security.conftest import make_stack, pod_token, wait_until

pytestmark = pytest.mark.e2e
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "dev"))
from frigate_sim import Publisher  # noqa: E402

PRE, POST = 2.0, 3.0


def storage_token(signing_key: str, path: str, expires: int) -> str:
    """The stand-in's signed upload URL token (deploy/dev/portal_standin.py ``storage_token``:
    an HS256 JWT ``{url: camera-recordings/<path>, exp}`` under a key derived from the signing key)."""
    root = hashlib.sha256(b"platebridge-standin-signing\0" + signing_key.encode()).digest()
    key = hmac.new(root, b"storage-upload", hashlib.sha256).digest()
    return jwt.encode({"url": f"camera-recordings/{path}", "exp": int(expires)}, key, algorithm="HS256")


FRAGMENT = 12  # characters: 64**12 base64url or 16**12 hex values, never met by chance
MIN_FRAGMENTED = 16  # shorter secrets are only searched whole
PUBLIC_PREFIXES = ("pbk_dev_", "user-session-")  # fixed, public beginnings of some secrets


def needles(value: str) -> dict[str, str]:
    """Every spelling of ``value`` to look for, form → text: the whole value and, for secret
    parts of at least 16 characters, their first and last 12 characters; each as is,
    percent-encoded (``quote``/``quote_plus``), JSON-escaped once and twice (a JSON log line
    holding a JSON message), and upper-cased when hex. A JWT's or grant's secret part is its
    signature/MAC (header and payload are readable by anyone)."""
    core = value.rsplit(".", 1)[1] if value.count(".") >= 2 else value
    for prefix in PUBLIC_PREFIXES:
        core = core.removeprefix(prefix)
    pieces = {"whole": value}
    if len(core) >= MIN_FRAGMENTED:
        pieces |= {"prefix": core[:FRAGMENT], "suffix": core[-FRAGMENT:]}
    out = {}
    for kind, piece in pieces.items():
        out[kind] = piece
        out[kind + " percent-encoded"] = quote(piece, safe="")
        out[kind + " form-encoded"] = quote_plus(piece, safe="")
        out[kind + " JSON-escaped"] = json.dumps(piece)[1:-1]
        out[kind + " JSON-escaped twice"] = json.dumps(json.dumps(piece)[1:-1])[1:-1]
        if re.fullmatch(r"[0-9a-f]+", piece):
            out[kind + " upper-case hex"] = piece.upper()
    return out


def scan(found: dict[str, str], texts: dict[str, str]) -> list[tuple[str, str, str]]:
    """``[(secret label, form, file)]`` for every spelling of every secret found in ``texts``."""
    return [(label, form, file) for label, value in found.items() for form, needle in needles(value).items()
            for file, text in texts.items() if needle in text]


def test_control_the_scan_finds_fragments_and_encodings(figure):
    """The search above finds what it claims: a 12-character prefix or suffix, percent-encoded
    and JSON-escaped copies, nothing in clean text, and no fragment of a short secret."""
    secret = 'k/Q+9 z"W\\' + "x7" * 8 + "&=Tq"  # characters that encodings change
    token = "eyJhbGciOiJIUzI1NiJ9.eyJ1IjoibSJ9." + "S1gnatureS1gnatureS1gnatureS1gnature"
    found = {"secret": secret, "token": token, "short": "abcdefghijklm"}
    cases = {
        "prefix": f"user said {secret[:12]}… and left", "suffix": f"tail={secret[-12:]}",
        "percent": f"GET /x?k={quote(secret, safe='')}", "json": json.dumps({"msg": secret}),
        "json twice": json.dumps({"msg": json.dumps({"inner": secret})}),
        "token signature prefix": "sig " + token.rsplit(".", 1)[1][:12],
        "token header only": token.split(".")[0] + " is public",
        "short fragment": "abcdefghijkl", "clean": "nothing to see here " * 20,
    }
    hits = {name: sorted({label for label, _, _ in scan(found, {name: text})}) for name, text in cases.items()}
    expected = {"prefix": ["secret"], "suffix": ["secret"], "percent": ["secret"], "json": ["secret"],
                "json twice": ["secret"], "token signature prefix": ["token"], "token header only": [],
                "short fragment": [], "clean": []}
    figure("planted secret spellings found by the log scan", sum(bool(v) for v in hits.values()), "of 6", "== 6",
           hits == expected)
    assert hits == expected, hits


def grants_in(text: str) -> set[str]:
    """Every ``pb_grant`` value in a playlist or a Location header."""
    return set(re.findall(r"pb_grant=([A-Za-z0-9._-]+)", text))


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory):
    """mosquitto + portal stand-in + camera + pod + gateway; pod and gateway log at DEBUG.
    The storage signing key is set through the stand-in's environment so the test can
    recompute the upload URL signatures it never sees."""
    mp = pytest.MonkeyPatch()
    signing_key = secrets.token_urlsafe(24)
    mp.setenv("PORTAL_STANDIN_SIGNING_KEY", signing_key)
    mp.setenv("PLATEBRIDGE_GATEWAY_LOG_LEVEL", "DEBUG")
    s = make_stack(tmp_path_factory.mktemp("logscan"), pod_overrides={
        "pre_roll": PRE, "recording_duration": POST, "max_decision_wait": 1.0, "hls_keep_extra_segments": 20,
        "log_level": "DEBUG"})
    s.signing_key = signing_key
    # the nginx data plane the gateway runs by default: its access log is scanned too
    s.gateway_overrides = {"nginx_access_log": str(s.workdir / "nginx-access.log")}
    try:
        with started(s, plates=[{"plate": "TEST123", "enabled": True}], mqtt=True):
            yield s
    finally:
        mp.undo()


def test_no_secret_in_any_log_after_a_full_run(full_stack, figure):
    s = full_stack
    started = time.time()
    found: dict[str, str] = {  # label → secret string
        "user-token secret": s.secret, "grant secret": s.grant_secret, "admin token": s.admin_token,
        "portal API key": s.api_key, "storage signing key": s.signing_key,
        "gateway signing key (PEM body)": "".join(s.signing_key_file.read_text().splitlines()[1:-1]),
    }
    user_session = "user-session-" + secrets.token_urlsafe(16)
    found["portal user session key"] = user_session
    gw, cam = s.gateway_url, s.camera_id
    streams: list[int] = []  # statuses of every /streams request: each must have its access log line

    def stream(url: str, **kw) -> httpx.Response:
        r = httpx.get(url, timeout=10, **kw)
        streams.append(r.status_code)
        return r

    # --- viewer: JWT from the portal, sessions by query and by header ------------------------
    r = httpx.post(f"{s.portal_url}/api/pod/stream-token", json={"camera_id": cam},
                   headers={"Authorization": f"Bearer {user_session}"}, timeout=10)
    assert r.status_code == 200, r.text
    jwt_portal = r.json()["token"]
    jwt_local = s.user_token(user_id="second-viewer")
    grants: set[str] = set()
    r1 = stream(f"{gw}/streams/{cam}/index.m3u8?token={jwt_portal}")
    r2 = stream(f"{gw}/streams/{cam}/index.m3u8", headers={"Authorization": f"Bearer {jwt_local}"})
    assert r1.status_code == r2.status_code == 302
    for r in (r1, r2):
        grants |= grants_in(r.headers["location"])
        playlist = stream(f"{gw}/streams/{cam}/{r.headers['location']}")
        assert playlist.status_code == 200
        grants |= grants_in(playlist.text)
        uris = [u for u in playlist.text.splitlines() if u and not u.startswith("#")]
        # not the EXT-X-PRELOAD-HINT: a hinted part that its segment ends before never exists (the
        # pod answers 404 then, RFC 8216bis §4.4.5.3), so asking for it may rightly fail
        uris += re.findall(r'^#EXT-X-(?!PRELOAD-HINT)[^\n]*URI="([^"]+)"', playlist.text, re.MULTILINE)
        for uri in uris[-3:]:
            assert stream(f"{gw}/streams/{cam}/{uri}").status_code == 200
        # what a player needs of the hint: its grant opens it (never 401/403) and the gateway
        # passes the pod's verdict on (the part, or 404 once the pod has moved past it)
        for hint in re.findall(r'^#EXT-X-PRELOAD-HINT:[^\n]*URI="([^"]+)"', playlist.text, re.MULTILINE):
            assert stream(f"{gw}/streams/{cam}/{hint}").status_code in (200, 404)
    assert httpx.get(f"{gw}/watch/{cam}?token={jwt_portal}", timeout=10).status_code == 200

    # --- refused credentials ----------------------------------------------------------------
    forged = jwt.encode({"aud": "platebridge-stream", "exp": int(time.time()) + 300, "user_id": "mallory",
                         "camera_id": cam, "pod_id": s.pod_id}, "forged-" + secrets.token_urlsafe(32),
                        algorithm="HS256")
    assert stream(f"{gw}/streams/{cam}/index.m3u8?token={forged}").status_code == 401
    assert stream(f"{gw}/streams/{cam}/index.m3u8", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    bad_grant = next(iter(grants))[:-4] + "AAAA"
    assert stream(f"{gw}/streams/{cam}/index.m3u8?pb_grant={bad_grant}").status_code == 403
    wrong_admin = secrets.token_urlsafe(24)
    nudge = f"{gw}/pods/{s.pod_id}/nudge"
    assert httpx.post(nudge, headers={"Authorization": f"Bearer {wrong_admin}"}, timeout=10).status_code == 401
    direct_pod_token = pod_token(s)  # what a gateway sends; used once directly against the pod
    assert httpx.get(f"{s.pod_url}/cameras/{cam}/index.m3u8", headers={"Authorization": f"Bearer {direct_pod_token}"},
                     timeout=10).status_code == 200

    # --- the portal nudges the pod through the gateway -------------------------------------
    r = httpx.post(nudge, json={"reason": "whitelist_changed"}, headers={"Authorization": f"Bearer {s.admin_token}"},
                   timeout=10)
    assert r.status_code == 202, r.text

    # --- a car: decision at the portal, clip uploaded by signed URL, confirmed, downloaded ---
    def buffered_seconds() -> float:  # the HLS buffer must hold the pre-roll before the car arrives
        text = (s.hls_dir / cam / "index.m3u8").read_text()
        return sum(float(d) for d in re.findall(r"#EXTINF:([0-9.]+)", text))

    wait_until(lambda: buffered_seconds() >= PRE + 1, 20, what="the pre-roll in the HLS buffer")
    pub = Publisher("127.0.0.1", s.mqtt_port)
    try:
        event_id = pub.passage("TEST 123")
    finally:
        pub.close()
    wait_until(lambda: any(d["event_id"] == event_id for d in s.detections()), 20, what="the detection")

    def recordings():
        r = httpx.get(f"{s.portal_url}/api/pod/recordings", params={"camera_id": cam},
                      headers={"Authorization": f"Bearer {user_session}"}, timeout=5)
        return r.json()["recordings"]

    [rec] = wait_until(recordings, PRE + POST + 45, interval=0.5, what="a confirmed recording")
    assert rec["event_id"] == event_id
    download = httpx.get(rec["video_url"], timeout=30)
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    download_token = parse_qs(urlsplit(rec["video_url"]).query)["token"][0]
    found["download URL token"] = download_token
    found["download URL token signature"] = download_token.rsplit(".", 1)[1]
    issued = httpx.get(f"{s.portal_url}/__standin/upload-urls", timeout=5).json()["upload_urls"]
    assert issued
    for i, u in enumerate(issued):
        token = storage_token(s.signing_key, u["file_path"], int(u["expires"]))
        # proof that the recomputed token is the real one: the stand-in checks it before
        # answering 409 (object exists); a wrong one would be a 400
        probe = httpx.put(f"{s.portal_url}/storage/v1/object/upload/sign/camera-recordings/{u['file_path']}",
                          params={"token": token}, content=b"x", timeout=10)
        assert probe.status_code == 409, (probe.status_code, probe.text)
        found[f"upload URL token {i}"] = token
        found[f"upload URL token {i} signature"] = token.rsplit(".", 1)[1]
    ended = time.time()

    # --- every secret string of the run --------------------------------------------------------
    for name, token in (("user JWT from the portal", jwt_portal), ("user JWT (second viewer)", jwt_local),
                        ("forged JWT", forged), ("pod token used directly", direct_pod_token)):
        found[name] = token
        found[name + " signature"] = token.rsplit(".", 1)[1]
    for i, g in enumerate(sorted(grants | {bad_grant})):
        found[f"grant {i}"] = g
        found[f"grant {i} MAC"] = g[-22:]
    found["wrong admin token"] = wrong_admin
    ring = s.pod_signer()
    # the gateway mints with now=time.time(): the token depends only on the whole second
    assert mint_pod_token(ring, camera_id=cam, pod_id=s.pod_id, ttl=30, now=started + 0.7) == mint_pod_token(
        ring, camera_id=cam, pod_id=s.pod_id, ttl=30, now=float(int(started + 0.7)))
    for t in range(int(started) - 1, int(ended) + 2):  # every gateway→pod token the gateway can have minted
        for camera in (cam, "*"):
            found[f"gateway→pod token {camera} @{t}"] = mint_pod_token(ring, camera_id=camera, pod_id=s.pod_id,
                                                                      ttl=30, now=float(t))
    assert len(grants) >= 4 and all(len(v) >= 16 for v in found.values())

    s.stop()  # every process flushed and closed its log
    logs = sorted(p for p in s.workdir.rglob("*.log") if p.is_file())
    names = {p.name for p in logs}
    assert {"pod.log", "gateway.log", "portal.log", "camera.log", "mosquitto.log", "nginx-access.log"} <= names, names
    texts = {p.name: p.read_text(errors="replace") for p in logs}
    lines = sum(t.count("\n") for t in texts.values())
    leaks = scan(found, texts)
    searched = sum(len(needles(v)) for v in found.values())

    # the logs recorded this run: per file, the process's own lines (not camera/ffmpeg noise)
    def records(name: str) -> list[dict]:
        out = []
        for line in texts[name].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    pod_own = [r["msg"] for r in records("pod.log") if r.get("logger", "").startswith("platebridge.pod")
               and not r["msg"].startswith(f"camera {cam} ffmpeg:")]
    access = [r["msg"] for r in records("gateway.log") if r.get("logger") == "platebridge.gateway.access"]
    pod_needs = {"decision for the car": lambda m: "decision" in m and event_id in m,
                 "detection sent to the portal": lambda m: "POST /api/pod/detect -> 200" in m,
                 "upload URL requested": lambda m: "POST /api/pod/recordings/upload-url -> 200" in m,
                 "clip uploaded": lambda m: m.startswith("uploads:") and "uploaded" in m,
                 "recording confirmed": lambda m: "POST /api/pod/recordings/confirm -> 200" in m,
                 "nudge received": lambda m: "nudged by the gateway" in m,
                 "whitelist fetched": lambda m: "GET /api/plates -> 200" in m}
    pod_missing = [what for what, match in pod_needs.items() if not any(match(m) for m in pod_own)]
    statuses = [int(m.split()[2]) for m in access if m.startswith("GET /streams/")]
    # + the segments the nginx data plane served itself ("-" upstream); what it passed on is the
    # gateway's line
    nginx_served = [int(m.group(1)) for m in re.finditer(r'"GET /streams/[^"]*" (\d{3}) \d+ \S+ "-"$',
                                                         texts.get("nginx-access.log", ""), re.MULTILINE)]
    statuses = sorted(statuses + nginx_served)
    figure("pod.log: the pod's own lines (portal requests, decision, upload, nudge)", len(pod_own), "lines",
           f">= {len(pod_needs)}, each kind present", not pod_missing and len(pod_own) >= len(pod_needs))
    figure("gateway.log + nginx-access.log: access lines for the scenario's stream requests", len(statuses), "lines",
           f"== {len(streams)} (one per request)", statuses == sorted(streams))
    figure("log lines scanned (all processes)", lines, "lines", "> 100", lines > 100)
    figure(f"secrets searched for ({searched} spellings: whole, 12-char prefix/suffix, encoded)", len(found),
           "secrets", ">= 20", len(found) >= 20)
    figure("secrets found in logs", len(leaks), "occurrences", "== 0", not leaks)
    assert not leaks, leaks
    assert not pod_missing and len(pod_own) >= len(pod_needs), (pod_missing, pod_own)
    assert statuses == sorted(streams), (statuses, sorted(streams))  # every stream request logged, none twice
    assert lines > 100 and len(found) >= 20
    # the requests that carried secrets were logged, redacted
    assert any("?token=*** 302" in m for m in access) and any("?token=*** 401" in m for m in access), access
    assert sum("?pb_grant=*** 200" in m for m in access) >= 4 and any("?pb_grant=*** 403" in m for m in access), access
