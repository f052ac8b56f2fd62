"""Import-by-name ASGI entry point for servers that build the app in each worker process.

``platebridge-gateway`` uses it for ``server: granian`` (the default) and for ``workers`` > 1
(uvicorn), see :mod:`gateway.server`; it also works by hand::

    PLATEBRIDGE_GATEWAY_CONFIG=gateway.yaml \\
        granian --interface asgi --loop uvloop --factory gateway.asgi:create_app_from_env
    PLATEBRIDGE_GATEWAY_CONFIG=gateway.yaml uvicorn --factory gateway.asgi:create_app_from_env

The config file is named by env ``PLATEBRIDGE_GATEWAY_CONFIG`` (optional: the
usual ``PLATEBRIDGE_GATEWAY_<KEY>`` / ``POD_STREAM_SECRET`` overrides alone may
configure the gateway). Each worker process builds its own app; with several workers
they share one host store (``host_cache_dir``, :mod:`gateway.hoststore`), so a segment
costs one pod fetch per host. A worker started by ``platebridge-gateway`` dies with it
(:func:`gateway.server.die_with_supervisor`).
"""

from __future__ import annotations

import asyncio
import logging
import os

from gateway.app import GatewayASGI, create_app
from gateway.config import CONFIG_PATH_ENV, load_config
from gateway.server import die_with_supervisor
from protocol.logfmt import setup_logging


def create_app_from_env() -> GatewayASGI:
    """Load the config named by ``$PLATEBRIDGE_GATEWAY_CONFIG`` (plus env overrides), set up
    logging and return the gateway ASGI app. Raises :class:`gateway.errors.ConfigError`."""
    die_with_supervisor()
    cfg = load_config(os.environ.get(CONFIG_PATH_ENV) or None)
    setup_logging(cfg.log_level)
    app = create_app(cfg)
    app.litestar.on_startup.append(_log_worker_start)
    return app


def _log_worker_start() -> None:
    loop = type(asyncio.get_running_loop())
    logging.getLogger("platebridge.gateway").info("worker %d serving (event loop %s.%s)", os.getpid(),
                                                  loop.__module__, loop.__qualname__)
