"""The upstream client's network backend reads only what it is asked for (gateway/netstream.py).

A local server streams an endless body as fast as the socket takes it. After one read of
64 KiB and a pause, the bounded backend holds at most its reader's pause threshold plus one
socket read; httpx's default backend (anyio), under uvloop, is shown to hold megabytes
(the control: the failure this backend exists for)."""

from __future__ import annotations

import asyncio
import contextlib

import httpcore
import uvloop

from gateway.netstream import READ_LIMIT, BoundedBackend, bounded_transport

CHUNK = b"\x47" * 65536


async def _endless_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(CHUNK)
                await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _buffered(stream) -> int:
    """Bytes a network stream has read from its socket but not handed out yet."""
    if hasattr(stream, "_reader"):
        return len(stream._reader._buffer)
    protocol = stream._stream._protocol  # anyio's SocketStream
    return sum(len(b) for b in protocol.read_queue)


def _read_ahead(backend: httpcore.AsyncNetworkBackend) -> int:
    async def main() -> int:
        server, port = await _endless_server()
        async with server:
            stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
            try:
                worst = 0
                for _ in range(20):
                    assert len(await stream.read(65536, timeout=5)) > 0
                    await asyncio.sleep(0.01)  # the consumer is busy elsewhere (sending to a viewer)
                    worst = max(worst, _buffered(stream))
                return worst
            finally:
                await stream.aclose()

    return uvloop.run(main())


def test_bounded_backend_holds_little_unread_data():
    held = _read_ahead(BoundedBackend())
    assert held <= 2 * READ_LIMIT + 256 * 1024, held


def test_control_the_default_backend_reads_ahead_by_megabytes():
    held = _read_ahead(httpcore.AnyIOBackend())
    assert held > 1024 * 1024, held


async def test_the_transport_works_and_is_bounded():
    """httpx's transport with the backend swapped in still speaks HTTP (and the swap is in place)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    import httpx

    transport = bounded_transport(limits=httpx.Limits(max_connections=4))
    assert isinstance(transport._pool._network_backend, BoundedBackend)
    async with server, httpx.AsyncClient(transport=transport) as client:
        r = await client.get(f"http://127.0.0.1:{port}/x")
    assert r.status_code == 200 and r.content == b"hello"
