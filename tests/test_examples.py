"""The example configs shipped in deploy/examples load as documented (with their key files made
the way the comments say), and use the key layout by role, not the legacy shared secret."""

from pathlib import Path

import yaml

from gateway.config import parse_config as parse_gateway
from pod.config import parse_config as parse_pod
from protocol.tokens import SigningKey

EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"


def test_pod_example_loads(tmp_path, monkeypatch):
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    data = yaml.safe_load((EXAMPLES / "pod.example.yaml").read_text())
    assert data["gateway_public_keys"] == {"default": "/etc/platebridge/gateway-default.pub"}
    pub = tmp_path / "gateway-default.pub"
    pub.write_text(SigningKey.generate("default").public_pem())
    data["gateway_public_keys"] = {"default": str(pub)}
    cfg, _ = parse_pod(data)
    assert cfg.camera_list()[0].frigate_camera == "gate_cam" and cfg.mqtt_topic_prefix == "frigate"
    assert cfg.stream_bind == "auto" and cfg.legacy_warning() is None and cfg.mqtt_protocol == "5"


def test_gateway_example_loads(tmp_path):
    data = yaml.safe_load((EXAMPLES / "gateway.example.yaml").read_text())
    key = tmp_path / "gateway-pod-signing.pem"
    key.write_bytes(SigningKey.generate("default").private_pem())
    data["pod_signing_key_file"] = str(key)
    cfg = parse_gateway(data, env={})
    assert cfg.discovery == "localapi" and cfg.allowed_origins == ["https://your-portal.vercel.app"]
    assert cfg.legacy_warnings() == [] and "stream_secret" not in data
