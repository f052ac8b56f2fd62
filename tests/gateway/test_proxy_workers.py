"""Two gateway workers (two apps, as two processes would build them) sharing one host store
(issue 15, point 2): a viewer's requests may reach either; the pod sees one fetch; hits,
ranges and HEAD are answered from the stored file. Pods are programmed at the transport
seam (counted there)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.discovery import StaticDiscovery
from tests.gateway.conftest import CAM, POD, POD_URL, keys, start_session, uris


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "host-store"


@pytest.fixture
async def workers(pod, store):
    """Two gateway apps with the same keys and one host store; ``(clients, apps)``."""
    cfg = parse_config({**keys(), "pods": {POD: POD_URL}, "host_cache_dir": str(store)}, env={})
    apps = [create_app(cfg, discovery=StaticDiscovery(cfg.pods), transport=httpx.MockTransport(pod.handler))
            for _ in range(2)]
    async with AsyncTestClient(app=apps[0], base_url="http://gw.test") as a, \
            AsyncTestClient(app=apps[1], base_url="http://gw.test") as b:
        a.follow_redirects = b.follow_redirects = False
        yield (a, b), apps


async def test_a_session_from_one_worker_plays_through_the_other_with_one_pod_fetch(workers, pod):
    (a, b), _ = workers
    pod.delay = 0.05  # the two workers' requests overlap
    playlist_url = await start_session(a)
    reloads = await asyncio.gather(a.get(playlist_url), b.get(playlist_url))  # the reloads reach both workers
    assert [r.status_code for r in reloads] == [200, 200]
    text = reloads[1].text
    segs = [u for u in uris(text) if u.startswith("seg_")]
    answers = await asyncio.gather(*(c.get(f"/streams/{CAM}/{u}") for u in segs for c in (a, b, a, b)))
    assert [r.status_code for r in answers] == [200] * len(answers)
    assert {r.content for r in answers if "seg_100" in str(r.url)} == {bytes([100]) * 5000}
    for path in ("seg_100.m4s", "seg_101.m4s"):
        assert pod.count(f"/cameras/{CAM}/{path}") == 1, path
    assert pod.count(f"/cameras/{CAM}/index.m3u8") == 1  # the playlist too: one fetch for both workers


async def test_ranges_and_head_are_answered_from_the_stored_file(workers, pod):
    (a, b), _ = workers
    text = (await a.get(await start_session(a))).text
    seg = next(u for u in uris(text) if u.startswith("seg_101"))
    assert (await a.get(f"/streams/{CAM}/{seg}")).status_code == 200  # now kept in the store
    r = await b.get(f"/streams/{CAM}/{seg}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == bytes([101]) * 10 and r.headers["content-range"] == "bytes 10-19/5000"
    r = await b.head(f"/streams/{CAM}/{seg}")
    assert r.status_code == 200 and r.headers["content-length"] == "5000" and r.content == b""
    assert pod.count(f"/cameras/{CAM}/seg_101.m4s") == 1


async def call_asgi(app, path: str, *, extensions: dict) -> list[dict]:
    """One GET through the raw ASGI interface; the messages the app sent."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    path_only, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path_only, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"gw.test")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080),
             "extensions": extensions}
    await app(scope, receive, send)
    return sent


async def test_a_hit_is_the_stored_file_sent_as_bytes(workers, pod, store):
    (a, _), apps = workers
    text = (await a.get(await start_session(a))).text
    seg = next(u for u in uris(text) if u.startswith("seg_100"))
    assert (await a.get(f"/streams/{CAM}/{seg}")).status_code == 200  # fetched, kept
    [stored] = [p for p in store.glob("*.data") if p.read_bytes() == bytes([100]) * 5000]
    sent = await call_asgi(apps[1], f"/streams/{CAM}/{seg}", extensions={"http.response.pathsend": {}})
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert sent[-1]["type"] == "http.response.body"  # not a path-send: measured slower (docs/benchmarks.md)
    assert b"".join(m.get("body", b"") for m in sent[1:]) == stored.read_bytes()
    assert pod.count(f"/cameras/{CAM}/seg_100.m4s") == 1


async def test_an_evicted_file_is_fetched_again_not_half_served(workers, pod, store):
    (a, b), _ = workers
    text = (await a.get(await start_session(a))).text
    seg = next(u for u in uris(text) if u.startswith("seg_100"))
    assert (await a.get(f"/streams/{CAM}/{seg}")).status_code == 200
    for f in store.glob("*.data"):
        f.unlink()  # evicted by a worker in between
    r = await b.get(f"/streams/{CAM}/{seg}")
    assert r.status_code == 200 and r.content == bytes([100]) * 5000
    assert pod.count(f"/cameras/{CAM}/seg_100.m4s") == 2


async def test_cache_misses_count_pod_fetches_whichever_worker_asked(workers, pod):
    from gateway.metrics import CACHE

    (a, b), _ = workers
    misses, hits = CACHE.labels("miss")._value.get(), CACHE.labels("hit")._value.get()
    text = (await a.get(await start_session(a))).text
    segs = [u for u in uris(text) if u.startswith("seg_")]
    for c in (a, b, a, b):
        for u in segs:
            assert (await c.get(f"/streams/{CAM}/{u}")).status_code == 200
    fetched = sum(pod.count(f"/cameras/{CAM}/seg_{n}.m4s") for n in (100, 101))
    assert fetched == 2
    assert CACHE.labels("miss")._value.get() - misses == fetched
    assert CACHE.labels("hit")._value.get() - hits == 4 * len(segs) - fetched
