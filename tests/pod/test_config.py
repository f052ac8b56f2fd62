"""Pod config: the guide's config.yaml loads unchanged; the original agent's loads once it names
its site; bad values name the key path; exit code 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pod.config import check_bind_address, load_config, parse_config
from pod.errors import BindRefused, ConfigError

DATA = Path(__file__).resolve().parents[1] / "data"
SEED = DATA / "seed"
ROOT = Path(__file__).resolve().parents[2]


def base(**over):
    d = yaml.safe_load((SEED / "original_agent_config.yaml").read_text())
    d["site_id"] = "site-1"
    d.update(over)
    return d


def test_guide_config_loads_unchanged(monkeypatch):
    """tests/data/seed/guide_config.yaml: the POD connection guide's config.yaml, verbatim."""
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    monkeypatch.setenv("TZ", "America/New_York")
    cfg, warnings = load_config(SEED / "guide_config.yaml")
    [cam] = cfg.camera_list()
    assert (cam.camera_id, cam.rtsp_url, cam.frigate_camera) == (
        "camera-uuid", "rtsp://192.168.1.100:554/stream", "camera-uuid")
    assert (cfg.site_id, cfg.company_id, cfg.pod_id, cfg.pod_name) == (
        "site-uuid", "company-uuid", "main-gate-pod", "main-gate-pod")
    assert (cfg.min_confidence, cfg.whitelist_refresh_interval, cfg.heartbeat_interval) == (0.75, 300, 60)
    assert cfg.recordings_dir == "/tmp/recordings" and cfg.enable_streaming and cfg.enable_mqtt
    assert warnings == ["$.stream_secret: secret 'default' is shorter than 32 bytes; use a longer random secret"]
    assert str(cfg.site_tz()) == "America/New_York"  # no timezone key: the system's zone


def test_site_id_is_required_with_a_clear_error(monkeypatch):
    """Issue 11: without site_id the portal refuses every detection and the outbox parks them all;
    the original agent's config.example.yaml has none, so it must fail at load, naming the key."""
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    with pytest.raises(ConfigError) as ei:
        load_config(SEED / "original_agent_config.yaml")
    assert str(ei.value).startswith("$.site_id: required") and "Site" in str(ei.value)
    for blank in ("", "  "):
        with pytest.raises(ConfigError, match=r"^\$\.site_id: required"):
            parse_config(base(site_id=blank))
    d = base()
    del d["site_id"]
    r = _run_cli_config(d)
    assert r.returncode == 2 and "$.site_id: required" in r.stderr


def test_timezone_key(monkeypatch):
    assert str(parse_config(base(timezone="Europe/Berlin"))[0].site_tz()) == "Europe/Berlin"
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    assert str(parse_config(base())[0].site_tz()) == "Asia/Kolkata"
    monkeypatch.setenv("TZ", "Not/AZone")
    assert parse_config(base())[0].site_tz() is not None  # falls back to /etc/localtime or UTC
    for bad in ("Mars/Olympus_Mons", "../../etc/passwd", "America", ""):
        with pytest.raises(ConfigError, match=r"^\$\.timezone: unknown IANA time zone"):
            parse_config(base(timezone=bad))


def _run_cli_config(d):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "config.yaml"
        f.write_text(yaml.safe_dump(d))
        return _run_cli(["run", "--config", str(f)], Path(tmp))


def test_original_agent_config_loads_once_it_names_its_site(monkeypatch, tmp_path):
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    f = tmp_path / "config.yaml"
    f.write_text((SEED / "original_agent_config.yaml").read_text() + '\nsite_id: "site-1"\n')
    cfg, warnings = load_config(f)
    [cam] = cfg.camera_list()
    assert (cam.camera_id, cam.rtsp_url, cam.frigate_camera) == (
        "gate-camera-1", "rtsp://192.168.1.100:554/stream", "gate-camera-1")
    assert cam.name == "Main Gate Camera"
    assert cfg.recording_duration == 30 and cfg.stream_port == 8000 and cfg.min_confidence == 0.75
    assert cfg.hls_segment_seconds == 2 and cfg.stream_bind == "auto"
    assert not [w for w in warnings if "unknown key" in w], warnings
    assert any("shorter than 32 bytes" in w for w in warnings)  # the seed's placeholder secret


def test_top_level_frigate_camera_maps_single_camera():
    cfg, _ = parse_config(base(frigate_camera="gate_cam"))
    assert cfg.camera_list()[0].frigate_camera == "gate_cam"


def test_cameras_list():
    d = base(cameras=[{"camera_id": "a", "rtsp_url": "rtsp://x/1"}, {"camera_id": "b", "rtsp_url": "rtsp://x/2",
                                                                    "frigate_camera": "lpr"}])
    del d["camera_id"], d["camera_rtsp_url"]
    cfg, _ = parse_config(d)
    assert [(c.camera_id, c.frigate_camera) for c in cfg.camera_list()] == [("a", "a"), ("b", "lpr")]


@pytest.mark.parametrize("over,path", [
    ({"stream_port": "eight thousand"}, "$.stream_port"),
    ({"stream_port": 70000}, "$.stream_port"),
    ({"pod_id": "Main Gate!"}, "$.pod_id"),
    ({"portal_url": "ftp://x"}, "$.portal_url"),
    ({"min_confidence": 7}, "$.min_confidence"),
    ({"hls_segment_seconds": 0}, "$.hls_segment_seconds"),
    ({"camera_rtsp_url": "http://not-rtsp"}, "$.cameras[0].rtsp_url"),
    ({"stream_bind": "0.0.0.0"}, "$.stream_bind"),
    ({"cameras": [{"camera_id": "x", "rtsp_url": 5}]}, "$.cameras[0].rtsp_url"),
])
def test_errors_name_the_key_path(over, path):
    with pytest.raises(ConfigError) as ei:
        parse_config(base(**over))
    assert str(ei.value).startswith(path), str(ei.value)


def test_missing_required_key():
    d = base()
    del d["pod_api_key"]
    with pytest.raises(ConfigError, match=r"pod_api_key"):
        parse_config(d)


def test_secret_required_for_streaming(monkeypatch):
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    d = base()
    del d["stream_secret"]
    with pytest.raises(ConfigError, match=r"^\$\.gateway_public_keys: required .*legacy: stream_secret"):
        parse_config(d)
    monkeypatch.setenv("POD_STREAM_SECRET", "e" * 40)
    cfg, _ = parse_config(d)
    assert cfg.secrets() == {"default": "e" * 40}


def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"^\$\.stream_bnd: unknown key; did you mean 'stream_bind'\?"):
        parse_config(base(stream_bnd="127.0.0.2"))
    with pytest.raises(ConfigError, match=r"^\$\.colour: unknown key$"):
        parse_config(base(colour="blue"))


def test_a_misspelt_required_key_is_named_not_reported_missing(tmp_path):
    """A newcomer's `site_idd:` used to give only `$.site_id: required`."""
    d = base()
    d["site_idd"] = d.pop("site_id")
    with pytest.raises(ConfigError, match=r"^\$\.site_idd: unknown key; did you mean 'site_id'\?"):
        parse_config(d)
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump(d))
    r = _run_cli(["check", "--config", str(f)], tmp_path)
    assert r.returncode == 2 and "$.site_idd: unknown key; did you mean 'site_id'?" in r.stdout + r.stderr, r


@pytest.mark.parametrize("camera,path,hint", [
    ({"camera_id": "c1", "rtsp_urll": "rtsp://127.0.0.1/x"}, "$.cameras[0].rtsp_urll", "did you mean 'rtsp_url'?"),
    ({"camera_idd": "c1", "rtsp_url": "rtsp://127.0.0.1/x"}, "$.cameras[0].camera_idd", "did you mean 'camera_id'?"),
])
def test_an_unknown_key_in_a_camera_is_named_with_its_fix(camera, path, hint):
    with pytest.raises(ConfigError) as ei:
        parse_config(base(cameras=[camera]))
    assert str(ei.value) == f"{path}: unknown key; {hint}"


@pytest.mark.parametrize("ip", ["100.64.0.1", "100.127.255.254", "127.0.0.2", "fd7a:115c:a1e0::1"])
def test_bind_accepts_tailnet_and_loopback(ip):
    assert check_bind_address(ip) == ip


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", "192.168.1.5", "10.0.0.2", "172.16.3.4", "8.8.8.8", "100.128.0.1",
                                "not-an-ip"])
def test_bind_refuses_lan_public_and_wildcard(ip):
    with pytest.raises(BindRefused):
        check_bind_address(ip)


def _run_cli(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("POD_STREAM_SECRET", None)
    return subprocess.run([sys.executable, "-m", "pod", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)


def test_cli_bad_config_exits_2_with_path(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text(yaml.safe_dump(base(stream_bind="192.168.1.20")))
    r = _run_cli(["run", "--config", str(bad)], tmp_path)
    assert r.returncode == 2
    assert "$.stream_bind" in r.stderr and "tailnet" in r.stderr


def test_cli_seed_form_and_yaml_syntax_error(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("portal_url: [unclosed\n")
    r = _run_cli([str(bad)], tmp_path)  # python -m pod config.yaml
    assert r.returncode == 2 and "YAML error at line" in r.stderr
    r = _run_cli([str(tmp_path / "missing.yaml")], tmp_path)
    assert r.returncode == 2 and "cannot read config" in r.stderr


@pytest.mark.parametrize("over,path", [
    ({"rtsp_timeout_seconds": float("nan")}, "$.rtsp_timeout_seconds"),
    ({"rtsp_timeout_seconds": -1}, "$.rtsp_timeout_seconds"),
    ({"heartbeat_interval": float("inf")}, "$.heartbeat_interval"),
    ({"stream_secrets": {"k": ""}}, "$.stream_secrets.k"),
])
def test_adversarial_values_are_refused_with_the_key(over, path):
    with pytest.raises(ConfigError) as ei:
        parse_config(base(**over))
    assert str(ei.value).startswith(path), str(ei.value)


def test_duplicate_keys_refused(tmp_path):
    f = tmp_path / "config.yaml"
    f.write_text((SEED / "original_agent_config.yaml").read_text() + "\nstream_port: 9000\n")
    with pytest.raises(ConfigError, match="duplicate key 'stream_port'"):
        load_config(f)


def test_cli_unusable_hls_dir_and_busy_port_exit_with_a_message(tmp_path):
    import socket

    with socket.socket() as probe:  # a free port: the guide's 8000 may be taken on a busy machine
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    cfg = base(stream_bind="127.0.0.2", hls_dir="/etc/passwd/hls", state_dir=str(tmp_path / "state"),
               enable_mqtt=False, stream_port=free)
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump(cfg))
    r = _run_cli(["run", "--config", str(f)], tmp_path)
    assert r.returncode == 1 and "$.hls_dir" in r.stderr and "Traceback" not in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cfg.update(hls_dir=str(tmp_path / "hls"), stream_port=port)
        f.write_text(yaml.safe_dump(cfg))
        r = _run_cli(["run", "--config", str(f)], tmp_path)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_mqtt_client_id_and_prefix():
    """B16 (shared/cases/frigate): a second client with Frigate's id knocks Frigate off the broker."""
    cfg, _ = parse_config(base())
    assert cfg.mqtt_client_id == "platebridge-main-gate-pod" and cfg.mqtt_topic_prefix == "frigate"
    cfg, _ = parse_config(base(mqtt_topic="site7/frigate/events"))
    assert cfg.mqtt_topic_prefix == "site7/frigate"
    with pytest.raises(ConfigError, match=r"^\$\.mqtt_client_id"):
        parse_config(base(mqtt_client_id="frigate"))
    with pytest.raises(ConfigError, match=r"^\$\.mqtt_topic_prefix"):
        parse_config(base(mqtt_topic_prefix="frigate/#"))
    assert parse_config(base())[0].whitelist_cache.endswith("whitelist.json")


def test_hls_buffer_holds_a_whole_clip_by_default_and_refuses_too_little():
    """Found by an adversarial review: a buffer shorter than pre_roll + recording_duration cuts clips short."""
    cfg, _ = parse_config(base(hls_segment_seconds=1, pre_roll=5, recording_duration=60, stream_secret="s" * 40))
    assert cfg.hls_keep_extra_segments >= 65 + 4
    with pytest.raises(ConfigError, match=r"^\$\.hls_keep_extra_segments: must be >= 39"):
        parse_config(base(hls_segment_seconds=1, hls_keep_extra_segments=10))


# ---- keys by role: the pod holds the gateway's public key, nothing that can mint -----------------
def test_seed_config_is_legacy_and_says_what_that_costs(monkeypatch):
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    cfg, _ = load_config(SEED / "guide_config.yaml")  # the guide's own config: one shared stream_secret
    warning = cfg.legacy_warning()
    assert warning and "stolen pod can mint" in warning and "gateway_public_keys" in warning
    [ring] = cfg.pod_token_keys()
    assert ring.algorithm == "HS256"


def test_gateway_public_keys_as_pem_or_path(tmp_path, monkeypatch):
    from protocol.tokens import SigningKey

    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    old, new = SigningKey.generate("2025-01"), SigningKey.generate("2025-06")
    path = tmp_path / "gw-2025-06.pub"
    path.write_text(new.public_pem())
    d = base(gateway_public_keys={"2025-01": old.public_pem(), "2025-06": str(path)})
    del d["stream_secret"]
    cfg, _ = parse_config(d)
    assert cfg.legacy_warning() is None
    [ring] = cfg.pod_token_keys()
    assert ring.algorithm == "EdDSA" and sorted(ring.kids) == ["2025-01", "2025-06"]


@pytest.mark.parametrize("value,needle", [
    ("/nonexistent/gw.pub", "cannot read /nonexistent/gw.pub"),
    ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
])
def test_bad_gateway_public_key_names_the_kid(value, needle, monkeypatch):
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    d = base(gateway_public_keys={"k1": value})
    del d["stream_secret"]
    with pytest.raises(ConfigError) as ei:
        parse_config(d)
    assert str(ei.value).startswith("$.gateway_public_keys.k1:") and needle in str(ei.value), str(ei.value)


def test_a_private_key_is_not_a_public_key(tmp_path, monkeypatch):
    """Someone pasting the gateway's private key into the pod config gets an error, not a working pod
    that now holds a key that can mint."""
    from protocol.tokens import SigningKey

    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    d = base(gateway_public_keys={"k1": SigningKey.generate("k1").private_pem().decode()})
    del d["stream_secret"]
    with pytest.raises(ConfigError, match=r"^\$\.gateway_public_keys\.k1: not a PEM public key"):
        parse_config(d)


def test_max_clock_skew_bounds():
    assert parse_config(base())[0].max_clock_skew == 30
    with pytest.raises(ConfigError, match=r"^\$\.max_clock_skew"):
        parse_config(base(max_clock_skew=3600))


@pytest.mark.parametrize("content,said,fix", [
    (None, "cannot read config: No such file or directory", "check the path {f}"),
    ("site_id: [\n", "YAML error at line 2, column 1: ", "edit {f} at the line and column above"),
    ("site_idd: x\n", "$.site_idd: unknown key", "edit {f} (key path above"),
])
def test_check_gives_the_fix_that_fits_the_error(tmp_path, content, said, fix):
    """A missing file or a YAML syntax error used to get "key path above" with no key path."""
    f = tmp_path / "config.yaml"
    if content is not None:
        f.write_text(content)
    r = _run_cli(["check", "--config", str(f)], tmp_path)
    assert r.returncode == 2, r
    assert said in r.stdout and f"— fix: {fix.format(f=f)}" in r.stdout, r.stdout


def test_the_legacy_warning_names_the_environment_when_the_secret_comes_from_there(monkeypatch):
    """A newcomer with POD_STREAM_SECRET set was told "stream_secret is still set" (the file's key)."""
    monkeypatch.setenv("POD_STREAM_SECRET", "e" * 40)
    cfg, _ = parse_config(base(enable_streaming=True, stream_secret=None))
    assert "verifies gateway tokens with the shared POD_STREAM_SECRET (environment)" in cfg.legacy_warning()
    monkeypatch.delenv("POD_STREAM_SECRET")
    cfg, _ = parse_config(base(enable_streaming=True, stream_secret="f" * 40))
    assert "verifies gateway tokens with the shared stream_secret," in cfg.legacy_warning()


def test_an_invalid_tz_without_a_timezone_key_is_a_warning_naming_both(monkeypatch):
    """``TZ=Mars/Olympus`` was silently ignored (the zone fell back to /etc/localtime), while the
    same value in ``timezone:`` is an error: now a warning says which zone is used instead."""
    monkeypatch.setenv("TZ", "Mars/Olympus")
    _, warnings = parse_config(base())
    [w] = [w for w in warnings if w.startswith("$.timezone")]
    assert "TZ='Mars/Olympus' (environment) is not an IANA time zone name" in w and "set timezone" in w
    _, warnings = parse_config(base(timezone="Europe/Berlin"))  # the config's zone wins: nothing to say
    assert not [w for w in warnings if w.startswith("$.timezone")]
    for good in ("America/New_York", ":/usr/share/zoneinfo/America/New_York"):  # glibc also takes a path
        monkeypatch.setenv("TZ", good)
        assert not [w for w in parse_config(base())[1] if w.startswith("$.timezone")]
        assert str(parse_config(base())[0].site_tz()) == "America/New_York"
    monkeypatch.setenv("TZ", "/usr/share/zoneinfo/../../../etc/passwd")  # a path outside the zoneinfo tree
    assert [w for w in parse_config(base())[1] if w.startswith("$.timezone")]
