"""LL-HLS through the gateway (issue 14 part B), with pods programmed at the transport seam.

* the pure policy (:mod:`gateway.llhls`): directives, the live edge of a playlist, which
  generation a playlist answers, what is too far ahead, reload and hold times;
* the proxy: one upstream request per blocking-reload generation whatever the number of
  viewers, each with its own grants; answered generations from the newest playlist; plain
  reloads shared for at most half a part target; malformed directives refused before any
  pod request; the hold outlasting the normal upstream deadline; held requests apart from
  the pod's normal connection slots; a part the pod is still sending streamed to every
  viewer before the pod finishes it; hostile LL playlists never kept.

B14 (tests/data/hls/cases/B14-llhls-blocking-reload.http, from /work/shared/cases/hls):
faults seen through intermediaries — a read timeout shorter than the hold (504), one cached
answer for every msn, a key without the directives, an old playlist returned at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from gateway.discovery import StaticDiscovery
from gateway.errors import BadRequest
from gateway.llhls import Directives, inspect_playlist, parse_directives
from gateway.metrics import PLAYLISTS
from tests.gateway.conftest import CAM, LIVE, ORIGIN, POD, POD_URL, FakePod, keys, ll_playlist, start_session, uris

DATA = Path(__file__).resolve().parents[1] / "data" / "hls"
PLAYLIST = f"/cameras/{CAM}/index.m3u8"


# ---- pure: directives ---------------------------------------------------------------------------
@pytest.mark.parametrize(("query", "expected", "rest", "upstream"), [
    ("a=1", None, "a=1", None),
    ("_HLS_msn=273&_HLS_part=3", Directives(273, 3), "", "_HLS_msn=273&_HLS_part=3"),
    ("pb_x=1&_HLS_part=3&_HLS_msn=0273", Directives(273, 3), "pb_x=1", "_HLS_msn=273&_HLS_part=3"),
    ("_HLS_msn=5", Directives(5, None), "", "_HLS_msn=5"),
    ("_HLS_msn=5&_HLS_skip=YES", Directives(5, None, "YES"), "", "_HLS_msn=5"),
    ("_HLS_skip=v2", Directives(None, None, "v2"), "", ""),
])
def test_directives_are_parsed_into_one_canonical_form(query, expected, rest, upstream):
    d, r = parse_directives(query)
    assert (d, r) == (expected, rest)
    if d is not None:
        assert d.query() == upstream


@pytest.mark.parametrize("query", [
    "_HLS_msn=abc", "_HLS_msn=-1", "_HLS_msn=+1", "_HLS_msn=1.5", "_HLS_msn=", "_HLS_msn", "_HLS_msn=%31",
    "_HLS_msn=0x10", "_HLS_msn= 1", "_HLS_msn=" + "9" * 19, "_HLS_msn=1&_HLS_part=" + "1" * 19,
    "_HLS_msn=1&_HLS_msn=2", "_HLS_msn=1&_HLS_part=1&_HLS_part=2", "_HLS_part=1", "_HLS_msn=1&_HLS_part=-1",
    "_HLS_msn=1&_HLS_skip=MAYBE", "_HLS_skip=YES&_HLS_skip=YES", "_HLS_msn=1&_HLS_other=2",
])
def test_malformed_directives_are_refused(query):
    with pytest.raises(BadRequest):
        parse_directives(query)


# ---- pure: what a playlist says -----------------------------------------------------------------
def test_inspect_the_live_edge_of_ll_playlists():
    info = inspect_playlist(ll_playlist(273, 3), ("part_273_3.m4s",))
    assert (info.next_msn, info.next_part, info.last_parts, info.first_msn) == (273, 3, 6, 270)
    assert (info.target_duration, info.part_target, info.can_block, info.can_skip) == (2.0, 0.33334, True, False)
    assert info.hints == ("part_273_3.m4s",)
    # the RFC's example (9.11): segment 273 complete with 2 parts, part 0 of 274 listed
    rfc = inspect_playlist((DATA / "rfc8216bis-22-9.11-low-latency.fragment.m3u8").read_text())
    assert (rfc.next_msn, rfc.next_part, rfc.last_parts) == (rfc.first_msn + 7, 1, 2)
    # delta update: EXT-X-SKIP's segments count
    skip = inspect_playlist((DATA / "apple-llhls-example-delta-update-skip.m3u8").read_text())
    full = inspect_playlist((DATA / "apple-llhls-example-parts-preload-hint.m3u8").read_text())
    assert skip.can_skip and skip.next_msn is not None and skip.next_msn > skip.first_msn
    assert full.next_msn is not None and full.can_block
    classic = inspect_playlist(LIVE)
    assert (classic.next_msn, classic.part_target, classic.can_block) == (102, None, False)
    master = inspect_playlist((DATA / "rfc8216-8.4-master-playlist.m3u8").read_text())
    assert master.next_msn is None and not master.satisfies(Directives(1, None))


@pytest.mark.parametrize(("msn", "part", "answered"), [
    (271, 99, True),  # two segments old: everything of it exists
    (272, 5, True), (272, 6, True),  # the last complete segment (6 parts); part 6 = part 0 of 273, listed
    (273, 2, True), (273, 3, False),  # the segment in progress: parts 0-2 listed
    (274, 0, False), (272, None, True), (273, None, False),
])
def test_which_generations_a_playlist_answers(msn, part, answered):
    assert inspect_playlist(ll_playlist(273, 3)).satisfies(Directives(msn, part)) is answered


def test_a_part_past_the_end_of_a_complete_segment_waits_for_the_next_one():
    info = inspect_playlist(ll_playlist(273, 0))  # 272 complete, nothing of 273 yet
    assert info.satisfies(Directives(272, 5)) and not info.satisfies(Directives(272, 6))


def test_too_far_ahead_allows_for_time_passing():
    info = inspect_playlist(ll_playlist(273, 3))
    assert not info.too_far(Directives(274, 0), 0) and not info.too_far(Directives(275, 0), 0)
    assert info.too_far(Directives(276, 0), 0) and info.too_far(Directives(10**17, 0), 0)
    assert not info.too_far(Directives(276, 0), 0.4)  # the pod may have moved on since
    assert info.too_far(Directives(273, 40), 0) and not info.too_far(Directives(273, 12), 0)


def test_reload_ttl_is_half_a_part_target_with_parts_else_half_the_target_duration():
    assert inspect_playlist(ll_playlist(273, 3, part_target=0.2)).reload_ttl() == pytest.approx(0.1)
    assert inspect_playlist(LIVE).reload_ttl() == pytest.approx(1.0)
    assert inspect_playlist(ll_playlist(9, 0, target=4)).hold() == 12.0
    assert inspect_playlist(ll_playlist(9, 0, target=3600)).hold() == 60.0  # a pod cannot hold us for hours


def test_newer_than_follows_the_edge_and_restarts():
    a, b = inspect_playlist(ll_playlist(273, 3)), inspect_playlist(ll_playlist(273, 4))
    assert b.newer_than(a) and not a.newer_than(b) and a.newer_than(a)
    restarted = inspect_playlist(ll_playlist(12, 1))
    assert restarted.newer_than(b)


# ---- the proxy ----------------------------------------------------------------------------------
class LLPod(FakePod):
    """A pod serving LL-HLS: ``edge`` is (next_msn, next_part); a blocking reload for a part not
    produced yet waits until :meth:`advance` produces it (like pod/hls_server.py). Routes given
    for an exact path and query answer first (plain or async callables, or responses)."""

    def __init__(self, edge=(273, 3), **kw):
        super().__init__()
        self.edge = edge
        self.kw = kw
        self.changed = asyncio.Event()
        self.routes[PLAYLIST] = lambda r: httpx.Response(200, text=ll_playlist(*self.edge, **self.kw))
        self.routes[f"/cameras/{CAM}/init.mp4"] = httpx.Response(200, content=b"INIT")

    def advance(self, parts=1):
        msn, part = self.edge
        for _ in range(parts):
            part += 1
            if part == self.kw.get("parts", 6):  # the segment is complete
                msn, part = msn + 1, 0
        self.edge = (msn, part)
        self.changed.set()
        self.changed = asyncio.Event()

    async def handler(self, request):
        self.requests.append(request)
        raw = request.url.raw_path.decode()
        route = self.routes.get(raw)
        if route is not None:
            out = route(request) if callable(route) else route
            return await out if inspect.isawaitable(out) else out
        if raw.startswith(PLAYLIST + "?"):
            q = {k: int(v[0]) for k, v in parse_qs(request.url.query.decode()).items()}
            want = (q["_HLS_msn"], q.get("_HLS_part", 0))
            while self.edge <= want:
                await self.changed.wait()
            return httpx.Response(200, text=ll_playlist(*self.edge, **self.kw))
        return httpx.Response(404, text="not found")


@contextlib.asynccontextmanager
async def gateway(pod, **cfg):
    """The gateway app with ``cfg`` over the test keys, its pod at the transport seam, and a client
    in this test's own event loop (the pods' events live there); ``client.app`` is the ASGI app."""
    config = parse_config({**keys(), "pods": {POD: POD_URL}, "allowed_origins": [ORIGIN], **cfg}, env={})
    app = create_app(config, discovery=StaticDiscovery(config.pods), transport=httpx.MockTransport(pod.handler))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test") as c:
        c.app = app
        yield c
    await app.proxy.upstream.aclose()


def blocking(url, msn, part):
    return f"{url}&_HLS_msn={msn}&_HLS_part={part}"


def grants(text: str) -> list[str]:
    return [parse_qs(urlsplit(u).query)["pb_grant"][0] for u in uris(text)]


def count(source: str) -> float:
    return PLAYLISTS.labels(source)._value.get()


async def wait_for(cond, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_viewers_waiting_on_one_generation_share_one_pod_request_with_their_own_grants():
    pod = LLPod()
    async with gateway(pod) as client:
        urls = [await start_session(client) for _ in range(50)]  # 50 viewing sessions
        assert (await client.get(urls[0])).status_code == 200  # the camera offers blocking reloads
        fetched = count("fetched")
        tasks = [asyncio.create_task(client.get(blocking(u, 273, 3))) for u in urls]
        await wait_for(lambda: len(pod.requests) == 2)
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in tasks)  # held: part 273.3 does not exist yet
        pod.advance()
        answers = await asyncio.gather(*tasks)
        assert {r.status_code for r in answers} == {200}
        assert all("part_273_3.m4s" in r.text for r in answers)
        assert pod.paths() == [PLAYLIST, PLAYLIST + "?_HLS_msn=273&_HLS_part=3"]  # one upstream blocking request
        assert count("fetched") - fetched == 1
        per_viewer = [grants(r.text) for r in answers]
        assert len({g[0] for g in per_viewer}) == 50 and len({tuple(g) for g in per_viewer}) == 50
        # each copy's URIs open with their own grant
        seg = next(u for u in uris(answers[7].text) if u.startswith("part_273_3.m4s"))
        pod.routes[f"/cameras/{CAM}/part_273_3.m4s"] = httpx.Response(200, content=b"PART")
        assert (await client.get(f"/streams/{CAM}/{seg}")).content == b"PART"

        # a generation already answered (a late viewer, or an older one) costs no pod request
        newest = count("newest")
        late = await client.get(blocking(urls[3], 273, 3))
        older = await client.get(blocking(urls[4], 273, 1))
        assert late.status_code == older.status_code == 200 and "part_273_3.m4s" in older.text
        assert len(pod.requests) == 2 + 1 and count("newest") - newest == 2  # (+1: the part above)


async def test_each_generation_is_one_pod_request_while_viewers_follow_the_live_edge():
    pod = LLPod(edge=(273, 0))
    async with gateway(pod) as client:
        urls = [await start_session(client) for _ in range(20)]
        await client.get(urls[0])

        async def viewer(url, rounds):
            text = (await client.get(url)).text
            for _ in range(rounds):
                hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="part_(\d+)_(\d+)\.m4s', text)
                r = await client.get(blocking(url, hint.group(1), hint.group(2)))
                assert r.status_code == 200
                text = r.text

        players = asyncio.gather(*(viewer(u, 5) for u in urls))
        for _ in range(5):
            await wait_for(lambda: sum(1 for p in pod.paths() if "_HLS_msn" in p) == pod.edge[1] + 1)
            await asyncio.sleep(0.02)
            pod.advance()
        await asyncio.wait_for(players, 10)
        asked = [p for p in pod.paths() if "_HLS_msn" in p]
        assert asked == [f"{PLAYLIST}?_HLS_msn=273&_HLS_part={i}" for i in range(5)]  # 5 generations, 5 requests


async def test_plain_reloads_are_shared_for_at_most_half_a_part_target():
    pod = LLPod(part_target=0.4)  # → shared for 0.2 s at most
    async with gateway(pod) as client:
        url = await start_session(client)
        for _ in range(10):
            assert (await client.get(url)).status_code == 200
        first = pod.count(PLAYLIST)
        assert first <= 2  # 10 reloads within well under a part target (2: a slow box crossing 0.2 s)
        await asyncio.sleep(0.25)
        assert (await client.get(url)).status_code == 200
        assert pod.count(PLAYLIST) == first + 1


@pytest.mark.parametrize("directive", [
    "_HLS_msn=abc", "_HLS_msn=-1", "_HLS_msn=99999999999999999999", "_HLS_msn=1&_HLS_msn=2", "_HLS_part=1",
    "_HLS_msn=273&_HLS_part=x", "_HLS_msn=273&_HLS_part=1e3", "_HLS_msn=273&_HLS_skip=MAYBE",
])
async def test_malformed_directives_are_400_before_any_pod_request(directive):
    pod = LLPod()
    async with gateway(pod) as client:
        url = await start_session(client)
        r = await client.get(f"{url}&{directive}", headers={"origin": ORIGIN})
        assert r.status_code == 400 and r.headers["access-control-allow-origin"] == ORIGIN
        assert pod.requests == []


async def test_directive_far_beyond_the_live_edge_is_400_without_a_pod_request():
    pod = LLPod()
    async with gateway(pod) as client:
        url = await start_session(client)
        await client.get(url)
        for msn, part in ((10**17, 0), (400, 0), (273, 500)):
            r = await client.get(blocking(url, msn, part))
            assert r.status_code == 400 and "too far ahead" in r.text
        assert pod.paths() == [PLAYLIST]


async def test_the_hold_outlasts_the_normal_upstream_deadline_and_a_pod_503_keeps_retry_after():
    """B14 fault (a): the pod holds a blocking reload up to 3 × target duration (here 3 s)."""
    pod = LLPod(target=1)
    async with gateway(pod, upstream_deadline=0.4, upstream_read_timeout=0.3) as client:
        url = await start_session(client)
        await client.get(url)
        task = asyncio.create_task(client.get(blocking(url, 273, 3)))
        await asyncio.sleep(1.0)  # well past the normal deadline
        pod.advance()
        r = await task
        assert r.status_code == 200 and "part_273_3.m4s" in r.text

        # control: a plain reload this slow is cut at the normal deadline
        async def slow(request):
            await asyncio.sleep(1.0)
            return httpx.Response(200, text=ll_playlist(*pod.edge))

        pod.routes[PLAYLIST] = slow
        await asyncio.sleep(0.3)  # the newest playlist is older than half a part target now
        assert (await client.get(url)).status_code == 504

        # the pod gives up after its hold: 503 + Retry-After for the player, not a 502/504
        pod.routes[PLAYLIST + "?_HLS_msn=274&_HLS_part=0"] = httpx.Response(
            503, text="not produced in time", headers={"retry-after": "1"})
        r = await client.get(blocking(url, 274, 0))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


async def test_held_requests_do_not_take_the_pods_normal_connection_slots():
    pod = LLPod()
    pod.routes[f"/cameras/{CAM}/seg_272.m4s"] = httpx.Response(200, content=b"SEG")
    async with gateway(pod, upstream_pod_connections=1, upstream_deadline=1.0) as client:
        url = await start_session(client)
        text = (await client.get(url)).text
        held = [asyncio.create_task(client.get(blocking(url, 273, 3))),
                asyncio.create_task(client.get(blocking(url, 274, 0)))]
        await wait_for(lambda: sum(1 for p in pod.paths() if "_HLS_msn" in p) == 2)
        seg = next(u for u in uris(text) if u.startswith("seg_272.m4s"))
        r = await client.get(f"/streams/{CAM}/{seg}")  # the one normal slot is free
        assert r.status_code == 200 and r.content == b"SEG"
        assert not any(t.done() for t in held)
        pod.advance(4)
        assert {t.status_code for t in await asyncio.gather(*held)} == {200}


class StreamedPart:
    """A pod answer for a part it is still producing: half the bytes, then (after ``release``)
    the rest, as pod/hls_server.py streams a preload-hinted part frame by frame."""

    def __init__(self, first: bytes, rest: bytes, delay_headers: float = 0.0):
        self.first, self.rest, self.delay_headers = first, rest, delay_headers
        self.release = asyncio.Event()
        self.finished = False
        self.requests = 0

    async def __call__(self, request):
        self.requests += 1
        await asyncio.sleep(self.delay_headers)

        async def body():
            yield self.first
            await self.release.wait()
            yield self.rest
            self.finished = True

        return httpx.Response(200, content=body(), headers={"content-type": "video/mp4"})


async def asgi_get(app, path_and_query: str, on_first_body: asyncio.Event) -> tuple[int, list[bytes]]:
    """Call the gateway's ASGI app directly (no test client buffering the response); sets
    ``on_first_body`` when the first non-empty body chunk is sent to the viewer."""
    path, _, query = path_and_query.partition("?")
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
             "headers": [(b"host", b"gw.test")], "scheme": "http", "http_version": "1.1", "server": ("gw.test", 80),
             "client": ("127.0.0.1", 5000), "root_path": "", "asgi": {"version": "3.0"}}
    status, chunks = 0, []

    async def receive():
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message.get("body"):
            chunks.append(message["body"])
            on_first_body.set()

    await app(scope, receive, send)
    return status, chunks


async def test_a_part_the_pod_is_still_sending_reaches_every_viewer_before_the_pod_finishes():
    pod = LLPod()
    part = StreamedPart(b"moof+mdat of frame 1 ", b"and of frames 2 and 3")
    pod.routes[f"/cameras/{CAM}/part_273_3.m4s"] = part
    async with gateway(pod) as client:
        urls = [await start_session(client) for _ in range(20)]
        texts = [(await client.get(u)).text for u in urls]
        hinted = [f"/streams/{CAM}/" + next(x for x in uris(t) if x.startswith("part_273_3.m4s")) for t in texts]
        firsts = [asyncio.Event() for _ in hinted]
        viewers = [asyncio.create_task(asgi_get(client.app, h, e)) for h, e in zip(hinted, firsts)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in firsts)), 5)
        assert not part.finished and not part.release.is_set()  # every viewer has bytes; the pod is mid-part
        part.release.set()
        results = await asyncio.wait_for(asyncio.gather(*viewers), 5)
        assert part.finished and part.requests == 1  # one pod fetch for the part, 20 viewers
        for status, chunks in results:
            assert status == 200 and chunks[0] == part.first and b"".join(chunks) == part.first + part.rest


async def test_a_hinted_part_may_take_the_pods_hold_and_others_only_the_normal_deadline():
    pod = LLPod(target=1)
    pod.routes[f"/cameras/{CAM}/part_273_3.m4s"] = hinted = StreamedPart(b"a", b"b", delay_headers=0.8)
    pod.routes[f"/cameras/{CAM}/part_273_2.m4s"] = listed = StreamedPart(b"a", b"b", delay_headers=0.8)
    hinted.release.set()
    listed.release.set()
    async with gateway(pod, upstream_deadline=0.4, upstream_read_timeout=0.3) as client:
        url = await start_session(client)
        text = (await client.get(url)).text
        refs = {u.split("?")[0]: u for u in uris(text)}
        r = await client.get(f"/streams/{CAM}/" + refs["part_273_3.m4s"])  # the preload hint: held by the pod
        assert r.status_code == 200 and r.content == b"ab"
        r = await client.get(f"/streams/{CAM}/" + refs["part_273_2.m4s"])  # listed, complete: no excuse
        assert r.status_code == 504


@pytest.mark.parametrize("tag", ["part", "hint", "report"])
async def test_a_hostile_blocking_answer_is_refused_and_never_answers_anyone_later(tag):
    foreign = {"part": '#EXT-X-PART:DURATION=0.33334,URI="http://203.0.113.9/part_273_3.m4s"\n',
               "hint": '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="//203.0.113.9/part_273_4.m4s"\n',
               "report": '#EXT-X-RENDITION-REPORT:URI="http://203.0.113.9/lo.m3u8",LAST-MSN=273\n'}[tag]
    pod = LLPod()
    pod.kw = {"extra": foreign}  # every answer after the first plain reload carries it
    async with gateway(pod) as client:
        url = await start_session(client)
        pod.kw = {}
        assert (await client.get(url)).status_code == 200
        pod.kw = {"extra": foreign}
        tasks = [asyncio.create_task(client.get(blocking(url, 273, 3))) for _ in range(5)]
        await wait_for(lambda: len(pod.requests) == 2)
        pod.advance()
        assert {r.status_code for r in await asyncio.gather(*tasks)} == {502}
        again = await client.get(blocking(url, 273, 3))  # not kept: asked again, refused again
        assert again.status_code == 502 and len(pod.requests) == 3
        assert all(r.url.host == "127.0.0.2" for r in pod.requests)
        pod.kw = {}
        ok = await client.get(blocking(url, 273, 3))
        assert ok.status_code == 200 and "203.0.113.9" not in ok.text


async def test_directives_for_a_camera_that_never_offered_blocking_reloads_use_the_normal_cache():
    pod = LLPod()
    pod.routes[PLAYLIST] = httpx.Response(200, text=LIVE)  # classic: no CAN-BLOCK-RELOAD
    async with gateway(pod) as client:
        url = await start_session(client)
        for msn in (100, 101, 102, 103):
            assert (await client.get(blocking(url, msn, 0))).status_code == 200
        assert pod.paths() == [PLAYLIST]


async def test_playlist_info_is_inspected_once_per_upstream_response(monkeypatch):
    import gateway.proxy as proxy_module

    calls = []
    real = proxy_module.inspect_playlist
    monkeypatch.setattr(proxy_module, "inspect_playlist", lambda *a: calls.append(1) or real(*a))
    pod = LLPod()
    async with gateway(pod) as client:
        urls = [await start_session(client) for _ in range(10)]
        await asyncio.gather(*(client.get(u) for u in urls))
        assert len(calls) == 1 == pod.count(PLAYLIST)
