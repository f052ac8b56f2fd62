"""End-to-end fixtures: the real dev stack (GStreamer RTSP camera → ffmpeg → pod on
127.0.0.2 → gateway on 127.0.0.1) as separate processes, as in the demo."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))
from stack import Proc, Stack, _spawn, free_port, wait_until  # noqa: E402

NGINX = "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "nginx"

pytestmark = pytest.mark.e2e


def pod_metric(stack: Stack, kind: str, status: str = "200") -> float:
    """Counter platebridge_pod_hls_requests_total{kind,status} read from the pod's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{stack.pod_port}/metrics", timeout=5).text
    m = re.search(rf'platebridge_pod_hls_requests_total{{kind="{kind}",status="{status}"}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def pod_requests_total(stack: Stack) -> float:
    """All HLS requests the pod has seen, any kind or status."""
    text = httpx.get(f"http://127.0.0.1:{stack.pod_port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r"^platebridge_pod_hls_requests_total\{[^}]*\} ([0-9.e+]+)$", text,
                                            re.MULTILINE))


def ffprobe_streams(path: Path) -> str:
    """``codec_name,width,height`` of the first video stream, via ffprobe."""
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                        "stream=codec_name,width,height", "-of", "csv=p=0", str(path)],
                       capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def make_stack(tmp: Path, **kw) -> Stack:
    if not shutil.which("ffmpeg"):
        pytest.fail("ffmpeg is missing: run ./run setup")
    return Stack(workdir=tmp, **kw)


@contextlib.contextmanager
def started(s: Stack, *, plates: list[dict] | None = None, mqtt: bool = False):
    """Start ``s``: mosquitto (if ``mqtt``), the portal stand-in (if ``plates`` is not None,
    with that whitelist), then camera, pod and gateway; yield it and stop everything on exit
    (also when a start fails)."""
    try:
        if mqtt:
            s.start_mosquitto()
        if plates is not None:
            s.start_portal(plates)
        s.start_camera()
        s.start_pod(timeout=60)
        s.start_gateway()
        yield s
    finally:
        s.stop()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    """Debian's chromium, headless, driven by Debian's chromedriver (selenium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def assert_video_plays(browser, timeout: float = 45) -> None:
    """The watch page already loaded in ``browser`` plays live video: ``currentTime`` passes
    1 s within ``timeout`` seconds, then advances by > 1.5 s over 3 s, at the test camera's
    640×360, unpaused, and the page reports ``playing``."""

    def current_time():
        return browser.execute_script("return document.getElementById('video').currentTime")

    try:
        wait_until(lambda: current_time() > 1.0, timeout=timeout, interval=0.5, what="video.currentTime > 1")
    except TimeoutError:
        status = browser.execute_script("return window.pbStatus")
        pytest.fail(f"video did not start; page status: {status}")
    t1 = current_time()
    time.sleep(3)
    t2 = current_time()
    assert t2 > t1 + 1.5, (t1, t2)
    state = browser.execute_script(
        "const v=document.getElementById('video');"
        "return [v.videoWidth, v.videoHeight, v.paused, window.pbStatus.state]")
    assert state[:3] == [640, 360, False]
    assert state[3] == "playing"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """One shared, fully started stack (portal stand-in, camera, pod, gateway)."""
    with started(make_stack(tmp_path_factory.mktemp("stack"), pod_overrides={"heartbeat_interval": 300}),
                 plates=[{"plate": "TEST123", "enabled": True}]) as s:
        yield s


@pytest.fixture(scope="session")
def viewer(stack):
    """A helper that opens a viewing session like a player and returns its granted playlist URL."""

    def open_session(user: str = "viewer") -> str:
        token = stack.user_token(user_id=user)
        r = httpx.get(f"{stack.gateway_url}/streams/{stack.camera_id}/index.m3u8?token={token}", timeout=10)
        assert r.status_code == 302, r.text
        return f"{stack.gateway_url}/streams/{stack.camera_id}/{r.headers['location']}"

    return open_session


def spawn_nginx(s: Stack, tmp: Path, include: Path, *, head: str = "", workers: int = 1) -> Proc:
    """Debian's nginx as a child of the stack ``s`` (daemon off, its own prefix ``tmp``, its
    temp paths in ``tmp``), its ``http`` context being ``include``; ``head`` goes first in the
    main context (e.g. a ``load_module`` line). As root, workers run as root (they would become
    nobody, who cannot enter the test's 0700 directories)."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {d}_temp_path {tmp / d};\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp / "nginx.conf").write_text(
        f"{head}worker_processes {workers};\npid {tmp / 'nginx.pid'};\nerror_log {tmp / 'main-error.log'} warn;\n"
        f"{user}events {{ worker_connections 1024; }}\nhttp {{\n{temp}    include {include};\n}}\n")
    proc = _spawn("nginx", [NGINX, "-p", str(tmp), "-e", str(tmp / "main-error.log"), "-c", str(tmp / "nginx.conf"),
                            "-g", "daemon off;"], s.workdir)
    s.procs["nginx"] = proc
    return proc


__all__ = ["assert_video_plays", "ffprobe_streams", "free_port", "make_stack", "pod_metric", "pod_requests_total",
           "spawn_nginx", "started", "wait_until"]
