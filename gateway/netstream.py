"""The upstream client's sockets: asyncio streams with flow control, so a pod cannot push more
into the gateway than the gateway has asked for.

httpx's default network layer (anyio) queues everything the event loop reads from a
socket and resumes reading for each ``receive``. Under uvloop, libuv then reads up to 32
times in a row while a fast sender keeps the socket full, so a pod streaming an endless
body at loopback or LAN speed lands up to ~8 MiB per connection in the gateway beyond what
it consumed, which the per-kind body caps and ``cache_max_bytes`` never see (measured:
16 endless segments grew the gateway by 160 MiB with 32 MiB of bodies accounted).

:class:`BoundedBackend` is an ``httpcore`` network backend on :func:`asyncio.open_connection`,
whose ``StreamReader`` pauses the transport once it holds ``2 × READ_LIMIT`` bytes (which
also stops libuv's read loop), so each upstream connection holds at most
:data:`READ_LIMIT` × 2 plus one read of unconsumed bytes. :func:`bounded_transport` is
httpx's own transport with that backend.

:class:`Attempt` (through :data:`ATTEMPT`, a context variable the caller sets around one
request) records whether that request opened a new connection and how many bytes it read, so
that the caller can tell a stale keep-alive connection (reused, closed before a single byte
of the answer) from a pod that failed (RFC 9112 §9.3.1 allows resending only the former).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from httpcore._utils import is_socket_readable

READ_LIMIT = 64 * 1024
"""``StreamReader`` limit (bytes): reading pauses above twice this much unconsumed data."""

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


@dataclass
class Attempt:
    """What one request did on the network: ``connected`` (it opened a new connection) and
    ``received`` (bytes of the answer read). httpcore connects and reads in the requesting
    task (HTTP/1.1), so a :data:`ATTEMPT` set in that task sees them."""

    connected: bool = False
    received: int = 0

    def stale(self) -> bool:
        """A reused connection that ended before any byte of the answer: resending is safe."""
        return not self.connected and not self.received


#: the :class:`Attempt` of the request being sent in this task (None: not recorded)
ATTEMPT: ContextVar[Attempt | None] = ContextVar("platebridge_upstream_attempt", default=None)


class BoundedStream(httpcore.AsyncNetworkStream):
    """One connection: reads at most ``max_bytes`` from a flow-controlled ``StreamReader``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.discard = False  # never reuse: the pod sent more than its answer (see discard_overrun)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                data = await self._reader.read(max_bytes)
            attempt = ATTEMPT.get()
            if attempt is not None:
                attempt.received += len(data)
            return data
        except TimeoutError:
            raise httpcore.ReadTimeout("read timed out") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout("write timed out") from None
        except (OSError, RuntimeError) as exc:
            raise httpcore.WriteError(str(exc)) from None

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await self._writer.wait_closed()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(f"TLS handshake failed: {type(exc).__name__}") from None
        return self

    def get_extra_info(self, info: str) -> Any:
        sock = self._writer.get_extra_info("socket")
        if info == "socket":
            return sock
        if info == "is_readable":
            # httpcore asks before reusing an idle connection: bytes the pod sent unasked (a
            # second answer, a body longer than its Content-Length) or its EOF may already sit
            # in the StreamReader, not the socket; such a connection must not carry the next
            # request, or every answer on it would belong to the one before
            return (self.discard or self._reader.at_eof() or bool(getattr(self._reader, "_buffer", b""))
                    or is_socket_readable(sock))
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info in ("client_addr", "server_addr"):
            return self._writer.get_extra_info("sockname" if info == "client_addr" else "peername")
        return None


def discard_overrun(transport: httpx.AsyncBaseTransport, response: httpx.Response) -> bool:
    """Mark ``response``'s connection never to be reused when the pod sent bytes after the end
    of the answer (a second, unasked answer; a body longer than its Content-Length) that the
    HTTP parser already holds: the next request on it would get them as its answer. Call
    before the response is closed (closing hands the connection back to the pool). Returns
    True when it marked one. httpcore keeps the parser per connection and has no public way to
    ask, so this looks it up in the pool; if httpcore changes shape it finds nothing (the
    :meth:`BoundedStream.get_extra_info` check for unread bytes in the socket still holds)."""
    found = response.extensions.get("network_stream")
    if not isinstance(found, BoundedStream):
        return False
    stream: BoundedStream = found
    for conn in getattr(getattr(transport, "_pool", None), "connections", ()):
        inner = getattr(conn, "_connection", None)
        for _ in range(4):  # direct: pool → HTTPConnection → HTTP11Connection; a proxy adds a level
            if inner is None or getattr(inner, "_network_stream", None) is stream:
                break
            inner = getattr(inner, "_connection", None)
        if inner is None or getattr(inner, "_network_stream", None) is not stream:
            continue
        trailing = getattr(getattr(inner, "_h11_state", None), "trailing_data", (b"", False))
        if trailing[0]:
            stream.discard = True
            return True
    return False


async def drop_idle(transport: httpx.AsyncBaseTransport, url: httpx.URL) -> int:
    """Close every idle pooled connection to ``url``'s origin; returns how many. After one of
    them turned out stale (the pod closed it while it was idle), the others that idled as long
    are likely stale too: a resend must go out on a new connection, not the next stale one.
    Uses only httpcore's connection interface (``is_idle``, ``can_handle_request``, ``aclose``);
    the pool is httpx's transport's (``_pool``, as :func:`bounded_transport` replaces its backend)."""
    pool = getattr(transport, "_pool", None)
    if pool is None:
        return 0
    port = url.port or (443 if url.scheme == "https" else 80)
    origin = httpcore.Origin(url.raw_scheme, url.raw_host, port)
    dropped = 0
    for conn in list(pool.connections):
        if conn.is_idle() and conn.can_handle_request(origin):
            await conn.aclose()
            dropped += 1
    return dropped


class BoundedBackend(httpcore.AsyncNetworkBackend):
    """``httpcore`` network backend returning :class:`BoundedStream` connections."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[SocketOption] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, limit=READ_LIMIT, local_addr=(local_address, 0) if local_address else None)
        except TimeoutError:
            raise httpcore.ConnectTimeout("connect timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in socket_options or ():
            sock.setsockopt(*option)
        attempt = ATTEMPT.get()
        if attempt is not None:
            attempt.connected = True
        return BoundedStream(reader, writer)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[SocketOption] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=READ_LIMIT)
        except TimeoutError:
            raise httpcore.ConnectTimeout("connect timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        attempt = ATTEMPT.get()
        if attempt is not None:
            attempt.connected = True
        return BoundedStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def bounded_transport(*, limits: httpx.Limits, proxy: str | None = None) -> httpx.AsyncHTTPTransport:
    """httpx's ``AsyncHTTPTransport`` (direct, HTTP or SOCKS5 ``proxy``) on :class:`BoundedBackend`.

    httpx has no public parameter for a network backend: its connection pool's backend is
    replaced right after construction. Raises ``RuntimeError`` if httpx/httpcore change shape,
    so an upgrade cannot silently bring the unbounded read-ahead back.
    """
    transport = httpx.AsyncHTTPTransport(limits=limits, proxy=proxy)
    pool = getattr(transport, "_pool", None)
    if pool is None or not hasattr(pool, "_network_backend"):
        raise RuntimeError("httpx/httpcore changed: cannot install the bounded network backend")
    pool._network_backend = BoundedBackend()
    return transport
