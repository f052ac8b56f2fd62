"""Detection clips from a real ffmpeg HLS buffer: segment selection, validation with
ffprobe, concatenation + ``-c copy`` remux with ``+faststart``, the Recorder's wait for
post-roll, and direct RTSP capture (real ffmpeg/ffprobe; the RTSP one needs GStreamer)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pod.config import parse_config
from pod.errors import RecorderError
from pod.passages import PassageDecision
from pod.recorder import ClipJobResult, Recorder, build_clip, capture_direct, clip_name
from pod.segments import SegmentIndex, parse_media_playlist

ROOT = Path(__file__).resolve().parents[2]


def make_buffer(d: Path, *, seconds: int = 12, segment_type: str = "fmp4", realtime: bool = False,
                init: str = "init_1.mp4", epoch: bool = False) -> subprocess.Popen | None:
    """The HLS buffer the streamer keeps, made by ffmpeg from a test source (1-s GOP/segments)."""
    d.mkdir(parents=True, exist_ok=True)
    ext = "m4s" if segment_type == "fmp4" else "ts"
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"] + (["-re"] if realtime else []) + [
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15", "-c:v", "libx264", "-g", "15",
        "-f", "hls", "-hls_time", "1", "-hls_list_size", "0", "-hls_flags", "program_date_time",
        "-hls_segment_type", segment_type]
    if segment_type == "fmp4":
        args += ["-hls_fmp4_init_filename", init]
    if epoch:
        args += ["-hls_start_number_source", "epoch"]
    args += ["-hls_segment_filename", str(d / f"seg_%d.{ext}"), "-t", str(seconds), str(d / "index.m3u8")]
    if realtime:
        return subprocess.Popen(args)
    subprocess.run(args, check=True, timeout=60)
    return None


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
    if not shutil.which("ffmpeg") or not shutil.which("ffprobe"):
        pytest.fail("ffmpeg/ffprobe missing: run ./run setup")
    d = tmp_path_factory.mktemp("hls") / "cam1"
    make_buffer(d)
    return d


def segments_of(d: Path):
    return parse_media_playlist((d / "index.m3u8").read_text())


def copy_buffer(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def top_level_atoms(path: Path) -> list[str]:
    """Top-level ISO BMFF box types in file order (ISO/IEC 14496-12 §4.2)."""
    out, data = [], path.read_bytes()
    i = 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        if size == 1:
            size = struct.unpack(">Q", data[i + 8:i + 16])[0]
        elif size == 0:
            size = len(data) - i
        out.append(kind.decode("latin-1"))
        if size < 8:
            break
        i += size
    return out


def probe(path: Path) -> dict:
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration,format_name:stream=codec_name",
                        "-of", "json", str(path)], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(r.stdout)


def index_of(d: Path) -> SegmentIndex:
    ix = SegmentIndex()
    ix.update(segments_of(d))
    return ix


def pod_cfg(tmp_path: Path, **over):
    base = {"portal_url": "http://127.0.0.1:9", "pod_api_key": "k", "pod_id": "pod-1", "site_id": "site-1",
            "camera_id": "cam1",
            "camera_rtsp_url": "rtsp://admin:hunter2@127.0.0.1:9/stream", "stream_secret": "s" * 40,
            "stream_bind": "127.0.0.2", "hls_dir": str(tmp_path / "hls"),
            "recordings_dir": str(tmp_path / "rec"), "hls_segment_seconds": 1, "recording_duration": 3}
    extra = {k: over.pop(k) for k in list(over) if k == "pre_roll"}
    base.update(over)
    return Cfg(parse_config(base)[0], **extra)


class Cfg:
    """A PodConfig plus keys the lead adds to it (``pre_roll``)."""

    def __init__(self, base, **extra):
        self._base, self._extra = base, extra

    def __getattr__(self, name):
        if name in self._extra:
            return self._extra[name]
        return getattr(self._base, name)


def decision(event_id: str, at: float, camera_id: str = "cam1") -> PassageDecision:
    return PassageDecision(event_id=event_id, frigate_camera=camera_id, camera_id=camera_id, plate_raw="abc123",
                           plate="ABC123", confidence=0.95, decision="allow", reason="whitelisted",
                           near_match=None, detected_at=at)


# ------------------------------------------------------------------ pieces


def test_buffer_playlist_has_pdt_for_every_segment(buffer):
    text = (buffer / "index.m3u8").read_text()
    assert text.count("#EXT-X-PROGRAM-DATE-TIME:") == text.count("#EXTINF:") == 12
    segs = segments_of(buffer)
    assert [s.sequence for s in segs] == list(range(12)) and {s.init for s in segs} == {"init_1.mp4"}
    for a, b in zip(segs, segs[1:]):
        assert b.start == pytest.approx(a.end, abs=0.002)


def test_clip_name():
    t = 1796005449.9  # 2026-11-30 02:24:09 UTC
    assert clip_name(t, "gate-cam_1", "1796005440.1-abc") == "recording_20261130_022409_gate-cam_1_1796005440.1-abc.mp4"
    name = clip_name(t, "cam1", "../../etc/pass wd:é" + "x" * 100)
    assert "/" not in name and " " not in name and ":" not in name and "é" not in name
    event_part = name[len("recording_20261130_022409_cam1_"):-len(".mp4")]
    assert len(event_part) == 80 and event_part == ".._.._etc_pass_wd__" + "x" * 61


async def test_build_clip_covers_window_with_faststart(buffer, tmp_path):
    segs = segments_of(buffer)
    start, end = segs[3].start + 0.3, segs[8].start + 0.5
    sel = index_of(buffer).select(start, end, event=segs[5].start + 0.2)
    out = tmp_path / "rec" / "clip.mp4"
    res = await build_clip(buffer, sel, out)
    assert res.path == out and out.is_file() and res.size_bytes == out.stat().st_size
    assert res.segments_used == 6 and res.segments_skipped == [] and res.preroll_missing_s == 0
    assert abs(res.duration_s - (end - start)) <= 1.0  # within one segment of the requested window
    info = probe(out)
    assert float(info["format"]["duration"]) == pytest.approx(res.duration_s, abs=0.01)
    assert [s["codec_name"] for s in info["streams"]] == ["h264"]
    atoms = top_level_atoms(out)
    assert atoms[0] == "ftyp" and "moov" in atoms and "mdat" in atoms
    assert atoms.index("moov") < atoms.index("mdat"), atoms  # +faststart
    assert "moof" not in atoms  # remuxed to a plain MP4, not fragments
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mp4"]  # no .part / temp left


async def test_damaged_segments_are_skipped_and_logged(buffer, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="platebridge.pod.recorder")
    d = copy_buffer(buffer, tmp_path / "cam1")
    seg4 = d / "seg_4.m4s"
    seg4.write_bytes(seg4.read_bytes()[: seg4.stat().st_size // 2])  # partial (truncated) segment
    (d / "seg_9.m4s").write_bytes(os.urandom(20_000))  # garbage
    segs = segments_of(d)
    start, end = segs[2].start, segs[10].end
    sel = index_of(d).select(start, end, event=segs[6].start + 0.5)
    assert len(sel.segments) == 9
    res = await build_clip(d, sel, tmp_path / "rec" / "clip.mp4")
    # the good run around the event: 5..8
    assert res.segments_used == 4 and res.duration_s == pytest.approx(4.0, abs=0.2)
    assert {"seg_4.m4s", "seg_9.m4s"} <= set(res.segments_skipped)
    assert res.preroll_missing_s == pytest.approx(segs[5].start - start, abs=0.01)
    assert res.postroll_missing_s == pytest.approx(end - segs[8].end, abs=0.01)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "seg_4.m4s" in warned and "seg_9.m4s" in warned
    assert top_level_atoms(res.path).index("moov") < top_level_atoms(res.path).index("mdat")


async def test_missing_segment_file_is_skipped(buffer, tmp_path):
    d = copy_buffer(buffer, tmp_path / "cam1")
    (d / "seg_3.m4s").unlink()
    segs = segments_of(d)
    sel = index_of(d).select(segs[1].start, segs[5].end, event=segs[4].start)
    res = await build_clip(d, sel, tmp_path / "rec" / "c.mp4")
    assert res.segments_used == 2 and "seg_3.m4s" in res.segments_skipped  # 4, 5


async def test_nothing_usable_raises_and_leaves_no_files(buffer, tmp_path):
    d = copy_buffer(buffer, tmp_path / "cam1")
    segs = segments_of(d)
    for s in segs[:3]:
        (d / s.name).write_bytes(b"\0" * 100)
    sel = index_of(d).select(segs[0].start, segs[2].end)
    rec = tmp_path / "rec"
    with pytest.raises(RecorderError, match="no usable segment"):
        await build_clip(d, sel, rec / "c.mp4")
    assert not rec.exists() or list(rec.iterdir()) == []
    with pytest.raises(RecorderError, match="no HLS segments"):
        await build_clip(d, index_of(d).select(0, 10), rec / "c.mp4")
    (d / "init_1.mp4").unlink()
    with pytest.raises(RecorderError, match="init segment"):
        await build_clip(d, index_of(d).select(segs[5].start, segs[7].end), rec / "c.mp4")


async def test_missing_preroll_is_reported(buffer, tmp_path):
    segs = segments_of(buffer)
    start = segs[0].start - 4.0  # the buffer starts 4 s after the window
    sel = index_of(buffer).select(start, segs[2].end, event=segs[0].start)
    assert sel.preroll_missing_s == pytest.approx(4.0, abs=1e-6)
    res = await build_clip(buffer, sel, tmp_path / "c.mp4")
    assert res.preroll_missing_s == pytest.approx(4.0, abs=1e-6)
    assert res.duration_s == pytest.approx(3.0, abs=0.2)


async def test_mpegts_buffer(tmp_path):
    d = tmp_path / "ts"
    make_buffer(d, seconds=6, segment_type="mpegts")
    segs = segments_of(d)
    assert segs and all(s.init is None and s.name.endswith(".ts") for s in segs)
    sel = index_of(d).select(segs[1].start, segs[4].end)
    res = await build_clip(d, sel, tmp_path / "rec" / "ts.mp4", segment_type="mpegts")
    assert res.segments_used == 4 and res.duration_s == pytest.approx(4.0, abs=0.5)
    assert "mp4" in probe(res.path)["format"]["format_name"]
    atoms = top_level_atoms(res.path)
    assert atoms.index("moov") < atoms.index("mdat")


# ----------------------------------------------------------------- recorder


async def test_recorder_waits_for_postroll_one_clip_per_detection(tmp_path):
    cfg = pod_cfg(tmp_path, pre_roll=2, recording_duration=3)
    cam_dir = Path(cfg.hls_dir) / "cam1"
    proc = make_buffer(cam_dir, seconds=25, realtime=True, epoch=True, init=f"init_{int(time.time())}.mp4")
    got: list[tuple[float, ClipJobResult]] = []

    async def on_clip(r: ClipJobResult) -> None:
        got.append((time.time(), r))

    ix = SegmentIndex()
    rec = Recorder(cfg, {"cam1": ix}.__getitem__, on_clip)
    try:
        deadline = time.time() + 20
        # more than pre_roll plus the PDT lag of ffmpeg
        while len(segments_of(cam_dir) if (cam_dir / "index.m3u8").exists() else []) < 5:
            assert time.time() < deadline, "ffmpeg produced no segments"
            await asyncio.sleep(0.1)
        t = time.time()
        assert rec.request(decision("ev-1", t))
        assert rec.request(decision("ev-2", t + 0.5))  # overlapping window: its own clip
        assert not rec.request(decision("ev-1", t))  # same detection twice: one clip
        assert rec.duplicates == 1 and rec.pending() == 2
        assert await rec.wait_idle(timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert rec.built == 2 and rec.failed == 0
    by_id = {r.event_id: (at, r) for at, r in got}
    assert set(by_id) == {"ev-1", "ev-2"}
    for eid, base in (("ev-1", t), ("ev-2", t + 0.5)):
        at, r = by_id[eid]
        assert at >= base + 3 - 0.5  # waited for the post-roll to be written
        assert r.filename == clip_name(base, "cam1", eid) and r.path.parent == Path(cfg.recordings_dir)
        assert r.path.is_file() and r.size_bytes == r.path.stat().st_size
        assert r.plate == "ABC123" and r.camera_id == "cam1" and r.detected_at == base
        assert abs(r.duration_s - 5.0) <= 1.0
        assert r.metadata["preroll_missing_s"] == 0 and r.metadata["postroll_missing_s"] == 0
        assert r.metadata["segments_skipped"] == [] and r.metadata["source"] == "hls"
        json.dumps(r.metadata)
    assert by_id["ev-1"][1].path != by_id["ev-2"][1].path
    assert sorted(p.suffix for p in Path(cfg.recordings_dir).iterdir()) == [".mp4", ".mp4"]


async def test_recorder_gives_up_waiting_and_records_what_exists(buffer, tmp_path):
    cfg = pod_cfg(tmp_path, pre_roll=2, recording_duration=5)
    segs = segments_of(buffer)
    got: list[ClipJobResult] = []
    rec = Recorder(cfg, {"cam1": SegmentIndex()}.__getitem__, got.append, hls_dir_for=lambda cam: buffer,
                   clock=lambda: time.time() + 3600, wait_slack=0)  # long past the wait deadline
    t = segs[-2].start  # 5 s of post-roll wanted, ~2 s exist
    assert rec.request(decision("ev-late", t))
    assert await rec.wait_idle(timeout=30)
    assert len(got) == 1 and rec.built == 1
    meta = got[0].metadata
    assert meta["postroll_missing_s"] == pytest.approx(t + 5 - segs[-1].end, abs=0.01)
    assert meta["postroll_missing_s"] > 2
    assert meta["preroll_missing_s"] == 0 and got[0].duration_s == pytest.approx(4.0, abs=0.2)


async def test_recorder_failure_is_counted_not_delivered(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="platebridge.pod.recorder")
    cfg = pod_cfg(tmp_path)
    got = []
    rec = Recorder(cfg, lambda cam: SegmentIndex(), got.append, clock=lambda: time.time() + 3600)
    assert rec.request(decision("ev-none", time.time()))
    assert await rec.wait_idle(timeout=10)
    assert got == [] and rec.failed == 1 and rec.built == 0
    assert any("ev-none" in r.getMessage() for r in caplog.records)


async def test_recorder_pending_is_bounded_and_stop_cancels(tmp_path):
    cfg = pod_cfg(tmp_path)
    rec = Recorder(cfg, lambda cam: SegmentIndex(), lambda r: None, max_pending=1)
    assert rec.request(decision("ev-a", time.time() + 100))  # waits for post-roll that is far away
    assert not rec.request(decision("ev-b", time.time()))
    assert rec.dropped == 1 and rec.pending() == 1
    await asyncio.wait_for(rec.stop(), timeout=5)
    assert rec.pending() == 0 and not rec.request(decision("ev-c", time.time()))
    assert not Path(cfg.recordings_dir).exists() or list(Path(cfg.recordings_dir).iterdir()) == []


# -------------------------------------------------------------- direct RTSP


async def test_capture_direct_failure_redacts_credentials(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RecorderError) as exc:
        await capture_direct("rtsp://admin:hunter2@127.0.0.1:9/stream", 2, tmp_path / "c.mp4", rtsp_timeout=2)
    assert "hunter2" not in str(exc.value) and "rtsp://***@127.0.0.1:9" in str(exc.value)
    assert "hunter2" not in caplog.text
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def camera(tmp_path):
    """The GStreamer dev camera with RTSP basic auth, on a free loopback port."""
    log = open(tmp_path / "camera.log", "w+")
    p = subprocess.Popen(["/usr/bin/python3", str(ROOT / "deploy/dev/camera.py"), "--host", "127.0.0.1", "--port", "0",
                          "--path", "/gate", "--user", "op", "--password", "s3cr3t-pw"],
                         stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = p.stdout.readline()
        if not line.startswith("CAMERA READY "):
            log.seek(0)
            pytest.fail(f"camera did not start: {line!r} {log.read()[-2000:]}")
        url = line.split()[-1]
        yield url.replace("rtsp://", "rtsp://op:s3cr3t-pw@", 1)
    finally:
        p.terminate()
        p.wait(timeout=10)
        log.close()


@pytest.mark.e2e
async def test_recorder_without_streaming_captures_from_rtsp(camera, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = pod_cfg(tmp_path, pre_roll=5, recording_duration=3, enable_streaming=False, camera_rtsp_url=camera)
    got: list[ClipJobResult] = []
    rec = Recorder(cfg, lambda cam: pytest.fail("no index without streaming"), got.append)
    t = time.time()
    assert rec.request(decision("ev-rtsp", t))
    assert await rec.wait_idle(timeout=40)
    assert rec.failed == 0 and len(got) == 1
    r = got[0]
    assert r.metadata["source"] == "rtsp" and r.metadata["preroll_missing_s"] >= 5
    assert r.duration_s == pytest.approx(3.0, abs=1.0)
    atoms = top_level_atoms(r.path)
    assert atoms.index("moov") < atoms.index("mdat")
    assert probe(r.path)["streams"][0]["codec_name"] == "h264"
    assert "s3cr3t-pw" not in caplog.text and "rtsp://***@127.0.0.1" in caplog.text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
