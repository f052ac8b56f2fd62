"""Simulated Frigate (development and tests only): publishes the MQTT messages a
Frigate 0.16+ instance sends for one vehicle passage.

Message shapes follow the Frigate MQTT docs v0.16 (``frigate/events`` with
``type`` new → update → end and ``after.recognized_license_plate`` as
``[plate, score]``; ``frigate/tracked_object_update`` with ``type: "lpr"``).
"""

from __future__ import annotations

import json
import sys
import time
import uuid

import paho.mqtt.client as mqtt


def passage_messages(plate: str | None, *, camera: str = "gate_cam", score: float = 0.93,
                     zones: tuple[str, ...] = ("gate_zone",), event_id: str | None = None,
                     prefix: str = "frigate") -> list[tuple[str, dict]]:
    """``[(topic, payload), …]`` for one car: new, update, update with the plate
    (None = never read), the lpr tracked_object_update, end."""
    now = time.time()
    eid = event_id or f"{now:.6f}-{uuid.uuid4().hex[:6]}"

    def obj(**over):
        base = {"id": eid, "camera": camera, "frame_time": now, "label": "car", "sub_label": None,
                "top_score": 0.87, "score": 0.88, "start_time": now, "end_time": None, "current_zones": list(zones),
                "entered_zones": list(zones), "recognized_license_plate": None, "stationary": False}
        base.update(over)
        return base

    read = [plate, score] if plate else None
    msgs = [
        (f"{prefix}/events", {"type": "new", "before": obj(), "after": obj()}),
        (f"{prefix}/events", {"type": "update", "before": obj(), "after": obj()}),
        (f"{prefix}/events", {"type": "update", "before": obj(), "after": obj(recognized_license_plate=read)}),
    ]
    if plate:
        msgs.append((f"{prefix}/tracked_object_update", {"type": "lpr", "name": None, "plate": plate, "score": score,
                                                         "id": eid, "camera": camera, "timestamp": now}))
    msgs.append((f"{prefix}/events", {"type": "end", "before": obj(), "after": obj(
        recognized_license_plate=read, end_time=now + 3, current_zones=[])}))
    return msgs


class Publisher:
    """A blocking MQTT publisher (paho) for the simulator and tests."""

    def __init__(self, host: str, port: int, client_id: str | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"sim-{uuid.uuid4().hex[:8]}")
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()

    def publish(self, topic: str, payload: dict | str | bytes, *, retain: bool = False, qos: int = 1) -> None:
        """Publish and wait until the broker has it."""
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=10)

    def passage(self, plate: str | None, gap: float = 0.05, **kw) -> str:
        """Publish one passage; returns its Frigate event id."""
        msgs = passage_messages(plate, **kw)
        for topic, payload in msgs:
            self.publish(topic, payload)
            time.sleep(gap)
        return msgs[0][1]["after"]["id"]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> int:
    """CLI: publish one simulated passage. ``--plate ''`` simulates a car whose plate is never read."""
    import argparse

    ap = argparse.ArgumentParser(description="Publish one simulated Frigate vehicle passage over MQTT")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--plate", default="ABC 123", help="plate text as the recogniser reads it ('' = no read)")
    ap.add_argument("--score", type=float, default=0.93)
    ap.add_argument("--camera", default="gate_cam")
    ap.add_argument("--zone", default="gate_zone")
    args = ap.parse_args()
    try:
        pub = Publisher(args.host, args.port)
    except OSError as exc:
        print(f"frigate_sim: cannot reach MQTT at {args.host}:{args.port} ({exc.strerror or exc}); use the "
              "--port the demo printed in its 'more cars' line", file=sys.stderr)
        return 2
    try:
        eid = pub.passage(args.plate or None, camera=args.camera, score=args.score, zones=(args.zone,))
    finally:
        pub.close()
    print(f"published passage {eid} plate={args.plate!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
