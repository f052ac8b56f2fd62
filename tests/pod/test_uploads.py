"""Clip uploads (pod/uploads.py, PortalClient.upload_file) against the REAL portal stand-in
(deploy/dev/portal_standin.py) served by uvicorn on 127.0.0.1, with small real MP4s made
by ffmpeg. The stand-in's storage answers like Supabase Storage (signed upload URLs
``/storage/v1/object/upload/sign/camera-recordings/<path>?token=<jwt>``): HTTP 400 for an
expired or bad token, "The resource already exists" for an object that is already there —
as HTTP 409 or, like storage-api's legacy error format, HTTP 400 with ``"statusCode": "409"``."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import jwt
import pytest

from pod.backoff import Backoff
from pod.errors import PortalRejected, PortalUnavailable, StorageConflict
from pod.portal import UPLOAD_CHUNK_BYTES, PortalClient
from pod.uploader import Uploader
from pod.uploads import Quota, Upload, UploadQueue
from protocol.messages import UploadUrlRequest
from tests.pod.standin import ROOT, PortalStandIn, free_port
from tests.pod.standin import Served as StandIn

API_KEY = "pk_live_UPLOADSECRET_77aa01"
SECRET = "u" * 48
CAM = "gate-cam"


class Served(StandIn):
    """The stand-in with this module's key and secret."""

    def __init__(self, db: Path, **kw) -> None:
        super().__init__(db, api_key=API_KEY, stream_secret=SECRET, **kw)

    async def get(self, path: str, **kw) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json) -> httpx.Response:
        return await self.request("POST", path, json=json)

    async def uploads(self) -> list[dict]:
        return (await self.get("/__standin/uploads")).json()["uploads"]

    async def upload_urls(self) -> list[dict]:
        return (await self.get("/__standin/upload-urls")).json()["upload_urls"]

    async def recordings(self) -> list[dict]:
        r = await self.get("/api/pod/recordings", params={"camera_id": CAM}, headers={"Authorization": "Bearer user"})
        assert r.status_code == 200, r.text
        return r.json()["recordings"]


class Collect(logging.Handler):
    """Collects the pod's own log records (logger ``platebridge``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(f"{r.levelname} {r.name} {r.getMessage()}" for r in self.records)


@pytest.fixture
def pod_logs():
    """The pod's log lines at DEBUG (independent of caplog, which uvicorn's logging setup
    inside a test disturbs)."""
    h, lg = Collect(), logging.getLogger("platebridge")
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    yield h
    lg.removeHandler(h)
    lg.setLevel(old)


@pytest.fixture
async def portal(tmp_path):
    s = await Served(tmp_path / "portal" / "standin.db").start()
    yield s
    await s.stop()


@pytest.fixture(scope="session")
def base_clip(tmp_path_factory) -> Path:
    """A 2-second H.264 MP4 (faststart) made by the real ffmpeg."""
    if not shutil.which("ffmpeg") or not shutil.which("ffprobe"):
        pytest.fail("ffmpeg/ffprobe missing: run ./run setup")
    out = tmp_path_factory.mktemp("clips") / "base.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10", "-t", "2",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10", "-movflags", "+faststart", str(out)],
                   check=True, timeout=60)
    return out


def clip_copy(base_clip: Path, dest: Path, name: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    p = dest / name
    shutil.copyfile(base_clip, p)
    return p


def client(portal: Served, **kw) -> PortalClient:
    kw.setdefault("timeout", 5.0)
    return PortalClient(portal.url, API_KEY, **kw)


def fast_backoff(initial: float = 0.05) -> Backoff:
    return Backoff(initial=initial, cap=max(initial, 0.2), jitter=0.0)


async def wait_until(cond, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Running:
    """An Uploader.run task with its stop event."""

    def __init__(self, uploader: Uploader) -> None:
        self.uploader, self.stop = uploader, asyncio.Event()
        self.task = asyncio.create_task(uploader.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        self.uploader.wake()
        await asyncio.wait_for(self.task, 10)


async def run_until_state(queue: UploadQueue, uploader: Uploader, event_id: str, state: str,
                          timeout: float = 20.0) -> Upload:
    r = Running(uploader)
    try:
        await wait_until(lambda: queue.get(event_id).state == state or r.task.done(), timeout,
                         f"{event_id} -> {state} (now {queue.get(event_id)!r})")
        if r.task.done():
            r.task.result()
    finally:
        await r.close()
    return queue.get(event_id)


async def ffprobe_duration(target: str) -> float:
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return float(out.decode().strip())


# --- full flow ---


async def test_full_flow_listed_with_playable_video_url_and_never_repeated(portal, base_clip, tmp_path, pod_logs):
    rec_dir = tmp_path / "recordings"
    clip = clip_copy(base_clip, rec_dir, "recording_20261130_022409_gate-cam_evt-1.mp4")
    original = clip.read_bytes()
    duration = await ffprobe_duration(str(clip))
    queue = UploadQueue(tmp_path / "state" / "outbox.sqlite3")
    assert queue.add("evt-1", CAM, clip, "ABC123", duration, {"preroll_missing_s": 1.5}) is True
    assert queue.add("evt-1", CAM, clip, "ABC123", duration) is False  # idempotent by event_id
    assert queue.total_local_bytes() == len(original)

    async with client(portal) as pc:
        up = Uploader(queue, pc, fast_backoff())
        row = await run_until_state(queue, up, "evt-1", "confirmed")
    assert not clip.exists() and row.on_disk is False
    assert (up.url_requests, up.uploaded, up.confirmed, up.retried, up.failed) == (1, 1, 1, 0, 0)
    assert row.upload_url is None  # the signed URL is forgotten once used
    assert row.metadata == {"preroll_missing_s": 1.5} and queue.total_local_bytes() == 0

    urls = await portal.upload_urls()
    assert [(u["camera_id"], u["filename"]) for u in urls] == [(CAM, clip.name)]
    [stored] = await portal.uploads()
    assert stored["path"] == row.file_path and stored["size"] == len(original)
    assert stored["sha256"] == hashlib.sha256(original).hexdigest() and stored["content_type"] == "video/mp4"
    [rec] = await portal.recordings()
    assert (rec["event_id"], rec["plate_number"], rec["event_type"], rec["file_path"]) == (
        "evt-1", "ABC123", "plate_detection", row.file_path)
    assert rec["duration_seconds"] == pytest.approx(duration, abs=0.01) and rec["file_size_bytes"] == len(original)

    # the video_url is a working signed download: same bytes, video/mp4, ranges, playable by ffprobe
    async with httpx.AsyncClient(trust_env=False, timeout=10) as h:
        full = await h.get(rec["video_url"])
        assert full.status_code == 200 and full.content == original
        assert full.headers["content-type"].startswith("video/mp4") and full.headers["accept-ranges"] == "bytes"
        part = await h.get(rec["video_url"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == original[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(original)}"
        tail = await h.get(rec["video_url"], headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == original[-10:]
        beyond = await h.get(rec["video_url"], headers={"Range": f"bytes={len(original)}-"})
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(original)}"
        assert "/storage/v1/object/sign/camera-recordings/recordings/" in rec["video_url"]
        tampered = rec["video_url"][:-4] + ("AAAA" if not rec["video_url"].endswith("AAAA") else "BBBB")
        assert (await h.get(tampered)).status_code == 400
        # an upload token does not work for downloads (and vice versa)
        put_token_url = rec["video_url"].split("?token=")[0] + "?token=" + portal.state.storage_token(
            rec["file_path"], int(time.time()) + 60, "upload")
        r = await h.get(put_token_url)
        assert r.status_code == 400 and r.json()["error"] == "Invalid JWT"
    assert await ffprobe_duration(rec["video_url"]) == pytest.approx(duration, abs=0.2)

    # a restarted pod never uploads a confirmed clip again
    queue.close()
    queue2 = UploadQueue(tmp_path / "state" / "outbox.sqlite3")
    async with client(portal) as pc:
        up2 = Uploader(queue2, pc, fast_backoff(), idle_poll=0.05)
        r = Running(up2)
        await asyncio.sleep(0.3)
        await r.close()
    assert (up2.url_requests, up2.uploaded, up2.confirmed) == (0, 0, 0)
    assert len(await portal.upload_urls()) == 1 and len(await portal.uploads()) == 1
    assert queue2.get("evt-1").state == "confirmed" and queue2.counts()["confirmed"] == 1
    queue2.close()

    logs = pod_logs.text
    put_token = portal.state.storage_token(urls[0]["file_path"], urls[0]["expires"])
    assert f"uploads: evt-1: recording {row.file_path} confirmed" in logs
    assert put_token not in logs and "token=" not in logs and API_KEY not in logs


async def test_local_file_deleted_only_after_confirm(portal, base_clip, tmp_path):
    clip = clip_copy(base_clip, tmp_path / "rec", "c1.mp4")
    queue = UploadQueue(tmp_path / "outbox.sqlite3")
    queue.add("e1", CAM, clip, None, 2.0)
    async with client(portal) as pc:
        up = Uploader(queue, pc, fast_backoff())
        await up.step(queue.get("e1"))
        assert queue.get("e1").state == "url" and clip.exists()
        await up.step(queue.get("e1"))
        assert queue.get("e1").state == "uploaded" and clip.exists()
        # the confirm fails (portal API down, storage fine): the clip stays on disk
        await portal.post("/__standin/fault", {"mode": "error500", "count": None, "scope": "api"})
        await up.step(queue.get("e1"))
        row = queue.get("e1")
        assert row.state == "uploaded" and row.attempts == 1 and "500" in row.last_error and clip.exists()
        await portal.post("/__standin/fault", {"mode": "ok"})
        await up.step(queue.get("e1"))
    assert queue.get("e1").state == "confirmed" and not clip.exists()
    assert [r["event_id"] for r in await portal.recordings()] == ["e1"]
    assert up.retried == 1 and up.confirmed == 1
    queue.close()


# --- outages, restarts, expiry, 409 ---


async def test_portal_down_during_upload_then_pod_restart_uploads_exactly_once(base_clip, tmp_path):
    db = tmp_path / "portal" / "standin.db"
    portal = await Served(db, signing_key="stable-test-signing-key").start()
    clip = clip_copy(base_clip, tmp_path / "rec", "c1.mp4")
    outbox = tmp_path / "state" / "outbox.sqlite3"
    queue = UploadQueue(outbox)
    queue.add("e-restart", CAM, clip, "XYZ9", 2.0)
    try:
        async with client(portal, timeout=1.0) as pc:
            up = Uploader(queue, pc, fast_backoff())
            await up.step(queue.get("e-restart"))  # got the URL
            assert queue.get("e-restart").state == "url"
            await portal.stop()  # the portal (API and storage) goes down mid-upload
            await up.step(queue.get("e-restart"))
            await up.step(queue.get("e-restart"))
            row = queue.get("e-restart")
            assert row.state == "url" and row.attempts == 2 and up.retried == 2 and clip.exists()
        queue.close()  # the pod stops

        # the portal comes back (same signing key: the stored URL is still valid), the pod restarts
        portal = await Served(db, port=portal.port, signing_key="stable-test-signing-key").start()
        queue = UploadQueue(outbox)
        assert [r.event_id for r in queue.pending()] == ["e-restart"]
        async with client(portal) as pc:
            up2 = Uploader(queue, pc, fast_backoff())
            await run_until_state(queue, up2, "e-restart", "confirmed")
        assert up2.url_requests == 0 and up2.uploaded == 1 and up2.conflicts == 0  # resumed with the stored URL
        assert len(await portal.upload_urls()) == 1
        assert len(await portal.uploads()) == 1
        assert [r["event_id"] for r in await portal.recordings()] == ["e-restart"]
        assert not clip.exists()
    finally:
        queue.close()
        await portal.stop()


async def test_storage_fault_is_retried_with_backoff_and_uploads_once(portal, base_clip, tmp_path):
    clip = clip_copy(base_clip, tmp_path / "rec", "c1.mp4")
    queue = UploadQueue(tmp_path / "outbox.sqlite3")
    queue.add("e-fault", CAM, clip, None, 2.0)
    await portal.post("/__standin/fault", {"mode": "error500", "count": 3, "scope": "storage"})
    async with client(portal) as pc:
        up = Uploader(queue, pc, fast_backoff(0.05))
        await run_until_state(queue, up, "e-fault", "confirmed")
    fault = (await portal.get("/__standin/fault")).json()
    assert fault["faults_served"] == 3 and fault["mode"] == "ok"
    assert up.retried == 3 and up.url_requests == 1  # the API was never faulted: the URL was reused
    assert len(await portal.uploads()) == 1 and len(await portal.recordings()) == 1
    queue.close()


async def test_expired_url_is_requested_again(base_clip, tmp_path):
    portal = await Served(tmp_path / "portal.db", upload_ttl=1).start()
    clip = clip_copy(base_clip, tmp_path / "rec", "c1.mp4")
    queue = UploadQueue(tmp_path / "outbox.sqlite3")
    queue.add("e-exp", CAM, clip, None, 2.0)
    try:
        # the first PUT fails; the retry comes after the 1-second URL expired
        await portal.post("/__standin/fault", {"mode": "error500", "count": 1, "scope": "storage"})
        async with client(portal) as pc:
            up = Uploader(queue, pc, Backoff(initial=1.5, cap=1.5, jitter=0.0))
            row = await run_until_state(queue, up, "e-exp", "confirmed")
        assert len(await portal.upload_urls()) == 2 and row.url_requests == 2 and up.url_requests == 2
        [stored] = await portal.uploads()
        assert stored["path"] == row.file_path == (await portal.upload_urls())[1]["file_path"]
        assert len(await portal.recordings()) == 1
    finally:
        queue.close()
        await portal.stop()


async def test_put_refused_expired_signature_gets_a_fresh_url(base_clip, tmp_path, pod_logs):
    """Storage refuses the PUT (signature expired without the pod knowing the expiry, as with
    Supabase's signed upload URLs, which carry no expires_in; storage-api answers HTTP 400
    "ExpiredSignature"): back to 'recorded', new URL."""
    portal = await Served(tmp_path / "portal.db", upload_ttl=1).start()
    clip = clip_copy(base_clip, tmp_path / "rec", "c1.mp4")
    outbox = tmp_path / "outbox.sqlite3"
    queue = UploadQueue(outbox)
    queue.add("e-403", CAM, clip, None, 2.0)
    try:
        async with client(portal) as pc:
            up = Uploader(queue, pc, fast_backoff())
            await up.step(queue.get("e-403"))
            with sqlite3.connect(outbox) as db:  # the portal gave no expiry
                db.execute("UPDATE uploads SET url_expires_at = NULL WHERE event_id = 'e-403'")
            await asyncio.sleep(1.3)  # the signature expires at the stand-in
            await up.step(queue.get("e-403"))
            row = queue.get("e-403")
            assert row.state == "recorded" and row.upload_url is None and "ExpiredSignature" in row.last_error
            assert row.next_attempt <= time.time()  # the first refusal asks again at once
            await run_until_state(queue, up, "e-403", "confirmed")
        assert len(await portal.upload_urls()) == 2 and queue.get("e-403").url_requests == 2
        assert len(await portal.uploads()) == 1 and len(await portal.recordings()) == 1
        assert "HTTP 400" in pod_logs.text and "token=" not in pod_logs.text
    finally:
        queue.close()
        await portal.stop()


async def test_storage_refusing_every_url_parks_the_clip(base_clip, tmp_path):
    portal = await Served(tmp_path / "portal.db").start()
    clip = clip_copy(base_clip, tmp_path / "rec", "c1.mp4")
    outbox = tmp_path / "outbox.sqlite3"
    queue = UploadQueue(outbox)
    queue.add("e-bad", CAM, clip, None, 2.0)
    try:
        async with client(portal) as pc:
            up = Uploader(queue, pc, fast_backoff(0.01), max_put_refusals=3)
            for _ in range(30):
                row = queue.get("e-bad")
                if row.state == "failed":
                    break
                if row.state == "url":  # tamper every signature the portal hands out
                    with sqlite3.connect(outbox) as db:
                        db.execute("UPDATE uploads SET upload_url = replace(upload_url, 'token=', 'token=00') "
                                   "WHERE event_id = 'e-bad'")
                await up.step(queue.get("e-bad"))
        row = queue.get("e-bad")
        assert row.state == "failed" and row.url_requests == 3 and row.put_refusals == 3
        assert "refused 3 PUTs" in row.last_error and row.upload_url is None
        assert clip.exists() and await portal.uploads() == []
        assert queue.requeue_failed() == 1 and queue.get("e-bad").state == "recorded"
    finally:
        queue.close()
        await portal.stop()


class _Crash(BaseException):
    """Stands in for the pod dying (power loss) at an exact point."""


@pytest.mark.parametrize("duplicate", ["409", "400"])
async def test_duplicate_on_a_retried_put_counts_as_uploaded(base_clip, tmp_path, pod_logs, duplicate):
    """The PUT landed but the pod died before recording it; the retried PUT of the same URL
    meets "The resource already exists" — HTTP 409, or HTTP 400 with statusCode "409" as
    Supabase's storage-api also answers (issue 11). Both mean: uploaded. Confirm, delete."""
    portal = await Served(tmp_path / "portal.db", storage_duplicate=duplicate).start()
    clip = clip_copy(base_clip, tmp_path / "rec", "c1.mp4")
    outbox = tmp_path / "outbox.sqlite3"
    queue = UploadQueue(outbox)
    queue.add("e-409", CAM, clip, "ABC123", 2.0)

    def crash(*a, **kw):
        raise _Crash

    queue.mark_uploaded = crash  # the PUT lands at storage, then the pod dies before recording it
    try:
        async with client(portal) as pc:
            r = Running(Uploader(queue, pc, fast_backoff()))
            with pytest.raises(_Crash):
                await asyncio.wait_for(r.task, 20)
        queue.close()
        assert len(await portal.uploads()) == 1 and await portal.recordings() == []

        queue = UploadQueue(outbox)  # the pod restarts
        assert queue.get("e-409").state == "url"
        async with client(portal) as pc:
            up = Uploader(queue, pc, fast_backoff())
            await run_until_state(queue, up, "e-409", "confirmed")
        assert up.conflicts == 1 and up.uploaded == 1 and up.url_requests == 0 and up.retried == 0
        assert len(await portal.uploads()) == 1 and len(await portal.upload_urls()) == 1
        assert [r["event_id"] for r in await portal.recordings()] == ["e-409"]
        assert not clip.exists() and queue.get("e-409").on_disk is False
        assert f"HTTP {duplicate}" in pod_logs.text and "already exists" in pod_logs.text
    finally:
        queue.close()
        await portal.stop()


@pytest.mark.parametrize("duplicate", ["409", "400"])
async def test_duplicate_under_a_fresh_url_confirms_without_asking_again(base_clip, tmp_path, duplicate):
    """The guide's portal names the object after the file (recordings/<community>/<camera>/<file>),
    so a fresh URL for a clip whose first PUT landed names the same object: the PUT under it
    meets the duplicate answer. The pod asks for exactly one new URL (the old one expired),
    then confirms and cleans up — it never loops asking for URLs."""
    portal = await Served(tmp_path / "portal.db", storage_duplicate=duplicate).start()
    clip = clip_copy(base_clip, tmp_path / "rec", "c1.mp4")
    outbox = tmp_path / "outbox.sqlite3"
    queue = UploadQueue(outbox)
    queue.add("e-dup", CAM, clip, "ABC123", 2.0)
    try:
        async with client(portal) as pc:
            up = Uploader(queue, pc, fast_backoff())
            await up.step(queue.get("e-dup"))  # URL #1
            row = queue.get("e-dup")
            async with httpx.AsyncClient(trust_env=False) as h:  # an earlier attempt's bytes landed
                assert (await h.put(row.upload_url, content=clip.read_bytes())).status_code == 200
            with sqlite3.connect(outbox) as db:  # ... and URL #1 expired before the pod retried
                db.execute("UPDATE uploads SET url_expires_at = 1, attempts = 1 WHERE event_id = 'e-dup'")
            await run_until_state(queue, up, "e-dup", "confirmed")
        assert up.url_requests == 2 and up.conflicts == 1 and up.failed == 0
        urls = await portal.upload_urls()
        assert len(urls) == 2 and urls[0]["file_path"] == urls[1]["file_path"]
        assert [r["event_id"] for r in await portal.recordings()] == ["e-dup"]
        assert not clip.exists()
    finally:
        queue.close()
        await portal.stop()


@pytest.mark.parametrize(("status", "body", "duplicate"), [
    (409, b"", True),
    (409, b'{"statusCode":"409","error":"Duplicate","message":"The resource already exists"}', True),
    (400, b'{"statusCode":"409","error":"Duplicate","message":"The resource already exists"}', True),
    (400, b'{"statusCode":409,"error":"Duplicate","message":"The resource already exists"}', True),
    (400, b'{"statusCode":"400","error":"ExpiredSignature","message":"The signature has expired"}', False),
    (400, b'{"statusCode":"400","error":"InvalidSignature","message":"The url do not match the signature"}', False),
    (400, b"<html>bad request</html>", False),
    (400, b"[409]", False),
    (403, b'{"statusCode":"409"}', False),
])
async def test_storage_duplicate_answers_are_told_apart(tmp_path, status, body, duplicate):
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    f = tmp_path / "c.mp4"
    f.write_bytes(b"x" * 10)
    async with PortalClient("http://portal.invalid", API_KEY, transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(PortalRejected) as ei:
            await c.upload_file("https://storage.example/storage/v1/object/upload/sign/b/o.mp4?token=t", f)
    assert isinstance(ei.value, StorageConflict) is duplicate and ei.value.status == status


async def test_refused_upload_url_parks_the_clip_and_keeps_the_file(portal, base_clip, tmp_path):
    clip = clip_copy(base_clip, tmp_path / "rec", "c1.mp4")
    queue = UploadQueue(tmp_path / "outbox.sqlite3")
    queue.add("e-401", CAM, clip, None, 2.0)
    async with PortalClient(portal.url, "pk_wrong_key", timeout=5) as pc:
        up = Uploader(queue, pc, fast_backoff())
        await up.step(queue.get("e-401"))
    row = queue.get("e-401")
    assert row.state == "failed" and "401" in row.last_error and clip.exists() and up.failed == 1
    assert queue.pending() == [] and queue.next_due(time.time() + 1e6) is None
    assert queue.requeue_failed() == 1
    async with client(portal) as pc:
        await run_until_state(queue, Uploader(queue, pc, fast_backoff()), "e-401", "confirmed")
    queue.close()


async def test_missing_local_clip_is_parked(portal, base_clip, tmp_path):
    clip = clip_copy(base_clip, tmp_path / "rec", "c1.mp4")
    queue = UploadQueue(tmp_path / "outbox.sqlite3")
    queue.add("e-gone", CAM, clip, None, 2.0)
    clip.unlink()
    async with client(portal) as pc:
        await Uploader(queue, pc, fast_backoff()).step(queue.get("e-gone"))
    row = queue.get("e-gone")
    assert row.state == "failed" and not row.on_disk and "missing" in row.last_error
    assert await portal.upload_urls() == []
    with pytest.raises(FileNotFoundError):
        queue.add("e-none", CAM, tmp_path / "nope.mp4", None, 1.0)
    queue.close()


# --- disk quota ---


async def test_quota_evicts_uploaded_first_then_oldest_pending(portal, base_clip, tmp_path, pod_logs):
    rec = tmp_path / "rec"
    queue = UploadQueue(tmp_path / "outbox.sqlite3")
    clips = {}
    for i, eid in enumerate(["c1", "c2", "c3", "c4", "c5"]):  # c1 oldest
        clips[eid] = clip_copy(base_clip, rec, f"{eid}.mp4")
        queue.add(eid, CAM, clips[eid], f"P{i}", 2.0, now=1000.0 + i)
    size = base_clip.stat().st_size
    async with client(portal) as pc:
        up = Uploader(queue, pc, fast_backoff())
        for eid in ("c2", "c3"):  # uploaded, but the confirm has not happened yet
            await up.step(queue.get(eid))
            await up.step(queue.get(eid))
            assert queue.get(eid).state == "uploaded"
        assert queue.total_local_bytes() == 5 * size

        # over quota by two clips: the two uploaded ones go, although c1 is older
        evicted = queue.evict_for_quota(max_bytes=3 * size)
        assert [(e.event_id, e.uploaded, e.reason) for e in evicted] == [("c2", True, "quota"), ("c3", True, "quota")]
        assert not clips["c2"].exists() and not clips["c3"].exists() and clips["c1"].exists()
        assert queue.get("c2").state == "uploaded" and not queue.get("c2").on_disk  # the confirm needs no file
        # then the oldest not yet uploaded
        evicted = queue.evict_for_quota(max_bytes=1 * size)
        assert [(e.event_id, e.uploaded) for e in evicted] == [("c1", False), ("c4", False)]
        assert queue.get("c1").state == "evicted" and queue.get("c4").state == "evicted"
        assert clips["c5"].exists() and queue.total_local_bytes() == size
        assert queue.evicted == 4 and up.evicted == 4
        assert queue.evict_for_quota(max_bytes=size) == []  # within quota: nothing happens
        warnings = [r.getMessage() for r in pod_logs.records if "evicted clip" in r.getMessage()]
        assert len(warnings) == 4
        assert "c2" in warnings[0] and "already uploaded" in warnings[0]
        assert "c1" in warnings[2] and "NOT uploaded" in warnings[2] and "evictions so far: 3" in warnings[2]

        # the uploader finishes what it can: c2/c3 confirmed without their files, c5 uploaded; c1/c4 never
        r = Running(Uploader(queue, pc, fast_backoff(), idle_poll=0.05))
        await wait_until(lambda: queue.counts()["confirmed"] == 3, 20, "3 confirmed")
        await r.close()
    assert sorted(x["event_id"] for x in await portal.recordings()) == ["c2", "c3", "c5"]
    assert len(await portal.uploads()) == 3
    assert queue.counts() == {"recorded": 0, "url": 0, "uploaded": 0, "confirmed": 3, "evicted": 2, "failed": 0}
    assert sorted(os.listdir(rec)) == []
    queue.close()


def test_free_space_floor_evicts_and_busy_upload_goes_last(base_clip, tmp_path):
    rec = tmp_path / "rec"
    queue = UploadQueue(tmp_path / "outbox.sqlite3")
    for i, eid in enumerate(["a", "b", "c"]):
        queue.add(eid, CAM, clip_copy(base_clip, rec, f"{eid}.mp4"), None, 2.0, now=10.0 + i)
    size = base_clip.stat().st_size
    floor = 10 * size
    start = queue.total_local_bytes()

    def disk_free() -> int:  # the disk is 1.5 clips short of the floor; deleting clips frees space
        return floor - int(1.5 * size) + (start - queue.total_local_bytes())

    up = Uploader(queue, None, fast_backoff(), quota=Quota(max_bytes=100 * size, free_floor_bytes=floor,
                                                          disk_free=disk_free))
    up.busy = "a"  # "a" is being uploaded right now: evicted only as the last resort
    evicted = up.enforce_quota()
    assert [(e.event_id, e.reason) for e in evicted] == [("b", "disk_free"), ("c", "disk_free")]
    assert disk_free() >= floor and (rec / "a.mp4").exists()
    assert queue.get("b").state == "evicted" and queue.get("a").state == "recorded"
    # nothing left but the busy one: it goes too rather than filling the disk
    evicted = queue.evict_for_quota(max_bytes=0, busy=("a",))
    assert [e.event_id for e in evicted] == ["a"] and not (rec / "a.mp4").exists()
    assert queue.evict_for_quota(max_bytes=0) == []  # nothing on disk: stops instead of looping
    queue.close()


def test_queue_state_survives_reopen_and_transitions_are_guarded(base_clip, tmp_path):
    db = tmp_path / "state" / "outbox.sqlite3"
    queue = UploadQueue(db)
    clip = clip_copy(base_clip, tmp_path / "rec", "x.mp4")
    assert queue.add("x", CAM, clip, "P1", 2.5, {"segments_skipped": ["seg_3.m4s"]}, now=50.0)
    assert queue.mark_uploaded("x") is False  # not from 'recorded'
    assert queue.mark_confirmed("x") is False
    assert queue.set_url("x", "http://s/storage/p?expires=1&sig=abc", "p", 200.0, now=60.0)
    assert queue.set_url("x", "http://other", "q", None) is False  # already has a URL
    assert queue.retry_later("x", 5.0, "PortalUnavailable: PUT /storage/p?sig=deadbeef", now=70.0)
    queue.close()

    queue = UploadQueue(db)
    row = queue.get("x")
    assert (row.state, row.file_path, row.url_expires_at, row.attempts, row.next_attempt) == (
        "url", "p", 200.0, 1, 75.0)
    assert "deadbeef" not in row.last_error  # errors are stored redacted
    assert "sig=abc" not in repr(row) and "sig=abc" not in str(row)  # the signed URL never shows in a repr
    assert queue.next_due(74.0) is None and queue.next_due(75.0).event_id == "x" and queue.next_wakeup() == 75.0
    assert row.metadata == {"segments_skipped": ["seg_3.m4s"]} and row.plate == "P1" and row.duration_s == 2.5
    assert oct(os.stat(db).st_mode & 0o777) == "0o600"
    # the outbox shares the file
    from pod.outbox import Outbox
    ob = Outbox(db)
    assert ob.put("detect", "k", b"{}", now=1.0)
    ob.close()
    assert queue.get("x").state == "url"
    queue.close()


# --- the streaming PUT ---


class RawTransport(httpx.AsyncBaseTransport):
    """Hands the request to ``handler`` with its body stream unread (httpx.MockTransport
    reads the whole body first, which would hide how it is sent)."""

    def __init__(self, handler) -> None:
        self.handler = handler

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.handler(request)


async def test_upload_file_streams_with_content_length(tmp_path):
    seen: dict = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        seen["is_bytes"] = isinstance(request.stream, httpx.ByteStream)
        seen["headers"] = dict(request.headers)
        chunks = [c async for c in request.stream]
        seen["chunks"] = [len(c) for c in chunks]
        seen["body"] = b"".join(chunks)
        return httpx.Response(200)

    p = tmp_path / "clip.mp4"
    data = os.urandom(UPLOAD_CHUNK_BYTES * 2 + 123)
    p.write_bytes(data)
    async with PortalClient("http://portal.invalid", API_KEY, transport=RawTransport(handler)) as c:
        assert await c.upload_file("https://storage.example/o.mp4?sig=x", p) == len(data)
    assert seen["is_bytes"] is False  # an iterator, not one in-memory body
    assert seen["chunks"] == [UPLOAD_CHUNK_BYTES, UPLOAD_CHUNK_BYTES, 123] and seen["body"] == data
    assert seen["headers"]["content-length"] == str(len(data)) and "transfer-encoding" not in seen["headers"]
    assert seen["headers"]["content-type"] == "video/mp4" and "authorization" not in seen["headers"]


async def test_upload_file_errors(tmp_path):
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"x" * (UPLOAD_CHUNK_BYTES + 10))

    async def shrink_then_read(request: httpx.Request) -> httpx.Response:
        os.truncate(p, 100)  # the file shrinks while it is being sent
        async for _ in request.stream:
            pass
        return httpx.Response(200)

    async def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, text="exists")

    async with PortalClient("http://portal.invalid", API_KEY, transport=RawTransport(shrink_then_read)) as c:
        with pytest.raises(PortalUnavailable, match="shrank"):
            await c.upload_file("https://storage.example/o.mp4", p)
        with pytest.raises(FileNotFoundError):
            await c.upload_file("https://storage.example/o.mp4", tmp_path / "missing.mp4")
    async with PortalClient("http://portal.invalid", API_KEY, transport=httpx.MockTransport(refuse)) as c:
        with pytest.raises(PortalRejected) as ei:
            await c.upload_file("https://storage.example/o.mp4", p)
        assert ei.value.status == 409


# Peak RSS from /proc/self/status VmHWM (this process's own high-water mark;
# getrusage's ru_maxrss would carry over the forking pytest parent's peak across exec).
_RSS_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pod.portal import PortalClient

    def peak_rss() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    async def main(base, key, url, path, mode):
        async with PortalClient(base, key, timeout=60) as c:
            before = peak_rss()
            if mode == "file":
                await c.upload_file(url, path)
            else:
                with open(path, "rb") as f:
                    await c.upload(url, f.read())
            after = peak_rss()
        print(after - before)

    asyncio.run(main(*sys.argv[1:]))
""")


async def test_streaming_put_does_not_read_the_file_into_memory(portal, tmp_path):
    """A 50 MB (sparse) file PUT from a fresh process: peak RSS grows < 20 MB with
    upload_file, and by at least most of the file size with upload(bytes) — the control
    showing the measurement would catch a whole-file read."""
    big = tmp_path / "big.mp4"
    size = 50 * 1024 * 1024
    with open(big, "wb") as f:
        f.truncate(size - 16)
        f.seek(size - 16)
        f.write(b"0123456789abcdef")
    script = tmp_path / "rss_upload.py"
    script.write_text(_RSS_SCRIPT)
    growth = {}
    async with client(portal) as pc:
        for mode in ("file", "bytes"):
            up = await pc.request_upload_url(UploadUrlRequest(camera_id=CAM, filename=f"{mode}.mp4"))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), portal.url, API_KEY, up.url(), str(big), mode,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT),
                env=os.environ | {"PYTHONPATH": str(ROOT)})
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, err.decode()[-2000:]
            growth[mode] = int(out.decode().strip())
    stored = await portal.uploads()
    assert [u["size"] for u in stored] == [size, size]
    digest = hashlib.sha256()
    with open(big, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert {u["sha256"] for u in stored} == {digest.hexdigest()}
    assert growth["file"] < 20 * 1024 * 1024, growth
    assert growth["bytes"] > 40 * 1024 * 1024, growth  # the measurement can see a whole-file read


# --- the stand-in's own additions ---


async def test_standin_fault_scope_and_signing_key(tmp_path):
    s = await Served(tmp_path / "p.db", signing_key="k1").start()
    try:
        await s.post("/__standin/fault", {"mode": "error500", "count": None, "scope": "storage"})
        async with client(s) as pc:
            up = await pc.request_upload_url(UploadUrlRequest(camera_id=CAM, filename="a.mp4"))  # API unaffected
            with pytest.raises(PortalUnavailable):
                await pc.upload(up.url(), b"data")
        assert (await s.post("/__standin/fault", {"mode": "error500", "scope": "nope"})).status_code == 400
        state = (await s.post("/__standin/fault", {"mode": "ok"})).json()
        assert state["scope"] == "all" and state["faults_served"] == 1
        urls = await s.upload_urls()
        assert [u["filename"] for u in urls] == ["a.mp4"] and "token" not in str(urls)
        sig = s.state.storage_token("recordings/x.mp4", 123)
    finally:
        await s.stop()
    same = PortalStandIn(db_path=tmp_path / "p.db", api_key=API_KEY, stream_secret=SECRET, gateway_url="http://g",
                         signing_key="k1")
    other = PortalStandIn(db_path=tmp_path / "q.db", api_key=API_KEY, stream_secret=SECRET, gateway_url="http://g")
    try:
        assert same.storage_token("recordings/x.mp4", 123) == sig != other.storage_token("recordings/x.mp4", 123)
    finally:
        same.close()
        other.close()


def test_standin_cli_upload_ttl_and_signing_key_from_env(tmp_path):
    port = free_port()
    log_path = tmp_path / "standin.log"
    env = os.environ | {"PORTAL_STANDIN_API_KEY": API_KEY, "PORTAL_STANDIN_STREAM_SECRET": SECRET,
                        "PORTAL_STANDIN_SIGNING_KEY": "cli-signing-key"}
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "deploy" / "dev" / "portal_standin.py"), "--port", str(port),
             "--db", str(tmp_path / "cli.db"), "--gateway-url", "http://g", "--upload-ttl", "2"],
            stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/__standin/fault", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "stand-in CLI did not come up"
            time.sleep(0.05)
        r = httpx.post(f"{base}/api/pod/recordings/upload-url", json={"camera_id": CAM, "filename": "a.mp4"},
                       headers={"Authorization": f"Bearer {API_KEY}"}, trust_env=False, timeout=5)
        body = r.json()
        assert r.status_code == 200 and body["expires_in"] == 2
        token = body["upload_url"].split("?token=")[1]
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]
        assert abs(expires - (time.time() + 2)) < 3
        same = PortalStandIn(db_path=tmp_path / "other.db", api_key=API_KEY, stream_secret=SECRET,
                             gateway_url="http://g", signing_key="cli-signing-key")
        try:  # the env key signed it: another process with that key produces the same token
            assert token == same.storage_token(body["file_path"], expires)
        finally:
            same.close()
    finally:
        proc.terminate()
        proc.wait(10)
    assert "cli-signing-key" not in log_path.read_text()
