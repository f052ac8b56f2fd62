"""No playlist, however malformed, outlives its TTL (issue 12 point 4).

``#EXT-X-TARGETDURATION:1x`` made ``target_duration()`` raise inside the cache's fill task,
which left the entry cached with no expiry: every viewer got the same stale playlist until
the gateway restarted. Now a malformed playlist is a 502 with its reason in the log, it is
not kept, and the next request asks the pod again; once the pod sends a good playlist it is
served at once. The real gateway app, pods programmed at the upstream transport seam.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.discovery import StaticDiscovery
from tests.gateway.conftest import CAM, POD, POD_URL, FakePod, keys, make_token

GOOD = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:2\n#EXTINF:2.0,\nseg_2.m4s\n"
MALFORMED = {
    "target_duration_1x": ("#EXTM3U\n#EXT-X-TARGETDURATION:1x\n#EXTINF:2.0,\nseg_1.m4s\n",
                           "EXT-X-TARGETDURATION is not a decimal number"),
    "target_duration_negative": ("#EXTM3U\n#EXT-X-TARGETDURATION:-2\n#EXTINF:2.0,\nseg_1.m4s\n",
                                 "EXT-X-TARGETDURATION is not a decimal number"),
    "foreign_uri": ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nhttp://127.0.0.9/seg_1.m4s\n",
                    "foreign URI"),
    "not_utf8": (b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg_\xff.m4s\n", "not UTF-8"),
    "no_extm3u": ("#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg_1.m4s\n", "first line is not #EXTM3U"),
    "bad_part_inf": ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=x\n#EXTINF:2.0,\nseg_1.m4s\n",
                     "invalid playlist"),
    "lone_cr": ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-FOO:1\r#EXT-X-MAP:URI=\"http://127.0.0.9/i.mp4\"\n"
                "#EXTINF:2.0,\nseg_1.m4s\n", "line break"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_a_malformed_playlist_is_502_logged_never_cached_and_retried(figure, caplog, name):
    body, reason = MALFORMED[name]
    pod = FakePod()
    path = f"/cameras/{CAM}/index.m3u8"
    pod.routes[path] = httpx.Response(200, content=body if isinstance(body, bytes) else body.encode())
    cfg = parse_config({**keys(), "pods": {POD: POD_URL}, "access_log": False}, env={})
    app = create_app(cfg, discovery=StaticDiscovery(cfg.pods), transport=httpx.MockTransport(pod.handler))
    caplog.set_level(logging.ERROR, logger="platebridge.gateway")
    async with AsyncTestClient(app=app, base_url="http://gw.test") as client:
        client.follow_redirects = False
        r = await client.get(f"/streams/{CAM}/index.m3u8?token={make_token()}")
        url = f"/streams/{CAM}/" + r.headers["location"]
        statuses = [(await client.get(url)).status_code for _ in range(3)]  # within one reload window
        fetches = pod.count(path)
        pod.routes[path] = httpx.Response(200, text=GOOD)  # the pod recovers
        fixed = await client.get(url)
    figure(f"pod fetches for 3 requests of a malformed playlist ({name})", fetches, "fetches", "== 3 (never cached)",
           fetches == 3)
    assert statuses == [502, 502, 502], statuses
    assert fetches == 3  # each request asked the pod again: nothing malformed was kept
    assert fixed.status_code == 200 and "seg_2.m4s?pb_grant=" in fixed.text  # served at once, not stuck
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "platebridge.gateway"]
    assert any(reason in m and "answered 502" in m for m in logged), logged


async def test_control_a_good_playlist_is_cached_for_half_its_target_duration(figure):
    pod = FakePod()
    path = f"/cameras/{CAM}/index.m3u8"
    pod.routes[path] = httpx.Response(200, text=GOOD)
    cfg = parse_config({**keys(), "pods": {POD: POD_URL}, "access_log": False}, env={})
    app = create_app(cfg, discovery=StaticDiscovery(cfg.pods), transport=httpx.MockTransport(pod.handler))
    async with AsyncTestClient(app=app, base_url="http://gw.test") as client:
        client.follow_redirects = False
        r = await client.get(f"/streams/{CAM}/index.m3u8?token={make_token()}")
        url = f"/streams/{CAM}/" + r.headers["location"]
        statuses = [(await client.get(url)).status_code for _ in range(3)]
    figure("pod fetches for 3 quick requests of a good playlist", pod.count(path), "fetches", "== 1",
           pod.count(path) == 1)
    assert statuses == [200, 200, 200] and pod.count(path) == 1
