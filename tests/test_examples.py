"""The example configs shipped in deploy/examples load as documented."""

from pathlib import Path

import yaml

from gateway.config import parse_config as parse_gateway
from pod.config import parse_config as parse_pod

EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"


def test_pod_example_loads():
    cfg, _ = parse_pod(yaml.safe_load((EXAMPLES / "pod.example.yaml").read_text()))
    assert cfg.camera_list()[0].frigate_camera == "gate_cam" and cfg.mqtt_topic_prefix == "frigate"
    assert cfg.stream_bind == "auto"


def test_gateway_example_loads():
    cfg = parse_gateway(yaml.safe_load((EXAMPLES / "gateway.example.yaml").read_text()), env={})
    assert cfg.discovery == "localapi" and cfg.allowed_origins == ["https://your-portal.vercel.app"]
