"""Gateway config: env overrides, key-path errors, CLI exit code 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
OK = {"stream_secret": "z" * 40, "pods": {"gate-1": "http://127.0.0.2:8000"}}


def test_env_overrides_file():
    cfg = parse_config(OK, env={"POD_STREAM_SECRET": "e" * 40, "PLATEBRIDGE_GATEWAY_PORT": "9090",
                                "PLATEBRIDGE_GATEWAY_ALLOWED_ORIGINS": "[https://portal.example]",
                                "PLATEBRIDGE_GATEWAY_PODS": "{gate-2: 'http://127.0.0.3:8000'}"})
    assert cfg.stream_secret == "e" * 40 and cfg.port == 9090
    assert cfg.allowed_origins == ["https://portal.example"] and set(cfg.pods) == {"gate-2"}


@pytest.mark.parametrize("over,path", [
    ({"port": "x"}, "$.port"),
    ({"discovery": "dns"}, "$.discovery"),
    ({"pods": {"Gate_1": "http://127.0.0.2:8000"}}, "$.pods.Gate_1"),
    ({"pods": {"gate-1": "http://127.0.0.2:8000/cameras"}}, "$.pods.gate-1"),
    ({"allowed_origins": ["*"]}, "$.allowed_origins[0]"),
    ({"max_token_ttl": 0}, "$.max_token_ttl"),
    ({"unknown_key": 1}, "$"),
    ({"discovery": "tailscale_api"}, "$.tailscale_api_key"),
    ({"upstream_proxy": "ftp://x"}, "$.upstream_proxy"),
])
def test_errors_name_key_path(over, path):
    with pytest.raises(ConfigError) as ei:
        parse_config({**OK, **over}, env={})
    assert str(ei.value).startswith(path), str(ei.value)


def test_secret_required():
    with pytest.raises(ConfigError, match=r"^\$\.stream_secret"):
        parse_config({"pods": {}}, env={})


def test_cli_exit_code_2(tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_text("port: [1\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("POD_STREAM_SECRET", None)
    r = subprocess.run([sys.executable, "-m", "gateway", "--config", str(f)], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2 and "YAML error at line" in r.stderr
    f.write_text("pods: {gate-1: 'http://127.0.0.2:8000'}\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "--config", str(f)], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2 and "$.stream_secret" in r.stderr


def test_file_missing():
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/gw.yaml", env={})


@pytest.mark.parametrize("over,path", [
    ({"max_token_ttl": float("nan")}, "$.max_token_ttl"),
    ({"max_session_seconds": float("inf")}, "$.max_session_seconds"),
    ({"grant_ttl": float("nan")}, "$.grant_ttl"),
    ({"pods": {"gate-1": "http://[::1"}}, "$.pods.gate-1"),
    ({"pods": {"gate-1": "http://h:abc"}}, "$.pods.gate-1"),
    ({"public_base_url": "http://h:99999"}, "$.public_base_url"),
    ({"allowed_origins": ["https://a.example/x"]}, "$.allowed_origins[0]"),
    ({"upstream_proxy": "socks5://127.0.0.1:abc"}, "$.upstream_proxy"),
    ({"host": "not a host"}, "$.host"),
])
def test_adversarial_values_are_refused_with_the_key(over, path):
    """From an adversarial review: NaN/inf disabled the token-lifetime cap; bad URLs crashed later."""
    with pytest.raises(ConfigError) as ei:
        parse_config({**OK, **over}, env={})
    assert str(ei.value).startswith(path), str(ei.value)


@pytest.mark.parametrize("raw,needle", [
    (b"stream_secret: a\nstream_secret: b\n", "duplicate key 'stream_secret'"),
    (b"stream_secret: \xff\xfe\n", "not UTF-8"),
    (b"a: " + b"[" * 200 + b"]" * 200 + b"\n", "nesting"),
])
def test_bad_yaml_files(tmp_path, raw, needle):
    f = tmp_path / "gw.yaml"
    f.write_bytes(raw)
    with pytest.raises(ConfigError, match=needle):
        load_config(f, env={})
