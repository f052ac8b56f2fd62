"""Portal down for "10 minutes" with a pod SIGKILL in the middle: every detection reaches
the portal exactly once, in order (give or take the rows in flight), once it is back.

Moved here (and strengthened) from tests/e2e/test_decisions.py."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import httpx

from tests.faults.conftest import WHITELIST, Publisher, make_stack, wait_until

HEARTBEAT = 1.0  # s; the default is 60 s
OUTAGE_HEARTBEATS = 10  # 10 minutes of outage at the default heartbeat interval
SENDER_ATTEMPTS_AFTER_RESTART = 7  # 0.25 + 0.5 + 1 + 2 + 4 + 8 s of pauses: the next one is the 10 s cap
DRAIN_LIMIT = 10.0  # s: outbox_retry_max (pod/config.py), so it holds even without a heartbeat
CONCURRENCY = 4  # outbox_concurrency's default: rows in flight at once


def failed_heartbeats(s) -> float:
    text = httpx.get(f"http://127.0.0.1:{s.pod_port}/metrics", timeout=5).text
    m = re.search(r'^platebridge_pod_heartbeats_total\{result="failed"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def heartbeats_received(s) -> int:
    """Heartbeats the portal stand-in has accepted (it records only successful ones)."""
    return len(httpx.get(f"{s.portal_url}/__standin/heartbeats", timeout=5).json()["heartbeats"])


def head_attempts(outbox: Path) -> int:
    """Failed delivery attempts over the pending outbox rows (read-only look at the pod's
    SQLite): during an outage the worker probes with the oldest rows, one failure each."""
    db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT COALESCE(SUM(attempts), 0) FROM outbox WHERE state = 'pending'").fetchone()
        return row[0] if row else 0
    finally:
        db.close()


def displacement(sent: list[str], arrived: list[str]) -> int:
    """Most places any detection arrived away from its enqueue position."""
    pos = {e: i for i, e in enumerate(arrived)}
    return max(abs(pos[e] - i) for i, e in enumerate(sent))


def test_portal_down_10_minutes_and_pod_sigkill_every_detection_arrives_exactly_once(tmp_path, figure):
    """How "10 minutes" is compressed: at the default ``heartbeat_interval`` of 60 s a
    10-minute outage is 10 failed heartbeats; here ``heartbeat_interval`` is 1 s and the
    outage lasts until the pod has failed >= 10 heartbeats (over both of its lives) AND,
    after the restart, the outbox sender has failed >= 7 deliveries, so its pause (0.25, 0.5,
    1, 2, 4, 8 s, capped at ``outbox_retry_max``, 10 s) is at the cap — the state a pod is in
    after 10 real minutes. The portal is down as a stopped process (connections refused).

    Faults: the portal stops; 8 passages (allow, deny, no read) are decided and queued; the
    pod is SIGKILLed (no shutdown code runs) with all 8 queued; it restarts with the portal
    still down (whitelist from its cache), 6 more passages are queued; the portal comes
    back (same database). Figures: lost and duplicated detections at the portal (both 0;
    "duplicated" counts deliveries beyond the first per event_id, which the stand-in
    records even though it dedupes) and seconds from the portal being up to the outbox
    drained (<= 10 s, the sender's backoff cap). Order: rows go out oldest first, up to
    ``outbox_concurrency`` (4) at a time (up to 3 places early or late), and a row that
    probed the outage goes out with the first rows after it (pod/worker.py), so no detection
    arrives more than 2 x 4 - 1 = 7 places away from its enqueue position."""
    s = make_stack(tmp_path, streaming=False, pod_overrides={  # passage_window 0: back-to-back cars, one plate
        "passage_window": 0, "max_decision_wait": 1.0, "no_read_timeout": 10, "heartbeat_interval": HEARTBEAT,
        "portal_timeout": 2})
    outbox = Path(s.pod_config()["state_dir"]) / "outbox.sqlite3"
    try:
        s.start_mosquitto()
        s.start_portal(WHITELIST)
        s.start_pod(timeout=30)
        wait_until(lambda: s.pod_health()["whitelist"]["entries"] == 1, 10, what="whitelist loaded and cached")
        pub = Publisher("127.0.0.1", s.mqtt_port)
        s.procs["portal"].stop()  # portal down: connections refused
        t_down = time.monotonic()
        plates_before = ["TEST123", "NOPE999", None, "TEST 123", "XYZ999", "TEST-123", None, "ABC111"]
        before = [pub.passage(p) for p in plates_before]
        wait_until(lambda: s.pod_health()["outbox"]["depth"] == len(before), 20, what="8 detections queued")
        wait_until(lambda: failed_heartbeats(s) >= OUTAGE_HEARTBEATS / 2, 20, what="half the outage's heartbeats")
        hb_first_life = failed_heartbeats(s)

        pod = s.procs["pod"].popen
        pod.kill()  # SIGKILL with everything queued: no shutdown code runs
        assert pod.wait(10) == -9
        s.start_pod(timeout=30)
        health = s.pod_health()
        assert health["outbox"]["depth"] == len(before)  # kept across the crash
        assert health["whitelist"]["entries"] == 1  # offline start from the cache
        plates_after = ["TEST123", "NOPE999", None, "TEST123", "QQQ000", "TEST123"]
        after = [pub.passage(p) for p in plates_after]
        pub.close()
        total = len(before) + len(after)
        wait_until(lambda: s.pod_health()["outbox"]["depth"] == total, 20, what=f"{total} queued")
        wait_until(lambda: hb_first_life + failed_heartbeats(s) >= OUTAGE_HEARTBEATS
                   and s.pod_health()["outbox"]["failures_in_a_row"] >= SENDER_ATTEMPTS_AFTER_RESTART, 60,
                   interval=0.25, what="the compressed 10-minute outage (heartbeats failed, sender pause at its cap)")
        outage = time.monotonic() - t_down
        heartbeats = hb_first_life + failed_heartbeats(s)
        attempts = head_attempts(outbox)

        s.start_portal(WHITELIST)  # the portal comes back (same database)
        t_up = time.monotonic()
        wait_until(lambda: s.pod_health()["outbox"]["depth"] == 0, 60, interval=0.05, what="outbox drained")
        drained = time.monotonic() - t_up
        # two more heartbeats received: the pod has been talking to the portal for a while after
        # the drain, so anything re-sent late would show up as a second delivery now
        hb_seen = heartbeats_received(s)
        wait_until(lambda: heartbeats_received(s) >= hb_seen + 2, 10 * HEARTBEAT, interval=0.1,
                   what="two more heartbeats at the portal after the drain")
        got = s.detections()
        pod_alive = s.procs["pod"].popen.poll() is None
    finally:
        s.stop()
    print(f"outage {outage:.1f}s: {heartbeats:.0f} failed heartbeats, {attempts} failed delivery attempts; "
          f"drained {drained:.2f}s after the portal was up")
    sent = before + after
    ids = [d["event_id"] for d in got]
    lost = len(set(sent) - set(ids))
    duplicated = sum(d["count"] - 1 for d in got) + (len(ids) - len(set(ids)))
    figure("detections lost (portal down + pod SIGKILL)", lost, "detections", "== 0", lost == 0)
    figure("detections duplicated at the portal", duplicated, "deliveries", "== 0", duplicated == 0)
    figure("portal up -> outbox drained", drained, "s", f"<= {DRAIN_LIMIT:g} s", drained <= DRAIN_LIMIT)
    assert pod_alive
    assert lost == 0, set(sent) - set(ids)
    assert duplicated == 0, [d for d in got if d["count"] != 1]
    assert sorted(ids) == sorted(sent)  # nothing else
    moved = displacement(sent, ids)
    print("arrival order (enqueue positions):", [sent.index(e) for e in ids])
    bound = 2 * CONCURRENCY - 1
    figure("most places a detection arrived away from its enqueue position", moved, "places",
           f"<= 2 x outbox_concurrency - 1 = {bound}", moved <= bound)
    assert moved <= bound
    expected = ["allow", "deny", "deny", "allow", "deny", "allow", "deny", "deny",
                "allow", "deny", "deny", "allow", "deny", "allow"]
    by_id = {d["event_id"]: d for d in got}
    assert [by_id[e]["decision"] for e in sent] == expected
    assert [by_id[e]["reason"] for e in sent if by_id[e]["plate"] is None] == ["no_plate_read"] * 3
    assert drained <= DRAIN_LIMIT
