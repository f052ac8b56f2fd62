"""Recordings disk pressure, two scenarios on a tmpfs recordings directory:

* the disk quota (``recordings_max_bytes``) on a file system LARGER than the quota, with
  old clips already near the quota and portal storage refusing uploads: new clips pile
  up, so the pod must evict old clips to stay within the quota, while every passage is
  still decided;
* disk full (ENOSPC): the directory is a small tmpfs filled to the last byte. Every
  passage is still decided and reaches the portal, the pod stays up and says clearly why
  there is no clip, leaves no partial files, and records again once space is freed."""

from __future__ import annotations

import errno
import inspect
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from pod.recorder import Recorder
from pod.uploads import UploadQueue
from tests.faults.conftest import (
    WHITELIST,
    Publisher,
    make_stack,
    tmpfs_mounted,
    wait_until,
)

QUOTA = 10 * 1024**2  # recordings_max_bytes: the smallest the pod accepts
FREE_FLOOR = 256 * 1024  # recordings_min_free_bytes
FILLER = ".filler"
# passage_window 0: back-to-back simulated cars with one plate are separate cars here
POD_OVERRIDES = {"pre_roll": 1.0, "recording_duration": 2.0, "max_decision_wait": 1.0, "no_read_timeout": 10,
                 "passage_window": 0,
                 "recordings_max_bytes": QUOTA, "recordings_min_free_bytes": FREE_FLOOR}

# disk full
FULL_TMPFS = "3m"
PASSAGES = [("TEST123", "allow"), ("NOPE999", "deny"), ("TEST 123", "allow"), (None, "deny"), ("XYZ999", "deny")]

# quota
QUOTA_TMPFS = "24m"  # room for the quota and more: only the quota can keep the pod's bytes down
OLD_CLIPS, OLD_CLIP_BYTES = 40, 256 * 1024  # 10 MiB (= the quota) of clips from before, portal-refused ("failed")
QUOTA_PASSAGES = [("TEST123", "allow"), ("NOPE999", "deny"), (None, "deny"), ("TEST 123", "allow"),
                  ("XYZ999", "deny"), ("TEST123", "allow"), ("ABC111", "deny"), (None, "deny"),
                  ("TEST-123", "allow"), ("QQQ000", "deny"), ("TEST123", "allow"), ("NOPE998", "deny")]
# clips the pod builds at a time (the agent uses Recorder's default: 2)
MAX_CONCURRENT_BUILDS = inspect.signature(Recorder).parameters["max_concurrent"].default
MIN_SAMPLES = 100


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
    """Bytes of every file the pod has in ``directory`` (everything but the filler),
    temporary .concat/.part files of clips being built included."""
    total = 0
    for e in os.scandir(directory):
        if e.name != FILLER:
            try:
                total += e.stat().st_size
            except FileNotFoundError:
                pass
    return total


class Sampler(threading.Thread):
    """Samples :func:`pod_bytes` every 20 ms until :meth:`halt`: ``peak``, ``samples`` and
    every exception raised (a sampler that died would otherwise leave ``peak`` at 0)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.peak = self.samples = 0
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak = max(self.peak, pod_bytes(self.directory))
                self.samples += 1
            except Exception as exc:
                self.errors.append(repr(exc))
            self._halt.wait(0.02)

    def halt(self) -> None:
        self._halt.set()
        self.join(10)


def recordings(s) -> list[dict]:
    r = httpx.get(f"{s.portal_url}/api/pod/recordings", params={"camera_id": s.camera_id},
                  headers={"Authorization": "Bearer user-session"}, timeout=5)
    return r.json()["recordings"]


def upload_rows(outbox: Path) -> list[tuple]:
    """(event_id, state, size_bytes, on_disk) of every uploads row (read-only look)."""
    db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT event_id, state, size_bytes, on_disk FROM uploads ORDER BY created").fetchall()
    finally:
        db.close()


def seed_old_clips(s, rec_dir: Path, outbox: Path) -> list[str]:
    """Clips left from earlier days: files in the recordings directory plus their rows in the
    pod's upload queue, refused by the portal (``failed``: kept on disk, counted by the
    quota, never uploaded again unless requeued). Returns their event ids, oldest first."""
    queue = UploadQueue(outbox)
    ids = []
    try:
        t0 = time.time() - 3 * 86400
        for i in range(OLD_CLIPS):
            t = t0 + 60 * i
            eid = f"{t:.6f}-old{i:03d}"
            path = rec_dir / f"recording_{time.strftime('%Y%m%d_%H%M%S', time.gmtime(t))}_{s.camera_id}_{eid}.mp4"
            path.write_bytes(os.urandom(OLD_CLIP_BYTES))
            assert queue.add(eid, s.camera_id, path, "OLD000", 3.0, now=t)
            assert queue.mark_failed(eid, "portal answered 400 (seeded)", now=t)
            ids.append(eid)
    finally:
        queue.close()
    return ids


@pytest.fixture
def disk_stack(request, tmp_path):
    """The stack (mosquitto, portal stand-in, camera, pod; no gateway) with its recordings
    directory on a tmpfs of ``request.param`` (size, in mount(8) syntax); ``seed`` old clips
    first when the param says so."""
    size, seed = request.param
    s = make_stack(tmp_path, pod_overrides=POD_OVERRIDES)
    cfg = s.pod_config()
    rec_dir = Path(cfg["recordings_dir"])
    outbox = Path(cfg["state_dir"]) / "outbox.sqlite3"
    with tmpfs_mounted(rec_dir, size):
        try:
            old = seed_old_clips(s, rec_dir, outbox) if seed else []
            s.start_mosquitto()
            s.start_portal(WHITELIST)
            s.start_camera()
            s.start_pod(timeout=60)
            yield s, rec_dir, outbox, old
        finally:
            s.stop()


@pytest.mark.parametrize("disk_stack", [(QUOTA_TMPFS, True)], indirect=True, ids=["tmpfs24m"])
def test_disk_quota_evicts_old_clips_while_passages_are_decided(disk_stack, figure):
    """The recordings directory is a 24 MiB tmpfs (more than the 10 MiB quota: the file
    system never fills, only the quota can bound the pod's bytes). Before the pod starts it
    holds 40 old clips of 256 KiB (10 MiB, the quota itself) that the portal refused earlier (upload queue
    state ``failed``: kept on disk and counted by the quota). Portal storage then refuses
    every PUT (stand-in fault, scope ``storage``), so each new clip stays on disk, and 12
    passages are published. Without eviction the pod would hold the old clips plus every
    new one — more than quota + the clips being built (checked: that is the precondition
    that makes this test able to fail). Asserts: every passage is decided correctly at the
    portal; every clip is built; the pod evicted exactly the oldest old clips (oldest first,
    refused ones before not-yet-uploaded ones: no new clip is evicted while an old one is
    left), logging each; once the last clip is queued the pod's bytes on disk are
    <= ``recordings_max_bytes``; and at every 20 ms sample during the run they are <= the
    quota plus the clips being built (the quota is applied as each clip is queued: at most
    2 builds at a time, each holding its .concat input and its .part/.mp4 output, i.e.
    2 x 2 x the largest new clip). The sampler must have run without error, >= 100 samples.
    Figures: decisions while evicting; peak bytes vs quota + in-flight; bytes once settled
    vs quota; clips evicted."""
    s, rec_dir, outbox, old = disk_stack
    old_bytes = pod_bytes(rec_dir)
    assert old_bytes == OLD_CLIPS * OLD_CLIP_BYTES <= QUOTA, old_bytes
    assert s.pod_health()["clips"]["evicted"] == 0  # at or under the quota: nothing to evict yet
    r = httpx.post(f"{s.portal_url}/__standin/fault", json={"mode": "error500", "scope": "storage"}, timeout=5)
    assert r.status_code == 200, r.text
    sampler = Sampler(rec_dir)
    sampler.start()
    try:
        pub = Publisher("127.0.0.1", s.mqtt_port)
        sent = []
        for plate, want in QUOTA_PASSAGES:
            sent.append((pub.passage(plate), want))
            time.sleep(0.3)
        pub.close()
        wait_until(lambda: len(s.detections()) >= len(sent), 30, what="every passage decided at the portal")
        wait_until(lambda: (c := s.pod_health()["clips"])["built"] + c["failed"] >= len(sent) and c["pending"] == 0,
                   60, interval=0.25, what="every clip built and queued")
        time.sleep(0.5)  # a few more samples after the last clip was queued
    finally:
        sampler.halt()
    health = s.pod_health()
    settled = pod_bytes(rec_dir)
    decided = {d["event_id"]: d for d in s.detections()}
    rows = upload_rows(outbox)
    log = s.procs["pod"].log.read_text(errors="replace")
    pod_alive = s.procs["pod"].popen.poll() is None

    new_ids = {eid for eid, _ in sent}
    new_rows = [r for r in rows if r[0] in new_ids]
    new_sizes = [r[2] for r in new_rows]
    max_clip = max(new_sizes, default=0)
    in_flight = MAX_CONCURRENT_BUILDS * 2 * max_clip
    without_eviction = old_bytes + sum(new_sizes)
    evicted = [r[0] for r in rows if r[3] == 0]
    ok_decisions = sum(1 for eid, want in sent if eid in decided and decided[eid]["decision"] == want
                       and decided[eid]["count"] == 1)
    print(f"old {old_bytes} bytes; {len(new_rows)} new clips {min(new_sizes, default=0)}..{max_clip} bytes; "
          f"without eviction {without_eviction}; evicted {len(evicted)}; peak {sampler.peak} "
          f"(bound {QUOTA + in_flight}); settled {settled}; {sampler.samples} samples; clips {health['clips']}")
    figure("decisions made while the quota evicted clips", ok_decisions, f"of {len(sent)}", f"== {len(sent)}",
           ok_decisions == len(sent))
    figure("peak bytes the pod held in the recordings dir (tmpfs 24 MiB)", sampler.peak, "bytes",
           f"<= quota {QUOTA} + clips being built {in_flight} = {QUOTA + in_flight}",
           sampler.peak <= QUOTA + in_flight)
    figure("bytes the pod held once every clip was queued", settled, "bytes", f"<= quota {QUOTA}", settled <= QUOTA)
    figure("old clips evicted by the quota", len(evicted), "clips",
           f"the oldest, >= {-(-(without_eviction - QUOTA) // OLD_CLIP_BYTES)}", evicted == old[:len(evicted)]
           and len(evicted) * OLD_CLIP_BYTES >= without_eviction - QUOTA)

    assert not sampler.errors, sampler.errors[:5]
    assert sampler.samples >= MIN_SAMPLES, sampler.samples
    assert pod_alive
    assert ok_decisions == len(sent), (sent, decided)
    assert health["clips"]["built"] == len(sent) and len(new_rows) == len(sent), (health["clips"], len(new_rows))
    # the scenario really needs the quota: without eviction the bound below would not hold
    assert without_eviction > QUOTA + in_flight, (without_eviction, QUOTA, in_flight)
    assert evicted == old[:len(evicted)], evicted  # oldest refused clips first, no new clip
    assert len(evicted) * OLD_CLIP_BYTES >= without_eviction - QUOTA, (len(evicted), without_eviction)
    assert health["clips"]["evicted"] == len(evicted)
    for eid in evicted:
        assert any("evicted clip" in ln and eid in ln and "quota" in ln for ln in log.splitlines()), eid
    assert all(r[3] == 1 for r in new_rows)  # every new clip is still on disk, waiting for storage
    assert settled <= QUOTA, settled
    assert sampler.peak <= QUOTA + in_flight, (sampler.peak, QUOTA, in_flight)


@pytest.mark.parametrize("disk_stack", [(FULL_TMPFS, False)], indirect=True, ids=["tmpfs3m"])
def test_disk_full_for_recordings_pod_keeps_deciding_and_records_again_after(disk_stack, figure):
    """The recordings directory is a 3 MiB tmpfs (mounted as root; the test fails, never
    skips, when it cannot mount), filled by a filler file until ENOSPC. Five passages
    (allow, deny, allow, no read, deny) are published. Asserts: every one is decided
    correctly at the portal stand-in while the disk is full, the pod process stays up, each
    failed clip is logged with the reason (ENOSPC) and counted as failed in /health, and the
    pod leaves no partial file behind. Then the filler is deleted and one more passage must
    give a clip that is uploaded and confirmed (recording resumes; nothing to restart).
    (The quota is exercised by the test above: this file system is smaller than it.)
    Figure: decisions made while the disk was full."""
    s, rec_dir, _, _ = disk_stack
    filler = fill(rec_dir)
    assert shutil.disk_usage(rec_dir).free < 64 * 1024, shutil.disk_usage(rec_dir)
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
    ok_decisions = sum(1 for eid, want in sent if eid in decided and decided[eid]["decision"] == want
                       and decided[eid]["count"] == 1)
    print(f"filler {filler} bytes; {ok_decisions}/{len(sent)} decisions while full; clips {full_health['clips']}; "
          f"after: {final_health['clips']}")
    figure("decisions made while the recordings disk was full", ok_decisions, "of 5", "== 5",
           ok_decisions == len(sent))
    assert ok_decisions == len(sent), (sent, decided)
    assert pod_alive and full_health["mqtt"]["connected"]
    assert full_health["clips"]["built"] == 0 and full_health["clips"]["failed"] == len(sent)
    for eid, _ in sent:
        line = next((ln for ln in log.splitlines() if "no clip for event" in ln and eid in ln), "")
        assert "No space left on device" in line, f"no clear ENOSPC error for {eid}: {line!r}"
    assert leftovers == [], leftovers  # no partial .concat / .part files
    assert recs[0]["plate_number"] == "TEST123" and final_health["clips"]["built"] == 1
