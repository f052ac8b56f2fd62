"""``platebridge-gateway`` command line.

    platebridge-gateway --config gateway.yaml [--host 127.0.0.1] [--port 8080]
    platebridge-gateway check --config gateway.yaml

Environment variables override the file (see :mod:`gateway.config`). Exit
codes: 0 after Ctrl-C, 143 after SIGTERM (uvicorn re-raises the signal once it
has shut down cleanly; systemd units list it in ``SuccessExitStatus``), 2 bad
config (message names the key path). ``check`` (see :mod:`gateway.check`): 0 all
passed, 1 a check failed, 2 bad config.
"""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.config import load_config
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
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"platebridge-gateway: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    for kid in cfg.weak_secrets():
        logging.getLogger("platebridge.gateway").warning(
            "stream secret %r is shorter than 32 bytes; use a long random secret (e.g. openssl rand -base64 48)", kid)
    import uvicorn

    from gateway.app import create_app

    uvicorn.run(
        create_app(cfg), host=args.host or cfg.host, port=args.port or cfg.port, loop="uvloop", http="httptools",
        access_log=False, log_config=None, log_level=cfg.log_level.lower(), proxy_headers=False,
        limit_concurrency=cfg.limit_concurrency, timeout_keep_alive=cfg.timeout_keep_alive,
    )
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
