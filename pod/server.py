"""Server lifecycle: a uvicorn server embedded in the pod's own event loop.

The pod owns signal handling (SIGTERM stops ffmpeg first), so uvicorn's own
signal capture is turned off and the sockets are created here, one per
listener: the tailnet address and 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn

#: s an idle keep-alive connection from a gateway stays open (uvicorn's default is 5 s). Above
#: the gateway's own idle limit (:data:`gateway.upstream.POD_KEEPALIVE_EXPIRY`), so the gateway
#: lets a connection go before the pod closes it under a request (RFC 9112 §9.3); longer than
#: a playlist reload interval, so the tailnet connection is rarely set up again.
KEEP_ALIVE_TIMEOUT = 15

class EmbeddedServer(uvicorn.Server):
    """uvicorn server that leaves signal handling to the caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket on ``host:port`` (IPv4 or IPv6). Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def make_server(app, *, log_level: str = "warning") -> EmbeddedServer:
    """An :class:`EmbeddedServer` for an ASGI app (no access log: the app logs, redacted)."""
    # lifespan off: the app has no startup/shutdown hooks, and the same app is served
    # by two servers (loopback and tailnet) whose lifespans would interleave
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", loop="none", http="httptools",
                            timeout_keep_alive=KEEP_ALIVE_TIMEOUT)
    return EmbeddedServer(config)
