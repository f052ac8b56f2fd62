"""Broker restart: mosquitto stops and starts again on the same port; the pod must be
resubscribed and deciding within 5 s of the broker accepting connections again."""

from __future__ import annotations

import time

from tests.faults.conftest import WHITELIST, Publisher, make_stack, wait_until

DOWN_SECONDS = 10.0


def test_broker_restart_pod_resubscribed_and_deciding_within_5s(tmp_path, figure):
    """mosquitto is stopped (SIGTERM: the pod's connection drops at once), stays down
    ``DOWN_SECONDS`` — long enough for the pod's reconnect backoff to grow past its first
    steps — and starts again on the same port (clean session: the pod must subscribe again
    itself). From the moment the broker accepts connections, a fresh Frigate publisher sends
    one passage every 0.2 s; the figure is the time from broker-ready until the portal
    stand-in has the pod's decision for one of them, i.e. the pod reconnected, resubscribed,
    received a new event and acted on it."""
    # passage_window 0: the cars published back to back with one plate are separate cars here
    s = make_stack(tmp_path, streaming=False, pod_overrides={"max_decision_wait": 1.0, "passage_window": 0})
    try:
        s.start_mosquitto()
        s.start_portal(WHITELIST)
        s.start_pod(timeout=30)
        pub = Publisher("127.0.0.1", s.mqtt_port)
        first = pub.passage("TEST123")
        wait_until(lambda: [d for d in s.detections() if d["event_id"] == first], 15, what="decision before the fault")
        pub.close()
        connects = s.pod_health()["mqtt"]["connects"]

        ready_mono = s.restart_mosquitto(down_seconds=DOWN_SECONDS)
        ready_wall = time.time() - (time.monotonic() - ready_mono)
        pub = Publisher("127.0.0.1", s.mqtt_port)
        sent: list[str] = []
        try:
            def decided():
                sent.append(pub.passage("TEST123", gap=0.0))
                got = [d for d in s.detections() if d["event_id"] in sent]
                return got[0] if got else None

            first_after = wait_until(decided, 30, interval=0.2, what="a decision for a passage sent after the restart")
        finally:
            pub.close()
        secs = first_after["received_at"] - ready_wall
        health = s.pod_health()
    finally:
        s.stop()
    print(f"broker down {DOWN_SECONDS}s; pod deciding {secs:.2f}s after the broker was back "
          f"({len(sent)} passages sent)")
    figure("broker back -> pod resubscribed and deciding", secs, "s", "<= 5 s", secs <= 5)
    assert health["mqtt"]["connected"] and health["mqtt"]["connects"] == connects + 1
    assert first_after["decision"] == "allow" and first_after["count"] == 1
    assert secs <= 5, f"the pod decided on a new event only {secs:.1f}s after the broker was back"
