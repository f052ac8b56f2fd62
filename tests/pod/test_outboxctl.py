"""``platebridge-pod outbox list|retry|drop`` (pod/outboxctl.py) on a real state file, with
another connection holding it open the way the running agent does, plus the real command."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from pod import clipjobs
from pod.cli import main
from pod.clipjobs import ClipJob, ClipJobs
from pod.db import StateDB
from pod.outbox import TABLE as OUTBOX_TABLE
from pod.outbox import Outbox
from pod.uploads import TABLE as UPLOADS_TABLE
from pod.uploads import UploadQueue

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pod(tmp_path):
    """A config file and the agent's state: 3 pending detections, 2 parked for auth, 1
    parked poison, a clip parked for auth, a clip job lost. The agent's connection stays open."""
    state_dir = tmp_path / "state"
    cfg = {"portal_url": "http://127.0.0.1:9", "pod_api_key": "k", "pod_id": "pod-1", "site_id": "s",
           "camera_id": "cam1", "camera_rtsp_url": "rtsp://127.0.0.1:9/s", "enable_streaming": False,
           "state_dir": str(state_dir), "recordings_dir": str(tmp_path / "rec")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    db = StateDB(state_dir / "outbox.sqlite3", [OUTBOX_TABLE, UPLOADS_TABLE, clipjobs.TABLE])
    ob, up, jobs = Outbox(db), UploadQueue(db), ClipJobs(db)
    for i in range(6):
        ob.put("detect", f"evt-{i}", json.dumps({"plate": f"ABC{i}"}).encode(), now=1000.0 + i)
    items = ob.items()
    ob.park(items[0].id, "HTTP 401: unauthorized", reason="auth")
    ob.park(items[1].id, "HTTP 401: unauthorized", reason="auth")
    ob.park(items[2].id, "failed 10 times; last: HTTP 500", reason="attempts")
    (tmp_path / "rec").mkdir()
    clip = tmp_path / "rec" / "c.mp4"
    clip.write_bytes(b"x" * 10)
    up.add("clip-1", "cam1", clip, "ABC1", 2.0)
    up.mark_failed("clip-1", "HTTP 403", reason="auth")
    jobs.add(ClipJob("clip-2", "cam1", "ABC2", 5.0, 0.0, 35.0, "c2.mp4"))
    jobs.finish("clip-2", "lost", "the pod restarted and the footage of the window is gone")
    yield path, db, clip
    db.close()


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    from pod import outboxctl
    from pod.cli import _parser

    args = _parser().parse_args(["outbox", *argv])
    return outboxctl.main(args, out=out, err=out), out.getvalue()


def test_list_shows_counts_reasons_and_rows(pod):
    path, _, _ = pod
    code, text = run("list", "--config", str(path))
    assert code == 0
    assert "detections: 3 pending, 3 parked (attempts 1, auth 2)" in text
    assert "clips: 0 to upload, 1 parked (auth 1)" in text and "1 lost" in text
    lines = [ln for ln in text.splitlines() if ln.startswith(("detect", "clip"))]
    assert any(ln.startswith("detect") and "evt-2" in ln and "attempts" in ln and "HTTP 500" in ln for ln in lines)
    assert any(ln.startswith("clip-job") and "clip-2" in ln and "footage of the window is gone" in ln
               for ln in lines)
    code, text = run("list", "--config", str(path), "--state", "parked", "--reason", "auth", "--json")
    rows = [json.loads(ln) for ln in text.splitlines()]
    assert code == 0 and sorted((r["kind"], r["key"]) for r in rows) == [
        ("clip", "clip-1"), ("detect", "evt-0"), ("detect", "evt-1")]
    assert {r["plate"] for r in rows} == {"ABC0", "ABC1"}
    assert run("list", "--config", str(path), "--reason", "rejected")[0] == 1  # nothing matched


def test_retry_requeues_in_place_while_the_agent_holds_the_file(pod):
    path, db, _clip = pod
    ob = Outbox(db)
    db.conn.execute("BEGIN")  # the agent reading (a shared lock, as during its SELECTs)
    db.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
    db.conn.execute("COMMIT")
    code, text = run("retry", "--config", str(path), "--reason", "auth")
    assert code == 0 and "re-queued 2 detection(s) and 1 clip(s)" in text
    assert [i.key for i in ob.items()] == ["evt-0", "evt-1", "evt-3", "evt-4", "evt-5"]  # their old place
    assert UploadQueue(db).get("clip-1").state == "recorded"
    assert run("retry", "--config", str(path), "--reason", "auth")[0] == 1  # nothing left
    code, text = run("retry", "--config", str(path), "evt-2")
    assert code == 0 and ob.get("evt-2").state == "pending" and ob.get("evt-2").strikes == 0
    assert run("retry", "--config", str(path))[0] == 2  # no rows named


def test_drop_deletes_logs_and_counts(pod, caplog):
    path, db, clip = pod
    with caplog.at_level(logging.WARNING, logger="platebridge.pod"):
        code, text = run("drop", "--config", str(path), "--reason", "attempts")
    assert code == 0 and "dropped detect evt-2 (parked attempts)" in text
    assert any("dropped detect evt-2" in r.getMessage() for r in caplog.records)
    code, text = run("drop", "--config", str(path), "clip-1")
    assert code == 0 and "dropped clip clip-1" in text and not clip.exists()
    assert Outbox(db).dropped() == {"detect:operator": 1, "clip:operator": 1}
    assert run("drop", "--config", str(path), "no-such-key")[0] == 1


def test_exit_codes_for_bad_config_and_missing_or_damaged_state(tmp_path, pod):
    path, _db, _ = pod
    bad = tmp_path / "bad.yaml"
    bad.write_text("pod_id: [\n")
    assert run("list", "--config", str(bad))[0] == 2
    cfg = yaml.safe_load(path.read_text())
    cfg["state_dir"] = str(tmp_path / "elsewhere")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(cfg))
    code, text = run("list", "--config", str(other))
    assert code == 3 and "no state file" in text
    state = Path(cfg["state_dir"])
    state.mkdir()
    (state / "outbox.sqlite3").write_bytes(os.urandom(8192))
    code, text = run("list", "--config", str(other))
    assert code == 3 and "cannot read" in text
    assert len(list(state.iterdir())) == 1  # left alone for the agent to heal


def test_the_real_command(pod):
    path, _, _ = pod
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "platebridge-pod"), "outbox", "list", "--config", str(path),
                        "--kind", "detect", "--state", "pending"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("detect ")] == ["evt-3", "evt-4", "evt-5"]
    assert main(["outbox", "list", "--config", str(path), "--kind", "clip", "--state", "pending"]) == 1
    with pytest.raises(SystemExit):
        main(["outbox", "frob"])
    assert sqlite3.connect(path.parent / "state" / "outbox.sqlite3").execute("SELECT 1").fetchone() == (1,)
