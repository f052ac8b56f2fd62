"""The guide's low-bandwidth tip ("-c:v libx264 -preset ultrafast -b:v 500k"), as per-camera
``video_bitrate`` and ``max_height`` with ``transcode: h264`` (issue 11, point 11): the config
rules, the ffmpeg arguments, and the HLS output of the real ffmpeg from the GStreamer test
camera (640x360) measured with ffprobe and the playlist's own durations."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pod.config import parse_bitrate, parse_config
from pod.errors import ConfigError
from pod.streamer import ffmpeg_args

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))
from stack import SYSTEM_PYTHON  # noqa: E402


def cfg(tmp_path: Path, **cam):
    d = {"portal_url": "http://127.0.0.1:9", "pod_api_key": "k", "pod_id": "pod-1", "site_id": "site-1",
         "stream_secret": "s" * 40, "stream_bind": "127.0.0.2", "hls_dir": str(tmp_path / "hls"),
         "hls_segment_seconds": 1,
         "cameras": [{"camera_id": "cam1", "rtsp_url": "rtsp://127.0.0.1:9/x", **cam}]}
    return parse_config(d)[0]


@pytest.mark.parametrize(("text", "bps"), [(500000, 500000), ("500k", 500000), ("500K", 500000),
                                           ("1.5M", 1500000), (" 2m ", 2000000), ("64000", 64000)])
def test_bitrate_spellings(text, bps):
    assert parse_bitrate(text) == bps


def test_video_bitrate_and_max_height_become_ffmpeg_arguments(tmp_path):
    c = cfg(tmp_path, transcode="h264", video_bitrate="500k", max_height=360)
    cam = c.camera_list()[0]
    assert (cam.video_bitrate, cam.max_height) == (500000, 360)
    joined = " ".join(ffmpeg_args(c, cam, tmp_path / "out", run=1))
    assert "-c:v libx264" in joined and "-b:v 500000 -maxrate 500000 -bufsize 500000" in joined
    assert "-vf scale=w=-2:h=min(ih\\,360)" in joined
    plain = " ".join(ffmpeg_args(c, cfg(tmp_path, transcode="h264").camera_list()[0], tmp_path / "out", run=1))
    assert "-b:v" not in plain and "-vf" not in plain


@pytest.mark.parametrize(("cam", "key"), [
    ({"video_bitrate": "500k"}, "video_bitrate"),  # copy keeps the camera's bitrate: refuse, do not ignore
    ({"max_height": 360}, "max_height"),
    ({"transcode": "h264", "video_bitrate": "fast"}, "video_bitrate"),
    ({"transcode": "h264", "video_bitrate": 1000}, "video_bitrate"),
    ({"transcode": "h264", "video_bitrate": True}, "video_bitrate"),
    ({"transcode": "h264", "max_height": 361}, "max_height"),
    ({"transcode": "h264", "max_height": 10}, "max_height"),
])
def test_bad_values_name_the_key(tmp_path, cam, key):
    with pytest.raises(ConfigError) as ei:
        cfg(tmp_path, **cam)
    assert str(ei.value).startswith(f"$.cameras[0].{key}"), str(ei.value)


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    """The GStreamer RTSP test camera at 640x360, 10 fps, with the ``snow`` pattern: noise,
    which no encoder can squeeze, so a bitrate cap has something to hold down. Yields its URL."""
    if not shutil.which("ffmpeg") or not shutil.which("ffprobe"):
        pytest.fail("ffmpeg/ffprobe missing: run ./run setup")
    log = tmp_path_factory.mktemp("lowbw") / "camera.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "deploy/dev/camera.py"), "--host", "127.0.0.1",
                                 "--port", "0", "--path", "/snow", "--pattern", "snow", "--fps", "10"],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("CAMERA READY"), f"camera did not start: {log.read_text()}"
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(10)


def run_hls(c, out: Path, segments: int = 7) -> str:
    """Run the pod's ffmpeg command line until ``segments`` media segments exist; returns the playlist."""
    out.mkdir(parents=True)
    proc = subprocess.Popen(ffmpeg_args(c, c.camera_list()[0], out, run=1), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(out.glob("seg_*.m4s"))) < segments and proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert len(list(out.glob("seg_*.m4s"))) >= segments, err.decode(errors="replace")[-2000:]
    return (out / "index.m3u8").read_text()


def video_kbps(out: Path, playlist: str) -> float:
    """Media bits per second over the playlist's segments (EXTINF durations), leaving out the
    first (startup) and the short last one ffmpeg writes when it is stopped."""
    pairs, duration = [], None
    for line in playlist.splitlines():
        if line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:"):].split(",")[0])
        elif line and not line.startswith("#") and duration is not None:
            pairs.append((duration, line))
            duration = None
    pairs = [(d, name) for d, name in pairs[1:] if d >= 0.5]
    assert len(pairs) >= 4, playlist
    seconds = sum(float(d) for d, _ in pairs)
    return sum((out / name).stat().st_size for _, name in pairs) * 8 / seconds / 1000


def probe_size(playlist: Path) -> tuple[int, int]:
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
                        "-of", "csv=p=0", str(playlist)], capture_output=True, text=True, timeout=30)
    sizes = {line.strip() for line in r.stdout.splitlines() if line.strip()}  # one line per program listing
    assert len(sizes) == 1, (r.stdout, r.stderr)
    w, h = sizes.pop().split(",")[:2]
    return int(w), int(h)


def test_hls_output_respects_video_bitrate_and_max_height(camera, tmp_path, figure):
    """The same camera transcoded twice: without limits, and with video_bitrate 300k and
    max_height 240. The first stays 640x360 and far above 300 kbit/s; the second is 240 lines
    high (426 wide: aspect kept) and within 25 % of its 300 kbit/s."""
    free_out, capped_out = tmp_path / "free", tmp_path / "capped"
    free = cfg(tmp_path, transcode="h264", rtsp_url=camera)
    capped = cfg(tmp_path, transcode="h264", rtsp_url=camera, video_bitrate="300k", max_height=240)
    free_kbps = video_kbps(free_out, run_hls(free, free_out))
    capped_kbps = video_kbps(capped_out, run_hls(capped, capped_out))
    assert probe_size(free_out / "index.m3u8") == (640, 360)
    assert probe_size(capped_out / "index.m3u8") == (426, 240)
    figure("HLS video bitrate with video_bitrate 300k", capped_kbps, "kbit/s", "<= 375", capped_kbps <= 375)
    figure("same camera without limits", free_kbps, "kbit/s", ">= 600", free_kbps >= 600)
    assert capped_kbps <= 300 * 1.25, (capped_kbps, free_kbps)
    assert free_kbps >= 600, free_kbps  # without the cap it would not have fitted
