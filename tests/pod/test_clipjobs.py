"""Durable clip jobs (pod/clipjobs.py, pod/recorder.py): the jobs table, the start-up sweep
of recordings_dir, segments on disk placed on the wall clock after a restart, and a
recorder that is stopped mid-job and resumed — real SQLite, real ffmpeg segments."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from pod import clipjobs
from pod.clipjobs import ClipJob, ClipJobs, scan_segments, sweep_recordings
from pod.db import StateDB
from pod.recorder import ClipJobResult, Recorder, clip_name
from pod.segments import SegmentIndex
from tests.pod.test_recorder import buffer, copy_buffer, decision, pod_cfg, segments_of  # noqa: F401 - fixture


@pytest.fixture
def jobs(tmp_path):
    db = StateDB(tmp_path / "state" / "outbox.sqlite3", [clipjobs.TABLE])
    yield ClipJobs(db)
    db.close()


def job(eid: str, t: float = 1000.0) -> ClipJob:
    return ClipJob(eid, "cam1", "ABC1", t, t - 5, t + 30, clip_name(t, "cam1", eid))


def test_jobs_table(jobs):
    assert jobs.add(job("a", 10.0)) and jobs.add(job("b", 5.0)) and not jobs.add(job("a", 10.0))
    assert [j.event_id for j in jobs.waiting()] == ["b", "a"]  # oldest detection first
    assert [j.event_id for j in jobs.waiting(exclude=["b"])] == ["a"]
    assert jobs.finish("b", "lost", "segments gone", now=50.0)
    assert not jobs.finish("b", "done")  # only from waiting
    with pytest.raises(ValueError):
        jobs.finish("a", "waiting")
    assert jobs.restarted() == 1 and jobs.get("a").restarts == 1
    assert jobs.counts() == {"waiting": 1, "done": 0, "failed": 0, "lost": 1}
    assert jobs.by_filename(job("a", 10.0).filename).event_id == "a"
    assert jobs.prune(older_than=60.0) == 1 and jobs.get("b") is None and jobs.get("a") is not None


def test_sweep_removes_leftovers_adopts_named_clips_and_deletes_orphans(tmp_path, jobs):
    rec = tmp_path / "rec"
    rec.mkdir()
    waiting, finished = job("w", 100.0), job("f", 200.0)
    jobs.add(waiting)
    jobs.add(finished)
    jobs.finish("f", "done")
    files = {f".{waiting.filename}.concat": 3000, f"{waiting.filename}.part": 2000, waiting.filename: 5000,
             finished.filename: 4000, "recording_20260101_000000_cam1_stray.mp4": 1000, "queued.mp4": 700,
             "notes.txt": 50}
    for name, size in files.items():
        (rec / name).write_bytes(b"x" * size)
    (rec / "sub").mkdir()
    out = sweep_recordings(rec, [str(rec / "queued.mp4")], jobs)
    assert sorted(out.temp_removed) == sorted([f".{waiting.filename}.concat", f"{waiting.filename}.part"])
    assert out.temp_bytes == 5000
    assert [(j.event_id, p.name) for j, p in out.adopt] == [("w", waiting.filename)]
    # done already (its clip went to the upload queue, which no longer has it) or named by no job: deleted
    assert sorted(out.orphans_deleted) == sorted([finished.filename, "recording_20260101_000000_cam1_stray.mp4"])
    assert out.foreign == ["notes.txt"] and out.foreign_bytes == 50
    assert sorted(p.name for p in rec.iterdir()) == sorted([waiting.filename, "queued.mp4", "notes.txt", "sub"])


def test_segments_on_disk_are_placed_on_the_wall_clock_by_their_mtimes(tmp_path):
    """After a restart the streamer's in-memory index is gone: the segments still on disk are
    placed by their mtimes (each written when complete), grouped by run (init segment)."""
    d = tmp_path / "cam1"
    d.mkdir()
    t0 = 1_800_000_000.0
    layout = {"init_100.mp4": t0, "seg_100.m4s": t0 + 2.0, "seg_101.m4s": t0 + 4.0, "seg_102.m4s": t0 + 6.0,
              "seg_104.m4s": t0 + 10.0,  # 103 is gone: a gap
              "init_200.mp4": t0 + 20.0, "seg_200.m4s": t0 + 22.0, "seg_201.m4s": t0 + 24.5,
              "seg_50.m4s": t0 - 100,  # no init for it on disk: unplayable, left out
              "index.m3u8": t0 + 24}
    for name, mtime in layout.items():
        p = d / name
        p.write_bytes(b"x")
        os.utime(p, (mtime, mtime))
    segs = scan_segments(d, segment_seconds=2.0)
    got = [(s.name, round(s.start - t0, 2), round(s.duration, 2), s.init, s.sequence) for s in segs]
    assert got == [
        ("seg_100.m4s", 0.0, 2.0, "init_100.mp4", 100),  # a run's first: the run's typical duration
        ("seg_101.m4s", 2.0, 2.0, "init_100.mp4", 101),
        ("seg_102.m4s", 4.0, 2.0, "init_100.mp4", 102),
        ("seg_104.m4s", 8.0, 2.0, "init_100.mp4", 104),  # after a gap: typical duration too
        ("seg_200.m4s", 19.5, 2.5, "init_200.mp4", 200),  # another run, its own typical duration
        ("seg_201.m4s", 22.0, 2.5, "init_200.mp4", 201),
    ]
    ix = SegmentIndex()
    ix.update(segs)
    sel = ix.select(t0 + 1, t0 + 5.5, event=t0 + 3)
    assert [s.name for s in sel.segments] == ["seg_100.m4s", "seg_101.m4s", "seg_102.m4s"]


def settle_mtimes(d: Path) -> None:
    """Give the test buffer's files the mtimes a live streamer would have given them (each
    segment written when it ended, by its PDT), as ffmpeg made them faster than real time."""
    segs = segments_of(d)
    for s in segs:
        os.utime(d / s.name, (s.end, s.end))
    os.utime(d / segs[0].init, (segs[0].start, segs[0].start))


async def test_a_job_stopped_mid_wait_is_built_after_the_restart(buffer, tmp_path):  # noqa: F811
    """The pod stops while a clip job waits for its post-roll: the job row stays waiting. A
    new recorder (the restarted pod: empty index) is seeded from the segments on disk and
    resumes the job: the clip is built from them and handed over exactly once."""
    cam = copy_buffer(buffer, tmp_path / "hls" / "cam1")
    settle_mtimes(cam)
    (cam / "index.m3u8").unlink()  # the restarted streamer deletes the stale playlist
    segs = sorted(scan_segments(cam, segment_seconds=1.0), key=lambda s: s.start)
    t = segs[len(segs) // 2].start + 0.2
    cfg = pod_cfg(tmp_path, pre_roll=2, recording_duration=3)
    db = StateDB(tmp_path / "state" / "outbox.sqlite3", [clipjobs.TABLE])
    jobs = ClipJobs(db)
    first = Recorder(cfg, lambda cam_id: SegmentIndex(), lambda r: pytest.fail("built before the stop"),
                     jobs=jobs, clock=lambda: t, refresh_from_disk=False)  # "now" = the detection: waits
    assert first.request(decision("ev-r", t)) and not first.request(decision("ev-r", t))
    await asyncio.sleep(0.2)
    await first.stop()
    assert jobs.get("ev-r").state == "waiting"

    got: list[ClipJobResult] = []
    ix = SegmentIndex()
    ix.update(segs)
    second = Recorder(cfg, {"cam1": ix}.__getitem__, got.append, jobs=jobs, wait_slack=0)
    assert await second.resume() == 1
    assert await second.wait_idle(timeout=60)
    assert [r.event_id for r in got] == ["ev-r"] and second.built == 1
    r = got[0]
    assert r.metadata["rebuilt_after_restart"] is True and r.metadata["preroll_missing_s"] == 0
    assert r.duration_s == pytest.approx(5.0, abs=1.2) and r.path.exists()
    assert jobs.get("ev-r").state == "done" and jobs.get("ev-r").restarts == 1
    db.close()


async def test_a_job_whose_footage_is_gone_is_reported_lost_with_the_reason(tmp_path):
    cfg = pod_cfg(tmp_path, pre_roll=2, recording_duration=3)
    db = StateDB(tmp_path / "state" / "outbox.sqlite3", [clipjobs.TABLE])
    jobs = ClipJobs(db)
    jobs.add(job("ev-gone", time.time() - 3600))
    rec = Recorder(cfg, lambda cam_id: SegmentIndex(), lambda r: pytest.fail("no clip expected"), jobs=jobs,
                   wait_slack=0)
    assert await rec.resume() == 1
    assert await rec.wait_idle(timeout=30)
    j = jobs.get("ev-gone")
    assert j.state == "lost" and "restarted" in j.reason and "no HLS segments" in j.reason and rec.lost == 1
    db.close()


async def test_a_finished_clip_left_by_a_kill_is_adopted(buffer, tmp_path):  # noqa: F811
    """The build finished (the clip is in recordings_dir) but the pod died before it was
    queued: the sweep finds it, the recorder adopts it (ffprobe reads it) without rebuilding."""
    from pod.recorder import build_clip
    from tests.pod.test_recorder import index_of

    cfg = pod_cfg(tmp_path, pre_roll=1, recording_duration=2)
    segs = segments_of(buffer)
    t = segs[3].start
    j = ClipJob("ev-a", "cam1", "ABC1", t, t - 1, t + 2, clip_name(t, "cam1", "ev-a"))
    rec_dir = Path(cfg.recordings_dir)
    await build_clip(buffer, index_of(buffer).select(t - 1, t + 2, event=t), rec_dir / j.filename)
    (rec_dir / "junk.mp4.part").write_bytes(b"half")
    db = StateDB(tmp_path / "state" / "outbox.sqlite3", [clipjobs.TABLE])
    jobs = ClipJobs(db)
    jobs.add(j)
    sweep = sweep_recordings(rec_dir, [], jobs)
    assert sweep.temp_removed == ["junk.mp4.part"] and len(sweep.adopt) == 1
    got: list[ClipJobResult] = []
    rec = Recorder(cfg, lambda cam_id: pytest.fail("no rebuild"), got.append, jobs=jobs)
    await rec.resume(sweep.adopt)
    assert await rec.wait_idle(timeout=10)
    assert [r.event_id for r in got] == ["ev-a"] and got[0].metadata["adopted"] is True and rec.adopted == 1
    assert jobs.get("ev-a").state == "done"
    db.close()


async def test_more_jobs_than_max_pending_wait_in_the_table_instead_of_being_dropped(tmp_path):
    cfg = pod_cfg(tmp_path)
    db = StateDB(tmp_path / "state" / "outbox.sqlite3", [clipjobs.TABLE])
    jobs = ClipJobs(db)
    rec = Recorder(cfg, lambda cam: SegmentIndex(), lambda r: None, max_pending=1, jobs=jobs)
    assert rec.request(decision("ev-a", time.time() + 100))  # waits for post-roll far away
    assert rec.request(decision("ev-b", time.time() + 100))
    assert rec.dropped == 0 and rec.pending() == 2 and len(rec._tasks) == 1
    await asyncio.wait_for(rec.stop(), timeout=5)
    assert jobs.counts()["waiting"] == 2  # both survive the stop
    db.close()
