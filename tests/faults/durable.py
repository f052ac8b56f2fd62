"""Helpers of the durability fault tests (issue 13): the pod's health, its state files
damaged the way an SD card damages them, and the figures every test reports."""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

import httpx

from tests.faults.conftest import wait_until

RNG = random.Random(1313)
FAST = {  # tunables scaled down so a test sees many retries in seconds (defaults: pod/config.py)
    "heartbeat_interval": 1, "portal_timeout": 2, "queue_idle_poll": 0.2,
    "outbox_retry_initial": 0.2, "outbox_retry_max": 1.0, "outbox_max_attempts": 3,
    "upload_retry_initial": 0.2, "upload_retry_max": 1.0, "upload_max_attempts": 3,
    "passage_window": 0, "max_decision_wait": 1.0, "no_read_timeout": 10,
}


def garbage(n: int) -> bytes:
    return bytes(RNG.getrandbits(8) for _ in range(n))


def health(s) -> dict:
    return httpx.get(f"http://127.0.0.1:{s.pod_port}/health", timeout=5).json()


def wait_health(s, pred, timeout: float, what: str, interval: float = 0.1) -> dict:
    """Poll ``/health`` until ``pred(health)`` holds; returns that health document. On a
    timeout the TimeoutError carries the last document's ``clips`` and ``outbox`` parts."""
    last: dict = {}

    def check():
        last["h"] = h = health(s)
        return pred(h) and h

    try:
        return wait_until(check, timeout, interval, what=what)
    except TimeoutError as exc:
        h = last.get("h") or {}
        raise TimeoutError(f"{exc}; last /health clips={h.get('clips')!r} outbox={h.get('outbox')!r}") from None


def metric(s, name: str, **labels: str) -> float:
    """A sample of the pod's /metrics (0 when absent)."""
    text = httpx.get(f"http://127.0.0.1:{s.pod_port}/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? ([0-9.e+-]+)$", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def portal_json(s, path: str) -> dict:
    """GET a stand-in admin endpoint (``/__standin/...``)."""
    return httpx.get(f"{s.portal_url}{path}", timeout=5).json()


def stored(s) -> dict[str, dict]:
    """Detections the portal stand-in has stored, by event id (``count``: deliveries)."""
    return {d["event_id"]: d for d in s.detections()}


def kill_pod(s) -> None:
    """SIGKILL the pod: no shutdown code runs."""
    pod = s.procs["pod"].popen
    pod.kill()
    assert pod.wait(10) == -9


def corrupt_header(path: Path) -> None:
    """Random bytes over the database header and the start of page 1 (the schema) — SQLite
    says ``file is not a database``, the issue's restart loop — and, after a kill, over the
    write-ahead log's header too (SQLite would otherwise read page 1 from the log, or drop
    the whole log silently)."""
    with open(path, "r+b") as f:
        f.write(garbage(1024))
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size >= 32:
        with open(wal, "r+b") as f:
            f.write(garbage(32))


def wal_frames(wal: bytes) -> list[tuple[int, int, int]]:
    """(offset, page number, commit size) of each frame of a WAL (salts not checked)."""
    size = int.from_bytes(wal[8:12], "big")
    out, pos = [], 32
    while pos + 24 + size <= len(wal):
        out.append((pos, int.from_bytes(wal[pos:pos + 4], "big"), int.from_bytes(wal[pos + 4:pos + 8], "big")))
        pos += 24 + size
    return out


def corrupt_superseded_wal_frame(wal_path: Path) -> int:
    """Random bytes inside an early WAL frame whose page is written again by a later
    committed frame (so no data is really gone) — SQLite alone would stop at it and drop
    every later commit silently. Returns the damaged frame's index."""
    wal = bytearray(wal_path.read_bytes())
    frames = wal_frames(bytes(wal))
    size = int.from_bytes(wal[8:12], "big")
    last_commit = max((i for i, (_, _, c) in enumerate(frames) if c), default=-1)
    for i, (pos, page, _) in enumerate(frames[:last_commit]):
        if page != 1 and any(p == page for _, p, _ in frames[i + 1:last_commit + 1]):
            off = pos + 24 + size // 2
            wal[off:off + 64] = garbage(64)
            wal_path.write_bytes(bytes(wal))
            return i
    raise AssertionError("no superseded frame in the WAL (too few commits?)")


def wait_stored(s, ids, timeout: float, what: str) -> dict[str, dict]:
    want = set(ids)
    return wait_until(lambda: (got := stored(s)) and want <= got.keys() and got, timeout, 0.1, what=what)


def exactly_once(sent: list[str], got: dict[str, dict]) -> tuple[int, int, int]:
    """(lost, stored more than once, repeat deliveries) of ``sent`` at the portal. The
    stand-in stores one row per event id and counts deliveries: a repeat is a delivery the
    portal deduplicated by the idempotency key (a pod killed after the portal answered)."""
    lost = len(set(sent) - got.keys())
    ids = [e for e in got if e in set(sent)]
    twice = len(ids) - len(set(ids))
    repeats = sum(got[e]["count"] - 1 for e in set(sent) & got.keys())
    return lost, twice, repeats


def age(path: Path) -> float:
    return time.time() - os.stat(path).st_mtime
