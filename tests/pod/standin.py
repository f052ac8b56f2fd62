"""The portal stand-in (deploy/dev/portal_standin.py) served by uvicorn on
127.0.0.1:<free port> inside the test's own event loop. Shared by the pod's
portal-client and upload tests."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))
from portal_standin import PortalStandIn, create_app  # noqa: E402

__all__ = ["PortalStandIn", "Served", "free_port"]


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """The stand-in app on loopback. ``db`` is its SQLite file; passing the same
    ``db`` and ``port`` again restarts "the same portal". Other keyword arguments
    go to ``PortalStandIn``."""

    def __init__(self, db: Path, *, api_key: str, stream_secret: str, port: int | None = None,
                 gateway_url: str = "https://gateway.example", **kw) -> None:
        self.db = db
        self.state = PortalStandIn(db_path=db, api_key=api_key, stream_secret=stream_secret,
                                   gateway_url=gateway_url, **kw)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(
            create_app(self.state), host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
            lifespan="on", timeout_graceful_shutdown=1))
        self.task: asyncio.Task | None = None

    async def start(self) -> Served:
        """Serve until ``stop``; returns once uvicorn is listening (AssertionError after 10 s)."""
        self.task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "stand-in did not start"
            assert not self.task.done(), "stand-in exited"
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        """Stop serving and close the stand-in's database."""
        if self.task is not None and not self.task.done():
            self.server.should_exit = True
            await asyncio.wait_for(self.task, 10)
        self.state.close()

    async def request(self, method: str, path: str, **kw) -> httpx.Response:
        """One request to the stand-in (no proxies from the environment)."""
        async with httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=10) as c:
            return await c.request(method, path, **kw)
