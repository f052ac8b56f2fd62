"""Gateway server choice: ``server`` / ``workers`` / ``loop`` config and CLI flags, the
import-by-name app factory (``gateway.asgi:create_app_from_env``) that granian and uvicorn
workers use, and the default server's process lifecycle (issue 15: granian by default)."""

import importlib.util
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

from gateway.app import GatewayASGI
from gateway.asgi import create_app_from_env
from gateway.config import CONFIG_PATH_ENV, parse_config
from gateway.errors import ConfigError
from tests.proctable import live_processes

ROOT = Path(__file__).resolve().parents[2]
OK = {"stream_secret": "z" * 40, "pods": {"gate-1": "http://127.0.0.2:8000"}}


def test_defaults_are_granian_on_uvloop():
    cfg = parse_config(OK, env={})
    assert (cfg.server, cfg.loop) == ("granian", "uvloop")


def test_server_and_loop_from_file_and_env():
    cfg = parse_config({**OK, "server": "uvicorn"}, env={"PLATEBRIDGE_GATEWAY_LOOP": "asyncio"})
    assert (cfg.server, cfg.loop) == ("uvicorn", "asyncio")


def test_granian_is_a_runtime_dependency():
    """The default server is installed with the package, not only with an extra."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("granian") for r in project["dependencies"]), project["dependencies"]


@pytest.mark.parametrize("over,path", [
    ({"workers": 0}, "$.workers"),
    ({"workers": 65}, "$.workers"),
    ({"host_cache_dir": "relative/store"}, "$.host_cache_dir"),
    ({"server": "gunicorn"}, "$.server"),
    ({"loop": "trio"}, "$.loop"),
    ({"timeout_keep_alive": 61}, "$.timeout_keep_alive"),  # granian's header timeout stops at 60 s
    ({"timeout_keep_alive": 0}, "$.timeout_keep_alive"),
    ({"limit_concurrency": 8}, "$.limit_concurrency"),
])
def test_bad_server_options_name_the_key(over, path):
    with pytest.raises(ConfigError) as ei:
        parse_config({**OK, **over}, env={})
    assert str(ei.value).startswith(path), str(ei.value)


def test_workers_default_to_one_per_cpu_and_share_a_host_store():
    cfg = parse_config(OK, env={})
    assert cfg.workers is None and cfg.host_cache_dir is None  # None: os.cpu_count(), a fresh /dev/shm dir
    cfg = parse_config({**OK, "workers": 4, "host_cache_dir": "/dev/shm/pb"}, env={})
    assert (cfg.workers, cfg.host_cache_dir) == (4, "/dev/shm/pb")


def test_config_path_env_is_not_a_config_key():
    cfg = parse_config(OK, env={CONFIG_PATH_ENV: "/etc/platebridge/gateway.yaml"})
    assert cfg.port == 8080


def test_factory_loads_the_file_named_in_env(tmp_path, monkeypatch):
    f = tmp_path / "gw.yaml"
    f.write_text("stream_secret: " + "s" * 40 + "\npods: {gate-1: 'http://127.0.0.2:8000'}\nlog_level: WARNING\n")
    monkeypatch.setenv(CONFIG_PATH_ENV, str(f))
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    assert isinstance(create_app_from_env(), GatewayASGI)


def test_factory_without_a_file_uses_env_only(monkeypatch):
    monkeypatch.delenv(CONFIG_PATH_ENV, raising=False)
    monkeypatch.setenv("POD_STREAM_SECRET", "e" * 40)
    assert isinstance(create_app_from_env(), GatewayASGI)
    monkeypatch.delenv("POD_STREAM_SECRET")
    with pytest.raises(ConfigError, match=r"\$\.user_token_secret"):
        create_app_from_env()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLATEBRIDGE_") and k != "POD_STREAM_SECRET"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_cli_refuses_bad_workers_flag(tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_text("stream_secret: " + "s" * 40 + "\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "--config", str(f), "--workers", "0"],
                       capture_output=True, text=True, env=_env(), timeout=60, check=False)
    assert r.returncode == 2 and "--workers" in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (the gateway started in its own session)."""
    return [pid for pid, (_, group) in live_processes().items() if group == pgid]


def _workers(pgid: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing spawn children) in the gateway's group."""
    return [pid for pid in _group(pgid) if "multiprocessing.spawn import spawn_main" in _cmdline(pid)]


def _children(pid: int) -> list[int]:
    """Live (not zombie) worker processes of ``pid`` (granian forks its workers): its children
    but the nginx master of its data plane (:func:`_nginx`)."""
    return [child for child, (parent, _) in live_processes().items()
            if parent == pid and not _cmdline(child).startswith("nginx:")]


def _nginx(pid: int) -> list[int]:
    """The nginx master the gateway ``pid`` started as its data plane (data_plane: auto)."""
    return [child for child, (parent, _) in live_processes().items()
            if parent == pid and _cmdline(child).startswith("nginx: master")]


def _maps_uvloop(pid: int) -> bool:
    """Whether ``pid`` has uvloop's extension module (uvloop/loop.*.so) mapped."""
    with open(f"/proc/{pid}/maps") as f:
        return any("/uvloop/loop." in line for line in f)


def test_granian_missing_is_a_clear_config_error(tmp_path):
    """Should granian be missing (a broken install: it is a runtime dependency), the gateway
    exits 2 naming the key and the fix instead of a traceback."""
    f = tmp_path / "gw.yaml"
    f.write_text("stream_secret: " + "s" * 40 + "\n")
    env = _env()
    if importlib.util.find_spec("granian") is not None:  # hide the installed package from the child
        (tmp_path / "granian.py").write_text("raise ImportError('granian hidden by the test')\n")
        env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    r = subprocess.run([sys.executable, "-m", "gateway", "--config", str(f), "--server", "granian",
                        "--port", str(_free_port())], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "$.server: granian is not installed" in r.stderr and "Traceback" not in r.stderr, r.stderr


CPUS = min(len(os.sched_getaffinity(0)), 64)


@pytest.mark.parametrize("flags,workers,uvloop", [
    # the default: granian, one forked worker per CPU, the app on uvloop
    pytest.param([], ("granian", CPUS), True, id="default-granian"),
    pytest.param(["--loop", "asyncio", "--workers", "1"], ("granian", 1), False, id="granian-asyncio"),
    pytest.param(["--server", "uvicorn", "--workers", "1"], 1, True, id="uvicorn"),
    pytest.param(["--server", "uvicorn", "--workers", "2"], 2, True, id="uvicorn-workers2"),
    pytest.param(["--server", "uvicorn", "--loop", "asyncio", "--workers", "1"], 1, False, id="uvicorn-asyncio"),
])
def test_cli_serves_with_each_server_choice(tmp_path, flags, workers, uvloop):
    """The gateway serves with each choice, and the choice is really applied: the default is
    granian, serving from one forked worker process per CPU; ``--workers 2`` logs the host store
    its workers share and runs exactly 2 uvicorn worker processes; the serving process maps
    uvloop's extension module by default and does not with ``--loop asyncio``."""
    f = tmp_path / "gw.yaml"
    f.write_text("stream_secret: " + "s" * 40 + "\npods: {gate-1: 'http://127.0.0.2:8000'}\naccess_log: false\n"
                 "log_level: INFO\n")
    port = _free_port()
    out = tmp_path / "gateway.out"
    with open(out, "wb") as fh:  # a file, not a PIPE nobody reads: the gateway can never block on its output
        p = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(f), "--port", str(port), *flags],
                             stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert p.poll() is None, out.read_text(errors="replace")
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2, trust_env=False)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gateway did not come up"
                time.sleep(0.1)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        # the hot path is served by the app each worker built: no token → 401, not a server error
        r = httpx.get(f"http://127.0.0.1:{port}/streams/cam-1/index.m3u8", timeout=5, trust_env=False)
        assert r.status_code == 401
        text = out.read_text(errors="replace")
        if isinstance(workers, tuple):
            n = workers[1]
            assert "Traceback" not in text, text
            assert (f"{n} workers sharing the host store" in text) == (n > 1), text
            assert _wait(lambda: len(_children(p.pid)) == n, 15), [_cmdline(pid) for pid in _group(p.pid)]
            serving = _children(p.pid)
            assert _workers(p.pid) == [], [_cmdline(pid) for pid in _group(p.pid)]
            # granian imports uvloop in every process (its loop registry), so the mapping says
            # nothing: each worker logs the loop its app runs on
            loop = "uvloop.Loop" if uvloop else "asyncio.unix_events._UnixSelectorEventLoop"
            assert _wait(lambda: all(f"worker {pid} serving (event loop {loop})" in out.read_text(errors="replace")
                                     for pid in serving), 15), out.read_text(errors="replace")
            return
        else:
            spawned = _workers(p.pid)
            if workers > 1:
                assert f"{workers} workers sharing the host store" in text, text
                # both workers up (the first one may answer /healthz before the second is serving)
                deadline = time.monotonic() + 15
                while len(spawned := _workers(p.pid)) < workers and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert len(spawned) == workers, [_cmdline(pid) for pid in _group(p.pid)]
                serving = spawned
            else:
                assert "workers:" not in text, text
                assert spawned == [], [_cmdline(pid) for pid in _group(p.pid)]
                serving = [p.pid]
        # a worker may still be importing when it is first seen: mappings only ever get added
        deadline = time.monotonic() + 15
        while [_maps_uvloop(pid) for pid in serving] != [uvloop] * len(serving) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [_maps_uvloop(pid) for pid in serving] == [uvloop] * len(serving), (flags, serving)
    finally:
        os.killpg(p.pid, 15)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()


def _launch(tmp_path: Path, extra_config: str = "", flags: tuple[str, ...] = (),
            log_level: str = "WARNING") -> tuple[subprocess.Popen, int, Path]:
    """Start ``python -m gateway`` (the default server unless ``flags`` say otherwise) in its own
    session; wait for /healthz. Returns the process, its port and its output file."""
    f = tmp_path / "gw.yaml"
    f.write_text("stream_secret: " + "s" * 40 + "\npods: {gate-1: 'http://127.0.0.2:8000'}\naccess_log: false\n"
                 f"log_level: {log_level}\n" + extra_config)
    port = _free_port()
    out = tmp_path / "gateway.out"
    with open(out, "wb") as fh:
        p = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(f), "--port", str(port), *flags],
                             stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        assert p.poll() is None, out.read_text(errors="replace")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2, trust_env=False).status_code == 200:
                return p, port, out
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "gateway did not come up"
        time.sleep(0.1)


def _stop_group(p: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while _group(p.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    p.wait(5)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_default_server_stops_on_sigterm_with_exit_0_and_no_process_left(tmp_path):
    p, _, out = _launch(tmp_path, log_level="INFO")
    try:
        assert _wait(lambda: len(_children(p.pid)) == CPUS, 10)
        assert _wait(lambda: out.read_text(errors="replace").count("serving (event loop") == CPUS, 15)
        store = _store_dir(out)
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0, out.read_text(errors="replace")
        assert _wait(lambda: not _group(p.pid), 10), [_cmdline(pid) for pid in _group(p.pid)]
        assert store is None or not store.exists()  # the run's own host store goes with it
    finally:
        _stop_group(p)


def _store_dir(out: Path) -> Path | None:
    """The host store the gateway logged for its workers (None with one worker)."""
    m = re.search(r"workers sharing the host store (\S+?)\"", out.read_text(errors="replace"))
    return Path(m.group(1)) if m else None


def test_a_killed_gateway_leaves_no_worker_serving_its_port(tmp_path):
    """``kill -9`` of the gateway process (the OOM killer, a crashed host agent) takes its
    worker down too: nothing is left answering on the port for a gateway that is gone."""
    p, port, _ = _launch(tmp_path)
    try:
        assert _wait(lambda: len(_children(p.pid)) == CPUS, 10)
        workers = _children(p.pid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
        assert _wait(lambda: not set(workers) & set(_group(p.pid)), 10), "a worker outlived its gateway"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2, trust_env=False)
    finally:
        _stop_group(p)


def _closed_after(port: int, first: bytes, limit: float) -> float:
    """Send ``first`` on a new connection, read whatever answer comes, then wait for the server
    to close the connection; seconds from sending until the close (``limit`` + 1 if it did not)."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit + 1) as s:
        t0 = time.monotonic()
        s.sendall(first)
        try:
            while s.recv(65536):
                pass
        except TimeoutError:
            return limit + 1
        return time.monotonic() - t0


def test_timeout_keep_alive_closes_idle_and_slow_header_connections(tmp_path):
    """``timeout_keep_alive`` (2 s here) reaches the default server: an idle keep-alive
    connection and one whose request headers never complete are both closed after it, not
    after granian's own 30 s."""
    p, port, _ = _launch(tmp_path, "timeout_keep_alive: 2\n")
    try:
        idle = _closed_after(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 8)
        slow = _closed_after(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 8)
        assert 1.5 <= idle <= 6, idle
        assert 1.5 <= slow <= 6, slow
    finally:
        _stop_group(p)


def test_each_worker_holds_its_share_of_the_memory_budget():
    mib = 1024 * 1024
    assert parse_config({**OK, "cache_max_bytes": 64 * mib}, env={}).worker_memory_bytes() == 64 * mib
    shared = {**OK, "cache_max_bytes": 64 * mib, "host_cache_dir": "/dev/shm/pb", "workers": 4}
    assert parse_config(shared, env={}).worker_memory_bytes() == 16 * mib
    assert parse_config({**shared, "workers": 64}, env={}).worker_memory_bytes() == 1 * mib  # never below 1 MiB


def test_the_cli_starts_without_importing_prometheus_client():
    """prometheus_client picks its value store at import: the process that forks granian's workers
    must not import it before PROMETHEUS_MULTIPROC_DIR is set, or /metrics stops summing them."""
    code = "import sys, gateway.cli; print('prometheus_client' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.stdout.strip() == "False", r.stdout + r.stderr
    from gateway.metrics import MULTIPROC_ENV
    from gateway.server import MULTIPROC_ENV as SERVER_ENV

    assert MULTIPROC_ENV == SERVER_ENV == "PROMETHEUS_MULTIPROC_DIR"


def test_the_default_worker_count_is_capped(monkeypatch):
    from gateway.cli import worker_count
    from gateway.config import MAX_WORKERS

    monkeypatch.setattr("gateway.cli.os.sched_getaffinity", lambda _pid: set(range(96)))
    assert worker_count(None, None) == MAX_WORKERS == 64  # a 96-CPU host starts (its workers accept 64)
    assert worker_count(None, 3) == 3 and worker_count(2, 3) == 2
    monkeypatch.setattr("gateway.cli.os.sched_getaffinity", lambda _pid: {0, 1})  # a cpuset of 2 on a big host
    monkeypatch.setattr("gateway.cli.os.cpu_count", lambda: 96)
    assert worker_count(None, None) == 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unusable_host_store_is_a_config_error_before_any_worker_starts(tmp_path, workers):
    store = tmp_path / "store"
    store.mkdir(mode=0o755)
    store.chmod(0o755)
    f = tmp_path / "gw.yaml"
    f.write_text("stream_secret: " + "s" * 40 + f"\nhost_cache_dir: {store}\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "--config", str(f), "--workers", workers,
                        "--port", str(_free_port())], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 2, r.stderr
    assert "config error: $.host_cache_dir:" in r.stderr and "mode 0700" in r.stderr and "Traceback" not in r.stderr


def test_a_killed_worker_is_replaced_and_the_gateway_keeps_serving(tmp_path):
    p, port, _ = _launch(tmp_path, flags=("--workers", "2"), log_level="INFO")
    try:
        assert _wait(lambda: len(_children(p.pid)) == 2, 10)
        victim = _children(p.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert _wait(lambda: victim not in _children(p.pid) and len(_children(p.pid)) == 2, 15), \
            [_cmdline(pid) for pid in _group(p.pid)]
        assert p.poll() is None
        codes = [httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5, trust_env=False).status_code
                 for _ in range(20)]
        assert codes == [200] * 20
    finally:
        _stop_group(p)


def test_run_directories_of_killed_gateways_are_removed_and_live_ones_kept(tmp_path):
    from gateway.server import RUN_DIR_PREFIX, remove_leftovers

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"{RUN_DIR_PREFIX}{gone.pid}-abc123"
    dead_metrics = tmp_path / f"{RUN_DIR_PREFIX}metrics-{gone.pid}-def456"
    live = tmp_path / f"{RUN_DIR_PREFIX}{os.getppid()}-ghi789"
    other = tmp_path / "platebridge-gateway-notes"
    for d in (dead, dead_metrics, live, other):
        d.mkdir()
    (dead / "x.data").write_bytes(b"segment")
    assert sorted(remove_leftovers(str(tmp_path))) == sorted([dead.name, dead_metrics.name])
    assert not dead.exists() and not dead_metrics.exists() and live.exists() and other.exists()
