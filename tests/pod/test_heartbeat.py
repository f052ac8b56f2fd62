"""pod/heartbeat.py (the seed's heartbeat, one per camera) and the periodic whitelist refresh
(pod/whitelist.py WhitelistRefresher), alone and wired into the agent."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest

from pod.agent import PodAgent
from pod.config import parse_config
from pod.errors import PortalRejected, PortalUnavailable
from pod.heartbeat import HeartbeatLoop, camera_status, heartbeat_body, stream_url
from pod.portal import PortalClient
from pod.whitelist import WhitelistRefresher, WhitelistStore
from protocol.messages import HeartbeatRequest, HeartbeatResponse, PlatesResponse

SEED = Path(__file__).resolve().parents[1] / "data" / "seed"


@dataclass
class FakeStreamer:
    state: str
    age: float | None = 0.75

    def last_segment_age(self) -> float | None:
        return self.age


def body(streamer, *, streaming=True, bind_host="100.64.0.7", camera_id="gate-camera-1") -> HeartbeatRequest:
    return heartbeat_body(pod_id="main-gate-pod", camera_id=camera_id, streaming=streaming, streamer=streamer,
                          bind_host=bind_host, stream_port=8000, version="1.2.3", uptime_s=12.345,
                          outbox_depth=0, whitelist_version="42", disk_free_bytes=10**9)


def test_heartbeat_with_streaming_on_names_the_tailnet_playlist_and_the_camera_state():
    hb = body(FakeStreamer("running"))
    assert hb.stream_url == "http://100.64.0.7:8000/cameras/gate-camera-1/index.m3u8"
    assert hb.status == "online" and hb.last_segment_age_s == 0.75 and hb.uptime_s == 12.3
    assert (hb.pod_id, hb.camera_id, hb.whitelist_version, hb.outbox_depth) == ("main-gate-pod", "gate-camera-1",
                                                                                 "42", 0)
    for state in ("starting", "backoff", "stopped"):  # ffmpeg not running: the portal sees it
        assert body(FakeStreamer(state, None)).status == "degraded"
    assert body(None).status == "degraded"  # streaming on, but this camera has no streamer
    assert body(FakeStreamer("running"), bind_host=None).stream_url == ""  # no tailnet address yet
    assert stream_url("fd7a:115c:a1e0::1", 8000, "c") == "http://[fd7a:115c:a1e0::1]:8000/cameras/c/index.m3u8"


def test_heartbeat_with_streaming_off_is_online_without_a_stream_url():
    """The guide's option C (no live view): decisions still work, so the camera is online."""
    hb = body(None, streaming=False)
    assert (hb.status, hb.stream_url) == ("online", "")
    assert camera_status(False, None) == "online"


def test_heartbeat_body_keeps_the_guides_fields():
    """tests/data/seed/heartbeat_request.json: pod_id, camera_id, stream_url, status — status
    included when it is "online" (the guide's portal sets cameras.status from it)."""
    guide = json.loads((SEED / "heartbeat_request.json").read_text())
    sent = json.loads(msgspec.json.encode(body(FakeStreamer("running"))))
    assert set(guide) <= set(sent) and sent["status"] == guide["status"] == "online"
    assert msgspec.json.decode((SEED / "heartbeat_request.json").read_bytes(), type=HeartbeatRequest).status == "online"


class ScriptedPortal:
    """post_heartbeat answers from a per-camera script: a HeartbeatResponse or an exception."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers, self.calls = answers, []

    async def post_heartbeat(self, req: HeartbeatRequest) -> HeartbeatResponse:
        self.calls.append(req.camera_id)
        a = self.answers[req.camera_id]
        if isinstance(a, Exception):
            raise a
        return a  # type: ignore[return-value]


async def test_a_refused_camera_does_not_stop_the_others_heartbeats():
    ok = HeartbeatResponse(config_version="7")
    portal = ScriptedPortal({"cam-a": PortalRejected(404, "unknown camera"), "cam-b": ok, "cam-c": ok})
    answers = []
    loop = HeartbeatLoop(["cam-a", "cam-b", "cam-c"], lambda c: body(None, camera_id=c), portal, interval=60,
                         on_answer=answers.append)
    await loop.beat()
    assert portal.calls == ["cam-a", "cam-b", "cam-c"] and (loop.sent, loop.failed) == (2, 1)
    assert [a.config_version for a in answers] == ["7", "7"]


async def test_an_unreachable_portal_ends_the_round():
    portal = ScriptedPortal({"cam-a": PortalUnavailable("connect refused"), "cam-b": HeartbeatResponse()})
    loop = HeartbeatLoop(["cam-a", "cam-b"], lambda c: body(None, camera_id=c), portal, interval=60)
    await loop.beat()
    assert portal.calls == ["cam-a"] and (loop.sent, loop.failed) == (0, 1)


async def test_a_numeric_config_version_answer_counts_as_a_heartbeat():
    """The guide's portal answers "config_version": 42 (a number): before issue 11 every such
    heartbeat was a failure ("Expected `str`, got `int`")."""
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"success": True, "config_version": 42})

    answers: list[HeartbeatResponse] = []
    async with PortalClient("http://portal.test", "k", transport=httpx.MockTransport(handler)) as pc:
        loop = HeartbeatLoop(["cam-a"], lambda c: body(None, camera_id=c), pc, interval=60, on_answer=answers.append)
        await loop.beat()
    assert (loop.sent, loop.failed) == (1, 0) and answers[0].config_version == "42"


async def test_run_beats_at_once_then_every_interval_until_stopped():
    portal = ScriptedPortal({"cam-a": HeartbeatResponse()})
    loop = HeartbeatLoop(["cam-a"], lambda c: body(None, camera_id=c), portal, interval=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    t0 = time.monotonic()
    while loop.sent < 4:
        assert time.monotonic() - t0 < 10, loop.sent
        await asyncio.sleep(0.01)
    assert time.monotonic() - t0 >= 0.3  # three intervals between four beats: never faster
    stop.set()
    await asyncio.wait_for(task, 5)


# ------------------------------------------------------------------ periodic whitelist refresh

def plates(version) -> PlatesResponse:
    return PlatesResponse(config_version=version, entries=[])


async def test_refresher_fetches_at_start_and_every_interval():
    fetched: list[float] = []

    async def fetch():
        fetched.append(time.monotonic())
        return plates(len(fetched))

    store = WhitelistStore(None)
    r = WhitelistRefresher(store, fetch, interval=0.2, coalesce=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    t0 = time.monotonic()
    while len(fetched) < 4:
        assert time.monotonic() - t0 < 10
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    gaps = [b - a for a, b in itertools.pairwise(fetched)]
    assert all(g >= 0.2 for g in gaps), gaps  # waits the interval between fetches
    assert store.version == str(len(fetched)) and r.fetches == len(fetched)


async def test_refresher_request_refreshes_soon_and_coalesces_a_burst():
    fetched = 0

    async def fetch():
        nonlocal fetched
        fetched += 1
        return plates(fetched)

    r = WhitelistRefresher(WhitelistStore(None), fetch, interval=3600, coalesce=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    t0 = time.monotonic()
    while fetched < 1:
        assert time.monotonic() - t0 < 5
        await asyncio.sleep(0.01)
    for _ in range(10):  # ten nudges in a burst
        r.request()
    while fetched < 2:
        assert time.monotonic() - t0 < 5, "a request did not refresh within the coalescing window"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    assert fetched == 2  # one fetch for the whole burst; the interval (an hour) is far off
    stop.set()
    await asyncio.wait_for(task, 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("interval", [0.3])
async def test_agent_refreshes_the_whitelist_every_whitelist_refresh_interval(tmp_path, interval):
    """The agent wires whitelist_refresh_interval into its refresh loop: GET /api/plates at
    start and again every interval, with the guide's numeric config_version."""
    gets: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/plates":
            gets.append(time.monotonic())
            return httpx.Response(200, content=(SEED / "plates_response.json").read_bytes())
        return httpx.Response(200, json={"success": True, "config_version": 42})

    cfg, _ = parse_config({
        "portal_url": "http://portal.test", "pod_api_key": "k", "pod_id": "main-gate-pod", "site_id": "site-uuid",
        "camera_id": "gate-camera-1", "camera_rtsp_url": "rtsp://127.0.0.1:9/x", "enable_streaming": False,
        "enable_mqtt": False, "record_on_detection": False, "stream_port": _free_port(),
        "state_dir": str(tmp_path / "state"), "recordings_dir": str(tmp_path / "rec"),
        "whitelist_refresh_interval": interval, "heartbeat_interval": 3600})
    agent = PodAgent(cfg, portal_transport=httpx.MockTransport(handler))
    task = asyncio.create_task(agent.run())
    t0 = time.monotonic()
    try:
        while len(gets) < 4:
            assert time.monotonic() - t0 < 15 and not task.done(), len(gets)
            await asyncio.sleep(0.02)
        assert agent.store.version == "42" and len(agent.store.current) == 1
        assert agent.heartbeats.sent >= 1 and agent.heartbeats.failed == 0  # the number is a version, too
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 15)
    gaps = [b - a for a, b in itertools.pairwise(gets)]
    assert all(g >= interval * 0.9 for g in gaps), gaps
