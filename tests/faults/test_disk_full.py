"""Disk full for recordings: the recordings directory is a small tmpfs filled to the last
byte. Every passage is still decided and reaches the portal, the pod stays up and says
clearly why there is no clip, leaves no partial files, and records again once space is
freed."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import (
    WHITELIST,
    Publisher,
    make_stack,
    tmpfs_mounted,
    wait_until,
)

TMPFS_SIZE = "3m"
QUOTA = 10 * 1024**2  # recordings_max_bytes: the smallest the pod accepts
FREE_FLOOR = 256 * 1024  # recordings_min_free_bytes
PASSAGES = [("TEST123", "allow"), ("NOPE999", "deny"), ("TEST 123", "allow"), (None, "deny"), ("XYZ999", "deny")]
FILLER = ".filler"


def fill(directory: Path) -> int:
    """Write a filler file until the file system is full; returns its size."""
    size = 0
    with open(directory / FILLER, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while True:
            try:
                size += f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return size
                chunk = chunk[: len(chunk) // 2]


def pod_bytes(directory: Path) -> int:
    """Bytes of every file the pod has in ``directory`` (everything but the filler)."""
    total = 0
    for e in os.scandir(directory):
        if e.name != FILLER:
            try:
                total += e.stat().st_size
            except FileNotFoundError:
                pass
    return total


def recordings(s) -> list[dict]:
    r = httpx.get(f"{s.portal_url}/api/pod/recordings", params={"camera_id": s.camera_id},
                  headers={"Authorization": "Bearer user-session"}, timeout=5)
    return r.json()["recordings"]


@pytest.fixture
def disk_stack(tmp_path):
    s = make_stack(tmp_path, pod_overrides={
        "pre_roll": 1.0, "recording_duration": 2.0, "max_decision_wait": 1.0, "no_read_timeout": 10,
        "recordings_max_bytes": QUOTA, "recordings_min_free_bytes": FREE_FLOOR})
    rec_dir = Path(s.pod_config()["recordings_dir"])
    with tmpfs_mounted(rec_dir, TMPFS_SIZE):
        try:
            s.start_mosquitto()
            s.start_portal(WHITELIST)
            s.start_camera()
            s.start_pod(timeout=60)
            yield s, rec_dir
        finally:
            s.stop()


def test_disk_full_for_recordings_pod_keeps_deciding_and_records_again_after(disk_stack, figure):
    """The recordings directory is a 3 MiB tmpfs (mounted as root; the test fails, never
    skips, when it cannot mount), filled by a filler file until ENOSPC. Five passages
    (allow, deny, allow, no read, deny) are published. Asserts: every one is decided
    correctly at the portal stand-in while the disk is full, the pod process stays up, each
    failed clip is logged with the reason (ENOSPC) and counted as failed in /health, the pod
    leaves no partial file behind, and the bytes the pod holds in the directory never exceed
    ``recordings_max_bytes``. Then the filler is deleted and one more passage must give a
    clip that is uploaded and confirmed (recording resumes; nothing to restart).
    Figures: decisions made while the disk was full; most bytes the pod held in the
    recordings directory vs the quota."""
    s, rec_dir = disk_stack
    filler = fill(rec_dir)
    assert shutil.disk_usage(rec_dir).free < 64 * 1024, shutil.disk_usage(rec_dir)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], pod_bytes(rec_dir))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        pub = Publisher("127.0.0.1", s.mqtt_port)
        sent = [(pub.passage(plate), want) for plate, want in PASSAGES]
        wait_until(lambda: len(s.detections()) >= len(sent), 30, what="every passage decided at the portal")
        wait_until(lambda: (c := s.pod_health()["clips"])["failed"] >= len(sent) and c["pending"] == 0, 60,
                   interval=0.25, what="every clip attempt finished")
        full_health = s.pod_health()
        decided = {d["event_id"]: d for d in s.detections()}
        leftovers = [p.name for p in rec_dir.iterdir() if p.name != FILLER]
        log = s.procs["pod"].log.read_text(errors="replace")

        (rec_dir / FILLER).unlink()  # space is back
        event_id = pub.passage("TEST123")
        pub.close()
        recs = wait_until(lambda: [r for r in recordings(s) if r["event_id"] == event_id], 60, interval=0.5,
                          what="a clip recorded, uploaded and confirmed after space was freed")
        pod_alive = s.procs["pod"].popen.poll() is None
        final_health = s.pod_health()
    finally:
        stop.set()
        sampler.join()
    ok_decisions = sum(1 for eid, want in sent if eid in decided and decided[eid]["decision"] == want
                       and decided[eid]["count"] == 1)
    print(f"filler {filler} bytes; {ok_decisions}/{len(sent)} decisions while full; clips {full_health['clips']}; "
          f"peak pod bytes {peak[0]}; after: {final_health['clips']}")
    figure("decisions made while the recordings disk was full", ok_decisions, "of 5", "== 5",
           ok_decisions == len(sent))
    figure("bytes the pod held in the recordings dir vs quota", peak[0], "bytes", f"<= {QUOTA}", peak[0] <= QUOTA)
    assert ok_decisions == len(sent), (sent, decided)
    assert pod_alive and full_health["mqtt"]["connected"]
    assert full_health["clips"]["built"] == 0 and full_health["clips"]["failed"] == len(sent)
    for eid, _ in sent:
        line = next((ln for ln in log.splitlines() if "no clip for event" in ln and eid in ln), "")
        assert "No space left on device" in line, f"no clear ENOSPC error for {eid}: {line!r}"
    assert leftovers == [], leftovers  # no partial .concat / .part files
    assert peak[0] <= QUOTA
    assert recs[0]["plate_number"] == "TEST123" and final_health["clips"]["built"] == 1
