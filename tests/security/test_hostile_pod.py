"""A hostile pod serves playlists whose URIs point at another host: the gateway refuses
the playlist (502), and neither the gateway nor a player of what it serves ever
connects to that host.

Real sockets on loopback: the hostile pod is a small HTTP server on 127.0.0.5, the
"foreign host" another one on 127.0.0.9 that counts every TCP connection it accepts.
The gateway is the real app in process with its real upstream client (no transport
seam), configured with the hostile pod in its static pod map.

The gateway builds every upstream URL from the pod's base URL, so it cannot itself be
led to the foreign host by a playlist; the risk is the *player*, which fetches whatever
URI the served playlist holds. So the tests act as the player (:func:`play`): every URI
of a 200 playlist — found by the permissive reader of :mod:`tests.security.hls_player`,
resolved like a browser — is fetched, through the gateway when it resolves there and
directly otherwise; a refused playlist's body must name no foreign URL. The foreign
host's counter is read after that. The control runs the same player over each raw
hostile playlist (as if the gateway had passed it through) and the counter does count.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.discovery import StaticDiscovery
from tests.gateway.conftest import CAM, POD, keys, make_token
from tests.security.conftest import free_port
from tests.security.hls_player import fetched_uris, player_target

POD_HOST = "127.0.0.5"
FOREIGN_HOST = "127.0.0.9"


class ForeignHost(socketserver.ThreadingTCPServer):
    """Counts accepted connections (``connections``) and answers anything with 200."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        self.connections = 0
        self.lock = threading.Lock()
        super().__init__((FOREIGN_HOST, port), _ForeignHandler)


class _ForeignHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
        self.rfile.readline()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nFOREIGN")


class HostilePod(ThreadingHTTPServer):
    """Serves ``routes`` (path → (status, headers, body)); counts requests per path."""

    daemon_threads = True

    def __init__(self, port: int) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[str] = []
        super().__init__((POD_HOST, port), _PodHandler)


class _PodHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        status, headers, body = self.server.routes.get(self.path.split("?")[0], (404, {}, b"not found"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _serve(server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    return t


@pytest.fixture
def foreign() -> Iterator[ForeignHost]:
    """The foreign host, listening on 127.0.0.9."""
    server = ForeignHost(free_port(FOREIGN_HOST))
    _serve(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def hostile_pod() -> Iterator[HostilePod]:
    """The hostile pod, listening on 127.0.0.5 (routes set by each test)."""
    server = HostilePod(free_port(POD_HOST))
    _serve(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
async def gateway(hostile_pod):
    """The real gateway app with its real upstream client, the hostile pod in its pod map."""
    pod_url = f"http://{POD_HOST}:{hostile_pod.server_address[1]}"
    cfg = parse_config({**keys(), "pods": {POD: pod_url}}, env={})
    app = create_app(cfg, discovery=StaticDiscovery(cfg.pods))
    async with AsyncTestClient(app=app, base_url="http://gw.test") as c:
        c.follow_redirects = False
        yield c


def _hostile_playlists(f: str, pod: str) -> dict[str, str]:
    """Playlists with one foreign URI each; ``f`` is the foreign host:port, ``pod`` the pod's."""
    head = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n"
    seg = "#EXTINF:2.0,\nseg_1.m4s\n"
    ll = "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0\n#EXT-X-PART-INF:PART-TARGET=0.5\n"
    return {
        "segment_absolute_uri": head + f"#EXTINF:2.0,\nhttp://{f}/seg_2.m4s\n",
        "segment_network_path": head + f"#EXTINF:2.0,\n//{f}/seg_2.m4s\n",
        "segment_https": head + f"#EXTINF:2.0,\nhttps://{f}/seg_2.m4s\n",
        "segment_userinfo_trick": head + f"#EXTINF:2.0,\nhttp://{pod}@{f}/cameras/{CAM}/seg_2.m4s\n",
        "segment_decimal_ip": head + f"#EXTINF:2.0,\nhttp://2130706441:{f.split(':')[1]}/seg_2.m4s\n",
        "segment_trailing_dot_host": head + f"#EXTINF:2.0,\nhttp://{f.replace(':', '.:')}/seg_2.m4s\n",
        "segment_backslash_authority": head + f"#EXTINF:2.0,\nhttp:\\\\{f}\\seg_2.m4s\n",
        "ext_x_map_uri": head + f'#EXT-X-MAP:URI="http://{f}/init.mp4"\n' + seg,
        "ext_x_map_network_path": head + f'#EXT-X-MAP:URI="//{f}/init.mp4"\n' + seg,
        "ext_x_key_uri": head + f'#EXT-X-KEY:METHOD=AES-128,URI="http://{f}/key.bin",IV=0x1\n' + seg,
        "ext_x_session_key_uri": head + f'#EXT-X-SESSION-KEY:METHOD=AES-128,URI="//{f}/key.bin"\n' + seg,
        "ext_x_media_uri": head + f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="http://{f}/audio.m3u8"\n'
                                  + seg,
        "ext_x_part_uri": head + ll + f'#EXT-X-PART:DURATION=0.5,URI="http://{f}/part_1.m4s"\n' + seg,
        "ext_x_preload_hint_uri": head + ll + seg + f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="//{f}/part_2.m4s"\n',
        "ext_x_rendition_report_uri": head + ll + seg + f'#EXT-X-RENDITION-REPORT:URI="http://{f}/lo.m3u8",LAST-MSN=1\n',
        "variant_stream_uri": f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nhttp://{f}/hi.m3u8\n",
        "i_frame_stream_uri": f'#EXTM3U\n#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI="//{f}/iframes.m3u8"\n',
        "content_steering_uri": head + f'#EXT-X-CONTENT-STEERING:SERVER-URI="http://{f}/steer.json"\n' + seg,
        "daterange_asset_uri": head + '#EXT-X-DATERANGE:ID="ad",START-DATE="2026-01-01T00:00:00Z",'
                                      f'X-ASSET-URI="http://{f}/ad.m3u8"\n' + seg,
        # smuggled behind a line break only some players honour (hls.js, ExoPlayer): the gateway
        # sees one unknown tag / comment, the player a second line with a foreign URI
        "cr_smuggled_map_in_unknown_tag": head + f'#EXT-X-FOO:1\r#EXT-X-MAP:URI="http://{f}/init.mp4"\n' + seg,
        "cr_smuggled_segment_in_extinf_title": head + f"#EXTINF:2.0,title\rhttp://{f}/seg_2.m4s\n",
        "u2028_smuggled_key_in_comment": head + f'# note\u2028#EXT-X-KEY:METHOD=AES-128,URI="http://{f}/key.bin"\n'
                                        + seg,
        "u2029_smuggled_part_in_unknown_tag": head + ll
        + f'#EXT-X-BAR\u2029#EXT-X-PART:DURATION=0.5,URI="//{f}/p.m4s"\n' + seg,
    }


HOSTILE = list(_hostile_playlists("h:1", "p:2"))
GATEWAY = "http://gw.test"


async def _session(gateway) -> tuple[str, str]:
    r = await gateway.get(f"/streams/{CAM}/index.m3u8?token={make_token()}")
    assert r.status_code == 302, r.text
    return f"/streams/{CAM}/" + r.headers["location"], r.headers["location"].split("pb_grant=")[1]


async def play(gateway, playlist_path: str, text: str) -> list[tuple[str, int]]:
    """Act as a player on the playlist ``text`` served at ``playlist_path`` on the gateway:
    fetch every URI in it, through the gateway if it resolves there, else directly from
    whatever host it names (real sockets). Returns ``[(uri, status)]``; status 0 when the
    direct fetch failed (the connection attempt still reaches a listening host)."""
    out = []
    async with httpx.AsyncClient(timeout=3) as direct:
        for uri in fetched_uris(text):
            scheme, host, port, target = player_target(GATEWAY + playlist_path, uri)
            if (scheme, host, port) == ("http", "gw.test", 80):
                out.append((uri, (await gateway.get(target)).status_code))
                continue
            try:
                r = await direct.get(f"{scheme}://{host}:{port}{target}")
                out.append((uri, r.status_code))
            except httpx.HTTPError:
                out.append((uri, 0))
    return out


def _names_foreign(text: str, f: str) -> bool:
    """Whether ``text`` names the foreign host in any spelling the hostile playlists use."""
    return any(x in text for x in (FOREIGN_HOST, f, "2130706441", f.replace(":", ".:"), "://", "//" + f))


@pytest.mark.parametrize("name", HOSTILE)
async def test_playlist_with_a_foreign_uri_is_502_and_the_foreign_host_gets_nothing(
        gateway, hostile_pod, foreign, figure, name):
    f = f"{FOREIGN_HOST}:{foreign.server_address[1]}"
    pod = f"{POD_HOST}:{hostile_pod.server_address[1]}"
    text = _hostile_playlists(f, pod)[name]
    hostile_pod.routes[f"/cameras/{CAM}/index.m3u8"] = (200, {"Content-Type": "application/vnd.apple.mpegurl"},
                                                        text.encode())
    url, grant = await _session(gateway)
    r = await gateway.get(url)
    # the player: everything a 200 playlist names (none is expected: the playlist is refused)
    played = await play(gateway, url, r.text) if r.status_code == 200 else []
    # whatever a player might guess from the refused playlist, with the grant it holds
    guesses = ["seg_2.m4s", "init.mp4", "key.bin", "audio.m3u8", "part_1.m4s", "part_2.m4s", "lo.m3u8", "hi.m3u8",
               "iframes.m3u8", "ad.m3u8", "steer.json", f"http:%2F%2F{f}%2Fseg_2.m4s", f"{f}/seg_2.m4s"]
    follow_ups = [(await gateway.get(f"/streams/{CAM}/{g}?pb_grant={grant}")).status_code for g in guesses]
    figure(f"connections to the foreign host caused by {name}", foreign.connections, "connections", "== 0",
           foreign.connections == 0)
    assert r.status_code == 502, (r.text, played)
    assert not _names_foreign(r.text, f) and "#EXTM3U" not in r.text, r.text
    # refused: 400 bad path, 404 unknown file type, 403 the player's grant opens only the playlist's own URI
    assert all(code in (400, 403, 404) for code in follow_ups), follow_ups
    assert hostile_pod.seen == [f"/cameras/{CAM}/index.m3u8"]  # the gateway fetched the playlist only
    assert foreign.connections == 0


@pytest.mark.parametrize("name", HOSTILE)
async def test_control_a_player_of_the_raw_hostile_playlist_reaches_the_foreign_host(gateway, foreign, figure, name):
    """Control for the test above: had the gateway passed the playlist through, the same
    player would have connected to the foreign host, and the counter would show it."""
    f = f"{FOREIGN_HOST}:{foreign.server_address[1]}"
    text = _hostile_playlists(f, f"{POD_HOST}:1")[name]
    played = await play(gateway, f"/streams/{CAM}/index.m3u8?pb_grant=x", text)
    figure(f"foreign host connections by a player of raw {name}", foreign.connections, "connections", ">= 1",
           foreign.connections >= 1)
    assert _names_foreign(text, f)
    assert foreign.connections >= 1, played


async def test_pod_redirecting_to_a_foreign_host_is_not_followed(gateway, hostile_pod, foreign, figure):
    f = f"{FOREIGN_HOST}:{foreign.server_address[1]}"
    ok = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.0,\nseg_1.m4s\n"
    hostile_pod.routes[f"/cameras/{CAM}/index.m3u8"] = (200, {}, ok.encode())
    hostile_pod.routes[f"/cameras/{CAM}/seg_1.m4s"] = (302, {"Location": f"http://{f}/seg_1.m4s"}, b"")
    hostile_pod.routes[f"/cameras/{CAM}/init.mp4"] = (307, {"Location": f"//{f}/init.mp4"}, b"")
    url, _ = await _session(gateway)
    r = await gateway.get(url)
    assert r.status_code == 200
    played = dict(await play(gateway, url, r.text))  # the player fetches the segment and the init segment
    figure("connections to the foreign host caused by pod redirects", foreign.connections, "connections", "== 0",
           foreign.connections == 0)
    assert len(played) == 2 and set(played.values()) == {502}, played
    assert hostile_pod.seen == [f"/cameras/{CAM}/index.m3u8", f"/cameras/{CAM}/init.mp4", f"/cameras/{CAM}/seg_1.m4s"]
    assert foreign.connections == 0


def test_control_the_foreign_host_counts_connections(foreign, figure):
    """The counter the tests above read does count: a direct request is one connection."""
    r = httpx.get(f"http://{FOREIGN_HOST}:{foreign.server_address[1]}/x", timeout=5)
    assert r.text == "FOREIGN" and foreign.connections == 1
    with socket.create_connection(foreign.server_address, timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    figure("foreign host connections counted for 2 direct connections", foreign.connections, "connections", "== 2",
           foreign.connections == 2)
    assert foreign.connections == 2


async def test_control_a_sane_playlist_from_the_same_pod_is_served(gateway, hostile_pod, figure):
    """The 502s above come from the foreign URIs, not from the pod server or the wiring."""
    ok = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.0,\nseg_1.m4s\n"
    hostile_pod.routes[f"/cameras/{CAM}/index.m3u8"] = (200, {}, ok.encode())
    hostile_pod.routes[f"/cameras/{CAM}/seg_1.m4s"] = (200, {}, b"SEGMENT")
    hostile_pod.routes[f"/cameras/{CAM}/init.mp4"] = (200, {}, b"INIT")
    url, _ = await _session(gateway)
    r = await gateway.get(url)
    assert r.status_code == 200 and "pb_grant=" in r.text
    played = await play(gateway, url, r.text)  # the same player as above, through the gateway
    figure("hostile-pod requests for a sane playlist and its media", len(hostile_pod.seen), "requests", "== 3",
           len(hostile_pod.seen) == 3)
    assert [code for _, code in played] == [200, 200], played
    assert hostile_pod.seen == [f"/cameras/{CAM}/index.m3u8", f"/cameras/{CAM}/init.mp4", f"/cameras/{CAM}/seg_1.m4s"]
