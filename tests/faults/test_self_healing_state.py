"""Issue 13, point 3: damaged state files — the outbox and upload queue (one SQLite file) and
the whitelist cache — are moved aside, what can be read is salvaged, the pod keeps running
(never a restart loop) and says so in /health and /metrics. Real pod, mosquitto and portal
stand-in processes; the damage is random bytes written while the pod is dead (SIGKILL)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from pod.uploads import UploadQueue
from tests.faults.conftest import Publisher, make_stack, wait_until
from tests.faults.durable import (
    FAST,
    corrupt_header,
    exactly_once,
    garbage,
    health,
    kill_pod,
    metric,
    portal_json,
    wait_health,
    wait_stored,
)

PLATES = [{"plate": f"GATE{i:02d}", "unit": str(i), "tenant": f"Tenant {i}", "enabled": True} for i in range(30)]


def recordings(s) -> list[dict]:
    r = httpx.get(f"{s.portal_url}/api/pod/recordings", params={"camera_id": s.camera_id},
                  headers={"Authorization": "Bearer user-session"}, timeout=5)
    return r.json()["recordings"]


def test_damaged_state_files_are_healed_and_the_pod_keeps_running(tmp_path, figure):
    """Faults:

    1. The portal answers 401 from the start: a clip already in the upload queue and every
       detection are held (parked ``auth``); one detection is a poison (500 for ever).
    2. The pod is SIGKILLed with all of it queued; the state file's header and its
       write-ahead log's header, and the middle of the whitelist cache, are overwritten
       with random bytes.
    3. The pod starts again, the portal still answering 401: it runs (same process for the
       rest of the test), /health and /metrics report both healings with the moved-aside
       files (kept, timestamped), decisions are made offline from the salvaged whitelist.
    4. The portal answers 200: every salvaged detection and the new ones arrive exactly
       once, the salvaged clip is uploaded and confirmed once, the poison is parked.
    5. Worst case: killed again, and the whole state file (and its log) replaced by random
       bytes — nothing to salvage. The pod still starts, says it salvaged nothing, and
       delivers what comes next.

    Figures: rows salvaged of rows queued, whitelist entries salvaged, pod restarts during
    the test (0 beyond the ones the test makes)."""
    s = make_stack(tmp_path, streaming=False, pod_overrides=dict(FAST))
    outbox = s.state_dir / "outbox.sqlite3"
    try:
        s.start_mosquitto()
        s.start_portal(PLATES)
        s.start_pod(timeout=30)
        wait_health(s, lambda h: h["whitelist"]["entries"] == len(PLATES), 15, "whitelist cached")
        s.portal_admin("/__standin/fault", {"mode": "unauthorized", "scope": "api"})
        clip = Path(s.pod_config()["recordings_dir"]) / "recording_20261130_020000_gate-camera-1_old-clip.mp4"
        clip.write_bytes(os.urandom(64 * 1024))
        q = UploadQueue(outbox)  # a clip waiting for its upload (queued next to the running agent)
        assert q.add("old-clip", s.camera_id, clip, "GATE01", 3.0)
        q.close()
        poison = f"{time.time():.6f}-poison"
        s.portal_admin("/__standin/poison", {"keys": [poison], "status": 500})
        pub = Publisher("127.0.0.1", s.mqtt_port)
        sent = [pub.passage("GATE03"), pub.passage("NOPE999"), pub.passage("GATE03", event_id=poison)]
        sent += [pub.passage(f"GATE{i:02d}") for i in range(5, 12)]
        wait_health(s, lambda h: h["outbox"]["depth"] + sum(h["outbox"]["parked"].values()) == len(sent)
                    and h["clips"]["held"] == "auth", 20, "everything held by the 401s")
        queued = len(sent) + 1

        # 2. killed, files damaged
        kill_pod(s)
        corrupt_header(outbox)
        wl = s.state_dir / "whitelist.json"
        data = bytearray(wl.read_bytes())
        data[len(data) // 2:len(data) // 2 + 60] = garbage(60)
        wl.write_bytes(bytes(data))

        # 3. back, still 401
        t0 = time.monotonic()
        s.start_pod(timeout=30)
        up_s = time.monotonic() - t0
        pid = s.procs["pod"].popen.pid
        h = health(s)
        [st] = [r for r in h["state"]["recoveries"] if r["store"] == "state"]
        assert st["method"] == "pages" and Path(st["moved_to"]).exists()
        assert Path(st["moved_to"]).name.startswith("outbox.sqlite3.corrupt-")
        salvaged_rows = st["salvaged"]["outbox"] + st["salvaged"]["uploads"]
        wlr = h["whitelist"]["recovered"]
        assert Path(wlr["moved_to"]).exists() and h["whitelist"]["version"].endswith("~salvaged")
        wl_entries = h["whitelist"]["entries"]
        assert metric(s, "platebridge_pod_state_recovered_total", store="state") == 1
        assert metric(s, "platebridge_pod_state_recovered_total", store="whitelist") == 1
        offline = pub.passage("GATE20")  # decided from the salvaged whitelist: the portal refuses the key
        wait_until(lambda: any(offline in ln and '\\"allow\\"' in ln
                               for ln in s.procs["pod"].log.read_text(errors="replace").splitlines()),
                   10, what="an allow decision from the salvaged whitelist")
        sent.append(offline)

        # 4. the portal answers 200
        s.portal_admin("/__standin/fault", {"mode": "ok"})
        real = [e for e in sent if e != poison]
        got = wait_stored(s, real, 30, "every salvaged and new detection")
        wait_until(lambda: [r["event_id"] for r in recordings(s)] == ["old-clip"], 30,
                   what="the salvaged clip uploaded and confirmed")
        deadline = time.monotonic() + 60
        while health(s)["outbox"]["parked"].get("attempts") != 1:
            assert time.monotonic() < deadline, health(s)["outbox"]
            e = pub.passage("GATE04")
            real.append(e)
            time.sleep(0.3)
        got = wait_stored(s, real, 20, "the detections that parked the poison")
        same_process = s.procs["pod"].popen.pid == pid and s.procs["pod"].popen.poll() is None

        # 5. nothing left to salvage
        kill_pod(s)
        outbox.write_bytes(garbage(64 * 1024))
        Path(f"{outbox}-wal").unlink(missing_ok=True)
        Path(f"{outbox}-shm").unlink(missing_ok=True)
        s.start_pod(timeout=30)
        h2 = health(s)
        [st2] = [r for r in h2["state"]["recoveries"] if r["store"] == "state"]
        last = pub.passage("GATE05")
        got = wait_stored(s, [*real, last], 20, "a detection after the worst case")
        real.append(last)
        aside = sorted(p.name for p in s.state_dir.iterdir() if ".corrupt-" in p.name)
        uploads = portal_json(s, "/__standin/uploads")["uploads"]
    finally:
        s.stop()
    lost, twice, repeats = exactly_once(real, got)
    print(f"salvaged {salvaged_rows} of {queued} rows, {wl_entries} of {len(PLATES)} whitelist entries; "
          f"pod up {up_s:.1f}s after start with damaged files; moved aside: {aside}")
    figure("rows salvaged from the damaged state file", salvaged_rows, f"of {queued}", f"== {queued}",
           salvaged_rows == queued)
    figure("whitelist entries salvaged from the damaged cache", wl_entries, f"of {len(PLATES)}", ">= 20",
           wl_entries >= 20)
    figure("detections lost (damaged files, SIGKILL, 401)", lost, "detections", "== 0", lost == 0)
    figure("detections stored twice", twice, "detections", "== 0", twice == 0)
    figure("pod process restarts while damaged files were healed", 0 if same_process else 1, "restarts", "== 0",
           same_process)
    assert salvaged_rows == queued and 20 <= wl_entries < len(PLATES)
    assert lost == 0 and twice == 0 and repeats == 0 and same_process
    assert poison not in got
    assert len(uploads) == 1 and st2["salvaged"] == {"outbox": 0, "uploads": 0, "clip_jobs": 0}
    assert st2["method"] == "none"
    assert len([a for a in aside if a.startswith("outbox.sqlite3.corrupt-") and not a.endswith(("-wal", "-shm"))]) == 2
    assert any(a.startswith("whitelist.json.corrupt-") for a in aside)
