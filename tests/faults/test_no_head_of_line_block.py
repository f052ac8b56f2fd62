"""Issue 13, point 2: one detection the portal answers 500 for, for ever, blocks nothing: the
detections behind it are delivered, it moves behind them with its own backoff, and after
``outbox_max_attempts`` failures (while others went through) it is parked with its reason.
Real pod, mosquitto and portal stand-in processes."""

from __future__ import annotations

import time

from tests.faults.conftest import WHITELIST, Publisher, make_stack, wait_until
from tests.faults.durable import (
    FAST,
    corrupt_superseded_wal_frame,
    exactly_once,
    health,
    kill_pod,
    stored,
    wait_health,
    wait_stored,
)

CONCURRENCY = 4
BEHIND = 20


def test_a_poison_row_blocks_nothing_and_is_parked_with_its_reason(tmp_path, figure):
    """Faults: a poison detection (HTTP 500 for ever) first in the queue, with 20 detections
    behind it; then the pod is SIGKILLed at the worst moment — the portal has stored a
    detection and its answer is withheld (stand-in ``commit_hang``) — and a frame of the
    write-ahead log is overwritten with random bytes (SQLite alone would silently drop
    every later commit); the pod restarts while the portal answers 401, which then turns
    to 200.

    Asserts: the 20 are stored while the poison is still failing; the poison is parked
    ``attempts`` with the portal's 500 in its last error (kept across the kill and the
    damaged file) and never stored; every other detection is stored exactly once (the one
    killed mid-answer is delivered again and deduplicated by its idempotency key: one
    repeat); the portal saw the 20 in enqueue order give or take the rows in flight
    (concurrency - 1 places). Figures: detections delivered behind the poison, its attempts
    before parking, detections lost and stored twice."""
    s = make_stack(tmp_path, streaming=False, pod_overrides={**FAST, "outbox_concurrency": CONCURRENCY})
    wal = s.state_dir / "outbox.sqlite3-wal"
    try:
        s.start_mosquitto()
        s.start_portal(WHITELIST)
        s.start_pod(timeout=30)
        wait_health(s, lambda h: h["whitelist"]["entries"] == 1, 15, "whitelist loaded")
        pub = Publisher("127.0.0.1", s.mqtt_port)
        poison = f"{time.time():.6f}-poison"
        s.portal_admin("/__standin/poison", {"keys": [poison], "status": 500})
        s.portal_admin("/__standin/stats")
        s.portal_admin("/__standin/fault", {"mode": "hang", "scope": "api"})  # queue everything first
        sent = [pub.passage("TEST123", event_id=poison)]
        behind = [pub.passage("TEST123" if i % 2 else "NOPE999", gap=0.01) for i in range(BEHIND)]
        wait_health(s, lambda h: h["outbox"]["depth"] == BEHIND + 1, 30, "all queued behind the poison")
        s.portal_admin("/__standin/fault", {"mode": "ok"})
        got = wait_stored(s, behind, 30, "the detections behind the poison")
        h = health(s)
        assert poison not in got and h["outbox"]["depth"] == 1 and h["outbox"]["parked"] == {}  # only it is left
        order = [e for e in sorted(got, key=lambda e: (got[e]["received_at"], e)) if e in set(behind)]
        displacement = max(abs(order.index(e) - behind.index(e)) for e in behind)
        # later detections keep going through while the poison is retried; it is parked
        more = []
        deadline = time.monotonic() + 60
        while health(s)["outbox"]["parked"].get("attempts") != 1:
            assert time.monotonic() < deadline, health(s)["outbox"]
            more.append(pub.passage("TEST123"))
            time.sleep(0.3)
        wait_stored(s, more, 20, "the detections published while the poison was retried")
        poison_attempts = s.portal_admin_get("/__standin/stats")["poisoned"][poison]

        # the worst moment: the portal has the detection, the pod not yet its answer
        s.portal_admin("/__standin/fault", {"mode": "commit_hang", "count": 1, "scope": "api"})
        x = pub.passage("TEST123")
        wait_until(lambda: x in stored(s), 20, what="the detection stored, its answer withheld")
        kill_pod(s)
        s.portal_admin("/__standin/fault", {"mode": "ok"})
        damaged = corrupt_superseded_wal_frame(wal)
        s.portal_admin("/__standin/fault", {"mode": "unauthorized", "scope": "api"})
        s.start_pod(timeout=30)
        after = [pub.passage("TEST123"), pub.passage("NOPE999")]
        wait_health(s, lambda h: h["outbox"]["held"] == "auth", 20, "held while the portal answers 401")
        time.sleep(1.5)
        s.portal_admin("/__standin/fault", {"mode": "ok"})
        got = wait_stored(s, [x, *after], 30, "everything after the 401s")
        wait_health(s, lambda h: h["outbox"]["depth"] == 0, 20, "outbox drained")
        h = health(s)
        parked = s.pod_cli("outbox", "list", "--state", "parked", "--json").stdout
        pod_alive = s.procs["pod"].popen.poll() is None
    finally:
        s.stop()
    sent += behind + more + [x] + after
    real = [e for e in sent if e != poison]
    lost, twice, repeats = exactly_once(real, got)
    print(f"poison: {poison_attempts} attempts before parking; {len(behind)} delivered behind it (displacement "
          f"{displacement}); WAL frame {damaged} damaged; repeats {repeats}")
    figure("detections delivered behind a poison row", len(behind), f"of {BEHIND}", f"== {BEHIND}",
           set(behind) <= got.keys())
    max_attempts = FAST["outbox_max_attempts"]
    figure("poison row's 500s before it was parked", poison_attempts, "answers",
           f"outbox_max_attempts {max_attempts} (+1: a first failure is no strike)",
           max_attempts <= poison_attempts <= max_attempts + 1)
    figure("detections lost (poison, SIGKILL mid-answer, damaged WAL, 401)", lost, "detections", "== 0", lost == 0)
    figure("detections stored twice", twice, "detections", "== 0", twice == 0)
    assert pod_alive and lost == 0 and twice == 0
    assert repeats == 1 and got[x]["count"] == 2  # the one killed mid-answer, deduplicated by the portal
    assert poison not in got and h["outbox"]["parked"] == {"attempts": 1}
    assert f'"key":"{poison}"' in parked and "HTTP 500" in parked and '"reason":"attempts"' in parked
    assert max_attempts <= poison_attempts <= max_attempts + 1  # strikes count only with others delivered between
    assert displacement <= CONCURRENCY - 1
    assert h["state"]["recoveries"][0]["store"] == "state"  # the damaged WAL was caught and healed
