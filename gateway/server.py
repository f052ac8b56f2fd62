"""Running the gateway's HTTP server: granian (the default) or uvicorn.

:func:`serve` starts the server chosen by ``server`` / ``loop`` / ``--workers`` and blocks
until it stops. Why granian is the default: ``docs/benchmarks.md`` ("Gateway vs nginx").
In short, uvicorn on uvloop accepts one new connection per event-loop iteration (libuv ≥
1.45, libuv/libuv#3696), so under load a burst of new connections waits seconds in the
kernel's accept queue; granian accepts on its own Rust thread, and its tail stays close to
nginx's.

* **granian** (``server: granian``): ASGI over HTTP/1.1, ``loop`` runs the app. Granian
  always serves from worker processes (one by default) that build the app by name,
  :data:`FACTORY`, from the config file named in env ``PLATEBRIDGE_GATEWAY_CONFIG``;
  ``limit_concurrency`` becomes granian's ``backpressure`` (connections served at once;
  beyond it new connections wait in the listen backlog, unaccepted) and
  ``timeout_keep_alive`` its HTTP/1 header read timeout (a keep-alive connection idle that
  long, or a client that has not sent its headers by then, is closed). SIGTERM/SIGINT:
  graceful stop, exit 0.
* **uvicorn** (``server: uvicorn``): httptools, ``loop`` for the event loop; with one
  worker the app is built here, in this process; with ``--workers`` > 1 each spawned worker
  builds it from :data:`FACTORY`. ``limit_concurrency``: beyond it uvicorn answers 503.
  After SIGTERM uvicorn re-raises the signal once it has shut down (exit 143).

Worker processes die with the process that started them (:func:`die_with_supervisor`): a
``kill -9`` of the gateway never leaves a worker serving on the port.

In front of the server, by default (``data_plane: auto``, nginx and its Lua module installed), the
gateway runs nginx as its data plane (:mod:`gateway.dataplane`): nginx takes ``host:port``
and serves kept media segments itself, and the server above listens behind it on
``127.0.0.1:<internal_port>``. That is what keeps the default's p99 within 2× nginx's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import msgspec

from gateway.config import CONFIG_PATH_ENV, ENV_PREFIX, GatewayConfig, load_config
from gateway.dataplane import Found, ManagedNginx, find_nginx, free_loopback_port
from gateway.errors import ConfigError
from gateway.hoststore import open_store_dir

ServerKind = Literal["uvicorn", "granian"]
LoopKind = Literal["uvloop", "asyncio"]
#: the app factory worker processes import by name
FACTORY = "gateway.asgi:create_app_from_env"
#: pid of the process that started the workers; set by :func:`serve`, read by
#: :func:`die_with_supervisor` in each worker (not a config key: no ``PLATEBRIDGE_GATEWAY_`` prefix)
SUPERVISOR_PID_ENV = "PLATEBRIDGE_SUPERVISOR_PID"
#: prometheus_client's multiprocess directory (gateway.metrics.MULTIPROC_ENV). Not imported from
#: there: prometheus_client picks its value store when first imported, which must happen in each
#: worker after this variable is set, never in the process that forks them
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: granian's HTTP/1 header read timeout is at most 60 s
GRANIAN_MAX_HEADER_TIMEOUT = 60
#: s: granian kills a worker that has not stopped this long after SIGTERM (one still starting
#: up when the signal came would otherwise keep the gateway from exiting)
WORKERS_KILL_TIMEOUT = 10
#: listen backlog of either server (connections the kernel completes before they are accepted)
BACKLOG = 2048
#: listen backlog of the nginx data plane the gateway runs (as the bench's nginx baseline)
NGINX_BACKLOG = 4096

log = logging.getLogger("platebridge.gateway")
_PR_SET_PDEATHSIG = 1


class ServerUnavailable(Exception):
    """The chosen server's package cannot be imported; ``str(exc)`` says what to install."""


def serve(cfg: GatewayConfig, *, host: str, port: int, server: ServerKind, workers: int, loop: LoopKind,
          config_path: str | None) -> int:
    """Serve the gateway on ``host:port`` until stopped; returns the exit code (1 when the
    nginx data plane it ran exited on its own).

    ``config_path`` is the config file the workers load (None: the environment alone, as
    ``cfg`` was loaded). With ``data_plane: auto`` or ``managed`` and nginx installed, nginx
    (:mod:`gateway.dataplane`) takes ``host:port`` and the workers listen behind it on
    ``127.0.0.1:<internal_port>``. Raises :class:`ServerUnavailable` when ``server``'s package
    is not installed, :class:`~gateway.errors.ConfigError` for an unusable ``host_cache_dir``
    or, with ``data_plane: managed``, an nginx that is missing or refuses its config.
    """
    found = _data_plane_nginx(cfg)
    own_store = own_metrics = None
    nginx = None
    if server == "granian" or workers > 1 or found:
        # workers import the app by name and load the same config (file + the inherited env)
        if config_path:
            os.environ[CONFIG_PATH_ENV] = str(Path(config_path).resolve())
        else:
            os.environ.pop(CONFIG_PATH_ENV, None)
        os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())
        os.environ[ENV_PREFIX + "WORKERS"] = str(workers)  # each worker takes its share of cache_max_bytes
    if cfg.host_cache_dir is not None:
        # ConfigError now, not a traceback in every worker
        open_store_dir(cfg.host_cache_dir, group_read=cfg.data_plane == "nginx")
        if cfg.data_plane == "nginx":
            from gateway.nginxconf import store_access_problem

            problem = store_access_problem(cfg.host_cache_dir)
            log.info("data plane: nginx serves kept media segments from %s", cfg.host_cache_dir)
            if problem:
                log.warning("data plane: nginx cannot serve kept segments, so every segment comes to the "
                            "gateway: %s", problem)
    if workers > 1 or found:
        for parent in {tmpfs_dir() or tempfile.gettempdir(), cfg.host_cache_dir or ""} - {""}:
            remove_leftovers(parent)
        if cfg.host_cache_dir is None:  # one host store for this run's workers, gone when it ends
            own_store = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-", dir=tmpfs_dir())
            os.environ[ENV_PREFIX + "HOST_CACHE_DIR"] = own_store
        if not cfg.grant_keys_configured():
            # the workers (and nginx) must verify each other's grants: one random key for this run
            # (sessions end with it, as they would with one worker); config keys keep them across restarts
            os.environ[ENV_PREFIX + "GRANT_SECRET"] = secrets.token_urlsafe(48)
        if not os.environ.get(MULTIPROC_ENV):  # /metrics sums over the workers (prometheus_client)
            # next to the store (systemd: in its RuntimeDirectory), a fresh one for each run
            own_metrics = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}metrics-{os.getpid()}-",
                                           dir=cfg.host_cache_dir or tmpfs_dir())
            os.environ[MULTIPROC_ENV] = own_metrics
        if workers > 1:
            log.info("%d workers sharing the host store %s", workers, cfg.host_cache_dir or own_store)
    try:
        if found:
            nginx = _start_nginx(cfg, found, host=host, port=port, workers=workers,
                                 store=cfg.host_cache_dir or str(own_store))
            if nginx is not None:
                host, port = "127.0.0.1", int(nginx.internal.rsplit(":", 1)[1])
                if server == "uvicorn" and workers == 1:  # the app is built here: with nginx's store and key
                    cfg = load_config(config_path)
        if server == "granian":
            rc = _serve_granian(cfg, host, port, workers, loop)
        else:
            rc = _serve_uvicorn(cfg, host, port, workers, loop)
        return 1 if nginx is not None and nginx.failed else rc
    finally:
        if nginx is not None:
            nginx.stop()
        for own in (own_store, own_metrics):
            if own is not None:
                shutil.rmtree(own, ignore_errors=True)


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be this gateway's listening address, or None when it is free.

    Binds a plain socket there (``SO_REUSEADDR`` only, so a port in TIME_WAIT is free). nginx and
    granian listen with ``SO_REUSEPORT``, which lets a second process of the same user listen
    on the same port and take half the connections; a socket without it fails with
    EADDRINUSE against any listener, so a second gateway (or anything else) on the port is
    refused here instead of silently sharing it. A port 0 is always free."""
    if not port:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror}"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"{host}:{port} is in use (another gateway or service listens there); stop it or choose " \
                       "another port"
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


def _data_plane_nginx(cfg: GatewayConfig) -> Found | None:
    """The nginx this run starts as its data plane (``auto``/``managed``), or None.
    Raises :class:`ConfigError` for ``managed`` without a usable nginx."""
    if cfg.data_plane not in ("auto", "managed"):
        return None
    found = find_nginx(cfg)
    if isinstance(found, Found):
        return found
    if cfg.data_plane == "managed":
        raise ConfigError(f"$.data_plane: managed needs nginx with its Lua module: {found}")
    log.warning("data plane: the gateway serves every segment itself (slower, with a longer tail; "
                "docs/benchmarks.md): %s", found)
    return None


def _start_nginx(cfg: GatewayConfig, found: Found, *, host: str, port: int, workers: int,
                 store: str) -> ManagedNginx | None:
    """Prepare and start this run's nginx; None when ``auto`` falls back (nginx refused its config)."""
    keys = {} if cfg.grant_keys_configured() else {"grant_secret": os.environ[ENV_PREFIX + "GRANT_SECRET"],
                                                    "grant_secrets": None}
    effective = msgspec.structs.replace(cfg, host_cache_dir=store, **keys)
    # next to the store, as the metrics directory (systemd: in its RuntimeDirectory); nginx serves
    # only files Lua names from a grant (<hash>.data), never this directory's
    run_dir = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}nginx-{os.getpid()}-", dir=cfg.host_cache_dir or tmpfs_dir())
    nginx = ManagedNginx(effective, found, run_dir=run_dir, host=host, port=port,
                         internal_port=cfg.internal_port or free_loopback_port(), workers=workers,
                         backlog=NGINX_BACKLOG)
    try:
        nginx.prepare()
    except ConfigError as exc:
        nginx.stop()
        if cfg.data_plane == "managed":
            raise
        log.warning("data plane: the gateway serves every segment itself: %s", exc)
        return None
    nginx.start()
    return nginx


#: where a run's own host store goes (a tmpfs on Linux); mkdtemp makes a fresh 0700 directory in it
SHM_DIR = "/dev/shm"  # noqa: S108 - a private mkdtemp directory inside it, never a fixed name
#: names of a run's own directories: ``<prefix>[metrics-|nginx-]<supervisor pid>-<random>``
RUN_DIR_PREFIX = "platebridge-gateway-"
_RUN_DIR = re.compile(rf"^{re.escape(RUN_DIR_PREFIX)}(?:metrics-|nginx-)?(\d+)-[A-Za-z0-9_]+$")


def remove_leftovers(parent: str) -> list[str]:
    """Delete this user's run directories in ``parent`` (host stores, metrics) whose supervisor
    is gone: one killed with SIGKILL never ran its cleanup, and a tmpfs holds them in RAM.
    Returns the names removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            m = _RUN_DIR.match(entry.name)
            if not m or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.geteuid():
                    shutil.rmtree(entry.path)
                    removed.append(entry.name)
    if removed:
        log.info("removed %d host store/metrics directories of gateways that were killed: %s", len(removed),
                 ", ".join(removed[:5]))
    return removed


def tmpfs_dir() -> str | None:
    """:data:`SHM_DIR` when this user can write there, else None (the default temp dir): where a
    run without ``host_cache_dir`` keeps its host store, nginx run directory and metrics."""
    return SHM_DIR if os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK) else None


def _serve_granian(cfg: GatewayConfig, host: str, port: int, workers: int, loop: LoopKind) -> int:
    try:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops
        from granian.http import HTTP1Settings
        from granian.log import LogLevels
    except ImportError:
        raise ServerUnavailable("granian is not installed (pip install granian)") from None
    header_timeout_ms = 1000 * min(cfg.timeout_keep_alive, GRANIAN_MAX_HEADER_TIMEOUT)
    Granian(
        FACTORY, factory=True, address=host, port=port, interface=Interfaces.ASGI, loop=Loops(loop),
        http=HTTPModes.http1, websockets=False, workers=workers, backpressure=cfg.limit_concurrency,
        backlog=BACKLOG, workers_kill_timeout=WORKERS_KILL_TIMEOUT, respawn_failed_workers=True,
        http1_settings=HTTP1Settings(header_read_timeout=header_timeout_ms),
        log_enabled=True, log_level=LogLevels(cfg.log_level.lower()), log_access=False,
    ).serve()
    return 0


def _serve_uvicorn(cfg: GatewayConfig, host: str, port: int, workers: int, loop: LoopKind) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ServerUnavailable("uvicorn is not installed (pip install uvicorn)") from None
    common: dict[str, Any] = {
        "host": host, "port": port, "loop": loop, "http": "httptools", "access_log": False, "log_config": None,
        "log_level": cfg.log_level.lower(), "proxy_headers": False, "limit_concurrency": cfg.limit_concurrency,
        "timeout_keep_alive": cfg.timeout_keep_alive, "backlog": BACKLOG}
    if workers > 1:
        uvicorn.run(FACTORY, factory=True, workers=workers, **common)
        return 0
    from gateway.app import create_app

    uvicorn.run(create_app(cfg), **common)
    return 0


def die_with_supervisor() -> None:
    """In a worker process started by :func:`serve`: ask Linux to send SIGKILL when the
    process that started it dies (``PR_SET_PDEATHSIG``), so a worker never outlives a
    killed gateway and keeps its port. SIGKILL, not SIGTERM: a granian worker catches
    SIGTERM and then waits for its dead supervisor for ever; and a graceful stop never
    needs this signal (the supervisor stops its workers before it exits). Does nothing outside such a worker (env
    ``PLATEBRIDGE_SUPERVISOR_PID`` unset or not the parent's pid) or off Linux. If the
    supervisor is already gone, this process exits at once (:func:`os._exit`)."""
    want = os.environ.get(SUPERVISOR_PID_ENV, "")
    if not want.isdigit() or not sys.platform.startswith("linux") or os.getpid() == int(want):
        return
    if os.getppid() != int(want):
        if not _alive(int(want)):  # orphaned before we could ask
            _orphaned()
        return  # started some other way (e.g. by hand with the variable set): not ours to tie
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("could not tie this worker to its supervisor (prctl errno %d)", ctypes.get_errno())
    elif os.getppid() != int(want):  # the supervisor died between the check and prctl
        _orphaned()


def _orphaned() -> None:
    """Leave at once: the supervisor died while this worker was starting. A SIGTERM here would
    reach a server that has not set up its shutdown yet (granian then never stops the worker)."""
    log.warning("worker %d: the gateway that started it is gone; exiting", os.getpid())
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
