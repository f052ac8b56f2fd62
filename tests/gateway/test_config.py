"""Gateway config: env overrides, key-path errors, CLI exit code 2."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError
from tests.gateway.conftest import SECRET, SIGNER, keys

ROOT = Path(__file__).resolve().parents[2]
OK = {"stream_secret": "z" * 40, "pods": {"gate-1": "http://127.0.0.2:8000"}}


def test_env_overrides_file():
    cfg = parse_config(OK, env={"POD_STREAM_SECRET": "e" * 40, "PLATEBRIDGE_GATEWAY_PORT": "9090",
                                "PLATEBRIDGE_GATEWAY_ALLOWED_ORIGINS": "[https://portal.example]",
                                "PLATEBRIDGE_GATEWAY_PODS": "{gate-2: 'http://127.0.0.3:8000'}"})
    assert cfg.stream_secret == "e" * 40 and cfg.port == 9090
    assert cfg.allowed_origins == ["https://portal.example"] and set(cfg.pods) == {"gate-2"}


@pytest.mark.parametrize("env,message", [
    ({"PLATEBRIDGE_GATEWAY_GRANT_TTL": "abc"}, "$.grant_ttl (set by env PLATEBRIDGE_GATEWAY_GRANT_TTL): "),
    ({"PLATEBRIDGE_GATEWAY_PODS": "{Gate_1: 'http://127.0.0.2:8000'}"},
     "$.pods.Gate_1 (set by env PLATEBRIDGE_GATEWAY_PODS): pod_id must be a DNS label"),
    ({"PLATEBRIDGE_GATEWAY_GRANT_SECRET": "short"},
     "$.grant_secrets.default (set by env PLATEBRIDGE_GATEWAY_GRANT_SECRET): must be at least 32 bytes"),
    ({"PLATEBRIDGE_GATEWAY_PODS": "{1: 'http://127.0.0.2:8000'}"},
     "$.pods (set by env PLATEBRIDGE_GATEWAY_PODS): a key: Expected `str`, got `int`"),
    ({"PLATEBRIDGE_GATEWAY_": "1"}, "env PLATEBRIDGE_GATEWAY_: names no key"),
    ({"PLATEBRIDGE_GATEWAY_ALLOWED_ORIGINS": "[https://Portal.example]"},
     "$.allowed_origins[0] (set by env PLATEBRIDGE_GATEWAY_ALLOWED_ORIGINS): must be lowercase"),
])
def test_a_bad_value_from_the_environment_names_the_variable(env, message):
    """A newcomer's PLATEBRIDGE_GATEWAY_GRANT_TTL=abc was blamed on the config file."""
    with pytest.raises(ConfigError) as ei:
        parse_config(OK, env=env)
    assert str(ei.value).startswith(message), str(ei.value)


def test_check_says_to_fix_the_variable_not_the_file(tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_text("stream_secret: " + "z" * 40 + "\npods: {gate-1: 'http://127.0.0.2:8000'}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PLATEBRIDGE_GATEWAY_GRANT_TTL": "abc"}
    r = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(f)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2, r
    assert "(set by env PLATEBRIDGE_GATEWAY_GRANT_TTL)" in r.stdout
    assert "fix: edit the environment variable PLATEBRIDGE_GATEWAY_GRANT_TTL" in r.stdout and str(f) not in r.stdout


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
    with pytest.raises(ConfigError, match=r"^\$\.user_token_secret"):
        parse_config({"pods": {}}, env={})
    with pytest.raises(ConfigError, match=r"^\$\.pod_signing_key_file: required"):
        parse_config({"user_token_secret": "u" * 40}, env={})


def test_keys_by_role_and_legacy_fallback(tmp_path):
    """The new layout needs no shared secret; the legacy one still loads, and says per role what it costs."""
    from gateway.grants import GrantSigner
    from protocol.tokens import Keyring, SigningKey

    cfg = parse_config(keys(), env={})
    assert cfg.legacy_warnings() == []
    assert isinstance(cfg.pod_signer(), SigningKey) and cfg.pod_signer().kid == "test-1"
    assert cfg.user_keyring().kids == ["default"]
    # without grant_secret the grant key is derived from the signing key: stable across restarts
    no_grant = parse_config({k: v for k, v in keys().items() if k != "grant_secret"}, env={})
    assert no_grant.grant_keys() == no_grant.grant_keys() != cfg.grant_keys()
    assert no_grant.grant_keys()[0] not in (SECRET.encode(),)
    legacy = parse_config(OK, env={})
    assert isinstance(legacy.pod_signer(), Keyring)
    warnings = " ".join(legacy.legacy_warnings())
    assert "user_token_secret" in warnings and "pod_signing_key_file" in warnings and "stolen pod" in warnings
    # legacy grants use a process-random key, never one derived from the secret pods hold
    GrantSigner(legacy.grant_keys())
    assert legacy.grant_keys() != legacy.grant_keys()


@pytest.mark.parametrize("over,path,needle", [
    ({"pod_signing_key_file": "/nonexistent/key.pem"}, "$.pod_signing_key_file", "cannot read"),
    ({"pod_signing_key_id": "bad kid!"}, "$.pod_signing_key_id", "A-Za-z0-9"),
    ({"grant_secret": "short"}, "$.grant_secrets.default", "32 bytes"),
    ({"grant_secret": "g" * 31}, "$.grant_secrets.default", "RFC 7518 §3.2"),
    ({"user_token_secret": "u" * 31}, "$.user_token_secrets.default", "32 bytes"),
    ({"user_token_secrets": {"k1": "u" * 40, "k2": "short"}}, "$.user_token_secrets.k2", "openssl rand"),
    ({"user_token_secret_primary": "nope"}, "$.user_token_secret_primary", "not a key id"),
    ({"upstream_pod_connections": 0}, "$.upstream_pod_connections", "1-256"),
    ({"upstream_deadline": 0}, "$.upstream_deadline", "> 0"),
    ({"upstream_max_segment_bytes": 10}, "$.upstream_max_segment_bytes", "1024"),
])
def test_key_and_bound_errors_name_the_key(over, path, needle):
    with pytest.raises(ConfigError) as ei:
        parse_config({**keys(), **over}, env={})
    assert str(ei.value).startswith(path) and needle in str(ei.value), str(ei.value)


def test_signing_key_file_must_be_an_ed25519_private_key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = tmp_path / "pub.pem"
    public.write_text(SIGNER.public_pem())
    ecdsa = tmp_path / "ec.pem"
    ecdsa.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for path, needle in ((public, "PEM private key"), (ecdsa, "not an Ed25519 private key")):
        with pytest.raises(ConfigError, match=needle):
            parse_config({**keys(), "pod_signing_key_file": str(path)}, env={})


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
    assert r.returncode == 2 and "$.user_token_secret" in r.stderr


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
    # a session's end is a uint32 in every grant: 5e9 s passed `check`, then every session was a 500
    ({"max_session_seconds": 5_000_000_000}, "$.max_session_seconds"),
    ({"max_session_seconds": 86401}, "$.max_session_seconds"),
    ({"max_token_ttl": 1e300}, "$.max_token_ttl"),
    ({"grant_ttl": 10**12}, "$.grant_ttl"),
    ({"discovery_refresh_seconds": 1e30}, "$.discovery_refresh_seconds"),
    ({"upstream_read_timeout": 1e30}, "$.upstream_read_timeout"),
    ({"segment_max_age": 10**10}, "$.segment_max_age"),
    # origins a browser never sends, or that would break out of the data plane's nginx map
    ({"allowed_origins": ['https://a.example"; add_header X 1']}, "$.allowed_origins[0]"),
    ({"allowed_origins": ["https://a.example/"]}, "$.allowed_origins[0]"),
    ({"allowed_origins": ["https://user@a.example"]}, "$.allowed_origins[0]"),
    ({"allowed_origins": ["https://a.example?x"]}, "$.allowed_origins[0]"),
    ({"allowed_origins": ["https://a b.example"]}, "$.allowed_origins[0]"),
    ({"allowed_origins": ["https://a.example:99999"]}, "$.allowed_origins[0]"),
    ({"allowed_origins": ["https://[zz::1]"]}, "$.allowed_origins[0]"),
    ({"allowed_origins": ["ftp://a.example"]}, "$.allowed_origins[0]"),
    ({"allowed_origins": ["https://-a.example"]}, "$.allowed_origins[0]"),
    ({"allowed_origins": [7]}, "$.allowed_origins[0]"),
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


def test_a_day_long_session_is_accepted_and_its_grant_verifies():
    """The largest accepted max_session_seconds still fits the grant's uint32 session end."""
    from gateway.grants import GrantSigner
    from gateway.session import SessionGuard
    from protocol.tokens import mint_user_token

    cfg = parse_config({**OK, "max_session_seconds": 86400}, env={})
    guard = SessionGuard(user_keys=cfg.user_keyring(), grants=GrantSigner(cfg.grant_keys()),
                         max_session_seconds=cfg.max_session_seconds)
    token = mint_user_token(cfg.user_keyring(), user_id="u1", camera_id="gate-camera-1", pod_id="gate-1")
    grant, raw = guard.start_session(guard.verify_user(token, "gate-camera-1"))
    assert grant.session_exp - time.time() == pytest.approx(86400, abs=5)
    checked = guard.verify_grant(raw, camera_id="gate-camera-1", path="index.m3u8", query="", kind="playlist")
    assert checked.session_exp == grant.session_exp


@pytest.mark.parametrize("origin,hint", [
    ("https://Portal.Example.com", "must be lowercase, as browsers send it (https://portal.example.com)"),
    ("https://portal.example.com:443", "leave out the default port, as browsers do (https://portal.example.com)"),
    ("http://portal.example.com:80", "leave out the default port"),
    # from an attack run: IP literals a browser never sends in that spelling
    ("http://[0:0:0:0:0:0:0:1]", "write the IPv6 address as browsers send it (http://[::1])"),
    ("http://[::ffff:127.0.0.1]", "write the IPv6 address as browsers send it (http://[::ffff:7f00:1])"),
    ("http://127.1", "an IPv4 address must be four numbers"),
    ("http://2130706433", "an IPv4 address must be four numbers"),
    ("http://0x7f000001", "an IPv4 address must be four numbers"),
    ("http://01.02.03.04", "an IPv4 address must be four numbers"),
    ("http://1.2.3.999", "an IPv4 address must be four numbers"),
    ("http://1.2.3.4.5", "an IPv4 address must be four numbers"),
])
def test_an_origin_a_browser_never_sends_gets_the_one_it_does(origin, hint):
    """The CORS check echoes only an exact match (RFC 6454 §6.2 serialization)."""
    with pytest.raises(ConfigError) as ei:
        parse_config({**OK, "allowed_origins": [origin]}, env={})
    assert str(ei.value).startswith("$.allowed_origins[0]: " + hint), str(ei.value)


@pytest.mark.parametrize("origin", ["https://portal.example.com", "http://127.0.0.1:8080", "https://[::1]:8443",
                                    "http://localhost", "https://xn--bcher-kva.example", "http://100.101.1.1",
                                    "https://a1.example", "https://[2001:db8::1]"])
def test_real_origins_are_accepted(origin):
    assert parse_config({**OK, "allowed_origins": [origin]}, env={}).allowed_origins == [origin]
