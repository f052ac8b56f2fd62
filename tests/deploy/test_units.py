"""systemd units, the gateway container recipe, its entrypoint and the TLS front.

Units are checked for real with Debian's ``systemd-analyze verify`` against a scratch
root (``--root``) that holds a copy of the system's unit directory and stand-in
executables at the units' ExecStart paths, so verify resolves every dependency and
binary without the units being edited. The Dockerfile is never built (no Docker engine
here); its settings are checked, and the entrypoint is run with stand-in binaries.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from gateway.config import parse_config as parse_gateway_config

REPO = Path(__file__).resolve().parents[2]
POD_UNIT = REPO / "deploy" / "pod" / "platebridge-pod.service"
GW_UNIT = REPO / "deploy" / "gateway" / "platebridge-gateway.service"
TS_UNIT = REPO / "deploy" / "gateway" / "tailscaled-userspace.service"
DOCKERFILE = REPO / "deploy" / "gateway" / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "gateway" / "entrypoint.sh"
CADDYFILE = REPO / "deploy" / "gateway" / "Caddyfile"
UNITS = [POD_UNIT, GW_UNIT, TS_UNIT]
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections → key → values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _exec_paths(path: Path) -> list[str]:
    svc = parse_unit(path)["Service"]
    cmds = [v for k in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStopPost")
            for v in svc.get(k, [])]
    return [c.lstrip("-@:+!").split()[0] for c in cmds]


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze not found: install Debian's systemd package "
                    "(apt-get install systemd; add 'systemd' to APT_PACKAGES in deploy/setup.sh)")
    return exe


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    """A root with the system's units (for sysinit.target & co), our units and stand-in binaries."""
    if not SYSTEM_UNITS.is_dir():
        pytest.fail(f"{SYSTEM_UNITS} missing: install Debian's systemd package")
    root = tmp_path_factory.mktemp("sysroot")
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy2(unit, etc / unit.name)
        for exe in _exec_paths(unit):
            target = root / exe.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("#!/bin/sh\nexit 0\n")
            target.chmod(0o755)
    return root


def _verify(systemd_analyze: str, root: Path, name: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="")
    return subprocess.run([systemd_analyze, "verify", f"--root={root}", str(root / "etc/systemd/system" / name)],
                          capture_output=True, text=True, timeout=60, env=env)


# ---------------------------------------------------------------- systemd-analyze


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(systemd_analyze, fake_root, unit):
    proc = _verify(systemd_analyze, fake_root, unit.name)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", f"systemd-analyze verify complained:\n{proc.stderr}"


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [("ProtectSytem=strict", "Unknown key"), ("Restart=sometimes", "restart specifier"),
     ("ExecStart=/opt/nowhere/bin/x run", "not executable")],
)
def test_verify_harness_catches_mistakes(systemd_analyze, fake_root, bad_line, needle):
    """The harness would see a typo: a copy of the pod unit with one bad line is rejected."""
    text = POD_UNIT.read_text()
    if bad_line.startswith("ExecStart="):
        text = re.sub(r"^ExecStart=.*$", bad_line, text, flags=re.MULTILINE)
    else:
        text = text.replace("[Service]\n", f"[Service]\n{bad_line}\n")
    name = "broken-pod.service"
    (fake_root / "etc/systemd/system" / name).write_text(text)
    try:
        proc = _verify(systemd_analyze, fake_root, name)
    finally:
        (fake_root / "etc/systemd/system" / name).unlink()
    assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize(("unit", "limit"), [(POD_UNIT, 2.5), (GW_UNIT, 2.5), (TS_UNIT, 5.0)],
                         ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_systemd_analyze_security_exposure(systemd_analyze, fake_root, unit, limit):
    proc = subprocess.run([systemd_analyze, "security", "--offline=true", f"--root={fake_root}", "--no-pager",
                           str(fake_root / "etc/systemd/system" / unit.name)],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, SYSTEMD_LOG_COLOR="0"))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= limit, proc.stdout


# ---------------------------------------------------------------- directives

HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize("unit", [POD_UNIT, GW_UNIT], ids=lambda p: p.name)
def test_hardening_and_lifecycle(unit):
    u = parse_unit(unit)
    svc = u["Service"]
    for key, value in HARDENING.items():
        assert svc.get(key) == [value], f"{unit.name}: {key}={value} expected, got {svc.get(key)}"
    assert svc["Restart"] == ["always"]
    assert "RestartSec" in svc
    assert svc["KillMode"] == ["control-group"]
    assert svc["SuccessExitStatus"] == ["143"]
    assert svc["StandardOutput"] == ["journal"]
    assert "@system-service" in svc["SystemCallFilter"]
    assert "network-online.target" in " ".join(u["Unit"]["Wants"])
    assert "network-online.target" in " ".join(u["Unit"]["After"])
    assert u["Install"]["WantedBy"] == ["multi-user.target"]
    assert "AmbientCapabilities" not in svc or svc["AmbientCapabilities"] == [""]
    assert "Environment" not in svc or not any("SECRET" in e for e in svc["Environment"]), "no secrets in units"


def test_pod_unit():
    u = parse_unit(POD_UNIT)
    svc = u["Service"]
    assert "tailscaled.service" in u["Unit"]["Wants"][0].split()
    assert "tailscaled.service" in u["Unit"]["After"][0].split()
    # gateway tokens are checked against the pod's clock: start after the clock is synced where
    # the system waits for that, but never pull the target in (systemd.special(7))
    assert "time-sync.target" in u["Unit"]["After"][0].split()
    assert "time-sync.target" not in " ".join(u["Unit"]["Wants"])
    assert svc["User"] == ["platebridge"]
    assert svc["ExecStart"] == ["/opt/platebridge/venv/bin/platebridge-pod run --config /etc/platebridge/config.yaml"]
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # the agent reloads its config on SIGHUP
    assert svc["ReadWritePaths"] == ["/var/lib/platebridge"]
    # the pod's default state, HLS and recordings dirs are all inside it
    from pod.config import PodConfig

    defaults = PodConfig(portal_url="https://p.example", pod_api_key="k", pod_id="p", site_id="s")
    for field in ("state_dir", "hls_dir", "recordings_dir"):
        default = getattr(defaults, field)
        assert default == "/var/lib/platebridge" or default.startswith("/var/lib/platebridge/"), (field, default)


def test_console_scripts_match_exec_start():
    text = (REPO / "pyproject.toml").read_text()
    assert 'platebridge-pod = "pod.cli:main"' in text
    assert 'platebridge-gateway = "gateway.cli:main"' in text
    import sys

    for script, args in (("platebridge-pod", ["run", "--help"]), ("platebridge-gateway", ["--help"])):
        exe = Path(sys.executable).parent / script
        assert exe.exists(), f"{exe}: run deploy/setup.sh"
        proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "--config" in proc.stdout, proc.stderr


def test_gateway_unit():
    u = parse_unit(GW_UNIT)
    svc = u["Service"]
    assert svc["User"] == ["platebridge-gateway"]
    assert svc["EnvironmentFile"] == ["/etc/platebridge/gateway.env"]
    assert svc["ExecStart"] == ["/opt/platebridge/venv/bin/platebridge-gateway --config /etc/platebridge/gateway.yaml"]
    after = u["Unit"]["After"][0].split()
    assert "tailscaled.service" in after and "tailscaled-userspace.service" in after
    assert "ReadWritePaths" not in svc, "the gateway keeps no state on disk"


_MDWE = """import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3+)
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_default_server_runs_under_the_units_memory_deny_write_execute(tmp_path):
    """The unit sets ``MemoryDenyWriteExecute=yes``: no writable-and-executable memory, ever.
    The gateway with its default server (granian: a Rust extension, its worker forked) serves
    under the same rule, applied with the kernel's PR_SET_MDWE, which forks and execs inherit."""
    import socket
    import sys

    import httpx

    assert parse_unit(GW_UNIT)["Service"]["MemoryDenyWriteExecute"] == ["yes"]
    # control: under the wrapper, writable + executable memory is refused
    wx = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    control = subprocess.run([sys.executable, "-c", _MDWE, sys.executable, "-c", wx], capture_output=True, text=True,
                             timeout=30)
    if control.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert control.returncode != 0 and "PermissionError" in control.stderr, control.stderr
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("stream_secret: " + "s" * 40 + "\npods: {gate-1: 'http://127.0.0.2:8000'}\nlog_level: WARNING\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "platebridge-gateway"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLATEBRIDGE_") and k != "POD_STREAM_SECRET"}
    out = tmp_path / "out"
    with open(out, "wb") as fh:
        p = subprocess.Popen([sys.executable, "-c", _MDWE, str(exe), "--config", str(cfg), "--port", str(port)],
                             stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            if p.poll() is not None:
                if p.returncode == 77:
                    pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
                pytest.fail(f"gateway exited {p.returncode} under MDWE:\n{out.read_text(errors='replace')}")
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2, trust_env=False)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, out.read_text(errors="replace")
                time.sleep(0.1)
        assert r.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/streams/cam-1/index.m3u8", timeout=5,
                         trust_env=False).status_code == 401  # the app in the worker answers, too
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_tailscaled_userspace_unit():
    u = parse_unit(TS_UNIT)
    svc = u["Service"]
    [cmd] = svc["ExecStart"]
    assert "--tun=userspace-networking" in cmd.split()
    assert "--socks5-server=127.0.0.1:1055" in cmd.split()
    assert "--socket=/run/tailscale/tailscaled.sock" in cmd.split()
    assert u["Unit"]["Conflicts"] == ["tailscaled.service"]
    assert svc["DynamicUser"] == ["yes"] and svc["CapabilityBoundingSet"] == [""]


# ---------------------------------------------------------------- Dockerfile (not built)


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for m in re.finditer(r"(\w+)=(\S+)", line[4:]):
                env[m.group(1)] = m.group(2)
    return env


def test_dockerfile_runs_userspace_tailscaled_beside_the_gateway():
    text = DOCKERFILE.read_text()
    assert "python:3.11-slim-bookworm" in text
    assert re.search(r"^USER platebridge-gateway$", text, re.MULTILINE), "runs unprivileged"
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/platebridge-gateway-entrypoint"]' in text
    assert "COPY deploy/gateway/entrypoint.sh /usr/local/bin/platebridge-gateway-entrypoint" in text
    env = _dockerfile_env()
    assert env["PLATEBRIDGE_GATEWAY_UPSTREAM_PROXY"] == "socks5://127.0.0.1:1055"
    assert env["PLATEBRIDGE_GATEWAY_DISCOVERY"] == "localapi"
    assert env["TS_SOCKS5_SERVER"] == "127.0.0.1:1055"
    assert env["PLATEBRIDGE_GATEWAY_LOCALAPI_SOCKET"] == env["TS_SOCKET"]
    # every COPY source exists in the repository (the build context is the repo root)
    for m in re.finditer(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        for src in m.group(1).split()[:-1]:
            assert (REPO / src).exists(), src
    # the image's settings are a valid gateway configuration (with the secret the operator adds)
    cfg = parse_gateway_config({}, env={**env, "POD_STREAM_SECRET": "s" * 48})
    assert cfg.upstream_proxy == "socks5://127.0.0.1:1055"
    assert cfg.discovery == "localapi"
    assert (cfg.host, cfg.port) == ("0.0.0.0", 8080)
    # the default data plane: the gateway runs nginx + its Lua module (from the image) on 8080, its workers on 8081
    assert cfg.data_plane == "auto" and cfg.internal_port == 8081
    runtime = text[text.index("# ---- runtime"):]
    assert re.search(r"apt-get install -y --no-install-recommends .*\bnginx libnginx-mod-http-lua\b", runtime)
    assert cfg.hlsjs_path is None, "hls.js comes vendored in the wheel (issue 10), not from a separate path"
    # the wheel is built with hls.js in place (setup.py vendors it) and that wheel is what the image installs
    build = text[text.index("AS build"):text.index("# ---- runtime")]
    assert "COPY --from=web /web/node_modules ./gateway/web/node_modules" in build
    assert "setup.py" in build and re.search(r"pip wheel .*--wheel-dir /wheels \.$", build, re.MULTILINE)
    assert "pip install --no-cache-dir /wheels/*.whl" in text


def test_entrypoint_script_syntax():
    assert os.access(ENTRYPOINT, os.X_OK)
    text = ENTRYPOINT.read_text()
    assert "set -euo pipefail" in text
    assert "--tun=userspace-networking" in text and '--socks5-server="$TS_SOCKS5_SERVER"' in text
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)


def _stand_ins(bin_dir: Path, log: Path, gateway_exit: int) -> None:
    bin_dir.mkdir()
    (bin_dir / "tailscaled").write_text(textwrap.dedent(f"""\
        #!{os.environ.get('PYTHON', '/usr/bin/python3')}
        import os, signal, socket, sys, time
        sock = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--socket=")][0]
        with open({str(log)!r}, "a") as f:
            f.write("tailscaled " + " ".join(sys.argv[1:]) + " ENV_AUTHKEY=" + os.environ.get("TS_AUTHKEY", "") + "\\n")
        s = socket.socket(socket.AF_UNIX); s.bind(sock); s.listen()
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        while True:
            time.sleep(0.1)
        """))
    (bin_dir / "tailscale").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$2" = status ]; then echo '{{"BackendState": "NeedsLogin"}}'; exit 0; fi
        key=""
        for a in "$@"; do case "$a" in --auth-key=file:*) key="$(cat "${{a#--auth-key=file:}}")";; esac; done
        echo "tailscale $* KEYFILE=$key" >> {log}
        """))
    (bin_dir / "platebridge-gateway").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "gateway $* ENV_AUTHKEY=${{TS_AUTHKEY:-}}" >> {log}
        exit {gateway_exit}
        """))
    (bin_dir / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    for p in bin_dir.iterdir():
        if not p.is_symlink():
            p.chmod(0o755)


def test_entrypoint_joins_with_tag_gateway_and_keeps_the_key_private(tmp_path):
    key = "-".join(["tskey", "auth", "ENTRYPOINTTEST", "123"])  # generated test value
    log = tmp_path / "log"
    _stand_ins(tmp_path / "bin", log, gateway_exit=7)
    state = tmp_path / "state"
    sock = tmp_path / "run" / "ts.sock"
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "TS_AUTHKEY": key, "TS_STATE_DIR": str(state),
           "TS_SOCKET": str(sock), "TS_HOSTNAME": "pb-gw-test"}
    proc = subprocess.run(["bash", str(ENTRYPOINT), "--config", "/etc/platebridge/gateway.yaml"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 7, proc.stderr  # the gateway's exit status is the container's
    lines = log.read_text().splitlines()
    [tsd] = [line for line in lines if line.startswith("tailscaled ")]
    assert "--tun=userspace-networking" in tsd and "--socks5-server=127.0.0.1:1055" in tsd
    assert tsd.endswith("ENV_AUTHKEY="), "tailscaled must not inherit the auth key"
    [up] = [line for line in lines if line.startswith("tailscale ") and " up " in line]
    assert "--advertise-tags=tag:gateway" in up and "--hostname=pb-gw-test" in up
    assert up.endswith(f"KEYFILE={key}")  # passed as a file ...
    assert key not in up[: up.index("KEYFILE=")]  # ... never in argv
    [gw] = [line for line in lines if line.startswith("gateway ")]
    assert gw == "gateway --config /etc/platebridge/gateway.yaml ENV_AUTHKEY="
    assert key not in proc.stdout + proc.stderr
    assert "--auth-key=<redacted>" in proc.stderr
    assert not list(state.glob(".authkey*")), "the temporary key file must be removed"


def test_entrypoint_refuses_a_non_loopback_socks_proxy(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TS_SOCKS5_SERVER": "0.0.0.0:1055"}
    proc = subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2
    assert "loopback" in proc.stderr


def _session_cmdlines(sid: int) -> list[str]:
    """Command lines of the live processes in session ``sid`` (from /proc; no procps needed)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat_fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat_fields[3]) == sid and stat_fields[0] != "Z":
                out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue
    return out


def test_entrypoint_stops_the_gateway_on_sigterm(tmp_path):
    log = tmp_path / "log"
    _stand_ins(tmp_path / "bin", log, gateway_exit=0)
    (tmp_path / "bin" / "platebridge-gateway").write_text(
        "#!/bin/sh\ntrap 'exit 143' TERM\nwhile :; do sleep 0.1; done\n")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "TS_STATE_DIR": str(tmp_path / "state"),
           "TS_SOCKET": str(tmp_path / "run" / "ts.sock")}
    p = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any("platebridge-gateway" in c for c in _session_cmdlines(p.pid)):
                break
            time.sleep(0.1)
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=10)
        assert rc == 143
        time.sleep(0.2)
        assert _session_cmdlines(p.pid) == [], "tailscaled or the gateway outlived the entrypoint"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


# ---------------------------------------------------------------- Caddyfile


def test_caddyfile_front():
    text = CADDYFILE.read_text()
    assert "reverse_proxy 127.0.0.1:8080" in text
    assert re.search(r"max_header_size\s+\d+KB", text)
    for t in ("read_header", "read_body", "write", "idle"):
        assert re.search(rf"^\s*{t}\s+\d+[sm]$", text, re.MULTILINE), t
    assert not re.search(r"^\s*log\b", text, re.MULTILINE), "Caddy's access log would record tokens"


def test_caddyfile_adapts():
    proc = subprocess.run(["caddy", "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                          capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, GATEWAY_DOMAIN="gw.example.com"))
    assert proc.returncode == 0, proc.stderr
    assert '"max_header_bytes":16000' in proc.stdout.replace(" ", "")
    assert "127.0.0.1:8080" in proc.stdout


def test_caddyfile_refuses_metrics_and_passes_the_rest(tmp_path):
    """The front, run for real (Caddy from Debian) on loopback without TLS in front of a stand-in
    gateway: /metrics in every spelling the gateway answers is refused at the front, the rest
    reaches the gateway."""
    import http.server
    import socket
    import threading

    seen: list[str] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"gw")

        def log_message(self, *args):
            pass

    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = CADDYFILE.read_text()
    text = text.replace("{$GATEWAY_DOMAIN:gateway.example.com} {", f"http://127.0.0.1:{port} {{")
    text = text.replace("reverse_proxy 127.0.0.1:8080", f"reverse_proxy 127.0.0.1:{backend.server_address[1]}")
    text = text.replace("{\n\tservers {", "{\n\tadmin off\n\tservers {", 1)
    assert f"http://127.0.0.1:{port}" in text and "admin off" in text
    (tmp_path / "Caddyfile").write_text(text)
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    caddy = subprocess.Popen(["caddy", "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert caddy.poll() is None, caddy.stderr.read().decode()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "caddy did not start"
                time.sleep(0.05)

        def get(target: str) -> int:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := c.recv(65536):
                    data += chunk
            return int(data.split()[1])

        for target in ("/metrics", "/metrics/", "/metrics%2F", "/metrics?x=1", "/METRICS"):
            assert get(target) == 404, target  # Caddy's path matcher ignores case
        assert not [p for p in seen if p.lower().startswith("/metrics")]
        assert get("/healthz") == 200 and "/healthz" in seen
    finally:
        caddy.terminate()
        caddy.wait(10)
        backend.shutdown()
