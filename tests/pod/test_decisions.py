"""pod.decisions.DecisionEngine, the MQTT handler's pure side: a real outbox (SQLite) and the
Frigate payload shape of tests/data/frigate/B07 (Frigate 0.13+ ``frigate/events``), with
camera names that are and are not this pod's."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from pod.config import parse_config
from pod.decisions import OTHER_CAMERAS_LOGGED, DecisionEngine
from pod.outbox import Outbox
from pod.whitelist import WhitelistStore

DATA = Path(__file__).resolve().parents[1] / "data"


def end_event(camera: str, object_id: str) -> bytes:
    """B07's Frigate event as an ``end`` with a plate read (``sub_label``), on ``camera``."""
    case = json.loads((DATA / "frigate" / "B07_sub_label_string_vs_list.json").read_text())
    payload = case["messages"][0]["payload"]
    after = dict(payload["after"], camera=camera, id=object_id, sub_label=["TEST123", 0.93],
                 end_time=payload["after"]["start_time"] + 4)
    return json.dumps({"type": "end", "before": dict(payload["before"], camera=camera), "after": after}).encode()


@pytest.fixture
def engine(tmp_path):
    d = yaml.safe_load((DATA / "seed" / "original_agent_config.yaml").read_text())
    d.update(site_id="site-1", camera_id=None, camera_rtsp_url=None, gate_zones=["gate_zone"],
             cameras=[{"camera_id": "cam-a", "rtsp_url": "rtsp://127.0.0.1/a", "frigate_camera": "gate_cam"},
                      {"camera_id": "cam-b", "rtsp_url": "rtsp://127.0.0.1/b"}])
    cfg, _ = parse_config(d)
    outbox = Outbox(str(tmp_path / "outbox.db"))
    yield DecisionEngine(cfg, WhitelistStore(None), outbox, clock=lambda: 1767225610.0), outbox
    outbox.close()


def test_a_message_from_another_frigate_camera_is_named_once_and_decides_nothing(engine, caplog):
    eng, outbox = engine
    caplog.set_level(logging.INFO, logger="platebridge.pod.decisions")
    for i in range(3):
        eng.handle("events", end_event("backyard", f"1767225600.1-other{i}"))
    assert outbox.depth() == 0
    said = [r.getMessage() for r in caplog.records if "not for this pod" in r.getMessage()]
    assert said == ["MQTT messages from Frigate camera 'backyard' are not for this pod: it decides for Frigate "
                    "camera(s) cam-b, gate_cam (frigate_camera in the config, or camera_id when that is not set)"]

    eng.handle("events", end_event("gate_cam", "1767225600.1-ours"))  # this pod's camera: decided, not named
    assert outbox.depth() == 1
    assert len([r for r in caplog.records if "not for this pod" in r.getMessage()]) == 1


def test_other_camera_names_are_logged_up_to_a_bound(engine, caplog):
    eng, _ = engine
    caplog.set_level(logging.INFO, logger="platebridge.pod.decisions")
    for i in range(OTHER_CAMERAS_LOGGED + 10):
        eng.handle("events", end_event(f"cam-{i}", f"1767225600.1-x{i}"))
    assert len([r for r in caplog.records if "not for this pod" in r.getMessage()]) == OTHER_CAMERAS_LOGGED
