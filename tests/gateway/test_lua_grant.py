"""The Lua grant check of the nginx data plane (``gateway/lua/platebridge_grant.lua``) against
the gateway's own minting and naming (``gateway/grants.py``, ``gateway/hoststore.py``).

Real Debian nginx + Lua (LuaJIT), started as the gateway starts it (:class:`gateway.dataplane.ManagedNginx`),
with a stand-in for the gateway's workers behind it that answers every request it is handed
with 418: so each answer says who served it. nginx may serve a kept segment only for the exact
URI and spelling the gateway wrote; anything else, whatever the grant's bytes, is passed on.
Grant lengths cover every base64url tail (``len % 4`` of 0, 2 and 3), which is where a second
spelling of the same bytes exists."""

import base64
import contextlib
import os
import random
import socket
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import gateway
from gateway.config import parse_config
from gateway.dataplane import ManagedNginx, find_nginx, free_loopback_port, load_modules
from gateway.grants import Grant, GrantError, GrantSigner
from gateway.hoststore import key_name
from gateway.nginxconf import LUA_MODULE, lua_paths

CAM = "gate-cam"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: pod ids whose media grants end in each base64url tail: 37, 38 and 48 bytes
PODS = {"p1": 2, "p12": 3, "main-gate-pod": 0}


class _Workers(BaseHTTPRequestHandler):
    """Stand-in for the gateway's workers: 418 for everything nginx passes on."""

    def do_GET(self):
        body = b"passed on"
        self.send_response(418)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _plane(tmp_path_factory, **settings):
    """A managed nginx data plane for ``settings`` (grant keys), with the 418 stand-in behind it:
    yields ``(base URL, store directory, GrantSigner of its keys)``."""
    store = tmp_path_factory.mktemp("store")
    run_dir = tmp_path_factory.mktemp("run")
    os.chmod(run_dir, 0o700)
    workers = ThreadingHTTPServer(("127.0.0.1", 0), _Workers)
    threading.Thread(target=workers.serve_forever, daemon=True).start()
    cfg = parse_config({"stream_secret": "z" * 40, **settings,
                        "pods": dict.fromkeys(PODS, "http://127.0.0.2:8000"),
                        "data_plane": "managed", "host_cache_dir": str(store)}, env={})
    found = find_nginx(cfg)
    assert not isinstance(found, str), found
    port = free_loopback_port()
    nginx = ManagedNginx(cfg, found, run_dir=str(run_dir / "nginx"), host="127.0.0.1", port=port,
                         internal_port=workers.server_address[1], workers=1, backlog=64)
    nginx.prepare()
    nginx.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                httpx.get(base + "/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield base, store, GrantSigner(cfg.grant_keys())
    finally:
        nginx.stop()
        workers.shutdown()


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with _plane(tmp_path_factory, grant_secret="g" * 40) as p:
        yield p


def _keep(store, pod: str, path: str) -> bytes:
    """A kept segment, as the host store names it."""
    data = os.urandom(1000) + path.encode()
    (store / f"{key_name((pod, CAM, path, ''))}.data").write_bytes(data)
    return data


def _grant(signer: GrantSigner, pod: str, path: str, *, exp_in: int = 60, kind: str = "media",
           camera: str = CAM) -> str:
    now = int(time.time())
    return signer.mint(Grant(kind, pod, now + exp_in, now + 600, b"session1"), camera_id=camera, path=path)


def _respelled(token: str) -> str:
    """The same bytes in another base64url spelling: a bit set past the last byte (tails of 2
    and 3 characters), or padding (whole groups)."""
    if len(token) % 4 in (2, 3):
        return token[:-1] + ALPHABET[ALPHABET.index(token[-1]) + 1]
    return token + "=="


def _raw(base: str, method: str, target: str) -> tuple[int, bytes]:
    """``method target`` sent as written (an HTTP client would normalise dot segments)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _bytes(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@pytest.mark.parametrize("pod", list(PODS))
def test_nginx_serves_the_exact_uri_and_spelling_the_gateway_wrote(plane, pod):
    base, store, signer = plane
    path = f"seg_{len(pod)}.m4s"
    data = _keep(store, pod, path)
    grant = _grant(signer, pod, path)
    assert len(grant) % 4 == PODS[pod]
    ok = httpx.get(f"{base}/streams/{CAM}/{path}?pb_grant={grant}", timeout=5)
    assert ok.status_code == 200 and ok.content == data
    other = _respelled(grant)
    assert other != grant and _bytes(other) == _bytes(grant)
    refused = {
        "another spelling": f"/streams/{CAM}/{path}?pb_grant={other}",
        "expired": f"/streams/{CAM}/{path}?pb_grant={_grant(signer, pod, path, exp_in=-1)}",
        "a playlist grant": f"/streams/{CAM}/{path}?pb_grant={_grant(signer, pod, path, kind='playlist')}",
        "another path": f"/streams/{CAM}/{path}?pb_grant={_grant(signer, pod, 'x' + path)}",
        "another camera": f"/streams/{CAM}/{path}?pb_grant={_grant(signer, pod, path, camera='cam-2')}",
        "a second parameter": f"/streams/{CAM}/{path}?pb_grant={grant}&a=1",
        "the grant twice": f"/streams/{CAM}/{path}?pb_grant={grant}&pb_grant={grant}",
        "a trailing &": f"/streams/{CAM}/{path}?pb_grant={grant}&",
        "another parameter first": f"/streams/{CAM}/{path}?a=1&pb_grant={grant}",
        "a dot segment": f"/streams/{CAM}/x/../{path}?pb_grant={grant}",
        "an escaped letter": f"/streams/{CAM}/%73{path[1:]}?pb_grant={grant}",
        "a cut grant": f"/streams/{CAM}/{path}?pb_grant={grant[:-4]}",
        "a HEAD is served, a POST passed on": f"/streams/{CAM}/{path}?pb_grant={grant}",
    }
    for what, target in refused.items():
        method = "POST" if "POST" in what else "GET"
        assert _raw(base, method, target) == (418, b"passed on"), what
    assert _raw(base, "GET", f"/streams/{CAM}/{path}?pb_grant={grant}") == (200, data)
    head = httpx.head(f"{base}/streams/{CAM}/{path}?pb_grant={grant}", timeout=5)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)


def test_a_long_path_goes_to_the_gateway(plane):
    """Paths of 128 characters or more are checked by the gateway only (Lua writes the MAC's
    length prefixes as single characters, so it takes paths below 128)."""
    base, store, signer = plane
    for n in (127, 128, 200):
        path = "a" * (n - 4) + ".m4s"
        data = _keep(store, "p1", path)
        r = httpx.get(f"{base}/streams/{CAM}/{path}?pb_grant={_grant(signer, 'p1', path)}", timeout=5)
        if n < 128:
            assert r.status_code == 200 and r.content == data
        else:
            assert (r.status_code, r.content) == (418, b"passed on"), n


@pytest.mark.parametrize("pod", ["", "P1", "a\x01b", "p1/../x", "-p1", "p1-", "a" * 64])
def test_a_pod_id_the_gateway_would_refuse_is_passed_on(plane, pod):
    """A grant under the right key whose pod id is not a DNS label (the gateway never mints
    one, but verify() refuses it: "malformed grant"): nginx passes it on even when a file of
    that name is kept. Found by an attack run against the Lua check."""
    base, store, signer = plane
    path = "seg_pod.m4s"
    now = int(time.time())
    raw_pod = pod.encode("latin-1")
    body = struct.pack(">BBII8sB", 2, 1, now + 60, now + 600, b"session1", len(raw_pod)) + raw_pod
    token = base64.urlsafe_b64encode(body + signer._mac(signer._keys[0], body, CAM, path, "")).rstrip(b"=").decode()
    with pytest.raises(GrantError, match="malformed grant"):
        signer.verify(token, camera_id=CAM, path=path, query="", kind="media", now=now)
    (store / f"{key_name((pod, CAM, path, ''))}.data").write_bytes(b"kept")
    assert _raw(base, "GET", f"/streams/{CAM}/{path}?pb_grant={token}") == (418, b"passed on")


def test_every_configured_key_verifies_and_long_keys_are_hashed_first(tmp_path_factory):
    """A key rotation: grants of the signing key and of the older key are both served; a key
    longer than SHA-256's 64-byte block is hashed first (RFC 2104 §2), as Python's hmac does;
    a grant under a key nginx was not given is passed on."""
    with _plane(tmp_path_factory, grant_secrets={"new": "n" * 100, "old": "o" * 40},
                grant_secret_primary="new") as (base, store, signer):
        path = "seg_rot.m4s"
        data = _keep(store, "p1", path)
        now = int(time.time())
        grant = Grant("media", "p1", now + 60, now + 600, b"session1")
        for key in (b"n" * 100, b"o" * 40):
            token = GrantSigner([key]).mint(grant, camera_id=CAM, path=path)
            r = httpx.get(f"{base}/streams/{CAM}/{path}?pb_grant={token}", timeout=5)
            assert (r.status_code, r.content) == (200, data), key[:1]
        stranger = GrantSigner([b"x" * 40]).mint(grant, camera_id=CAM, path=path)
        assert _raw(base, "GET", f"/streams/{CAM}/{path}?pb_grant={stranger}") == (418, b"passed on")
        assert signer.mint(grant, camera_id=CAM, path=path) == GrantSigner([b"n" * 100]).mint(
            grant, camera_id=CAM, path=path)


@pytest.mark.parametrize(("broken", "said"), [
    # an HMAC that is not RFC 2104's: the self-test names the RFC 4231 case it failed
    (("bxor(k, 0x36)", "bxor(k, 0x37)"), "(nginx exited with status 1): "),
    # a libcrypto without the SHA-256 calls the module declares
    (("SHA256_Init", "SHA256_Init_gone"), "(nginx exited with status 1): "),
])
def test_a_wrong_hmac_fails_the_self_test_before_nginx_starts(tmp_path, monkeypatch, broken, said):
    """The module computes HMAC-SHA256 itself over libcrypto's SHA-256 calls, which it declares
    itself; were either ever wrong, every grant would silently go to the gateway. The gateway's
    prepare() runs the module's RFC 4231 self-test in nginx first and refuses, with the reason
    (auto then serves without nginx)."""
    from gateway import nginxconf
    from gateway.errors import ConfigError

    real = nginxconf.lua_source()
    assert broken[0] in real
    monkeypatch.setattr(nginxconf, "lua_source", lambda: real.replace(*broken))
    cfg = parse_config({"stream_secret": "z" * 40, "grant_secret": "g" * 40, "data_plane": "managed",
                        "host_cache_dir": str(tmp_path / "store")}, env={})
    found = find_nginx(cfg)
    assert not isinstance(found, str), found
    nginx = ManagedNginx(cfg, found, run_dir=str(tmp_path / "run"), host="127.0.0.1", port=free_loopback_port(),
                         internal_port=free_loopback_port(), workers=1, backlog=64)
    with pytest.raises(ConfigError) as ei:
        nginx.prepare()
    msg = str(ei.value)
    assert msg.startswith("$.data_plane: the data plane's Lua grant check failed its self-test "), msg
    assert said in msg, msg
    if "0x37" in broken[1]:
        assert "HMAC-SHA256 through libcrypto is wrong (RFC 4231 case 1)" in msg, msg
    else:
        assert "undefined symbol: SHA256_Init_gone" in msg, msg
    assert ("g" * 40).encode().hex() not in msg  # the keys are never quoted


# ---- the target scanner against the pattern it replaced ----------------------------------------
#: the request-target grammar, as PCRE held it before the byte scanner (the module's comment)
PATTERN = (r"^/streams/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/((?:[A-Za-z0-9_-][A-Za-z0-9_.-]*/)*"
           r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\.(?:ts|m4s|aac|vtt))\?pb_grant=([A-Za-z0-9_-]{40,160})\z")

#: asks PCRE (ngx.re.match) and scan_target() about each base64-encoded target of the body
DIFF_LUA = """
ngx.req.read_body()
local scan = require("platebridge_grant").scan_target
local pattern = [==[%s]==]
local out = {}
for line in string.gmatch(ngx.req.get_body_data() or "", "([^\\n]+)") do
    local t = ngx.decode_base64(line)
    local m = ngx.re.match(t, pattern, "jo")
    local c, p, g = scan(t)
    local want = m and (m[1] .. " " .. m[2] .. " " .. m[3]) or "-"
    local got = c and (c .. " " .. p .. " " .. g) or "-"
    out[#out + 1] = want == got and (m and "+" or "=") or ("! " .. line .. " pcre=" .. want .. " scan=" .. got)
end
ngx.print(table.concat(out, "\\n"))
"""


def _targets(n: int, seed: int = 9110) -> list[bytes]:
    """Edge cases of every part of the grammar, and ``n`` mutants of valid targets."""
    grant = "A" * 40
    cams = ["c", "gate-cam", "a" * 63, "a" * 64, "a" * 65, "_cam", "-cam", ".cam", "cam.", "ca..m", "Cam_1.x-y"]
    paths = ["a.ts", "x.m4s", "x.aac", "x.vtt", ".ts", "_.ts", "-.m4s", "a.TS", "a.mp4", "a.key", "a.ts/",
             "a.tsx", "a/b.ts", "a//b.ts", "./a.ts", "a/./b.ts", "a/../b.ts", ".a/b.ts", "a/.b.ts", "a.b.c.m4s",
             "seg_1.m4s", "q/" * 30 + "x.ts", "a%2fb.ts", "a b.ts", "a/.ts", "m4s", ".m4s", "a.m4"]
    grants = [grant, "A" * 39, "A" * 160, "A" * 161, "A" * 40 + "=", "A" * 39 + ".", "-_" * 20, "A" * 40 + "\n"]
    out = [f"/streams/{c}/{p}?pb_grant={g}".encode() for c in cams for p in paths for g in grants[:1]]
    out += [f"/streams/gate-cam/x.m4s?pb_grant={g}".encode() for g in grants]
    out += [b"/streams/", b"/", b"/streams//x.ts?pb_grant=" + b"A" * 40, b"/Streams/c/x.ts?pb_grant=" + b"A" * 40,
            b"/streams/c/x.ts?pb_grant=" + b"A" * 40 + b"&a=1", b"/streams/c/x.ts?a=1&pb_grant=" + b"A" * 40,
            b"/streams/c/x.ts?pb_grant" + b"A" * 40, b"/streams/c/x.ts#?pb_grant=" + b"A" * 40]
    rnd = random.Random(seed)
    hostile = [b"/", b".", b"?", b"=", b"&", b"%", b"-", b"_", b"a", b"Z", b"9", b" ", b"\n", b"\t", b"\x00",
               b"\xc3", b"\xff", b"ts", b".ts", b"m4s", b"..", b"//", b"pb_grant="]
    valid = out[:]
    for _ in range(n):
        t = bytearray(rnd.choice(valid))
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randint(0, len(t))
            op = rnd.random()
            if op < 0.4:
                t[at:at] = rnd.choice(hostile)
            elif op < 0.7 and t:
                del t[min(at, len(t) - 1)]
            elif t:
                t[min(at, len(t) - 1):min(at, len(t) - 1) + 1] = rnd.choice(hostile)
        out.append(bytes(t))
    return out


def test_the_target_scanner_agrees_with_the_pattern_it_replaced(tmp_path):
    """Differential, in nginx's own LuaJIT: PCRE's match of the old pattern against the byte
    scanner, over the grammar's edge cases and 20,000 mutants, captures included."""
    cfg = parse_config({"stream_secret": "z" * 40, "pods": {"p1": "http://127.0.0.2:8000"}}, env={})
    found = find_nginx(cfg)
    assert not isinstance(found, str), found
    lua_dir = os.path.join(os.path.dirname(gateway.__file__), "lua")
    assert os.path.isfile(os.path.join(lua_dir, LUA_MODULE))
    (tmp_path / "diff.lua").write_text(DIFF_LUA % PATTERN)
    port = free_loopback_port()
    (tmp_path / "nginx.conf").write_text(
        load_modules(found.modules) + ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; client_max_body_size 32m; client_body_buffer_size 32m;\n"
        + " ".join(f"{k}_temp_path {tmp_path};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + lua_paths(lua_dir)
        + f"  server {{ listen 127.0.0.1:{port};\n"
        f"    location = /diff {{ content_by_lua_file {tmp_path}/diff.lua; }} }} }}\n")
    p = subprocess.Popen([found.nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                          "-e", str(tmp_path / "error.log")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        targets = [t for t in _targets(20_000) if t]  # an empty line carries no target
        body = b"\n".join(base64.b64encode(t) for t in targets)
        deadline = time.monotonic() + 10
        while True:
            assert p.poll() is None, p.stderr.read().decode() if p.stderr else ""
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/diff", content=body, timeout=60)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        assert r.status_code == 200, (r.status_code, (tmp_path / "error.log").read_text())
        verdicts = r.text.split("\n")
        assert len(verdicts) == len(targets)
        assert [v for v in verdicts if v.startswith("!")] == []
        assert verdicts.count("+") >= 300  # the valid targets and many mutants do match
    finally:
        p.terminate()
        p.wait(10)
