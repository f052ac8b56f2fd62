"""pod/ffmpeg.py: RTSP credentials never in argv (checked in /proc/<pid>/cmdline of the real
ffmpeg and ffprobe against the GStreamer camera with basic auth), terminate of a stopped
child, parent-death signal, redacted stderr tail, ffprobe path."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pod import ffmpeg as ff
from pod.config import parse_config
from pod.errors import FfmpegError
from pod.recorder import capture_direct
from pod.streamer import CameraStreamer

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "op", "pw'with:odd@chars"


def cmdline(pid: int) -> str:
    """What `ps` shows every local user: /proc/<pid>/cmdline, NULs as spaces."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def environ(pid: int) -> bytes:
    """/proc/<pid>/environ (readable by the same user only, but still not a place for secrets)."""
    return Path(f"/proc/{pid}/environ").read_bytes()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_rtsp_input_without_credentials_stays_on_the_command_line():
    spec = ff.rtsp_input("rtsp://10.0.0.5:554/s", timeout_s=2.5)
    assert spec.args == ["-rtsp_transport", "tcp", "-timeout", "2500000", "-i", "rtsp://10.0.0.5:554/s"]
    assert spec.stdin is None


def test_rtsp_input_with_credentials_goes_through_stdin_with_quotes_escaped():
    url = "rtsp://op:it's@10.0.0.5/s"
    spec = ff.rtsp_input(url, timeout_s=1)
    assert spec.args[-2:] == ["-i", "pipe:0"] and "it's" not in " ".join(spec.args)
    assert spec.stdin is not None and "file 'rtsp://op:it'\\''s@10.0.0.5/s'" in spec.stdin.decode()
    with pytest.raises(FfmpegError):
        ff.rtsp_input("rtsp://op:x@h/s'\nfile '/etc/passwd", timeout_s=1)  # a smuggled second directive


def test_ffprobe_path_follows_the_ffmpeg_binary():
    assert ff.ffprobe_path("ffmpeg") == "ffprobe"
    assert ff.ffprobe_path("/opt/ff/bin/ffmpeg") == "/opt/ff/bin/ffprobe"
    assert ff.ffprobe_path("/usr/local/bin/ffmpeg-5.1") == "/usr/local/bin/ffprobe-5.1"
    assert ff.ffprobe_path("/usr/bin/avconv") == "ffprobe"
    assert ff.ffprobe_path("ffmpeg", "/x/probe") == "/x/probe"


async def test_terminate_continues_a_stopped_child_so_sigterm_acts():
    proc = await ff.start([sys.executable, "-c", "import time; time.sleep(60)"], stderr=False)
    os.kill(proc.pid, signal.SIGSTOP)
    rc = await ff.terminate(proc, grace=20)
    assert rc == -signal.SIGTERM  # ended by the SIGTERM, not by the SIGKILL after the grace


async def test_run_kills_on_timeout_and_reports_missing_binary():
    done = await ff.run([sys.executable, "-c", "import time; print('x', flush=True); time.sleep(60)"], timeout=1)
    assert done.returncode == -signal.SIGKILL and done.stdout.strip() == "x"
    with pytest.raises(FfmpegError, match="cannot run no-such-ffmpeg"):
        await ff.run(["no-such-ffmpeg"], timeout=1)


def test_child_dies_with_its_parent(tmp_path):
    """A process that started a child through pod.ffmpeg is SIGKILLed: the child gets the
    parent-death SIGTERM."""
    pidfile = tmp_path / "child.pid"
    script = (
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from pod import ffmpeg as ff\n"
        "async def main():\n"
        f"    p = await ff.start([sys.executable, '-c', 'import time; time.sleep(60)'], stderr=False)\n"
        f"    open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert Path(f"/proc/{child}").exists()
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        parent.kill()


def test_stderr_tail_redacts_and_keeps_the_last_lines():
    tail = ff.StderrTail(2)
    for line in ("one", "[rtsp] rtsp://admin:hunter2@10.0.0.1/s: 401 Unauthorized", "", "three"):
        tail.add(line)
    assert list(tail.lines) == ["[rtsp] rtsp://***@10.0.0.1/s: 401 Unauthorized", "three"]
    assert "hunter2" not in tail.text()


# ------------------------------------------------------------ real camera with auth


@pytest.fixture(scope="module")
def auth_camera(tmp_path_factory):
    """The GStreamer dev camera with RTSP basic auth; yields its URL *with* credentials."""
    log = open(tmp_path_factory.mktemp("authcam") / "camera.log", "w+")
    p = subprocess.Popen(["/usr/bin/python3", str(ROOT / "deploy/dev/camera.py"), "--host", "127.0.0.1", "--port", "0",
                          "--path", "/gate", "--user", USER, "--password", PASSWORD],
                         stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = p.stdout.readline()
        if not line.startswith("CAMERA READY "):
            log.seek(0)
            pytest.fail(f"camera did not start: {line!r} {log.read()[-2000:]}")
        from urllib.parse import quote
        yield line.split()[-1].replace("rtsp://", f"rtsp://{USER}:{quote(PASSWORD, safe='')}@", 1)
    finally:
        p.terminate()
        p.wait(timeout=10)
        log.close()


def recording_wrapper(tmp_path: Path, real: str) -> tuple[Path, Path]:
    """A script that writes its own argv (= the argv the real binary gets: it execs it with
    the same arguments and pid) to a file, then execs ``real``."""
    seen = tmp_path / f"{real}.argv"
    wrapper = tmp_path / real
    wrapper.write_text(f"#!/bin/sh\ncat /proc/$$/cmdline >> {seen}\necho >> {seen}\nexec /usr/bin/{real} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper, seen


@pytest.mark.e2e
async def test_streamer_ffmpeg_plays_an_auth_camera_without_credentials_in_argv(auth_camera, tmp_path):
    cfg = parse_config({"portal_url": "http://127.0.0.1:9", "pod_api_key": "k", "site_id": "site-1", "pod_id": "pod-1",
                        "camera_id": "cam1", "camera_rtsp_url": auth_camera, "stream_secret": "s" * 40,
                        "stream_bind": "127.0.0.2", "hls_dir": str(tmp_path / "hls"), "hls_segment_seconds": 1})[0]
    s = CameraStreamer(cfg, cfg.camera_list()[0])
    task = asyncio.create_task(s.run())
    try:
        deadline = time.monotonic() + 30
        while s.state != "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert s.state == "running", s.stderr_tail  # authenticated: segments came
        pid = s.status()["pid"]
        argv = cmdline(pid)
        assert "ffmpeg" in argv and "-i pipe:0" in argv
        assert PASSWORD not in argv and "pw%27with" not in argv and USER + ":" not in argv
        assert PASSWORD.encode() not in environ(pid)
    finally:
        await s.stop()
        await asyncio.wait_for(task, 10)


@pytest.mark.e2e
async def test_probe_and_direct_capture_keep_credentials_out_of_argv(auth_camera, tmp_path):
    probe, probe_seen = recording_wrapper(tmp_path, "ffprobe")
    stream = await ff.probe_rtsp(str(probe), auth_camera, timeout=10)
    assert stream["codec_name"] == "h264" and stream["width"] == 640
    ffmpeg_wrapper, _ = recording_wrapper(tmp_path, "ffmpeg")
    clip = await capture_direct(auth_camera, 1.0, tmp_path / "c.mp4", ffmpeg=str(ffmpeg_wrapper), ffprobe=str(probe))
    assert clip.duration_s > 0.5
    seen = probe_seen.read_bytes() + (tmp_path / "ffmpeg.argv").read_bytes()
    assert b"pipe:0" in seen and PASSWORD.encode() not in seen and b"pw%27with" not in seen
    # a wrong password is a clear, redacted error
    bad = auth_camera.replace("pw%27with", "nope", 1)
    with pytest.raises(RuntimeError, match="401") as exc:
        await ff.probe_rtsp("ffprobe", bad, timeout=10)
    assert "nope" not in str(exc.value)


@pytest.mark.e2e
async def test_mpegts_keeps_ffmpegs_own_hls_muxer_and_credentials_out_of_argv(auth_camera, tmp_path):
    """``hls_segment_type: mpegts`` stays classic HLS written by ffmpeg's HLS muxer (no
    packager, no parts), with the same credential handling."""
    cfg = parse_config({"portal_url": "http://127.0.0.1:9", "pod_api_key": "k", "site_id": "site-1", "pod_id": "pod-1",
                        "camera_id": "cam1", "camera_rtsp_url": auth_camera, "stream_secret": "s" * 40,
                        "stream_bind": "127.0.0.2", "hls_dir": str(tmp_path / "hls"), "hls_segment_seconds": 1,
                        "hls_segment_type": "mpegts"})[0]
    s = CameraStreamer(cfg, cfg.camera_list()[0])
    assert not s.packaged and not s.low_latency
    task = asyncio.create_task(s.run())
    try:
        deadline = time.monotonic() + 30
        while s.state != "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert s.state == "running", s.stderr_tail
        argv = cmdline(s.status()["pid"])
        assert "-f hls" in argv and "-i pipe:0" in argv and PASSWORD not in argv
        text = s.playlist_path.read_text()
        assert ".ts" in text and "#EXT-X-PART" not in text and s.live is None
        assert len(s.index) >= 1  # the clip index still follows the playlist on disk
    finally:
        await s.stop()
        await asyncio.wait_for(task, 10)
