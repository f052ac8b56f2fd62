"""README command 1, as a user runs it: the demo prints the WATCH URL, the simulated
Frigate passages land at the portal stand-in as an allow and a deny, the allowed one opens
the gate (``GATE: opened DEMO123``, the portal's Gatewise call), each gets a clip listed by
the stand-in, the URL serves the watch page, the guide's test ``curl`` works against it,
and Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _start_demo() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "deploy/dev/demo.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV, start_new_session=True)


def _read_until(proc: subprocess.Popen, done, timeout: float) -> list[str]:
    """The demo's output lines until ``done(lines)`` holds, it ends, or ``timeout`` s pass."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if done(lines):
            break
    return lines


def test_demo_prints_watch_url_and_decisions_and_stops_cleanly():
    env = ENV
    proc = _start_demo()
    try:
        lines = _read_until(proc, lambda ls: sum(x.startswith("PORTAL: recording") for x in ls) >= 2, 120)
        text = "\n".join(lines)
        urls = [line for line in lines if line.startswith("WATCH URL: ")]
        assert len(urls) == 1, text
        url = urls[0].split(": ", 1)[1]
        assert re.match(r"^http://127\.0\.0\.1:\d+/watch/gate-camera-1\?token=[\w.-]+$", url), url
        assert re.search(r"PORTAL: detect allow DEMO123 whitelisted", text), text
        assert re.search(r"PORTAL: detect deny XYZ999 not_whitelisted", text), text
        assert re.search(r"^GATE: opened DEMO123 ", text, re.MULTILINE), text
        assert "GATE: opened XYZ999" not in text  # a denied car never opens the gate
        # the guide's test detection (its "Verification" curl) against the demo's portal
        [printed] = [line for line in lines if line.startswith("demo: the guide's test detection: curl ")]
        portal = re.search(r"curl -X POST (http://127\.0\.0\.1:\d+)/api/pod/detect", printed).group(1)
        key = yaml.safe_load((ROOT / "var/demo/pod.yaml").read_text())["pod_api_key"]
        body = (ROOT / "tests/data/seed/detect_curl_test.json").read_text().strip()
        assert body in printed
        curl = subprocess.run(["curl", "-sS", "-X", "POST", f"{portal}/api/pod/detect",
                               "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
                               "-d", body, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=30)
        answer, status = curl.stdout.rsplit("\n", 1)
        assert status == "200" and '"success":true' in answer.replace(" ", ""), curl.stdout + curl.stderr
        # ... and pasted as printed: the shell reads the key from pod.yaml (never printed)
        assert key not in text
        pasted = subprocess.run(["bash", "-c", printed.split("detection: ", 1)[1] + " -sS -w '\n%{http_code}'"],
                                capture_output=True, text=True, timeout=30)
        assert pasted.stdout.rsplit("\n", 1)[1] == "200", pasted.stdout + pasted.stderr
        # the printed way to a new WATCH URL once the token has expired
        [renew] = [line for line in lines if line.startswith("demo: a new WATCH URL when this token has expired: ")]
        fresh = subprocess.run(["bash", "-c", renew.split("expired: ", 1)[1]], capture_output=True, text=True,
                               timeout=30)
        assert json.loads(fresh.stdout)["watch_url"].startswith(url.split("?")[0] + "?token="), fresh.stdout
        # a second demo from this checkout refuses at once and leaves the running one's files alone
        before = (ROOT / "var/demo/pod.yaml").read_bytes()
        second = subprocess.run([sys.executable, str(ROOT / "deploy/dev/demo.py")], capture_output=True, text=True,
                                cwd=ROOT, env=env, timeout=60)
        assert second.returncode == 2, second
        assert second.stderr.startswith(f"demo: a demo is already running from this checkout (pid {proc.pid}, ")
        assert (ROOT / "var/demo/pod.yaml").read_bytes() == before and (ROOT / "var/demo/pod.log").exists()
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "hls.min.js" in page.text
        clips = [line.split("CLIP URL: ", 1)[1] for line in lines if line.startswith("PORTAL: recording")]
        assert len(clips) == 2, text  # a clip for each simulated detection
        for clip in clips:
            r = httpx.get(clip, timeout=30)
            assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and len(r.content) > 10_000
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, rest
    assert "demo: stopping" in rest
    left = subprocess.run(["pgrep", "-f", str(ROOT / "var" / "demo")], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left behind: {left}"


def test_ctrl_c_while_the_demo_starts_stops_it_at_once():
    """A newcomer's Ctrl-C during startup used to wait for the whole stack, the WATCH URL and
    both cars before the demo stopped."""
    proc = _start_demo()
    try:
        lines = _read_until(proc, lambda ls: ls[-1].startswith("demo: camera "), 60)
        assert lines and lines[-1].startswith("demo: camera "), lines
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, rest
    assert "WATCH URL" not in rest and "demo: stopping" in rest
    left = subprocess.run(["pgrep", "-f", str(ROOT / "var" / "demo")], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left behind: {left}"
