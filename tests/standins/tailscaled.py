"""STAND-IN for tailscaled's LocalAPI (tests only; never shipped).

Serves ``GET /localapi/v0/status`` over a unix socket with the shape of
tailscale's ``ipnstate.Status`` (``Self`` and ``Peer`` keyed by node key, each a
``PeerStatus`` with ``HostName``, ``DNSName``, ``TailscaleIPs``, ``Tags``,
``Online``), as documented in tailscale.com/ipn/ipnstate. Only the fields
PlateBridge reads are filled in.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import uvicorn
from litestar import Litestar, get


def status_body(self_ips: list[str], peers: list[dict]) -> dict:
    """An ipnstate.Status-shaped body. ``peers``: dicts with HostName, TailscaleIPs, Tags, Online."""
    return {
        "Version": "1.80.0-standin",
        "BackendState": "Running",
        "TailscaleIPs": self_ips,
        "Self": {"HostName": "gateway", "DNSName": "gateway.tail0000.ts.net.", "TailscaleIPs": self_ips,
                 "Online": True, "Tags": ["tag:gateway"]},
        "Peer": {f"nodekey:{i:04x}": {"DNSName": f"{p['HostName']}.tail0000.ts.net.", **p}
                 for i, p in enumerate(peers)},
    }


class LocalAPIStandIn:
    """Serve a mutable status body on ``socket_path`` (``async with`` starts/stops it)."""

    def __init__(self, socket_path: Path, body: dict) -> None:
        self.socket_path, self.body, self.requests = socket_path, body, 0

        @get("/localapi/v0/status", sync_to_thread=False)
        def status() -> dict:
            self.requests += 1
            return self.body

        # logging_config=None: Litestar's default would replace the root handlers (and pytest's caplog)
        app = Litestar([status], logging_config=None)
        self._server = uvicorn.Server(uvicorn.Config(app, uds=str(socket_path), log_level="error", lifespan="off"))
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> LocalAPIStandIn:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 5)
