"""The nginx data plane the gateway runs itself (``gateway/dataplane.py``; issue 15, point 4:
the default's p99 within 2× nginx's needs nginx serving the hits).

Pure parts (``render_main``, ``listen_value``, ``find_nginx``, config checks) without
processes; then the real Debian nginx + Lua module started by ``python -m gateway`` with the default
config: it takes the public port, the workers sit behind it on ``internal_port``, ``/metrics``
is only there, and nginx's life is tied to the gateway's both ways (SIGTERM, ``kill -9`` of the
gateway, nginx dying on its own)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.config import parse_config
from gateway.dataplane import Found, find_nginx, free_loopback_port, listen_value, render_main
from gateway.errors import ConfigError
from gateway.server import RUN_DIR_PREFIX, remove_leftovers
from tests.proctable import live_processes

ROOT = Path(__file__).resolve().parents[2]
OK = {"stream_secret": "z" * 40, "pods": {"gate-1": "http://127.0.0.2:8000"}}
MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so")


# ---------------------------------------------------------------- pure parts
def test_auto_is_the_default_data_plane():
    cfg = parse_config(OK, env={})
    assert (cfg.data_plane, cfg.internal_port, cfg.nginx_bin, cfg.nginx_modules_dir) == ("auto", 0, None, None)


@pytest.mark.parametrize("over,path", [
    ({"data_plane": "caddy"}, "$.data_plane"),
    ({"internal_port": 70000}, "$.internal_port"),
    ({"internal_port": -1}, "$.internal_port"),
    ({"internal_port": 8080, "port": 8080}, "$.internal_port"),
    ({"nginx_bin": "nginx"}, "$.nginx_bin"),
    ({"nginx_modules_dir": "modules"}, "$.nginx_modules_dir"),
])
def test_bad_data_plane_settings_name_the_key(over, path):
    with pytest.raises(ConfigError) as ei:
        parse_config({**OK, **over}, env={})
    assert str(ei.value).startswith(path), str(ei.value)


def test_render_main_runs_nginx_in_the_foreground_from_its_run_directory():
    text = render_main(run_dir="/dev/shm/pb-run", modules=MODULES, workers=3, worker_connections=4096, user=None)
    assert "daemon off;" in text and "worker_processes 3;" in text and "worker_connections 4096;" in text
    assert "multi_accept on;" in text  # a burst of new connections is accepted at once
    # the NDK before the Lua module, which needs it
    assert f"load_module {MODULES[0]};\nload_module {MODULES[1]};\n" in text
    assert "pid /dev/shm/pb-run/nginx.pid;" in text
    assert "error_log stderr alert;" in text  # lower levels quote request lines, grants included
    assert "include /dev/shm/pb-run/platebridge-dataplane.conf;" in text
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):  # nothing written outside the run dir
        assert f"{kind}_temp_path /dev/shm/pb-run/temp-{kind};" in text
    assert not re.search(r"^user ", text, re.MULTILINE)
    as_root = render_main(run_dir="/r", modules=MODULES, workers=1, worker_connections=1024, user="root root")
    assert re.search(r"^user root root;$", as_root, re.MULTILINE)


@pytest.mark.parametrize("host,want", [
    ("127.0.0.1", "127.0.0.1:8080 backlog=4096 reuseport"),
    ("0.0.0.0", "0.0.0.0:8080 backlog=4096 reuseport"),
    ("::", "[::]:8080 backlog=4096 reuseport"),
    ("::1", "[::1]:8080 backlog=4096 reuseport"),
])
def test_listen_value(host, want):
    assert listen_value(host, 8080, 4096) == want


def test_find_nginx_says_what_is_missing(tmp_path):
    missing = str(tmp_path / "nginx")
    assert find_nginx(parse_config({**OK, "nginx_bin": missing}, env={})) == (
        f"no nginx binary at {missing} (Debian: apt-get install nginx libnginx-mod-http-lua)")
    fake = tmp_path / "bin-nginx"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    modules = tmp_path / "modules"
    modules.mkdir()
    got = find_nginx(parse_config({**OK, "nginx_bin": str(fake), "nginx_modules_dir": str(modules)}, env={}))
    assert got == f"no nginx module {modules}/ndk_http_module.so (Debian: apt-get install nginx libnginx-mod-http-lua)"
    (modules / "ndk_http_module.so").write_bytes(b"")
    got = find_nginx(parse_config({**OK, "nginx_bin": str(fake), "nginx_modules_dir": str(modules)}, env={}))
    assert got == (f"no nginx module {modules}/ngx_http_lua_module.so "
                   "(Debian: apt-get install nginx libnginx-mod-http-lua)")


def test_find_nginx_finds_debians_nginx_and_lua_module():
    """setup.sh installs both: the default data plane is nginx on every machine it set up."""
    found = find_nginx(parse_config(OK, env={}))
    assert found == Found(nginx="/usr/sbin/nginx", modules=MODULES)


def test_leftover_nginx_run_directories_are_removed(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"{RUN_DIR_PREFIX}nginx-{gone.pid}-abc123"
    live = tmp_path / f"{RUN_DIR_PREFIX}nginx-{os.getppid()}-def456"
    for d in (dead, live):
        d.mkdir()
    assert remove_leftovers(str(tmp_path)) == [dead.name]
    assert live.exists()


# ---------------------------------------------------------------- the real nginx, started by the gateway
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLATEBRIDGE_") and k != "POD_STREAM_SECRET"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _nginx_processes(master: int) -> list[int]:
    """The nginx master ``master`` and its workers, while alive."""
    table = live_processes()
    return [pid for pid, (parent, _) in table.items() if pid == master or parent == master]


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


class Gateway:
    """``python -m gateway`` with the default data plane, in its own session."""

    def __init__(self, tmp_path: Path, extra: str = "", workers: int = 2) -> None:
        self.port, self.internal = free_loopback_port(), free_loopback_port()
        f = tmp_path / "gw.yaml"
        f.write_text("stream_secret: " + "s" * 40 + "\npods: {gate-1: 'http://127.0.0.2:8000'}\naccess_log: false\n"
                     f"log_level: INFO\ninternal_port: {self.internal}\n" + extra)
        self.out = tmp_path / "gateway.out"
        with open(self.out, "wb") as fh:
            self.p = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(f), "--port", str(self.port),
                                       "--workers", str(workers)], stdout=fh, stderr=subprocess.STDOUT, env=_env(),
                                      start_new_session=True)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_up(self) -> None:
        def up() -> bool:
            assert self.p.poll() is None, self.text()
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2, trust_env=False).status_code == 200
            except httpx.TransportError:
                return False
        assert _wait(up, 30), self.text()

    def nginx_master(self) -> int:
        masters = [pid for pid, (parent, _) in live_processes().items()
                   if parent == self.p.pid and _cmdline(pid).startswith("nginx: master")]
        assert len(masters) == 1, [_cmdline(pid) for pid in live_processes()]
        return masters[0]

    def run_dir(self, master: int) -> Path:
        m = re.search(r" -p (\S+) ", _cmdline(master))
        assert m, _cmdline(master)
        return Path(m.group(1))

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.p.wait(10)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path)
    try:
        gw.wait_up()
        yield gw
    finally:
        gw.stop()


def test_the_default_runs_nginx_in_front_of_its_workers(gateway):
    """nginx answers on the public port (its `Server` header; the gateway's answers through it),
    /metrics only on the workers' internal address, the run directory private."""
    gw = gateway
    master = gw.nginx_master()
    r = httpx.get(f"http://127.0.0.1:{gw.port}/healthz", timeout=5, trust_env=False)
    assert r.status_code == 200 and r.json() == {"status": "ok"} and r.headers["server"] == "nginx"
    direct = httpx.get(f"http://127.0.0.1:{gw.internal}/healthz", timeout=5, trust_env=False)
    assert direct.status_code == 200 and direct.headers.get("server") != "nginx"
    assert httpx.get(f"http://127.0.0.1:{gw.port}/metrics", timeout=5, trust_env=False).status_code == 404
    metrics = httpx.get(f"http://127.0.0.1:{gw.internal}/metrics", timeout=5, trust_env=False)
    assert metrics.status_code == 200 and "platebridge_gateway_" in metrics.text
    # no token: the gateway's own refusal, passed on by nginx
    r = httpx.get(f"http://127.0.0.1:{gw.port}/streams/cam-1/index.m3u8", timeout=5, trust_env=False)
    assert r.status_code == 401
    run = gw.run_dir(master)
    assert run.stat().st_mode & 0o777 == 0o700
    assert (run / "platebridge-dataplane.conf").stat().st_mode & 0o777 == 0o600  # it holds the grant keys
    assert (run / "nginx.conf").stat().st_mode & 0o777 == 0o600
    assert len(_nginx_processes(master)) == 3  # the master and one worker per gateway worker
    assert f"data plane: nginx (pid {master}, 2 workers) on 127.0.0.1:{gw.port}" in gw.text()
    # each worker bound to a CPU of its own (worker_cpu_affinity auto), as far as the box has them
    usable = len(os.sched_getaffinity(0))
    bound = [os.sched_getaffinity(pid) for pid in _nginx_processes(master) if pid != master]
    assert len(bound) == 2 and all(len(cpus) == 1 for cpus in bound), bound
    assert len(set().union(*bound)) == min(2, usable), bound


def test_a_second_gateway_on_the_same_port_is_refused_not_sharing_it(gateway, tmp_path):
    """nginx and granian listen with SO_REUSEPORT, so a second gateway on the port used to start
    and take half the connections (a newcomer's 401/302 mix with two configs). Now it exits 2
    before starting anything; so does one whose internal_port is taken."""
    f = tmp_path / "second.yaml"
    f.write_text("stream_secret: " + "t" * 40 + "\npods: {gate-1: 'http://127.0.0.2:8000'}\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "--config", str(f), "--port", str(gateway.port)],
                       capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 2, r
    assert r.stderr.strip() == (f"platebridge-gateway: --port: 127.0.0.1:{gateway.port} is in use (another gateway or "
                                "service listens there); stop it or choose another port"), r.stderr
    f.write_text(f.read_text() + f"internal_port: {gateway.internal}\nport: {free_loopback_port()}\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "--config", str(f)], capture_output=True, text=True,
                       env=_env(), timeout=60)
    assert r.returncode == 2 and f"$.internal_port: 127.0.0.1:{gateway.internal} is in use" in r.stderr, r
    assert len(_nginx_processes(gateway.nginx_master())) == 3  # the first one is untouched


def test_sigterm_stops_nginx_too_and_removes_its_run_directory(gateway):
    gw = gateway
    master = gw.nginx_master()
    run = gw.run_dir(master)
    nginx = _nginx_processes(master)
    gw.p.send_signal(signal.SIGTERM)
    assert gw.p.wait(30) == 0, gw.text()
    assert _wait(lambda: not set(nginx) & set(live_processes()), 10), [_cmdline(p) for p in nginx]
    assert not run.exists()
    assert _refused(gw.port) and _refused(gw.internal)


def test_a_killed_gateway_takes_its_nginx_with_it(gateway):
    """``kill -9`` of the gateway: nginx gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and
    nothing is left answering on the public port."""
    gw = gateway
    nginx = _nginx_processes(gw.nginx_master())
    os.kill(gw.p.pid, signal.SIGKILL)
    gw.p.wait(5)
    assert _wait(lambda: not set(nginx) & set(live_processes()), 10), [_cmdline(p) for p in nginx]
    assert _wait(lambda: _refused(gw.port), 10)


def test_nginx_dying_stops_the_gateway_with_exit_1(gateway):
    """nginx killed on its own: its orphaned workers are killed too, and the gateway exits 1
    (its service manager restarts both) instead of running with its public port unserved."""
    gw = gateway
    master = gw.nginx_master()
    nginx = _nginx_processes(master)
    os.kill(master, signal.SIGKILL)
    assert gw.p.wait(30) == 1, gw.text()
    assert f"data plane: nginx exited (status -{int(signal.SIGKILL)}) while the gateway was running" in gw.text()
    assert _wait(lambda: not set(nginx) & set(live_processes()), 10), [_cmdline(p) for p in nginx]
    assert _refused(gw.port)


def test_managed_without_nginx_is_a_config_error(tmp_path):
    missing = tmp_path / "nowhere" / "nginx"
    f = tmp_path / "gw.yaml"
    f.write_text("stream_secret: " + "s" * 40 + f"\ndata_plane: managed\nnginx_bin: {missing}\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "--config", str(f), "--port", str(free_loopback_port())],
                       capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 2, r.stderr
    said = f"config error: $.data_plane: managed needs nginx with its Lua module: no nginx binary at {missing}"
    assert said in r.stderr
    assert "Traceback" not in r.stderr


def test_auto_without_nginx_serves_every_segment_itself(tmp_path):
    """auto on a machine without nginx: the gateway still starts, on its public port itself,
    and says in its log why it is slower."""
    gw = Gateway(tmp_path, extra=f"nginx_bin: {tmp_path / 'no-nginx'}\n", workers=1)
    try:
        gw.wait_up()
        r = httpx.get(f"http://127.0.0.1:{gw.port}/metrics", timeout=5, trust_env=False)
        assert r.status_code == 200  # the gateway itself on the public port
        assert "data plane: the gateway serves every segment itself" in gw.text()
        assert f"no nginx binary at {tmp_path / 'no-nginx'}" in gw.text()
        assert _refused(gw.internal)
    finally:
        gw.stop()


def test_auto_falls_back_when_nginx_refuses_its_config(tmp_path):
    """An nginx that cannot load the modules given: auto serves without them (and says why);
    managed refuses to start, quoting nginx."""
    bogus = tmp_path / "not-modules"
    bogus.mkdir()
    for name in ("ndk_http_module.so", "ngx_http_lua_module.so"):
        (bogus / name).write_bytes(b"not an ELF file")
    gw = Gateway(tmp_path, extra=f"nginx_modules_dir: {bogus}\n", workers=1)
    try:
        gw.wait_up()
        assert httpx.get(f"http://127.0.0.1:{gw.port}/metrics", timeout=5, trust_env=False).status_code == 200
        assert "data plane: the gateway serves every segment itself: $.data_plane: nginx refused" in gw.text()
    finally:
        gw.stop()
    f = tmp_path / "managed.yaml"
    f.write_text("stream_secret: " + "s" * 40 + f"\ndata_plane: managed\nnginx_modules_dir: {bogus}\n")
    p = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(f), "--port", str(free_loopback_port())],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "$.data_plane: nginx refused the data plane's config:" in err, err
    assert str(bogus) in err and "Traceback" not in err
    # its run directory (and the run's host store) are gone with it
    assert [d for d in os.listdir("/dev/shm") if d.startswith(RUN_DIR_PREFIX) and f"-{p.pid}-" in d] == []
