"""gateway.upstream.Upstream against real sockets on loopback: a pod that accepts the
connection and never answers must end the fetch with UpstreamTimeout (→ 504) after the
configured read timeout, not hang every viewer that shares the flight."""

from __future__ import annotations

import asyncio
import time

from gateway.cache import Flight
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.upstream import Upstream
from protocol.tokens import Keyring


async def _silent_pod(host: str = "127.0.0.3"):
    """A TCP server that reads the request and never writes a byte."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(65536)

    server = await asyncio.start_server(handle, host, 0)
    return server, held


async def test_a_pod_that_never_answers_times_out_with_the_clients_read_timeout():
    server, held = await _silent_pod()
    port = server.sockets[0].getsockname()[1]
    up = Upstream(Keyring.single("k" * 40), connect_timeout=1.0, read_timeout=0.5)
    flight = Flight()
    url = Upstream.url(f"http://127.0.0.3:{port}", "gate-1", "seg_1.m4s", "")
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(up.fill(flight, url, pod_id="pod-1", camera_id="gate-1"), timeout=10)
    finally:
        server.close()
        for w in held:
            w.close()
        await up.client.aclose()
    elapsed = time.monotonic() - t0
    assert flight.done
    assert isinstance(flight.error, UpstreamTimeout), flight.error
    assert 0.4 <= elapsed < 5, elapsed


async def test_a_refused_connection_is_an_upstream_error_not_a_timeout():
    server, _ = await _silent_pod()
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    up = Upstream(Keyring.single("k" * 40), connect_timeout=1.0, read_timeout=0.5)
    flight = Flight()
    try:
        await up.fill(flight, Upstream.url(f"http://127.0.0.3:{port}", "gate-1", "seg_1.m4s", ""),
                      pod_id="pod-1", camera_id="gate-1")
    finally:
        await up.client.aclose()
    assert isinstance(flight.error, UpstreamError) and not isinstance(flight.error, UpstreamTimeout)
