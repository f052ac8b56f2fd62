"""``platebridge-gateway`` command line.

    platebridge-gateway --config gateway.yaml [--host 127.0.0.1] [--port 8080]
                        [--server granian|uvicorn] [--workers N] [--loop uvloop|asyncio]
    platebridge-gateway check --config gateway.yaml
    platebridge-gateway nginx-conf --config gateway.yaml --out DIR [--listen 127.0.0.1:8443]

Environment variables override the file (see :mod:`gateway.config`). Exit
codes: 0 after Ctrl-C or SIGTERM (granian, the default server; uvicorn re-raises
SIGTERM once it has shut down cleanly, exit 143, which systemd units list in
``SuccessExitStatus``), 2 bad config or a server that is not installed (message names
the key path). ``check`` (see :mod:`gateway.check`): 0 all passed, 1 a check failed, 2
bad config.

The server is granian (HTTP/1.1, ASGI, the app on uvloop) by default; ``server: uvicorn``
(httptools) stays selectable, ``loop: asyncio`` swaps uvloop for the standard event loop.
:mod:`gateway.server` runs them and says why granian is the default. ``--workers`` (default
one per CPU) worker processes share one host store (:mod:`gateway.hoststore`): one pod fetch
per segment per host. In front of them, by default, the gateway runs nginx as its data plane
when nginx and its Lua module are installed (``data_plane: auto``, :mod:`gateway.dataplane`): nginx
takes ``--host``/``--port``, the workers listen on ``127.0.0.1:<internal_port>``; exit 1 when
that nginx died while the gateway ran.
"""

from __future__ import annotations

import argparse
import os
import sys

from gateway.config import MAX_WORKERS, load_config
from gateway.errors import ConfigError
from gateway.server import ServerUnavailable, port_taken, serve
from protocol.logfmt import setup_logging

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check":
        return _check(argv[1:])
    if argv and argv[0] == "nginx-conf":
        from gateway.nginxconf import main as nginx_conf_main

        return nginx_conf_main(argv[1:])
    p = argparse.ArgumentParser(prog="platebridge-gateway", description="PlateBridge tailnet HLS gateway",
                                epilog="platebridge-gateway check --config gateway.yaml: check config, secret, "
                                       "discovery and every pod (one PASS/WARN/FAIL line each); "
                                       "platebridge-gateway nginx-conf --config gateway.yaml --out DIR: write "
                                       "the nginx data plane's config (data_plane: nginx)")
    p.add_argument("--config", "-c", help="path to gateway.yaml (optional if env configures everything)")
    p.add_argument("--host", help="listen address (overrides config)")
    p.add_argument("--port", type=int, help="listen port (overrides config)")
    p.add_argument("--server", choices=("granian", "uvicorn"), help="HTTP server (overrides config `server`)")
    p.add_argument("--workers", type=int,
                   help="worker processes (overrides config `workers`; default one per CPU); they share one "
                        "host store, so each segment costs one pod fetch per host")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), help="event loop (overrides config `loop`)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers: must be 1-{MAX_WORKERS} worker processes")
    except ConfigError as exc:
        print(f"platebridge-gateway: config error: {exc}", file=sys.stderr)
        return 2
    host, port = args.host or cfg.host, args.port or cfg.port
    for where, addr in (("--port" if args.port else "$.port", (host, port)),
                        ("$.internal_port", ("127.0.0.1", cfg.internal_port))):
        taken = port_taken(*addr)
        if taken:
            print(f"platebridge-gateway: {where}: {taken}", file=sys.stderr)
            return 2
    setup_logging(cfg.log_level)
    try:
        workers = worker_count(args.workers, cfg.workers)
        return serve(cfg, host=host, port=port, server=args.server or cfg.server, workers=workers,
                     loop=args.loop or cfg.loop, config_path=args.config)
    except ServerUnavailable as exc:
        print(f"platebridge-gateway: config error: $.server: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:  # found before any worker starts, e.g. an unusable host_cache_dir
        print(f"platebridge-gateway: config error: {exc}", file=sys.stderr)
        return 2


def worker_count(flag: int | None, configured: int | None) -> int:
    """Worker processes to run: the ``--workers`` flag, else config ``workers``, else one per
    CPU this process may run on (its affinity: a container's cpuset, ``taskset``; not a CFS
    quota), at most :data:`~gateway.config.MAX_WORKERS`."""
    return flag or configured or min(_usable_cpus(), MAX_WORKERS)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _check(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="platebridge-gateway check",
                                description="check config, secret, discovery and a test fetch of each pod's /health")
    p.add_argument("--config", "-c", help="path to gateway.yaml (optional if env configures everything)")
    args = p.parse_args(argv)
    from gateway.check import main as check_main

    return check_main(args.config)


if __name__ == "__main__":
    sys.exit(main())
