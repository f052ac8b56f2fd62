"""Issue 13, point 6: after an outage the outbox drains with a few requests in flight — never
more than ``outbox_concurrency`` — and the idempotency keys keep that safe through a SIGKILL
mid-drain. (The rate itself is measured by bench/decisions.py, not here.) Real pod,
mosquitto and portal stand-in processes."""

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
QUEUED = 120
LATENCY = 0.02  # s per detect at the stand-in: concurrent requests overlap there, visibly


def test_the_drain_keeps_a_few_requests_in_flight_and_loses_nothing_when_killed(tmp_path, figure):
    """The portal answers 500 to everything (an outage) while 120 detections and a poison
    one (500 for ever) queue up. Then it answers again, each detect taking 20 ms: the
    stand-in must see several requests at once, never more than 4. Half-way through the
    drain the pod is SIGKILLed at the worst moment (a detection stored, its answer
    withheld), a superseded frame of its write-ahead log is overwritten with random bytes,
    and it restarts into a portal answering 401 for a while, then 200.

    Asserts: every detection stored exactly once (those in flight at the kill delivered
    again and deduplicated: at most 4 repeats), the poison never stored, at most 4 and at
    least 2 detect requests in flight at the stand-in. Figures: most requests in flight,
    drain time of the first half, detections lost and stored twice."""
    s = make_stack(tmp_path, streaming=False, pod_overrides={**FAST, "outbox_concurrency": CONCURRENCY})
    wal = s.state_dir / "outbox.sqlite3-wal"
    try:
        s.start_mosquitto()
        s.start_portal(WHITELIST)
        s.start_pod(timeout=30)
        wait_health(s, lambda h: h["whitelist"]["entries"] == 1, 15, "whitelist loaded")
        pub = Publisher("127.0.0.1", s.mqtt_port)
        s.portal_admin("/__standin/fault", {"mode": "error500", "scope": "api"})
        poison = f"{time.time():.6f}-poison"
        s.portal_admin("/__standin/poison", {"keys": [poison], "status": 500, "scope": "detect"})
        sent = [pub.passage("TEST123", event_id=poison, gap=0.005)]
        sent += [pub.passage("TEST123" if i % 3 else "NOPE999", gap=0.005) for i in range(QUEUED)]
        wait_health(s, lambda h: h["outbox"]["depth"] == QUEUED + 1, 60, "everything queued during the outage")
        s.portal_admin("/__standin/latency", {"seconds": LATENCY})
        s.portal_admin("/__standin/stats")
        served = s.portal_admin_get("/__standin/fault")["faults_served"]
        # the outage ends; the worst moment comes half-way through the drain, whatever the
        # machine's speed: the detection after QUEUED/2 others is stored, its answer withheld
        s.portal_admin("/__standin/fault", {"mode": "commit_hang", "count": 1, "after": QUEUED // 2, "scope": "api"})
        t0 = time.monotonic()
        wait_until(lambda: len(stored(s)) >= QUEUED // 2, 60, interval=0.05, what="half drained")
        half_s = time.monotonic() - t0
        half = len(stored(s))
        wait_until(lambda: s.portal_admin_get("/__standin/fault")["faults_served"] > served, 20, interval=0.01,
                   what="a detection stored with its answer withheld")
        kill_pod(s)
        in_flight_max = s.portal_admin_get("/__standin/stats")["detect_in_flight_max"]
        s.portal_admin("/__standin/fault", {"mode": "ok"})
        damaged = corrupt_superseded_wal_frame(wal)
        s.portal_admin("/__standin/fault", {"mode": "unauthorized", "scope": "api"})
        s.start_pod(timeout=30)
        wait_health(s, lambda h: h["outbox"]["held"] == "auth", 20, "held while the portal answers 401")
        time.sleep(1.5)
        s.portal_admin("/__standin/fault", {"mode": "ok"})
        real = sent[1:]
        got = wait_stored(s, real, 90, "every detection")
        wait_health(s, lambda h: h["outbox"]["depth"] <= 1, 30, "drained but for the poison")
        stats = s.portal_admin_get("/__standin/stats")
        h = health(s)
    finally:
        s.stop()
    lost, twice, repeats = exactly_once(real, got)
    in_flight_max = max(in_flight_max, stats["detect_in_flight_max"])
    print(f"first {half} drained in {half_s:.2f}s ({half / half_s:.0f}/s with {LATENCY * 1000:.0f} ms per detect); "
          f"most in flight {in_flight_max}; repeats {repeats}; WAL frame {damaged} damaged; outbox {h['outbox']}")
    figure("most detect requests in flight at the portal", in_flight_max, "requests",
           f"2..outbox_concurrency {CONCURRENCY}", 2 <= in_flight_max <= CONCURRENCY)
    figure("first half of the backlog drained", half_s, "s", "(informational; rate: bench/decisions.py)", True)
    figure("detections lost (drain, SIGKILL mid-answer, damaged WAL, 401)", lost, "detections", "== 0", lost == 0)
    figure("detections stored twice", twice, "detections", "== 0", twice == 0)
    assert lost == 0 and twice == 0 and poison not in got
    assert 1 <= repeats <= CONCURRENCY  # the rows in flight at the kill, deduplicated by their idempotency keys
    assert 2 <= in_flight_max <= CONCURRENCY
