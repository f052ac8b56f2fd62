"""``platebridge-gateway`` command line.

    platebridge-gateway --config gateway.yaml [--host 127.0.0.1] [--port 8080]
                        [--server uvicorn|granian] [--workers N] [--loop uvloop|asyncio]
    platebridge-gateway check --config gateway.yaml

Environment variables override the file (see :mod:`gateway.config`). Exit
codes: 0 after Ctrl-C, 143 after SIGTERM (uvicorn re-raises the signal once it
has shut down cleanly; systemd units list it in ``SuccessExitStatus``), 2 bad
config (message names the key path). ``check`` (see :mod:`gateway.check`): 0 all
passed, 1 a check failed, 2 bad config.

The default server is uvicorn (uvloop + httptools) with one process, the app
built here; ``loop: asyncio`` swaps uvloop for the standard event loop.
``server: granian`` (needs the ``bench`` extra's ``granian``) and ``--workers`` > 1
(benchmarks only: each worker has its own cache) start workers that each build the app from
:func:`gateway.asgi.create_app_from_env`, the config path passed in env
``PLATEBRIDGE_GATEWAY_CONFIG``; each worker then has its own caches (see
``docs/benchmarks.md`` before raising ``workers``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gateway.config import CONFIG_PATH_ENV, GatewayConfig, load_config
from gateway.errors import ConfigError
from protocol.logfmt import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check":
        return _check(argv[1:])
    p = argparse.ArgumentParser(prog="platebridge-gateway", description="PlateBridge tailnet HLS gateway",
                                epilog="platebridge-gateway check --config gateway.yaml: check config, secret, "
                                       "discovery and every pod (one PASS/WARN/FAIL line each)")
    p.add_argument("--config", "-c", help="path to gateway.yaml (optional if env configures everything)")
    p.add_argument("--host", help="listen address (overrides config)")
    p.add_argument("--port", type=int, help="listen port (overrides config)")
    p.add_argument("--server", choices=("uvicorn", "granian"), help="HTTP server (overrides config `server`)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, for benchmarks only: each has its own cache (grants are stateless, "
                        "but without grant_secret or pod_signing_key_file each worker has its own grant key)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), help="event loop (overrides config `loop`)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.workers is not None and not 1 <= args.workers <= 64:
            raise ConfigError("--workers: must be 1-64 worker processes")
    except ConfigError as exc:
        print(f"platebridge-gateway: config error: {exc}", file=sys.stderr)
        return 2
    server = args.server or cfg.server
    workers = args.workers
    loop = args.loop or cfg.loop
    host, port = args.host or cfg.host, args.port or cfg.port
    setup_logging(cfg.log_level)
    if workers > 1:
        logging.getLogger("platebridge.gateway").warning(
            "%d workers: each has its own segment cache (up to %d pod fetches per segment)", workers, workers)
    if server == "granian" or workers > 1:
        # workers import the app by name and load the same config (file + the inherited env)
        if args.config:
            os.environ[CONFIG_PATH_ENV] = str(Path(args.config).resolve())
        else:
            os.environ.pop(CONFIG_PATH_ENV, None)  # env alone, as loaded here
    if server == "granian":
        return _run_granian(cfg, host, port, workers, loop)
    import uvicorn

    common: dict[str, Any] = {"host": host, "port": port, "loop": loop, "http": "httptools", "access_log": False,
              "log_config": None, "log_level": cfg.log_level.lower(), "proxy_headers": False,
              "limit_concurrency": cfg.limit_concurrency, "timeout_keep_alive": cfg.timeout_keep_alive}
    if workers > 1:
        uvicorn.run(FACTORY, factory=True, workers=workers, **common)
        return 0
    from gateway.app import create_app

    uvicorn.run(create_app(cfg), **common)
    return 0


FACTORY = "gateway.asgi:create_app_from_env"


def _run_granian(cfg: GatewayConfig, host: str, port: int, workers: int, loop: str) -> int:
    """Serve with granian (ASGI interface, HTTP/1.1, ``loop`` for the app); returns the exit code."""
    try:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops
        from granian.log import LogLevels
    except ImportError:
        print("platebridge-gateway: config error: $.server: granian is not installed "
              "(pip install granian, or the bench extra)", file=sys.stderr)
        return 2
    Granian(
        FACTORY, factory=True, address=host, port=port, interface=Interfaces.ASGI, loop=Loops(loop),
        http=HTTPModes.http1, websockets=False, workers=workers, backpressure=cfg.limit_concurrency,
        log_enabled=True, log_level=LogLevels(cfg.log_level.lower()), log_access=False,
    ).serve()
    return 0


def _check(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="platebridge-gateway check",
                                description="check config, secret, discovery and a test fetch of each pod's /health")
    p.add_argument("--config", "-c", help="path to gateway.yaml (optional if env configures everything)")
    args = p.parse_args(argv)
    from gateway.check import main as check_main

    return check_main(args.config)


if __name__ == "__main__":
    sys.exit(main())
