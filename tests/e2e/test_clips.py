"""Clips on detection with real parts: GStreamer camera → ffmpeg HLS buffer → pod recorder
→ signed upload to the portal stand-in → confirm; the clip decodes, has the requested
length and contains frames from before the plate read."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import make_stack, wait_until

pytestmark = pytest.mark.e2e
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "dev"))
from frigate_sim import Publisher  # noqa: E402

PRE, POST = 3.0, 5.0


def frame_hashes(path: Path) -> list[str]:
    """Per-frame MD5 of the decoded video (ffmpeg framemd5): identical frames hash the same."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "framemd5", "-"],
                         capture_output=True, text=True, timeout=60).stdout
    return [line.rsplit(",", 1)[-1].strip() for line in out.splitlines() if line and not line.startswith("#")]


def ffprobe_duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=30).stdout
    return float(out.strip())


def moov_before_mdat(data: bytes) -> bool:
    return data.find(b"moov") < data.find(b"mdat")


@pytest.fixture
def clip_stack(tmp_path):
    s = make_stack(tmp_path, pod_overrides={"pre_roll": PRE, "recording_duration": POST, "max_decision_wait": 1.0,
                                            "hls_keep_extra_segments": 20})
    try:
        s.start_mosquitto()
        s.start_portal([{"plate": "TEST123", "enabled": True}])
        s.start_camera()
        s.start_pod(timeout=60)
        yield s
    finally:
        s.stop()


def recordings(s) -> list[dict]:
    r = httpx.get(f"{s.portal_url}/api/pod/recordings", params={"camera_id": s.camera_id},
                  headers={"Authorization": "Bearer user-session"}, timeout=5)
    return r.json()["recordings"]


def test_detection_produces_a_clip_with_preroll_uploaded_and_confirmed(clip_stack, tmp_path):
    s = clip_stack
    cam_dir = s.hls_dir / s.camera_id
    time.sleep(PRE + 1)  # let the buffer hold pre-roll
    # a segment that finished before the plate read: its frames must be in the clip
    playlist = (cam_dir / "index.m3u8").read_text()
    before_seg = [line for line in playlist.splitlines() if line.startswith("seg_")][-1]
    init = re.search(r'URI="([^"]+)"', playlist).group(1)
    sample = tmp_path / "before.mp4"
    sample.write_bytes((cam_dir / init).read_bytes() + (cam_dir / before_seg).read_bytes())
    before_frames = set(frame_hashes(sample))
    assert before_frames
    pub = Publisher("127.0.0.1", s.mqtt_port)
    t_event = time.time()
    event_id = pub.passage("TEST 123")
    pub.close()
    recs = wait_until(lambda: recordings(s), PRE + POST + 40, interval=0.5, what="a confirmed recording")
    print(f"clip confirmed {time.time() - t_event:.1f}s after the plate read")
    [rec] = recs
    assert rec["event_id"] == event_id and rec["plate_number"] in ("TEST123", "TEST 123")
    clip = tmp_path / "clip.mp4"
    r = httpx.get(rec["video_url"], timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    clip.write_bytes(r.content)
    assert moov_before_mdat(r.content)  # +faststart: plays while downloading
    duration = ffprobe_duration(clip)
    assert abs(duration - (PRE + POST)) <= s.segment_seconds + 0.6, duration
    assert abs(rec["duration_seconds"] - duration) < 0.2  # reported duration comes from ffprobe
    assert before_frames & set(frame_hashes(clip)), "the clip holds no frame from before the plate read"
    # the local file is deleted only after confirm, and nothing is left behind
    wait_until(lambda: not list((Path(s.pod_config()["recordings_dir"])).glob("*.mp4")), 10, what="local clip deleted")
    uploads = httpx.get(f"{s.portal_url}/__standin/uploads", timeout=5).json()
    assert len(uploads["uploads"]) == 1


def test_clip_name_follows_the_seed_pattern(clip_stack):
    s = clip_stack
    pub = Publisher("127.0.0.1", s.mqtt_port)
    event_id = pub.passage("NOPE999")
    pub.close()
    [rec] = wait_until(lambda: recordings(s), PRE + POST + 40, interval=0.5, what="a confirmed recording")
    name = rec["file_path"].rsplit("/", 1)[-1]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", event_id)
    assert re.search(rf"recording_\d{{8}}_\d{{6}}_{s.camera_id}_{re.escape(safe)}\.mp4$", name), name
