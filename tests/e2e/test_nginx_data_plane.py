"""The nginx data plane (issue 15, points 3 and 4), end to end: real camera, pod and gateway
(2 workers sharing a host store), and Debian's nginx with the Lua module, both ways it runs:
configured only by what ``platebridge-gateway nginx-conf`` writes (``data_plane: nginx``), and
started by the gateway itself (the default, ``data_plane: auto``).

* A media segment kept in the host store, asked for with its grant, is served by nginx
  itself: the gateway sees no request for it, the bytes are the pod's, the headers are the
  gateway's (type, Cache-Control, CORS for allowed origins only, nosniff), ranges work.
* Every request nginx does not serve reaches the gateway unchanged: playlists, init
  segments, misses, an evicted entry. Every bad grant (tampered, another path, another
  camera, a playlist grant, expired, none, an extra query parameter) gets the gateway's own
  refusal, never a stored byte; traversal spellings name no file.
* The watch page plays through nginx in headless chromium while HTTP players watch too,
  with no failed request, and nginx serves part of their segment requests.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import struct
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from stack import VENV_BIN

from gateway.grants import Grant, GrantSigner
from protocol.tokens import Keyring, mint_user_token
from tests.e2e.conftest import assert_video_plays, free_port, make_stack, pod_metric, spawn_nginx, wait_until
from tests.e2e.test_gateway_workers import SplitPlayers

pytestmark = pytest.mark.e2e

MODULES = "/usr/lib/nginx/modules/"
ORIGIN = "https://portal.example.com"


def start_data_plane(s, tmp: Path) -> int:
    """Write the data plane's config with the gateway's own CLI and start nginx (its own
    prefix, daemon off, a child of the stack) with it; returns nginx's port."""
    tmp.mkdir(mode=0o700)
    port = free_port("127.0.0.1")
    out = subprocess.run([str(VENV_BIN / "platebridge-gateway"), "nginx-conf",
                          "--config", str(s.workdir / "gateway.yaml"),
                          "--out", str(tmp / "conf"), "--listen", f"127.0.0.1:{port}",
                          "--access-log", str(tmp / "access.log"), "--error-log", str(tmp / "error.log")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    conf = tmp / "conf" / "platebridge-dataplane.conf"
    assert conf.stat().st_mode & 0o777 == 0o600  # it holds the grant keys
    head = f"load_module {MODULES}ndk_http_module.so;\nload_module {MODULES}ngx_http_lua_module.so;\n"
    proc = spawn_nginx(s, tmp, conf, head=head, workers=2)

    def up() -> bool:
        assert proc.popen.poll() is None, proc.tail() + (tmp / "main-error.log").read_text(errors="replace")
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200

    wait_until(up, 20, what="nginx data plane")
    return port


def gateway_requests(s, kind: str = "[a-z]+") -> float:
    """/streams/ requests the gateway answered (summed over its workers and statuses) of ``kind``
    (a regex; refusals before the file kind is known count as ``other``)."""
    text = httpx.get(f"{s.direct_url}/metrics", timeout=5).text
    return sum(float(m.group(1)) for m in re.finditer(
        rf'^platebridge_gateway_requests_total\{{[^}}]*kind="{kind}"[^}}]*\}} ([0-9.e+]+)$', text, re.MULTILINE))


def gateway_segment_requests(s) -> float:
    """Segment requests the gateway answered."""
    return gateway_requests(s, "segment")


def open_session(base: str, s) -> tuple[str, str]:
    """Start a viewing session through ``base``; returns (playlist URL with its grant, playlist text)."""
    r = httpx.get(f"{base}/streams/{s.camera_id}/index.m3u8?token={s.user_token()}", timeout=10)
    assert r.status_code == 302, r.text
    url = f"{base}/streams/{s.camera_id}/{r.headers['location']}"
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    return url, r.text


def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client normalises its dot segments or escapes);
    returns (status, body)."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return int(head.split()[1]), body


def uris(playlist: str) -> list[str]:
    """Segment URIs of a media playlist (relative, grant included), oldest first."""
    return [ln for ln in playlist.splitlines() if ln and not ln.startswith("#")]


@pytest.fixture(scope="module", params=["external", "managed"])
def plane(request, tmp_path_factory):
    """Camera, pod, gateway (2 workers) and its nginx data plane: ``external``, an nginx started
    here with what ``platebridge-gateway nginx-conf`` writes (``data_plane: nginx``); ``managed``,
    the default: the gateway runs nginx itself (``data_plane: auto``). Attributes: ``nginx_url``
    (through nginx), ``direct_url`` (the gateway's workers), ``store``, ``access_log``,
    ``error_log`` (where nginx writes them)."""
    tmp = tmp_path_factory.mktemp(f"dataplane-{request.param}")
    s = make_stack(tmp / "stack")
    store = tmp / "store"
    common = {"host_cache_dir": str(store), "workers": 2, "allowed_origins": [ORIGIN], "access_log": False}
    if request.param == "external":
        s.gateway_overrides = {"data_plane": "nginx", **common}
    else:
        s.gateway_overrides = {**common, "nginx_access_log": str(tmp / "access.log")}
    try:
        s.start_camera()
        s.start_pod(timeout=60)
        s.start_gateway()
        s.store = store
        if request.param == "external":
            port = start_data_plane(s, tmp / "nginx")
            s.nginx_url, s.direct_url = f"http://127.0.0.1:{port}", s.gateway_url
            s.access_log, s.error_log = tmp / "nginx" / "access.log", tmp / "nginx" / "error.log"
        else:
            s.nginx_url, s.direct_url = s.gateway_url, f"http://127.0.0.1:{s.gateway_internal_port}"
            s.access_log, s.error_log = tmp / "access.log", s.workdir / "gateway.log"  # nginx's alerts: stderr
        yield s
    finally:
        s.stop()


def test_a_kept_segment_is_served_by_nginx_with_the_gateways_headers(plane, figure):
    s = plane
    base = s.nginx_url
    _, text = open_session(base, s)
    seg = next(u for u in reversed(uris(text)) if u.split("?")[0].endswith((".m4s", ".ts")))
    url = f"{base}/streams/{s.camera_id}/{seg}"
    direct = f"{s.direct_url}/streams/{s.camera_id}/{seg}"
    pod0, gw0 = pod_metric(s, "segment"), gateway_segment_requests(s)
    first = httpx.get(url, headers={"Origin": ORIGIN}, timeout=10)  # a miss: the gateway fetches and keeps it
    assert first.status_code == 200
    wait_until(lambda: any(p.suffix == ".data" for p in s.store.iterdir()), 5, what="the segment kept")
    gw1 = gateway_segment_requests(s)
    second = httpx.get(url, headers={"Origin": ORIGIN}, timeout=10)
    other = httpx.get(url, headers={"Origin": "https://evil.example"}, timeout=10)
    ranged = httpx.get(url, headers={"Range": "bytes=10-99"}, timeout=10)
    head = httpx.head(url, timeout=10)
    gw2, pod2 = gateway_segment_requests(s), pod_metric(s, "segment")
    gateway_answer = httpx.get(direct, headers={"Origin": ORIGIN}, timeout=10)

    assert gw1 == gw0 + 1 and gw2 == gw1, (gw0, gw1, gw2)  # nginx served the four repeats itself
    assert pod2 == pod0 + 1  # one pod fetch in all
    assert second.status_code == 200 and second.content == first.content == gateway_answer.content
    for h in ("content-type", "cache-control", "vary", "access-control-allow-origin",
              "access-control-expose-headers", "x-content-type-options", "referrer-policy"):
        assert second.headers.get(h) == gateway_answer.headers.get(h), h
    assert second.headers["content-type"] == "video/mp4" if seg.split("?")[0].endswith(".m4s") else "video/mp2t"
    assert "access-control-allow-origin" not in other.headers and other.headers["vary"] == "Origin"
    assert ranged.status_code == 206 and ranged.content == first.content[10:100]
    assert ranged.headers["content-range"] == f"bytes 10-99/{len(first.content)}"
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(first.content)
    log = s.access_log.read_text()
    assert "pb_grant" not in log  # grants never in nginx's access log
    figure("repeat segment requests the gateway saw (nginx data plane)", gw2 - gw1, "requests", "== 0", gw2 == gw1)


def test_whatever_nginx_does_not_serve_is_the_gateways(plane):
    s = plane
    base = s.nginx_url
    got: dict = {}

    def two_segments() -> bool:  # a pod that has just started lists one
        got["url"], got["text"] = open_session(base, s)
        got["media"] = [u for u in uris(got["text"]) if u.split("?")[0].endswith((".m4s", ".ts"))]
        return len(got["media"]) >= 2

    wait_until(two_segments, 30, 0.5, what="two media segments in the playlist")
    playlist_url, text, media = got["url"], got["text"], got["media"]
    seg, older = media[-1], media[-2]
    url = f"{base}/streams/{s.camera_id}/{seg}"
    assert httpx.get(url, timeout=10).status_code == 200
    assert httpx.get(f"{base}/streams/{s.camera_id}/{older}", timeout=10).status_code == 200
    name, grant = seg.split("?pb_grant=")
    older_grant = older.split("?pb_grant=")[1]
    signer = GrantSigner([s.grant_secret.encode()])
    now = int(time.time())
    expired = signer.mint(Grant("media", s.pod_id, now - 5, now + 60, b"expired!"), camera_id=s.camera_id, path=name)
    playlist_grant = playlist_url.split("pb_grant=")[1]
    flipped = grant[:-3] + ("A" if grant[-3] != "A" else "B") + grant[-2:]
    # the same bytes in another base64url spelling (a bit set past the last byte, or padding):
    # only the spelling the gateway wrote opens a file
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = (grant[:-1] + alphabet[alphabet.index(grant[-1]) + 1] if len(grant) % 4 in (2, 3)
                 else grant + "==")
    assert base64.urlsafe_b64decode(respelled + "=" * (-len(respelled) % 4)) == \
        base64.urlsafe_b64decode(grant + "=" * (-len(grant) % 4))
    cases = {
        "tampered": f"/streams/{s.camera_id}/{name}?pb_grant={flipped}",
        "another path's grant": f"/streams/{s.camera_id}/{name}?pb_grant={older_grant}",
        "another camera": f"/streams/other-cam/{name}?pb_grant={grant}",
        "a playlist grant": f"/streams/{s.camera_id}/{name}?pb_grant={playlist_grant}",
        "expired": f"/streams/{s.camera_id}/{name}?pb_grant={expired}",
        "another spelling of the grant": f"/streams/{s.camera_id}/{name}?pb_grant={respelled}",
        "padding": f"/streams/{s.camera_id}/{name}?pb_grant={grant}=",
        "no grant": f"/streams/{s.camera_id}/{name}",
        "two grants": f"/streams/{s.camera_id}/{name}?pb_grant={grant}&pb_grant={grant}",
        "an extra parameter": f"/streams/{s.camera_id}/{name}?pb_grant={grant}&x=1",
        "the store file by name": "/" + next(p.name for p in s.store.iterdir() if p.suffix == ".data"),
        "traversal": f"/streams/{s.camera_id}/..%2f..%2f{name}?pb_grant={grant}",
        "encoded dots": f"/streams/{s.camera_id}/%2e%2e/%2e%2e/{name}?pb_grant={grant}",
        # spellings nginx would normalise to the granted file: the gateway refuses them, so nginx must not serve
        "a dot segment": f"/streams/{s.camera_id}/x/../{name}?pb_grant={grant}",
        "an empty segment": f"/streams/{s.camera_id}//{name}?pb_grant={grant}",
        "an encoded slash": f"/streams/{s.camera_id}/x%2F..%2F{name}?pb_grant={grant}",
        "an encoded letter": f"/%73treams/{s.camera_id}/{name}?pb_grant={grant}",
    }
    body = httpx.get(url, timeout=10).content
    for what, target in cases.items():
        before = gateway_requests(s)
        via_nginx = raw_get(base, target)
        assert via_nginx[0] >= 400 and via_nginx[1] != body, (what, via_nginx[0])
        passed_on = gateway_requests(s) - before
        direct = raw_get(s.direct_url, target)
        if what != "the store file by name":
            # the gateway's own refusal, word for word: nginx passed the request on
            assert via_nginx == direct, what
            assert passed_on == 1, what
    # odd grants Lua must survive without an exception (which would log the request line, grant
    # included): wrong lengths, a pod id that is not a DNS label, bytes that are not UTF-8
    raw = base64.urlsafe_b64decode(grant + "=" * (-len(grant) % 4))
    odd = [raw[:19] + b"\xff\xfe" + raw[21:], raw[:18] + b"\xff" + raw[19:], raw[:18] + b"\x00" + raw[19:],
           struct.pack(">BB", 2, 1) + b"\x00" * 60, os.urandom(40), os.urandom(110), raw + b"\x00"]
    for junk in odd:
        token = base64.urlsafe_b64encode(junk).rstrip(b"=").decode()
        r = httpx.get(f"{base}/streams/{s.camera_id}/{name}?pb_grant={token}", timeout=10)
        assert r.status_code in (400, 401, 403), r.status_code
    errors = s.error_log.read_text()
    assert "js exception" not in errors and "pb_grant" not in errors, errors[-2000:]
    # never through nginx: /metrics in any spelling
    for target in ("/metrics", "/metrics/", "/metrics%2F"):
        assert raw_get(base, target)[0] == 404, target
    # as the gateway: one byte range, no cacheable error, exact origins
    multi = httpx.get(url, headers={"Range": "bytes=0-1,5-6"}, timeout=10)
    assert multi.status_code in (200, 416) and "multipart" not in multi.headers["content-type"]
    beyond = httpx.get(url, headers={"Range": "bytes=999999999-"}, timeout=10)
    assert beyond.status_code == 416 and "immutable" not in beyond.headers.get("cache-control", "")
    upper = httpx.get(url, headers={"Origin": ORIGIN.upper()}, timeout=10)
    assert upper.status_code == 200 and "access-control-allow-origin" not in upper.headers
    # playlists and init segments always reach the gateway
    before = gateway_segment_requests(s)
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
    if init:
        r = httpx.get(f"{base}/streams/{s.camera_id}/{init.group(1)}", timeout=10)
        assert r.status_code == 200 and r.headers["cache-control"] == "private, no-cache"
        assert gateway_segment_requests(s) == before + 1
    # an entry evicted from the store: the gateway fetches it again
    for p in s.store.iterdir():
        if p.suffix == ".data":
            p.unlink()
    pod0 = pod_metric(s, "segment")
    again = httpx.get(url, timeout=10)
    assert again.status_code == 200 and again.content == body and pod_metric(s, "segment") >= pod0


def test_watch_page_plays_through_nginx_while_players_watch(plane, browser, figure):
    s = plane
    tokens = {s.camera_id: [mint_user_token(Keyring.single(s.secret), user_id=f"viewer-{j}", camera_id=s.camera_id,
                                            pod_id=s.pod_id, ttl=600) for j in range(10)]}
    seen = len(s.access_log.read_text().splitlines())  # the other tests' requests
    host, port = s.nginx_url.removeprefix("http://").split(":")
    players = SplitPlayers(host, int(port), None)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(players.run(tokens), loop)
    try:
        browser.get(f"{s.nginx_url}/watch/{s.camera_id}?token={s.user_token()}")
        assert_video_plays(browser)
        wait_until(lambda: sum(1 for e in list(players.events) if e.kind == "segment" and e.status == 200) >= 40,
                   40, 0.2, what="players receiving segments")
    finally:
        loop.call_soon_threadsafe(players.stop.set)  # type: ignore[union-attr]
        runner.result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    events = list(players.events)
    bad = [e for e in events if e.status >= 400]
    log = s.access_log.read_text().splitlines()[seen:]
    segs = [ln for ln in log if re.search(r'"GET /streams/[^ ]+\.(m4s|ts)"', ln)]
    by_nginx = [ln for ln in segs if ln.endswith('"-"')]
    share = len(by_nginx) / max(1, len(segs))
    # Live viewers ask for a new segment (or a preload-hinted part) together, mostly while the
    # gateway is still fetching it: those requests follow the gateway's fetch. nginx serves the
    # ones that come once it is kept (late joiners, slower players, retries).
    figure("segment requests nginx served itself (11 viewers of one camera)", round(share, 2), "share", "> 0",
           share > 0)
    assert not bad, bad[:5]
    odd = [ln for ln in by_nginx if '" 200 ' not in ln]
    assert by_nginx and not odd, odd
