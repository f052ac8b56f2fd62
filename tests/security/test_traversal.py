"""Path traversal against the real gateway and directly against the pod's HLS server.

Every request is sent over a raw socket with its target byte for byte (no client
normalises ``..`` away). Sentinel files with extensions the pod serves are planted
next to the camera directory, above the HLS directory, in another camera's directory,
as hidden files and behind a symlink inside the camera directory
(``tests/security/conftest.py``); their marker must never appear in any response. A
plain sentinel file inside the camera directory IS served by the pod (the control: a
served sentinel is seen). Gateway attempts carry a valid session grant and must cause
zero pod requests; pod attempts carry a valid gateway→pod token for the camera.

The gateway refuses a request for any URI its grant was not minted for (403), whatever its
path; that refusal alone would hide a broken path rule. So each
probe also names the refusal it must get: the path rules' own ``400 bad path`` on both
the gateway and the pod, except for the few names the path rules rightly accept (they
are not traversals: the gateway's playlist check and the pod's directory check refuse
those). The same attack list runs directly through the shared path rule function,
:func:`protocol.paths.safe_relative_path`.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from protocol.paths import UnsafePath, safe_relative_path
from tests.security.conftest import (
    pod_requests_total,
    pod_token,
    raw_request,
    session_grant,
)

pytestmark = pytest.mark.e2e

# name → path below /streams/<camera>/ (gateway) or /cameras/<camera>/ (pod); "{abs}" is
# replaced with the absolute path of the sentinel above the HLS directory
TRAVERSALS: dict[str, bytes] = {
    "dotdot": b"../sentinel.m3u8",
    "dotdot_twice": b"../../sentinel.ts",
    "dotdot_after_name": b"a/../../sentinel.m3u8",
    "dot_then_dotdot": b"./../sentinel.m3u8",
    "encoded_dots": b"%2e%2e/sentinel.m3u8",
    "encoded_dots_and_slash_upper": b"%2E%2E%2Fsentinel.m3u8",
    "encoded_slash": b"..%2fsentinel.m3u8",
    "mixed_dot_encoding": b".%2e/.%2E/sentinel.ts",
    "double_encoded_dots": b"%252e%252e/sentinel.m3u8",
    "double_encoded_slash": b"..%252fsentinel.m3u8",
    "overlong_utf8_dots": b"%c0%ae%c0%ae/sentinel.m3u8",
    "backslash": b"..\\sentinel.m3u8",
    "encoded_backslash": b"..%5csentinel.m3u8",
    "absolute_sentinel": b"/{abs}",
    "absolute_etc_passwd": b"/etc/passwd",
    "double_slash_etc": b"//etc/passwd",
    "encoded_absolute": b"%2fetc%2fpasswd",
    "drive_letter": b"C:%5cWindows%5cwin.ini",
    "nul_encoded": b"..%00/sentinel.m3u8",
    "nul_before_extension": b"../sentinel.m3u8%00.ts",
    "nul_raw": b"index.m3u8\x00/../../sentinel.m3u8",
    "other_camera_dir": b"../other-cam/index.m3u8",
    "hidden_file": b".sentinel.m3u8",
    "hidden_ts_file": b".sentinel.ts",
    "semicolon_segment": b"..;/sentinel.m3u8",
    "symlink_out_of_the_camera_dir": b"sentinel-link.m3u8",
    "overlong_name": b"a" * 300 + b".ts",
    "overlong_traversal": b"../" * 120 + b"sentinel.ts",
    "overlong_encoded_traversal": b"%2e%2e/" * 60 + b"sentinel.ts",
    "overlong_utf8_name": quote("é" * 200 + ".ts").encode(),
    "long_multibyte_name_within_255_chars": quote("é" * 40 + ".ts").encode(),
    "raw_latin1_name_255_chars": b"\xff" * 252 + b".ts",
}
# the camera segment of the path itself
CAMERA_TRAVERSALS: dict[str, bytes] = {
    "camera_dotdot": b"../sentinel.m3u8",
    "camera_encoded_dotdot": b"%2e%2e/sentinel.m3u8",
    "camera_encoded_slash": b"..%2fhls/sentinel.m3u8",
    "camera_other": b"other-cam/index.m3u8",
}

# names the path rules accept (no traversal in them): the gateway refuses them because the
# session grant each probe carries is bound to index.m3u8 and opens no other URI (403: for a
# media file its kind is already wrong, for a playlist its MAC does not cover the path), the pod
# by resolving the file (the symlink leaves the directory: 400; the others do not exist: 404).
# Every other probe must be refused by the path rules: 400.
NOT_GRANTED = (403, b"forbidden: grant is not valid for this URI")
PATH_RULES_ACCEPT = {
    "symlink_out_of_the_camera_dir": (*NOT_GRANTED, 400, b"bad path"),
    "long_multibyte_name_within_255_chars": (403, b"forbidden: a playlist grant cannot open a media", 404,
                                             b"not found"),
    "raw_latin1_name_255_chars": (403, b"forbidden: a playlist grant cannot open a media", 404, b"not found"),
}
BAD_PATH = (400, b"bad path")
# raw NUL and raw non-ASCII bytes in the request target: the HTTP server refuses the request
# before either app sees it (the pod's uvicorn with its message, the gateway's granian with an
# empty 400); the path rules are checked for them directly below
SERVER_REFUSES = {"nul_raw": (400, b"Invalid HTTP request received."),
                  "raw_latin1_name_255_chars": (400, b"Invalid HTTP request received.")}
GATEWAY_SERVER_REFUSES = dict.fromkeys(SERVER_REFUSES, (400, b""))
# the nginx data plane the gateway runs in front of its workers by default (data_plane: auto)
# refuses these itself, with its own 400 page, before the gateway sees them: a NUL in the path
# (raw or %00) and dot segments that climb above the root. The gateway's own rule for them is
# checked on its workers' address directly.
NGINX_FRONT_REFUSES = {"nul_raw", "nul_encoded", "nul_before_extension", "overlong_traversal",
                       "overlong_encoded_traversal"}


def expected_gateway(name: str) -> tuple[int, bytes]:
    if name in GATEWAY_SERVER_REFUSES:
        return GATEWAY_SERVER_REFUSES[name]
    return PATH_RULES_ACCEPT[name][:2] if name in PATH_RULES_ACCEPT else BAD_PATH


def expected_pod(name: str) -> tuple[int, bytes]:
    if name in SERVER_REFUSES:
        return SERVER_REFUSES[name]
    return PATH_RULES_ACCEPT[name][2:] if name in PATH_RULES_ACCEPT else BAD_PATH


def _path(stack, raw: bytes) -> bytes:
    return raw.replace(b"{abs}", str(stack.sentinels.files["work dir"]).lstrip("/").encode())


def _leaks(stack, raw: bytes) -> list[str]:
    found = []
    if stack.sentinels.leaked_in(raw):
        found.append("sentinel")
    if b"root:x:0:0" in raw or b"[fonts]" in raw:
        found.append("system file")
    if stack.secret.encode() in raw:
        found.append("stream secret")
    return found


@pytest.mark.parametrize("name", list(TRAVERSALS))
def test_path_rules_refuse_every_traversal(figure, name):
    """The gateway's and the pod's shared path rule function, with the same attack list (the
    path below the camera as the servers see it: raw, latin-1)."""
    raw = TRAVERSALS[name].replace(b"{abs}", b"tmp/x/sentinel.ts").decode("latin-1")
    try:
        rel = safe_relative_path(raw)
    except UnsafePath:
        rel = None
    wrong = int((rel is None) == (name in PATH_RULES_ACCEPT))
    figure(f"path rule verdicts wrong for {name}", wrong, "verdicts", "== 0", wrong == 0)
    if name in PATH_RULES_ACCEPT:
        assert rel is not None and "/" not in rel and not rel.startswith("."), rel
    else:
        assert rel is None, f"{name}: {raw!r} accepted as {rel!r}"


def test_control_the_path_rules_accept_plain_names():
    assert [safe_relative_path(p) for p in ("index.m3u8", "seg_17.m4s", "sub/a.ts", "sentinel-inside.ts", "a%20b.ts")] \
        == ["index.m3u8", "seg_17.m4s", "sub/a.ts", "sentinel-inside.ts", "a b.ts"]


def _refusal(r) -> tuple[int, bytes]:
    return r.status, r.body.strip()


@pytest.mark.parametrize("name", list(TRAVERSALS))
def test_gateway_refuses_traversal_without_touching_the_pod(sec_stack, figure, name):
    """Through the public port (nginx in front, by default) and on the workers' own address."""
    s = sec_stack
    target = b"/streams/" + s.camera_id.encode() + b"/" + _path(s, TRAVERSALS[name])
    target += b"?pb_grant=" + session_grant(s).encode()
    direct_host, direct_port = s.gateway_direct_url.removeprefix("http://").rsplit(":", 1)
    fronted = (direct_host, int(direct_port)) != (s.gateway_host, s.gateway_port)
    before = pod_requests_total(s)
    r = raw_request(s.gateway_host, s.gateway_port, target)
    d = raw_request(direct_host, int(direct_port), target)
    caused = pod_requests_total(s) - before
    leaks = _leaks(s, r.raw) + _leaks(s, d.raw)
    figure(f"pod requests caused by gateway traversal {name}", caused, "requests", "== 0", caused == 0)
    assert not leaks, (leaks, r.raw[:300])
    assert _refusal(d) == expected_gateway(name), d.raw[:300]  # refused by the rule meant to refuse it
    if fronted and name in NGINX_FRONT_REFUSES:
        assert r.status == 400 and b"<center><h1>400 Bad Request</h1></center>" in r.body, r.raw[:300]
    else:
        assert _refusal(r) == expected_gateway(name), r.raw[:300]  # nginx passed it on unchanged
    assert caused == 0


# the camera segment of the path: not a camera id → 404 before anything else; a real other
# camera → the grant is for another camera (403)
CAMERA_EXPECTED = {"camera_dotdot": (404, b"not found"), "camera_encoded_dotdot": (404, b"not found"),
                   "camera_encoded_slash": (404, b"not found"),
                   "camera_other": NOT_GRANTED}


@pytest.mark.parametrize("name", list(CAMERA_TRAVERSALS))
def test_gateway_refuses_traversal_in_the_camera_segment(sec_stack, figure, name):
    s = sec_stack
    target = b"/streams/" + CAMERA_TRAVERSALS[name] + b"?pb_grant=" + session_grant(s).encode()
    before = pod_requests_total(s)
    r = raw_request(s.gateway_host, s.gateway_port, target)
    caused = pod_requests_total(s) - before
    figure(f"pod requests caused by gateway traversal {name}", caused, "requests", "== 0", caused == 0)
    assert not _leaks(s, r.raw), r.raw[:300]
    assert _refusal(r) == CAMERA_EXPECTED[name], r.raw[:300]
    assert caused == 0


@pytest.mark.parametrize("name", list(TRAVERSALS))
def test_pod_refuses_traversal_with_a_valid_token(sec_stack, figure, name):
    s = sec_stack
    target = b"/cameras/" + s.camera_id.encode() + b"/" + _path(s, TRAVERSALS[name])
    r = raw_request(s.pod_host, s.pod_port, target, {"Authorization": f"Bearer {pod_token(s)}"})
    leaks = _leaks(s, r.raw)
    figure(f"sentinel/secret leaks from pod traversal {name}", len(leaks), "leaks", "== 0", not leaks)
    assert not leaks, (leaks, r.raw[:300])
    assert _refusal(r) == expected_pod(name), r.raw[:300]




@pytest.mark.parametrize("name", list(CAMERA_TRAVERSALS))
def test_pod_refuses_traversal_in_the_camera_segment(sec_stack, figure, name):
    s = sec_stack
    r = raw_request(s.pod_host, s.pod_port, b"/cameras/" + CAMERA_TRAVERSALS[name],
                    {"Authorization": f"Bearer {pod_token(s)}"})
    leaks = _leaks(s, r.raw)
    figure(f"sentinel/secret leaks from pod traversal {name}", len(leaks), "leaks", "== 0", not leaks)
    assert not leaks, r.raw[:300]
    # the token is checked first: it is for the real camera, not for whatever the path names
    assert _refusal(r) == (403, b"token is for another camera or pod"), r.raw[:300]


@pytest.mark.parametrize("target", [
    b"/assets/../../sentinel.ts", b"/assets/%2e%2e/%2e%2e/sentinel.ts", b"/assets/..%2f..%2fgateway.yaml",
    b"/watch/..%2f..%2fsentinel.ts", b"/watch/%2e%2e", b"/..%2f..%2fgateway.yaml", b"/schema/..%2f..%2fgateway.yaml",
    b"//etc/passwd", b"/../../../../etc/passwd",
])
def test_gateway_other_routes_serve_no_files(sec_stack, figure, target):
    s = sec_stack
    r = raw_request(s.gateway_host, s.gateway_port, target)
    leaks = _leaks(s, r.raw)
    figure(f"sentinel/secret leaks from gateway route {target.decode()}", len(leaks), "leaks", "== 0", not leaks)
    assert not leaks, r.raw[:300]
    assert r.status in (400, 404), r.raw[:300]


def test_the_sentinels_are_reachable_files(sec_stack, figure):
    """Control: the sentinels exist, the pod serves a plain file by its name and the marker in
    it is seen, so the refusals above come from the path rules and not from missing files
    or a blind leak check."""
    s = sec_stack
    assert all(p.exists() for p in s.sentinels.files.values())
    assert all(s.sentinels.leaked_in(p.read_bytes()) for p in s.sentinels.files.values())
    r = raw_request(s.pod_host, s.pod_port, f"/cameras/{s.camera_id}/index.m3u8".encode(),
                    {"Authorization": f"Bearer {pod_token(s)}"})
    assert r.status == 200 and b"#EXTM3U" in r.body
    # the plain sentinel inside the camera directory IS served, and _leaks sees it
    r = raw_request(s.pod_host, s.pod_port, f"/cameras/{s.camera_id}/{s.sentinels.served.name}".encode(),
                    {"Authorization": f"Bearer {pod_token(s)}"})
    seen = _leaks(s, r.raw)
    figure("plain sentinel in the camera directory served and detected", len(seen), "leaks", "== 1",
           seen == ["sentinel"])
    assert r.status == 200 and seen == ["sentinel"], r.raw[:300]
    # the other camera's sentinel is served to a token for that camera if the pod had it:
    # it does not (unknown camera), which is the 404 the traversal tests must not confuse with success
    r = raw_request(s.pod_host, s.pod_port, b"/cameras/other-cam/index.m3u8",
                    {"Authorization": f"Bearer {pod_token(s, 'other-cam')}"})
    figure("sentinel served for another (unconfigured) camera", int(s.sentinels.leaked_in(r.raw)), "responses",
           "== 0", not s.sentinels.leaked_in(r.raw))
    assert r.status == 404 and not s.sentinels.leaked_in(r.raw)
