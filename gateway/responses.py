"""ASGI response helpers for the raw stream routes, and CORS.

Every response of ``/streams/…`` is sent through these helpers, so each one gets
the common security headers and the CORS headers (exact-origin echo plus
``Vary: Origin``), errors and redirects included (hls.js sees a status of 0 for
a cross-origin error without them).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable

from gateway.errors import GatewayError, status_of

Headers = list[tuple[bytes, bytes]]
COMMON: Headers = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
PREFLIGHT: Headers = [(b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
                      (b"access-control-allow-headers", b"Range, Authorization"),
                      (b"access-control-max-age", b"600")]


class Cors:
    """CORS for a fixed list of exact origins (``https://portal.example.com``)."""

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        self.origins = {o.encode() for o in allowed_origins}

    def headers(self, scope) -> Headers:
        """``Vary: Origin`` always; ``Access-Control-Allow-Origin`` (and the exposed headers
        a player needs for ranges) when the request's ``Origin`` is allowed."""
        origin = None
        for k, v in scope.get("headers", ()):
            if k == b"origin":
                origin = v
                break
        out = [(b"vary", b"Origin")]
        if origin is not None and origin in self.origins:
            out += [(b"access-control-allow-origin", origin),
                    (b"access-control-expose-headers", b"Content-Length, Content-Range, Accept-Ranges")]
        return out


async def send_start(send, status: int, headers: Headers) -> None:
    """``http.response.start`` with ``headers`` plus the common security headers."""
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *COMMON]})


async def send_body(send, status: int, body: bytes, headers: Headers, *, head: bool = False) -> None:
    """A complete response with ``Content-Length`` (no body bytes for HEAD)."""
    await send_start(send, status, [*headers, (b"content-length", str(len(body)).encode())])
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_stream(send, status: int, headers: Headers, chunks: AsyncIterator[bytes], *,
                      limit: int | None = None, count: Callable[[int], object] | None = None) -> int:
    """A response whose body is ``chunks`` as they arrive, at most ``limit`` bytes of it; returns
    the body bytes sent, and hands each chunk's size (bytes) to ``count`` as it goes out.

    ``http.response.start`` goes out only once the first chunk is in (or the body ended empty).
    An error the iterator raises before its first byte therefore still propagates before
    anything was sent, and becomes an error answer (503 for a full memory budget, 502 for a
    broken pod) instead of a started response with no body, which servers turn into a 500. An
    error after that propagates mid-body: the caller closes the connection unfinished."""
    sent = 0
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]  # async generators
        first = await anext(chunks, b"")
        await send_start(send, status, headers)
        chunk = first
        while True:
            if limit is not None:
                chunk = chunk[:limit - sent]
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
                if count is not None:
                    count(len(chunk))
            if limit is not None and sent >= limit:
                break
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
    await send({"type": "http.response.body", "body": b""})
    return sent


async def send_text(send, status: int, text: str, headers: Headers, *, head: bool = False) -> None:
    """A short ``text/plain`` answer that is never cached."""
    await send_body(send, status, (text + "\n").encode(),
                    [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store"), *headers],
                    head=head)


async def send_error(send, exc: GatewayError, cors: Headers, *, head: bool = False) -> int:
    """Answer ``exc`` with its status (:func:`gateway.errors.status_of`), its headers and its
    message; returns the status."""
    status = status_of(exc)
    await send_text(send, status, str(exc) or "error", [*cors, *exc.headers], head=head)
    return status

