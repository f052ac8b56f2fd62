"""Issue 13, point 1: rows parked because the portal refused the pod's API key come back by
themselves — after a restart with a new key, after SIGHUP with a new key, and after the
portal answered 401 for a while and then 200 — and the operator can list, retry and drop
parked rows while the agent runs. Real pod, mosquitto and portal stand-in processes."""

from __future__ import annotations

import json
import secrets
import time

from tests.faults.conftest import WHITELIST, Publisher, make_stack, wait_until
from tests.faults.durable import (
    FAST,
    corrupt_header,
    exactly_once,
    garbage,
    health,
    kill_pod,
    metric,
    portal_json,
    stored,
    wait_health,
    wait_stored,
)


def test_parked_rows_come_back_by_themselves_and_by_the_operator(tmp_path, figure):
    """Faults, in one pod's life:

    1. The portal rotates the pod API key (the stand-in accepts only a new one): the pod's
       first detection is parked ``auth``, the queue holds (no other row is parked), the
       heartbeat keeps probing and fails. A poison detection (500 for ever) is queued too.
    2. The pod is SIGKILLed there, its state file's first page and its whitelist cache are
       overwritten with random bytes, and it restarts with the new key in its config: the
       file is healed, the ``auth`` rows are re-queued at start and every detection arrives
       exactly once; the poison row is parked ``attempts`` while later detections go through.
    3. The portal rotates the key again; the pod gets the new key by SIGHUP: parked rows
       come back without a restart.
    4. The portal answers 401 for a while (a fault at the portal, key unchanged), then 200:
       the next heartbeat that succeeds re-queues the parked rows.
    5. ``platebridge-pod outbox list`` shows the poison row (reason, last error) while the
       agent runs; ``outbox drop`` removes it, logged and counted in /metrics.

    Figures: detections lost and stored twice (0), seconds from a usable key to the parked
    rows delivered (restart, SIGHUP, 401→200)."""
    s = make_stack(tmp_path, streaming=False, pod_overrides=dict(FAST))
    outbox = s.state_dir / "outbox.sqlite3"
    key0 = s.api_key
    try:
        s.start_mosquitto()
        s.start_portal(WHITELIST)
        s.start_pod(timeout=30)
        wait_health(s, lambda h: h["whitelist"]["entries"] == 1, 15, "whitelist cached")
        pub = Publisher("127.0.0.1", s.mqtt_port)

        # 1. key rotated at the portal
        key1 = "pbk_rotated_" + secrets.token_hex(8)
        s.portal_admin("/__standin/keys", {"api_keys": [key1]})
        poison = f"{time.time():.6f}-poison"
        s.portal_admin("/__standin/poison", {"keys": [poison], "status": 500})
        sent = [pub.passage("TEST123"), pub.passage("NOPE999"), pub.passage("TEST123", event_id=poison),
                pub.passage(None)]
        h = wait_health(s, lambda h: h["outbox"]["parked"].get("auth") == 1 and h["outbox"]["depth"] == 3, 20,
                        "the first row parked auth, the rest held")
        assert h["outbox"]["held"] == "auth" and h["outbox"]["parked"] == {"auth": 1}
        hb_failed = metric(s, "platebridge_pod_heartbeats_total", result="failed")
        wait_until(lambda: metric(s, "platebridge_pod_heartbeats_total", result="failed") >= hb_failed + 2, 10,
                   what="the heartbeat keeps probing")
        assert stored(s) == {}

        # 2. SIGKILL, damaged state files, restart with the new key
        kill_pod(s)
        corrupt_header(outbox)
        (s.state_dir / "whitelist.json").write_bytes(garbage(300))
        s.api_key = key1
        s.start_pod(timeout=30)
        t_key = time.monotonic()
        got = wait_stored(s, [e for e in sent if e != poison], 30, "the parked and held detections")
        restart_s = time.monotonic() - t_key
        h = health(s)
        assert [r["method"] for r in h["state"]["recoveries"] if r["store"] == "state"] == ["pages"]
        assert h["whitelist"]["recovered"]["store"] == "whitelist"
        assert metric(s, "platebridge_pod_state_recovered_total", store="state") == 1
        assert metric(s, "platebridge_pod_state_recovered_total", store="whitelist") == 1
        # the poison keeps failing while later detections go through, then it is parked
        more = []
        deadline = time.monotonic() + 60
        while health(s)["outbox"]["parked"].get("attempts") != 1:
            assert time.monotonic() < deadline, health(s)["outbox"]
            more.append(pub.passage("TEST123"))
            time.sleep(0.3)
        sent += more

        # 3. rotated again: SIGHUP with the new key
        key2 = "pbk_rotated_" + secrets.token_hex(8)
        s.portal_admin("/__standin/keys", {"api_keys": [key2]})
        e3 = pub.passage("TEST123")
        wait_health(s, lambda h: h["outbox"]["parked"].get("auth") == 1, 20, "parked auth again")
        s.api_key = key2
        s.reload_pod()
        t_hup = time.monotonic()
        wait_stored(s, [e3], 20, "the parked row after SIGHUP")
        sighup_s = time.monotonic() - t_hup
        sent.append(e3)

        # 4. the portal answers 401 for a while, then 200 (same key)
        s.portal_admin("/__standin/fault", {"mode": "unauthorized", "scope": "api"})
        e4 = [pub.passage("TEST123"), pub.passage("NOPE999")]
        wait_health(s, lambda h: h["outbox"]["parked"].get("auth") == 1 and h["outbox"]["held"] == "auth", 20,
                    "parked auth during the 401s")
        time.sleep(2)  # "a while": heartbeats fail meanwhile
        s.portal_admin("/__standin/fault", {"mode": "ok"})
        t_ok = time.monotonic()
        wait_stored(s, e4, 20, "the parked rows after the portal answered 200 again")
        back_s = time.monotonic() - t_ok
        sent += e4

        # 5. the operator's view while the agent runs
        r = s.pod_cli("outbox", "list", "--state", "parked", "--json")
        rows = [json.loads(ln) for ln in r.stdout.splitlines()]
        assert r.returncode == 0 and [(x["key"], x["reason"]) for x in rows] == [(poison, "attempts")]
        assert "HTTP 500" in rows[0]["last_error"]
        wait_until(lambda: portal_json(s, "/__standin/heartbeats")["heartbeats"][-1].get("outbox_parked")
                   == {"attempts": 1}, 10, what="the heartbeat showing the parked row by reason")
        r = s.pod_cli("outbox", "drop", poison)
        assert r.returncode == 0 and f"dropped detect {poison}" in r.stdout
        wait_health(s, lambda h: h["outbox"]["parked"] == {}, 10, "the dropped row gone")
        assert metric(s, "platebridge_pod_dropped_total", kind="detect", reason="operator") == 1
        assert s.pod_cli("outbox", "drop", poison).returncode == 1
        got = stored(s)
        pod_alive = s.procs["pod"].popen.poll() is None
        log = s.procs["pod"].log.read_text(errors="replace")
    finally:
        s.stop()
    real = [e for e in sent if e != poison]
    lost, twice, repeats = exactly_once(real, got)
    print(f"delivered after: restart with new key {restart_s:.2f}s, SIGHUP {sighup_s:.2f}s, 401->200 {back_s:.2f}s; "
          f"{len(real)} detections, repeats {repeats}")
    figure("detections lost (auth, SIGKILL, damaged state)", lost, "detections", "== 0", lost == 0)
    figure("detections stored twice", twice, "detections", "== 0", twice == 0)
    figure("new key by restart -> parked rows delivered", restart_s, "s", "<= 30 s", restart_s <= 30)
    figure("new key by SIGHUP -> parked rows delivered", sighup_s, "s", "<= heartbeat + retry (5 s)", sighup_s <= 5)
    figure("portal 401 -> 200: parked rows delivered", back_s, "s", "<= 5 s", back_s <= 5)
    assert pod_alive and lost == 0 and twice == 0 and repeats == 0
    assert poison not in got
    assert key1 not in log and key2 not in log and key0 not in log  # keys are never logged
    assert "SIGHUP: new pod_api_key in use" in log
    assert sighup_s <= 5 and back_s <= 5
