"""The pod's LL-HLS routes over real HTTP (uvicorn on a loopback address), fed with
synthetic frames instead of ffmpeg: blocking playlist reloads (RFC 8216bis-16 §6.2.5.2),
the preload-hinted part held and then streamed as its frames arrive (§4.4.5.3), parts from
memory, 400/503 answers, and the gateway→pod token on every new route."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import httpx
import pytest

from pod.config import parse_config
from pod.fmp4 import Fragment
from pod.hls_server import create_hls_app
from pod.llhls import Packager
from pod.server import listen_socket, make_server
from pod.streamer import CameraStreamer
from protocol.tokens import Keyring, mint_pod_token

HOST = "127.0.0.3"
SECRET = "s" * 40
FPS = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Feeder:
    """Drives a CameraStreamer's packager the way its fMP4 reader does."""

    def __init__(self, streamer: CameraStreamer) -> None:
        self.s = streamer
        self.i = 0

    def frames(self, n: int) -> None:
        live = self.s.live
        assert live is not None
        for _ in range(n):
            i = self.i
            frag = Fragment(data=b"F%05d" % i, decode_time=i / FPS, duration=1 / FPS, samples=1, keyframe=i % FPS == 0)
            live.add_fragment(frag, time.time())
            self.i += 1
        self.s._notify()


@contextlib.asynccontextmanager
async def pod(tmp_path, **over):
    d = {"portal_url": "http://127.0.0.1:9", "pod_api_key": "k", "site_id": "site-1", "pod_id": "pod-1",
         "camera_id": "cam1",
         "camera_rtsp_url": "rtsp://127.0.0.1:9/s", "stream_secret": SECRET, "stream_bind": HOST,
         "hls_dir": str(tmp_path / "hls"), "hls_segment_seconds": 1.0}
    d.update(over)
    cfg = parse_config(d)[0]
    streamer = CameraStreamer(cfg, cfg.camera_list()[0])
    streamer.live = Packager(first_msn=100, init_name="init_100.mp4", part_target=0.2, segment_seconds=1.0)
    streamer.live.set_init(b"INIT")
    keyring = Keyring.single(SECRET)
    app = create_hls_app(pod_id="pod-1", keyring=keyring, streamers={"cam1": streamer}, tailnet_host=HOST)
    port = free_port()
    server = make_server(app)
    task = asyncio.create_task(server.serve(sockets=[listen_socket(HOST, port)]))
    while not server.started:
        await asyncio.sleep(0.01)
    token = mint_pod_token(keyring, camera_id="cam1", pod_id="pod-1")
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}/cameras/cam1/", timeout=15,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        try:
            yield client, Feeder(streamer), streamer
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)


async def test_playlist_503_until_a_segment_then_ll_tags(tmp_path):
    async with pod(tmp_path) as (client, feed, _s):
        r = await client.get("index.m3u8")
        assert r.status_code == 503 and r.headers["retry-after"]
        feed.frames(16)  # one complete segment
        r = await client.get("index.m3u8")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.apple.mpegurl")
        assert "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600" in r.text
        assert '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part_101_0.m4s"' in r.text
        assert r.headers["cache-control"] == "no-cache"


async def test_blocking_reload_answers_when_the_part_exists(tmp_path):
    async with pod(tmp_path) as (client, feed, _s):
        feed.frames(16)  # segment 100 complete; 101 has a frame of part 0
        req = asyncio.create_task(client.get("index.m3u8", params={"_HLS_msn": "101", "_HLS_part": "1"}))
        await asyncio.sleep(0.5)
        assert not req.done()  # held: part 101.1 does not exist yet
        feed.frames(2)  # completes part 101.0
        await asyncio.sleep(0.3)
        assert not req.done()
        feed.frames(3)  # completes part 101.1
        r = await asyncio.wait_for(req, 5)
        assert r.status_code == 200 and 'URI="part_101_1.m4s"' in r.text and '"part_101_2.m4s"' in r.text
        # already there: immediate; too far ahead: 400 (§6.2.5.2); malformed: 400
        assert (await client.get("index.m3u8", params={"_HLS_msn": "100"})).status_code == 200
        assert (await client.get("index.m3u8", params={"_HLS_msn": "103", "_HLS_part": "0"})).status_code == 400
        assert (await client.get("index.m3u8", params={"_HLS_msn": "101", "_HLS_part": "40"})).status_code == 400
        assert (await client.get("index.m3u8", params={"_HLS_part": "1"})).status_code == 400
        assert (await client.get("index.m3u8", params={"_HLS_msn": "x1"})).status_code == 400
        # _HLS_skip is ignored: the whole playlist
        r = await client.get("index.m3u8", params={"_HLS_msn": "100", "_HLS_skip": "YES"})
        assert r.status_code == 200 and "#EXT-X-SKIP" not in r.text and "seg_100.m4s" in r.text


async def test_blocking_reload_times_out_at_three_target_durations(tmp_path):
    async with pod(tmp_path) as (client, feed, _s):
        feed.frames(16)
        t0 = time.monotonic()
        r = await client.get("index.m3u8", params={"_HLS_msn": "102"})  # needs ~1 s more of video that never comes
        held = time.monotonic() - t0
        assert r.status_code == 503 and r.headers["retry-after"]
        assert 3.0 <= held < 6.0  # target duration 1 s


async def test_hinted_part_is_held_then_streamed_as_frames_arrive(tmp_path):
    async with pod(tmp_path) as (client, feed, _s):
        feed.frames(15)  # 100 has all its frames; the next keyframe closes it
        feed.frames(1)
        feed.frames(2)  # part 101.0 complete; hint is 101.1
        got: list[tuple[float, bytes]] = []

        async def fetch() -> int:
            async with client.stream("GET", "part_101_1.m4s") as resp:
                async for chunk in resp.aiter_raw():
                    got.append((time.monotonic(), chunk))
                return resp.status_code

        req = asyncio.create_task(fetch())
        await asyncio.sleep(0.4)
        assert got == [] and not req.done()  # held until the part starts
        t_first = time.monotonic()
        feed.frames(1)  # first frame of part 101.1
        await asyncio.sleep(0.4)
        assert got and got[0][0] >= t_first and not req.done()  # streamed before the part is complete
        feed.frames(2)  # part complete
        status = await asyncio.wait_for(req, 5)
        assert status == 200 and b"".join(c for _, c in got) == b"F00018F00019F00020"
        # complete parts come whole from memory, immutable
        r = await client.get("part_101_0.m4s")
        assert r.status_code == 200 and r.content == b"F00015F00016F00017" and "max-age" in r.headers["cache-control"]
        # a part that can never exist: 404 at once
        t0 = time.monotonic()
        assert (await client.get("part_100_9.m4s")).status_code == 404
        assert time.monotonic() - t0 < 1


async def test_every_new_route_checks_the_pod_token(tmp_path):
    async with pod(tmp_path) as (client, feed, _s):
        feed.frames(18)
        other = mint_pod_token(Keyring.single(SECRET), camera_id="cam2", pod_id="pod-1")
        for path in ("index.m3u8?_HLS_msn=101&_HLS_part=0", "part_101_0.m4s", "part_101_1.m4s"):
            assert (await client.get(path, headers={"Authorization": ""})).status_code == 401
            assert (await client.get(path, headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await client.get(path, headers={"Authorization": f"Bearer {other}"})).status_code == 403


async def test_classic_mode_serves_the_same_stream_without_parts(tmp_path):
    async with pod(tmp_path, low_latency=False) as (client, feed, s):
        assert not s.low_latency
        feed.frames(40)
        t0 = time.monotonic()
        r = await client.get("index.m3u8", params={"_HLS_msn": "105", "_HLS_part": "0"})  # not blocking here
        assert r.status_code == 200 and time.monotonic() - t0 < 1
        assert "#EXT-X-PART" not in r.text and "#EXT-X-PRELOAD-HINT" not in r.text and "seg_101.m4s" in r.text
        assert (await client.get("part_101_0.m4s")).status_code == 404


@pytest.mark.parametrize("value", ["0.04", "1.5"])
def test_part_seconds_is_validated(tmp_path, value):
    from pod.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\$\.part_seconds"):
        parse_config({"portal_url": "http://x", "pod_api_key": "k", "site_id": "site-1", "pod_id": "p",
                      "camera_id": "c",
                      "camera_rtsp_url": "rtsp://h/s", "stream_secret": SECRET, "part_seconds": float(value)})
