"""Fault suite fixtures: the real dev stack (mosquitto, GStreamer RTSP camera, ffmpeg, pod,
gateway, the portal stand-in, SQLite) with one fault injected per test.

Every test records the figure it checks with the ``figure`` fixture (tests/conftest.py)
and still asserts it. Stack helpers come from tests/e2e/conftest.py and deploy/dev/stack.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    ffprobe_streams,
    make_stack,
    pod_metric,
    pod_requests_total,
    started,
    wait_until,
)
from tests.proctable import descendants

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))
from frigate_sim import Publisher  # noqa: E402 - found through the sys.path entry above

WHITELIST = [{"plate": "TEST123", "unit": "4B", "tenant": "Test Tenant", "enabled": True}]


def pytest_configure(config):
    config.addinivalue_line("markers", "faults: fault injection against the real stack (tests/faults)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/faults/" in item.nodeid:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.e2e)


def camera_health(s) -> dict:
    """The pod's /health entry of the stack's camera."""
    return s.pod_health()["cameras"][s.camera_id]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def gateway_upstream_fetches(s, kind: str) -> float:
    """Counter platebridge_gateway_upstream_fetches_total{kind} from the gateway's /metrics:
    fetches from pods the gateway has started (it counts one just before sending it)."""
    text = httpx.get(s.gateway_metrics_url, timeout=5).text
    m = re.search(rf'^platebridge_gateway_upstream_fetches_total{{kind="{kind}"}} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def media_sequence(text: str) -> int:
    return int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1))


def media_uris(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def map_uri(text: str) -> str:
    return re.search(r'#EXT-X-MAP:URI="([^"]+)"', text).group(1)


def open_session(s, user: str = "viewer") -> str:
    """A viewer session as a player opens it: JWT → 302 → the granted playlist URL."""
    token = s.user_token(user_id=user)
    r = httpx.get(f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?token={token}", timeout=10)
    assert r.status_code == 302, r.text
    return f"{s.gateway_url}/streams/{s.camera_id}/{r.headers['location']}"


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS from /proc/<pid>/status), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tree_rss_bytes(pid: int) -> int:
    """:func:`rss_bytes` of ``pid`` and every live descendant, summed: the gateway serves from
    worker processes (granian forks them), so the process a test started is only their
    supervisor and its own RSS never grows with the load."""
    tree = descendants(pid)
    total = 0
    for p in tree:
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_bytes(p)
    return total


def raise_fd_limit(want: int = 8192) -> None:
    """Raise this process's open-file soft limit (children started later inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# Unmounts the tmpfs if this process dies without its ``finally`` (pytest hard-killed):
# it waits for EOF on stdin; the fixture writes one byte first when it unmounted itself.
_JANITOR = ("import subprocess, sys\n"
            "if not sys.stdin.buffer.read(1):\n"
            "    subprocess.run(['umount', '-l', sys.argv[1]], capture_output=True, check=False)\n")


@contextlib.contextmanager
def tmpfs_mounted(path: Path, size: str):
    """Mount a tmpfs of ``size`` (mount(8) syntax, e.g. ``3m``) on ``path``; always unmounted,
    by a janitor process even if this process is killed (SIGKILL) before it can unmount.

    Needs root (CAP_SYS_ADMIN): without it the test FAILS with the reason — a fault test
    that silently skips proves nothing."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {path} (uid {os.geteuid()}; this fault test needs root / "
                    f"CAP_SYS_ADMIN): {r.stderr.strip() or r.stdout.strip()}")
    janitor = subprocess.Popen([sys.executable, "-c", _JANITOR, str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield path
    finally:
        r = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30, check=False)
        if r.returncode != 0:  # still busy (a child holds a file): detach it lazily
            subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True, timeout=30, check=False)
        with contextlib.suppress(OSError):
            janitor.stdin.write(b"x")  # unmounted already: nothing for the janitor to do
            janitor.stdin.close()
        try:
            janitor.wait(10)
        except subprocess.TimeoutExpired:
            janitor.kill()
            janitor.wait()


@pytest.fixture
def live_stack(tmp_path):
    """Camera + pod + gateway (no MQTT, no portal), started fresh for one test."""
    with started(make_stack(tmp_path)) as s:
        yield s


__all__ = [
    "WHITELIST",
    "Publisher",
    "alive",
    "camera_health",
    "ffprobe_streams",
    "gateway_upstream_fetches",
    "make_stack",
    "map_uri",
    "media_sequence",
    "media_uris",
    "open_session",
    "pod_metric",
    "pod_requests_total",
    "raise_fd_limit",
    "rss_bytes",
    "started",
    "tmpfs_mounted",
    "tree_rss_bytes",
    "wait_until",
]
