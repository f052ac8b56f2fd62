"""deploy/pod/install-pod.sh: --dry-run changes nothing and prints every action with
secrets redacted; --no-system writes the config (0600), the gateway's public key, dirs and
unit under --root; re-runs keep the config unless --force-config; bad values exit 2; secrets
come only from a 0600 secrets file (or the prompt), never from flags or the environment.

A real run needs root, apt, systemd and tailscale, so it is not run here. A lone copy of the
script (the guide's curl flow) installs the agent from a wheel served on loopback.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pod.config import load_config
from protocol.tokens import SigningKey, mint_pod_token, verify_pod_token

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "deploy" / "pod" / "install-pod.sh"
UNIT = REPO / "deploy" / "pod" / "platebridge-pod.service"

API_KEY = "pbk_SECRET_api_key_0123456789"
STREAM_SECRET = "sEcReT-stream-" + "x" * 40
TS_KEY = "-".join(["tskey", "auth", "kTESTONLY", "0123456789abcdef"])  # generated test value, not a real key
RTSP_PASSWORD = "CamPassw0rdSECRET"
RTSP_URL = f"rtsp://admin:{RTSP_PASSWORD}@192.168.1.100:554/stream1"
SECRETS = (API_KEY, STREAM_SECRET, TS_KEY, RTSP_PASSWORD)

VALUES = {
    "--portal-url": "https://portal.example.com",
    "--pod-id": "main-gate-pod",
    "--site-id": "site-uuid-1",
    "--company-id": "company-uuid-1",
    "--camera-id": "gate-camera-1",
    "--frigate-camera": "gate_cam",
    "--timezone": "America/New_York",
}
SECRET_VALUES = {"PLATEBRIDGE_POD_API_KEY": API_KEY, "PLATEBRIDGE_CAMERA_RTSP_URL": RTSP_URL, "TS_AUTHKEY": TS_KEY}
_KEYS = Path(tempfile.mkdtemp(prefix="pb-installer-"))
atexit.register(shutil.rmtree, _KEYS, True)
GATEWAY_KEY = SigningKey.generate("gw-2025")
PUBLIC_KEY = _KEYS / "gateway.pub"
PUBLIC_KEY.write_text(GATEWAY_KEY.public_pem())


def secrets_file(**over: str | None) -> str:
    """A mode-0600 secrets file with the test secrets (``over``: KEY=value changes, None drops a key)."""
    values = {**SECRET_VALUES, **over}
    path = _KEYS / f"secrets-{len(list(_KEYS.iterdir()))}"
    path.write_text("# test secrets\n" + "".join(f"{k}={v}\n" for k, v in values.items() if v is not None))
    path.chmod(0o600)
    return str(path)


def _flags(secrets: dict[str, str | None] | None = None, **override: str | None) -> list[str]:
    """Flags for a complete install: the values above, the gateway's public key and a secrets file."""
    vals: dict[str, str | None] = {**VALUES, "--gateway-public-key": str(PUBLIC_KEY), "--gateway-key-id": "gw-2025",
                                   "--secrets-file": secrets_file(**(secrets or {}))}
    for k, v in override.items():
        vals["--" + k.replace("_", "-")] = v
    out: list[str] = []
    for k, v in vals.items():
        if v is not None:
            out += [k, v]
    return out


def load_installed(root: Path):
    """Load the config the installer wrote under ``root``; it names the gateway's public key by its
    real path (/etc/platebridge/…), which is read from under ``root`` here."""
    config = root / "etc/platebridge/config.yaml"
    copy = root / "config-under-root.yaml"
    copy.write_text(config.read_text().replace('"/etc/platebridge/', f'"{root}/etc/platebridge/'))
    try:
        return load_config(copy)
    finally:
        copy.unlink()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PLATEBRIDGE_") and k not in ("POD_STREAM_SECRET", "TS_AUTHKEY")}
    env["LC_ALL"] = "C.UTF-8"
    return env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALLER), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=env or _env())


def assert_no_secrets(proc: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS:
        assert secret not in proc.stdout, secret
        assert secret not in proc.stderr, secret


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ---------------------------------------------------------------- basics


def test_syntax_and_strict_mode():
    text = INSTALLER.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(INSTALLER, os.X_OK), "install-pod.sh must be executable"
    subprocess.run(["bash", "-n", str(INSTALLER)], check=True)



def test_shellcheck_clean():
    proc = subprocess.run(["shellcheck", str(INSTALLER), str(REPO / "deploy" / "gateway" / "entrypoint.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_help():
    proc = run("--help")
    assert proc.returncode == 0
    for flag in ("--dry-run", "--root", "--no-system", "--skip-tailscale-install", "--skip-tailscale-up",
                 "--force-config", "--pod-id", "--secrets-file", "--gateway-public-key", "--gateway-key-id",
                 "PLATEBRIDGE_POD_API_KEY", "TS_AUTHKEY", "POD_STREAM_SECRET"):
        assert flag in proc.stdout
    assert "--pod-api-key" not in proc.stdout and "--stream-secret" not in proc.stdout


def test_unknown_option_is_usage_error():
    proc = run("--frobnicate")
    assert proc.returncode == 2
    assert "unknown option" in proc.stderr


# ---------------------------------------------------------------- --dry-run


def test_dry_run_prints_every_action_and_changes_nothing(tmp_path):
    root = tmp_path / "root"
    proc = run("--dry-run", "--root", str(root), "--skip-tailscale-install", *_flags())
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert not root.exists(), "dry run created the root"
    assert list(tmp_path.iterdir()) == []

    # apt (either planned or found installed)
    assert "apt" in out and "ffmpeg" in out and "python3-venv" in out and "python3.11" in out
    # the service user
    assert "useradd --system" in out or "user: platebridge exists" in out
    # venv + pip install of the project
    assert f"python3.11 -m venv {root}/opt/platebridge/venv" in out or "venv: " in out
    assert f"{root}/opt/platebridge/venv/bin/python -m pip install" in out
    # dirs and modes
    assert f"would create directory {root}/var/lib/platebridge/hls (mode 0750" in out
    assert f"would create directory {root}/var/lib/platebridge/recordings (mode 0700" in out
    assert f"would write {root}/etc/platebridge/config.yaml (mode 0600, owner platebridge:platebridge)" in out
    # tailscale
    assert "tailscale: install skipped (--skip-tailscale-install)" in out
    assert ("tailscale up --auth-key=<redacted> --advertise-tags=tag:pod --hostname=main-gate-pod") in out
    # unit
    assert f"would write {root}/etc/systemd/system/platebridge-pod.service (mode 0644)" in out
    assert "would run: systemctl enable platebridge-pod.service" in out
    assert "would run: systemctl restart platebridge-pod.service" in out
    assert_no_secrets(proc)


def test_dry_run_plans_tailscale_install_from_its_own_repo(tmp_path):
    proc = run("--dry-run", "--root", str(tmp_path / "r"), *_flags())
    assert proc.returncode == 0, proc.stderr
    if shutil.which("tailscale"):
        assert "tailscale: already installed" in proc.stdout
    else:
        assert "https://pkgs.tailscale.com/stable/" in proc.stdout
        assert "apt-get install -y -qq tailscale" in proc.stdout
        assert "systemctl enable --now tailscaled.service" in proc.stdout
    assert not (tmp_path / "r").exists()
    assert_no_secrets(proc)


def test_dry_run_skip_tailscale_up(tmp_path):
    flags = _flags({"TS_AUTHKEY": None})
    proc = run("--dry-run", "--root", str(tmp_path), "--skip-tailscale-install", "--skip-tailscale-up", *flags)
    assert proc.returncode == 0, proc.stderr
    assert "tailscale up --auth-key" not in proc.stdout
    assert "up skipped (--skip-tailscale-up)" in proc.stdout


def test_secrets_from_the_file_are_not_printed(tmp_path):
    proc = run("--dry-run", "--root", str(tmp_path / "r"), "--skip-tailscale-install", *_flags())
    assert proc.returncode == 0, proc.stderr
    assert "--auth-key=<redacted>" in proc.stdout
    assert_no_secrets(proc)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("pod_id", ["Main-Gate", "gate_1", "-gate", "gate-", "gate.1", "a" * 64, "gäte", "gate 1"])
@pytest.mark.parametrize("mode", ["--dry-run", "--no-system"])
def test_invalid_pod_id_exits_2(tmp_path, pod_id, mode):
    root = tmp_path / "root"
    proc = run(mode, "--root", str(root), "--skip-tailscale-install", *_flags(pod_id=pod_id))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "--pod-id" in proc.stderr and "DNS label" in proc.stderr
    assert not root.exists()
    assert_no_secrets(proc)


def test_missing_values_without_a_terminal_exit_2(tmp_path):
    proc = run("--dry-run", "--root", str(tmp_path), "--skip-tailscale-install",
               *_flags({"PLATEBRIDGE_POD_API_KEY": None, "PLATEBRIDGE_CAMERA_RTSP_URL": None}))
    assert proc.returncode == 2
    assert "PLATEBRIDGE_POD_API_KEY" in proc.stderr and "--camera-rtsp-url" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    proc = run("--dry-run", "--root", str(tmp_path), "--skip-tailscale-install", *_flags(gateway_public_key=None))
    assert proc.returncode == 2 and "--gateway-public-key (legacy: POD_STREAM_SECRET" in proc.stderr


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"portal_url": "portal.example.com"}, "--portal-url"),
        ({"camera_rtsp_url": "http://192.168.1.100/stream", "secrets": {"PLATEBRIDGE_CAMERA_RTSP_URL": None}},
         "camera RTSP URL"),
        ({"camera_id": "../etc"}, "--camera-id"),
        ({"secrets": {"POD_STREAM_SECRET": "short"}}, "POD_STREAM_SECRET"),
        ({"site_id": "a\nb"}, "--site-id"),
        ({"secrets": {"PLATEBRIDGE_POD_API_KEY": "pbk\\nportal_url: http://evil\x01"}}, "PLATEBRIDGE_POD_API_KEY"),
        ({"frigate_camera": "gate cam"}, "--frigate-camera"),
        ({"timezone": "Mars/Olympus"}, "--timezone"),
        ({"timezone": "../../etc/passwd"}, "--timezone"),
        ({"timezone": "leapseconds"}, "--timezone"),  # a file in /usr/share/zoneinfo, not a zone
        ({"timezone": "localtime"}, "--timezone"),  # the host's zone: not pinning the site's
        ({"gateway_key_id": "bad kid"}, "--gateway-key-id"),
        ({"gateway_public_key": "/nonexistent.pub"}, "--gateway-public-key"),
    ],
)
def test_invalid_values_exit_2(tmp_path, override, needle):
    root = tmp_path / "root"
    proc = run("--no-system", "--root", str(root), *_flags(**override))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert needle in proc.stderr
    assert not root.exists()
    assert_no_secrets(proc)


def test_no_system_needs_root_dir():
    proc = run("--no-system", *_flags())
    assert proc.returncode == 2
    assert "--root" in proc.stderr


# ---------------------------------------------------------------- --no-system


def test_no_system_writes_config_dirs_and_unit(tmp_path):
    proc = run("--no-system", "--root", str(tmp_path), *_flags())
    assert proc.returncode == 0, proc.stderr
    assert_no_secrets(proc)
    for skipped in ("apt: skipped", "user: skipped", "venv: skipped", "systemctl: skipped"):
        assert skipped in proc.stdout

    config = tmp_path / "etc/platebridge/config.yaml"
    assert _mode(config) == 0o600
    assert _mode(tmp_path / "etc/platebridge") == 0o750
    assert _mode(tmp_path / "var/lib/platebridge") == 0o750
    assert _mode(tmp_path / "var/lib/platebridge/hls") == 0o750
    assert _mode(tmp_path / "var/lib/platebridge/recordings") == 0o700
    unit = tmp_path / "etc/systemd/system/platebridge-pod.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    assert _mode(unit) == 0o644
    assert not list((tmp_path / "etc/platebridge").glob(".*")), "temp file left behind"

    # the gateway's public key, readable (it is not a secret), and nothing that can mint
    pub = tmp_path / "etc/platebridge/gateway-gw-2025.pub"
    assert pub.read_text() == PUBLIC_KEY.read_text() and _mode(pub) == 0o644
    assert 'gateway_public_keys:\n  "gw-2025": "/etc/platebridge/gateway-gw-2025.pub"' in config.read_text()
    cfg, warnings = load_installed(tmp_path)
    assert warnings == []
    assert cfg.portal_url == VALUES["--portal-url"]
    assert cfg.pod_api_key == API_KEY
    assert cfg.pod_id == "main-gate-pod"
    assert cfg.site_id == "site-uuid-1"
    assert cfg.company_id == "company-uuid-1"
    assert cfg.stream_secret is None and cfg.legacy_warning() is None
    token = mint_pod_token(GATEWAY_KEY, camera_id="gate-camera-1", pod_id="main-gate-pod")
    assert verify_pod_token(token, cfg.pod_token_keys(), pod_id="main-gate-pod").camera_id == "gate-camera-1"
    assert cfg.stream_bind == "auto"
    assert cfg.enable_streaming is True
    [cam] = cfg.camera_list()
    assert (cam.camera_id, cam.rtsp_url, cam.frigate_camera) == ("gate-camera-1", RTSP_URL, "gate_cam")
    assert cfg.timezone == "America/New_York" and str(cfg.site_tz()) == "America/New_York"
    # paths in the config are the real ones (not under --root) and inside the unit's ReadWritePaths
    assert (cfg.state_dir, cfg.hls_dir, cfg.recordings_dir) == (
        "/var/lib/platebridge", "/var/lib/platebridge/hls", "/var/lib/platebridge/recordings")
    assert "ReadWritePaths=/var/lib/platebridge" in unit.read_text()


def test_frigate_camera_is_optional(tmp_path):
    proc = run("--no-system", "--root", str(tmp_path), *_flags(frigate_camera=None))
    assert proc.returncode == 0, proc.stderr
    cfg, _ = load_installed(tmp_path)
    assert cfg.camera_list()[0].frigate_camera == "gate-camera-1"


def test_yaml_special_characters_round_trip(tmp_path):
    key = 'pbk_"quoted" \\back\\slash: #not-a-comment \'single\' {x: [1]} & *a !tag %'
    rtsp = 'rtsp://us%40er:p@ss"w\\rd#1@192.168.1.100:554/Streaming/Channels/101?transport=tcp'
    proc = run("--no-system", "--root", str(tmp_path), *_flags({"PLATEBRIDGE_POD_API_KEY": key,
                                                                "PLATEBRIDGE_CAMERA_RTSP_URL": rtsp},
                                                               site_id="yes", company_id="0123"))
    assert proc.returncode == 0, proc.stderr
    assert key not in proc.stdout + proc.stderr and rtsp not in proc.stdout + proc.stderr
    cfg, _ = load_installed(tmp_path)
    assert cfg.pod_api_key == key
    assert cfg.camera_list()[0].rtsp_url == rtsp
    assert cfg.site_id == "yes" and cfg.company_id == "0123"  # strings, not YAML booleans/numbers


def test_rerun_is_idempotent_and_keeps_config(tmp_path):
    assert run("--no-system", "--root", str(tmp_path), *_flags()).returncode == 0
    config = tmp_path / "etc/platebridge/config.yaml"
    unit = tmp_path / "etc/systemd/system/platebridge-pod.service"
    before = config.read_bytes(), config.stat().st_mtime_ns, unit.stat().st_mtime_ns

    again = run("--no-system", "--root", str(tmp_path), *_flags())
    assert again.returncode == 0, again.stderr
    assert "kept unchanged" in again.stdout and "up to date" in again.stdout
    assert (config.read_bytes(), config.stat().st_mtime_ns, unit.stat().st_mtime_ns) == before

    # Different values without --force-config: still untouched, and no values needed at all.
    other = run("--no-system", "--root", str(tmp_path), *_flags({"POD_STREAM_SECRET": "y" * 40}, site_id="other-site"))
    assert other.returncode == 0, other.stderr
    assert config.read_bytes() == before[0]
    bare = run("--no-system", "--root", str(tmp_path))
    assert bare.returncode == 0, bare.stderr
    assert config.read_bytes() == before[0]
    assert _mode(config) == 0o600
    assert sorted(p.name for p in config.parent.iterdir()) == ["config.yaml", "gateway-gw-2025.pub"]


def test_force_config_rewrites_and_keeps_a_private_backup(tmp_path):
    assert run("--no-system", "--root", str(tmp_path), *_flags()).returncode == 0
    config = tmp_path / "etc/platebridge/config.yaml"
    old = config.read_bytes()
    proc = run("--no-system", "--root", str(tmp_path), "--force-config", *_flags(site_id="other-site"))
    assert proc.returncode == 0, proc.stderr
    cfg, _ = load_installed(tmp_path)
    assert cfg.site_id == "other-site"
    assert _mode(config) == 0o600
    [backup] = config.parent.glob("config.yaml.bak-*")
    assert backup.read_bytes() == old
    assert _mode(backup) == 0o600
    assert_no_secrets(proc)


def test_changed_unit_is_rewritten(tmp_path):
    assert run("--no-system", "--root", str(tmp_path), *_flags()).returncode == 0
    unit = tmp_path / "etc/systemd/system/platebridge-pod.service"
    unit.write_text("stale\n")
    proc = run("--no-system", "--root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert unit.read_bytes() == UNIT.read_bytes()


def test_dry_run_on_an_installed_root_reports_the_kept_config(tmp_path):
    assert run("--no-system", "--root", str(tmp_path), *_flags()).returncode == 0
    config = tmp_path / "etc/platebridge/config.yaml"
    before = config.read_bytes(), config.stat().st_mtime_ns
    proc = run("--dry-run", "--root", str(tmp_path), "--skip-tailscale-install", "--secrets-file",
               secrets_file(PLATEBRIDGE_POD_API_KEY=None, PLATEBRIDGE_CAMERA_RTSP_URL=None))
    assert proc.returncode == 0, proc.stderr
    assert "kept unchanged" in proc.stdout
    # pod_id comes from the existing config for the tailnet host name
    assert "--hostname=main-gate-pod" in proc.stdout
    assert (config.read_bytes(), config.stat().st_mtime_ns) == before
    assert_no_secrets(proc)


# ---------------------------------------------------------------- a lone copy (the guide's flow)
# The guide: `curl -o install-pod.sh https://your-portal.vercel.app/install-pod.sh; sudo ./install-pod.sh`.
# The script then sits alone in a directory, with no checkout around it: it installs the agent
# from a wheel URL or a package index (--source), here served by python -m http.server on a
# loopback address, from a wheel built from this checkout in the test.

def test_the_embedded_unit_is_the_unit_file():
    """A lone install-pod.sh carries its own copy of platebridge-pod.service: the two never drift."""
    text = INSTALLER.read_text()
    embedded = text.split("cat <<'PLATEBRIDGE_UNIT'\n", 1)[1].split("\nPLATEBRIDGE_UNIT\n", 1)[0] + "\n"
    assert embedded == UNIT.read_text()


def lone_copy(tmp_path: Path) -> Path:
    d = tmp_path / "home-pi"
    d.mkdir()
    script = d / "install-pod.sh"
    shutil.copy2(INSTALLER, script)
    assert sorted(p.name for p in d.iterdir()) == ["install-pod.sh"]
    return script


def run_lone(script: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600):
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env or _env(), cwd=script.parent)


def test_lone_copy_without_source_says_what_to_give_and_changes_nothing(tmp_path):
    script = lone_copy(tmp_path)
    root = tmp_path / "root"
    proc = run_lone(script, "--dry-run", "--root", str(root), "--skip-tailscale-install", *_flags())
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "not in a PlateBridge checkout" in proc.stderr and "--source" in proc.stderr
    assert not root.exists()
    # --no-system without --source writes config, dirs and the (embedded) unit, and no venv
    proc = run_lone(script, "--no-system", "--root", str(root), *_flags())
    assert proc.returncode == 0, proc.stderr
    assert "venv: skipped" in proc.stdout and not (root / "opt").exists()
    unit = root / "etc/systemd/system/platebridge-pod.service"
    assert unit.read_bytes() == UNIT.read_bytes() and "the copy inside install-pod.sh" in proc.stdout
    assert_no_secrets(proc)


@pytest.mark.parametrize(("source", "kind"), [
    ("https://portal.example/dl/platebridge-0.1.0-py3-none-any.whl", "wheel URL"),
    ("https://pkgs.example/simple/", "package index"),
    ("https://deploy:SeCrEtToKeN@pkgs.example/simple/", "package index"),
])
def test_lone_copy_dry_run_plans_the_pip_install_of_the_source(tmp_path, source, kind):
    script = lone_copy(tmp_path)
    proc = run_lone(script, "--dry-run", "--root", str(tmp_path / "r"), "--skip-tailscale-install", "--source",
                    source, *_flags())
    assert proc.returncode == 0, proc.stderr
    assert f"installing the agent from the {kind}" in proc.stdout
    pip = [ln for ln in proc.stdout.splitlines() if "-m pip install" in ln]
    assert len(pip) == 1
    if kind == "package index":
        assert "--index-url" in pip[0] and pip[0].endswith(" platebridge")
    assert "SeCrEtToKeN" not in proc.stdout + proc.stderr
    assert_no_secrets(proc)


@pytest.mark.parametrize("bad", ["ftp://x/y.whl", "/nonexistent/platebridge.whl", "https://a b/x.whl"])
def test_bad_source_exits_2_before_any_change(tmp_path, bad):
    script = lone_copy(tmp_path)
    root = tmp_path / "root"
    proc = run_lone(script, "--no-system", "--root", str(root), "--source", bad, *_flags())
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "--source" in proc.stderr and not root.exists()


@pytest.fixture(scope="module")
def served_wheel(tmp_path_factory):
    """A wheel of this checkout, built here (tests/e2e/test_wheel_install.py's way), served by
    ``python -m http.server`` on a loopback address other than 127.0.0.1, both as a plain file and
    in a PEP 503 simple index. Yields ``(wheel URL, index URL)``."""
    from tests.e2e.test_wheel_install import build_wheel, clean_source

    out = tmp_path_factory.mktemp("dist")
    proc = build_wheel(clean_source(tmp_path_factory.mktemp("src")), out)
    assert proc.returncode == 0, proc.stderr
    [whl] = out.glob("platebridge-*.whl")
    www = tmp_path_factory.mktemp("www")
    (www / "dl").mkdir()
    shutil.copy2(whl, www / "dl" / whl.name)
    (www / "simple" / "platebridge").mkdir(parents=True)
    shutil.copy2(whl, www / "simple" / "platebridge" / whl.name)
    host = "127.0.0.31"
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", host, "--directory", str(www)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "http.server did not start"
                time.sleep(0.05)
        yield f"http://{host}:{port}/dl/{whl.name}", f"http://{host}:{port}/simple/"
    finally:
        server.terminate()
        server.wait(10)


def seeded_venv(root: Path, deps: Path) -> Path:
    """The venv install-pod.sh would create, made here with the project's dependencies already
    visible (a .pth to ``deps``: this checkout's .venv packages without platebridge itself), so
    the test needs no PyPI: only the agent comes from the served wheel. The installer then finds
    the venv ("venv: … exists") and pip installs into it."""
    venv = root / "opt/platebridge/venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    [site] = (venv / "lib").glob("python3*/site-packages")
    (site / "zz_platebridge_deps.pth").write_text(f"{deps}\n")
    return venv


@pytest.fixture(scope="module")
def deps_dir(tmp_path_factory) -> Path:
    """Symlinks to every package of this checkout's .venv except platebridge (its editable
    install would make pip think the agent is already there)."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    out = tmp_path_factory.mktemp("deps")
    for entry in site.iterdir():
        if entry.name.lower().startswith(("platebridge", "__editable__")) or entry.suffix == ".pth":
            continue
        (out / entry.name).symlink_to(entry)
    return out


@pytest.mark.parametrize("how", ["wheel_url", "index_url", "default_source"])
def test_lone_copy_installs_the_agent_from_a_served_wheel(tmp_path, served_wheel, deps_dir, how):
    wheel_url, index_url = served_wheel
    script = lone_copy(tmp_path)
    root = tmp_path / "root"
    venv = seeded_venv(root, deps_dir)
    env = _env()
    args = ["--no-system", "--root", str(root), *_flags()]
    if how == "wheel_url":
        args += ["--source", wheel_url]
        env["PIP_NO_INDEX"] = "1"  # nothing but the served wheel: no PyPI
    elif how == "index_url":
        args += ["--source", index_url]
    else:  # a portal serving the script baked its wheel URL in: the guide's bare `sudo ./install-pod.sh`
        script.write_text(script.read_text().replace('DEFAULT_SOURCE=""', f'DEFAULT_SOURCE="{wheel_url}"', 1))
        env["PIP_NO_INDEX"] = "1"
    proc = run_lone(script, *args, env=env)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert_no_secrets(proc)
    pod = venv / "bin" / "platebridge-pod"
    assert pod.is_file()
    # the installed agent is the wheel's (not this checkout's) and it runs: it validates the config
    # the installer wrote and reports the schema of it
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import pod; print(pod.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout.strip()
    assert where.startswith(str(venv)), where
    schema = subprocess.run([str(pod), "config-schema"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert schema.returncode == 0 and '"site_id"' in schema.stdout, schema.stderr
    # the config names files by their path on the pod (/etc/platebridge/gateway-<kid>.pub): read
    # it as the pod would, with those paths under --root
    cfg = tmp_path / "config-as-on-the-pod.yaml"
    cfg.write_text((root / "etc/platebridge/config.yaml").read_text().replace("/etc/platebridge/",
                                                                                f"{root}/etc/platebridge/"))
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import sys; from pod.config import load_config; c, _ = load_config(sys.argv[1]); "
                            "print(c.pod_id, c.site_id)", str(cfg)], capture_output=True, text=True, cwd=tmp_path)
    assert check.stdout.split() == ["main-gate-pod", "site-uuid-1"], check.stderr
    assert (root / "etc/systemd/system/platebridge-pod.service").read_bytes() == UNIT.read_bytes()


# ---------------------------------------------------------------- secrets: never on the command line


@pytest.mark.parametrize("flag", ["--pod-api-key", "--stream-secret", "--tailscale-auth-key", "--auth-key"])
def test_secret_flags_are_refused(tmp_path, flag):
    proc = run("--dry-run", "--root", str(tmp_path), flag, "s3cr3t-value-on-the-command-line", *_flags())
    assert proc.returncode == 2
    assert "never taken on the command line" in proc.stderr and "--secrets-file" in proc.stderr
    assert "s3cr3t-value-on-the-command-line" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("var", ["PLATEBRIDGE_POD_API_KEY", "POD_STREAM_SECRET", "TS_AUTHKEY",
                                 "PLATEBRIDGE_CAMERA_RTSP_URL"])
def test_secrets_in_the_environment_are_refused(tmp_path, var):
    """``sudo POD_STREAM_SECRET=… install-pod.sh`` puts the secret in sudo's argv: refused, loudly."""
    proc = run("--dry-run", "--root", str(tmp_path), *_flags(), env=_env() | {var: "from-the-environment"})
    assert proc.returncode == 2 and f"${var} is set" in proc.stderr and "--secrets-file" in proc.stderr
    assert "from-the-environment" not in proc.stdout + proc.stderr


def test_rtsp_url_with_credentials_is_refused_as_a_flag_but_fine_without(tmp_path):
    proc = run("--dry-run", "--root", str(tmp_path), *_flags(camera_rtsp_url=RTSP_URL))
    assert proc.returncode == 2 and "user:password is a secret" in proc.stderr and RTSP_PASSWORD not in proc.stderr
    plain = "rtsp://192.168.1.100:554/stream1"
    proc = run("--no-system", "--root", str(tmp_path), *_flags({"PLATEBRIDGE_CAMERA_RTSP_URL": None},
                                                               camera_rtsp_url=plain))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secrets_file_others_can_read_is_refused(tmp_path, mode):
    path = secrets_file()
    Path(path).chmod(mode)
    proc = run("--dry-run", "--root", str(tmp_path), *_flags(), "--secrets-file", path)
    assert proc.returncode == 2 and f"mode {mode:o} lets other users read it" in proc.stderr
    assert_no_secrets(proc)


def test_a_secrets_file_is_parsed_not_sourced(tmp_path):
    marker = tmp_path / "executed"
    path = _KEYS / "evil-secrets"
    path.write_text(f"PLATEBRIDGE_POD_API_KEY=$(touch {marker})\nTS_AUTHKEY={TS_KEY}\n"
                    f"PLATEBRIDGE_CAMERA_RTSP_URL='{RTSP_URL}'\n")
    path.chmod(0o600)
    proc = run("--no-system", "--root", str(tmp_path / "r"), *_flags(), "--secrets-file", str(path))
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    cfg = (tmp_path / "r/etc/platebridge/config.yaml").read_text()
    assert f'pod_api_key: "$(touch {marker})"' in cfg  # the literal text, quoted in YAML
    bad = _KEYS / "unknown-key"
    bad.write_text("PATH=/tmp/evil\n")
    bad.chmod(0o600)
    proc = run("--dry-run", "--root", str(tmp_path), *_flags(), "--secrets-file", str(bad))
    assert proc.returncode == 2 and "unknown key PATH" in proc.stderr


def test_the_gateways_private_key_is_refused_as_its_public_key(tmp_path):
    private = _KEYS / "oops-private.pem"
    private.write_bytes(GATEWAY_KEY.private_pem())
    private.chmod(0o600)
    proc = run("--dry-run", "--root", str(tmp_path), *_flags(gateway_public_key=str(private)))
    assert proc.returncode == 2 and "never give a pod the gateway's private key" in proc.stderr


def test_legacy_stream_secret_from_the_secrets_file_still_installs_with_a_warning(tmp_path):
    proc = run("--no-system", "--root", str(tmp_path),
               *_flags({"POD_STREAM_SECRET": STREAM_SECRET}, gateway_public_key=None, gateway_key_id=None))
    assert proc.returncode == 0, proc.stderr
    assert "legacy key layout, a stolen pod can mint tokens" in proc.stderr
    assert_no_secrets(proc)
    cfg, _ = load_installed(tmp_path)
    assert cfg.stream_secret == STREAM_SECRET and "stolen pod can mint" in (cfg.legacy_warning() or "")
