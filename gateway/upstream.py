"""The gateway's only HTTP client towards pods (one shared ``httpx.AsyncClient``).

Requests go over the tailnet, optionally through ``upstream_proxy`` (tailscaled's
SOCKS5/HTTP proxy in userspace-networking mode). URLs are built with
``raw_path`` so the client's query string reaches the pod byte for byte (httpx
``params=`` would re-encode and replace it). Each request carries a fresh-enough
gateway→pod token (``aud`` = ``platebridge-pod``, ``exp`` ≤ 60 s, the pod's own
``pod_id``), signed with the gateway's Ed25519 key (or, in legacy mode, the shared
HS256 stream secret) and cached per (pod, camera) for half its lifetime.

Bounds, so that one slow, broken or hostile pod costs only its own viewers:

* at most ``pod_connections`` requests in flight per pod (the others queue), and apart
  from those at most ``pod_held_requests`` *held* ones: LL-HLS blocking playlist reloads
  and preload-hinted parts, which a pod keeps open until the media exists (RFC 8216bis
  §6.2.5.2), so that they never take the slots segment fetches need;
* one overall ``deadline`` per fetch (queueing, connect, headers and body), not
  only a per-read timeout, so a pod trickling one byte a second is cut off;
* a body cap per kind (``playlist``, ``segment``, ``init``), enforced from
  ``Content-Length`` before reading and again while reading;
* sockets that read only what is asked for (:mod:`gateway.netstream`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from gateway.cache import Flight
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamTooLarge
from gateway.netstream import ATTEMPT, Attempt, bounded_transport, discard_overrun, drop_idle
from protocol.tokens import ANY_CAMERA, Keyring, SigningKey, mint_pod_token

log = logging.getLogger("platebridge.gateway.upstream")

POD_TOKEN_TTL = 30.0
#: s an idle keep-alive connection to a pod is kept for reuse. Below the pod's own keep-alive
#: timeout (:data:`pod.server.KEEP_ALIVE_TIMEOUT`, 15 s; uvicorn's default of 5 s on older
#: pods), so the gateway lets a connection go before the pod closes it.
POD_KEEPALIVE_EXPIRY = 4.0
#: What a reused keep-alive connection raises when the pod closed it just as the request went
#: out. Sent again, once, on a new connection, for a GET only, and only when the connection was
#: reused and not one byte of the answer arrived (:meth:`netstream.Attempt.stale`): then the
#: pod never answered this request (RFC 9112 §9.3.1, "Retrying Requests"). The pod's other idle
#: connections, likely as stale, are closed first (:func:`netstream.drop_idle`). A new
#: connection that fails, or a malformed answer, is the pod failing: never resent.
_STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
#: s between two "fetch from pod failed" warnings for one pod (a dead pod is not a log flood)
_FAILURE_LOG_EVERY = 10.0
_T = TypeVar("_T")
BodyKind = Literal["playlist", "segment", "init", "other"]
DEFAULT_CAPS: dict[str, int] = {"playlist": 2 * 1024 * 1024, "segment": 32 * 1024 * 1024, "init": 1024 * 1024,
                                "other": 64 * 1024}
_PASS_HEADERS = ("content-length", "content-type", "etag", "retry-after", "date", "www-authenticate")


class Upstream:
    """Fetches from pods into :class:`~gateway.cache.Flight` objects.

    ``signer``: the gateway's :class:`SigningKey` (EdDSA) or the legacy HS256 :class:`Keyring`.
    ``connect_timeout``/``read_timeout``/``deadline`` are seconds; ``pod_connections``
    bounds concurrent requests per pod, ``pod_held_requests`` concurrent held ones (see the
    module doc); ``caps`` maps body kind → bytes (defaults in
    :data:`DEFAULT_CAPS`); ``transport`` lets tests count requests at the transport seam.
    """

    def __init__(
        self,
        signer: SigningKey | Keyring,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        deadline: float = 20.0,
        pod_connections: int = 8,
        pod_held_requests: int = 32,
        caps: dict[str, int] | None = None,
        proxy: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.signer = signer
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.pod_connections = pod_connections
        self.pod_held_requests = pod_held_requests
        self.caps = {**DEFAULT_CAPS, **(caps or {})}
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=64, keepalive_expiry=POD_KEEPALIVE_EXPIRY)
        self.client = httpx.AsyncClient(
            transport=transport or bounded_transport(limits=limits, proxy=proxy),
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=5.0, pool=deadline),
            follow_redirects=False,
            trust_env=False,
        )
        self._tokens: dict[tuple[str, str], tuple[float, str]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._held_slots: dict[str, asyncio.Semaphore] = {}
        self._failures_logged: dict[str, float] = {}
        self.requests = 0
        self.resent = 0  # GETs sent again after a stale keep-alive connection (see _STALE_CONNECTION)

    def _auth(self, pod_id: str, camera_id: str) -> str:
        now = time.time()
        hit = self._tokens.get((pod_id, camera_id))
        if hit is not None and hit[0] > now:
            return hit[1]
        header = "Bearer " + mint_pod_token(self.signer, camera_id=camera_id, pod_id=pod_id, ttl=POD_TOKEN_TTL, now=now)
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[(pod_id, camera_id)] = (now + POD_TOKEN_TTL / 2, header)
        return header

    def auth_header(self, pod_id: str, camera_id: str = ANY_CAMERA) -> str:
        """``Bearer <gateway→pod token>`` for ``pod_id`` (``camera_id`` ``"*"``: pod-wide)."""
        return self._auth(pod_id, camera_id)

    def _slot(self, pod_id: str, held: bool = False) -> asyncio.Semaphore:
        slots = self._held_slots if held else self._slots
        slot = slots.get(pod_id)
        if slot is None:
            slot = slots[pod_id] = asyncio.Semaphore(self.pod_held_requests if held else self.pod_connections)
        return slot

    @staticmethod
    def url(base_url: str, camera_id: str, rel_path: str, raw_query: str) -> httpx.URL:
        """``<base>/cameras/<camera_id>/<rel_path>?<raw_query>`` with the query untouched."""
        parts = urlsplit(base_url)
        raw = "/cameras/" + quote(camera_id, safe="") + "/" + quote(rel_path, safe="/")
        if raw_query:
            raw += "?" + raw_query
        return httpx.URL(scheme=parts.scheme, host=parts.hostname, port=parts.port, raw_path=raw.encode("ascii"))

    async def fill(
        self,
        flight: Flight,
        url: httpx.URL,
        *,
        pod_id: str,
        camera_id: str,
        kind: BodyKind = "segment",
        stale: Flight | None = None,
        read_timeout: float | None = None,
        deadline: float | None = None,
        held: bool = False,
    ) -> None:
        """GET ``url`` and stream status, headers and body into ``flight``.

        ``read_timeout`` and ``deadline`` (s) replace the client's for this request (a held
        request must outlast the pod's hold); ``held`` takes a slot of the held pool.

        With a complete ``stale`` flight that has an ETag, sends ``If-None-Match``
        and, on 304, copies the stale body into ``flight``. Never raises: failures
        finish the flight with :class:`UpstreamTimeout` (deadline or read timeout, → 504),
        :class:`UpstreamTooLarge` (body over the ``kind`` cap, → 502), ``Overloaded``
        (memory budget, → 503) or :class:`UpstreamError` (→ 502). A *reused* connection that
        breaks before any of the pod's answer arrived is retried once on a new one (a
        keep-alive connection the pod closed as the request went out); failures are logged, at
        most once per :data:`_FAILURE_LOG_EVERY` s per pod.
        """
        headers = {"authorization": self._auth(pod_id, camera_id), "accept-encoding": "identity"}
        if stale is not None and stale.etag and stale.error is None and stale.status == 200:
            headers["if-none-match"] = stale.etag
        # the client's timeouts unless overridden: timeout=None would switch every timeout off
        timeout: httpx.Timeout | httpx._client.UseClientDefault = (
            httpx.USE_CLIENT_DEFAULT if read_timeout is None else
            httpx.Timeout(connect=self.client.timeout.connect, read=read_timeout, write=5.0, pool=self.deadline))
        limit = deadline if deadline is not None else self.deadline
        cap = self.caps.get(kind, self.caps["other"])
        self.requests += 1
        try:
            async with asyncio.timeout(limit), self._slot(pod_id, held):
                await self._resending_stale(lambda: self._transfer(flight, url, headers, timeout, stale, cap, pod_id,
                                                                   kind), url)
        except TimeoutError:
            self._log_failure(pod_id, kind, f"no complete answer within {limit:g} s")
            flight.finish(UpstreamTimeout(f"pod did not deliver within {limit:g} s"))
            return
        except httpx.TimeoutException as exc:
            self._log_failure(pod_id, kind, type(exc).__name__)
            flight.finish(UpstreamTimeout("pod timed out"))
            return
        except httpx.HTTPError as exc:
            # the type only: h11's messages quote what the pod sent, which may be our request
            # (grant, token) echoed back
            self._log_failure(pod_id, kind, type(exc).__name__)
            flight.finish(UpstreamError(f"pod unreachable: {type(exc).__name__}"))
            return
        except GatewayError as exc:  # UpstreamTooLarge, Overloaded, an encoded body: our own texts
            self._log_failure(pod_id, kind, str(exc))
            flight.finish(exc)
            return
        if not flight.done:
            flight.finish()

    async def _resending_stale(self, send: Callable[[], Awaitable[_T]], url: httpx.URL) -> _T:
        """``await send()`` (one GET of ``url``), and once more, on a new connection, if it
        failed on a stale keep-alive connection (see :data:`_STALE_CONNECTION`). Raises what
        the last send raised."""
        attempt = Attempt()
        token = ATTEMPT.set(attempt)
        try:
            return await send()
        except _STALE_CONNECTION:
            if not attempt.stale():
                raise
        finally:
            ATTEMPT.reset(token)
        self.resent += 1
        await drop_idle(self.client._transport, url)
        return await send()

    def _log_failure(self, pod_id: str, kind: str, reason: str) -> None:
        """Warn that a fetch from ``pod_id`` failed (why the viewer got 502/504), once per
        :data:`_FAILURE_LOG_EVERY` s per pod. ``reason`` is the gateway's own text (an exception
        type or a GatewayError message), never the URL (its query is the viewer's), the
        gateway's token or bytes from the pod; at most 200 characters are logged."""
        now = time.monotonic()
        if now - self._failures_logged.get(pod_id, -_FAILURE_LOG_EVERY) < _FAILURE_LOG_EVERY:
            return
        if len(self._failures_logged) > 10_000:
            self._failures_logged.clear()
        self._failures_logged[pod_id] = now
        log.warning("%s fetch from pod %s failed: %s", kind, pod_id, reason[:200])

    async def _transfer(self, flight: Flight, url: httpx.URL, headers: dict[str, str],
                        timeout: httpx.Timeout | httpx._client.UseClientDefault, stale: Flight | None,
                        cap: int, pod_id: str, kind: str) -> None:
        req = self.client.build_request("GET", url, headers=headers, timeout=timeout)
        resp = await self.client.send(req, stream=True)
        try:
            if resp.status_code == 304 and stale is not None:
                flight.start(200, dict(stale.headers))
                for c in stale.chunks:
                    flight.append(c)
                flight.finish()
                return
            if resp.headers.get("content-encoding", "identity").lower() != "identity":
                raise UpstreamError("pod sent a content-encoded body (the gateway asks for identity)")
            length = resp.headers.get("content-length", "")
            if length.isdigit() and int(length) > cap:
                raise UpstreamTooLarge(f"{kind} of {int(length)} bytes announced, cap is {cap}")
            flight.start(resp.status_code, {k: resp.headers[k] for k in _PASS_HEADERS if k in resp.headers})
            async for chunk in resp.aiter_bytes():  # identity only (checked above): no decoding
                if flight.size + len(chunk) > cap:
                    raise UpstreamTooLarge(f"{kind} body over the cap of {cap} bytes")
                flight.append(chunk)
        finally:
            discard_overrun(self.client._transport, resp)
            await resp.aclose()

    async def get(self, base_url: str, path: str, pod_id: str, *, camera_id: str = ANY_CAMERA) -> httpx.Response:
        """``GET <base><path>`` with a gateway→pod token (checks and ``/health``; small bodies only).

        Raises :class:`UpstreamTimeout` or :class:`UpstreamError`.
        """
        headers = {"authorization": self._auth(pod_id, camera_id), "accept": "application/json",
                   "accept-encoding": "identity"}
        return await self._small("GET", base_url.rstrip("/") + path, pod_id, headers, None)

    async def nudge(self, base_url: str, pod_id: str, body: bytes) -> int:
        """``POST <base>/nudge`` with a pod-wide gateway→pod token; returns the pod's status.

        Raises :class:`UpstreamTimeout` or :class:`UpstreamError`.
        """
        headers = {"authorization": self._auth(pod_id, ANY_CAMERA), "content-type": "application/json",
                   "accept-encoding": "identity"}
        return (await self._small("POST", base_url.rstrip("/") + "/nudge", pod_id, headers, body)).status_code

    async def _small(self, method: str, url: str, pod_id: str, headers: dict[str, str],
                     body: bytes | None) -> httpx.Response:
        try:
            async with asyncio.timeout(self.deadline), self._slot(pod_id):
                req = self.client.build_request(method, url, headers=headers, content=body)
                if method == "GET":
                    resp = await self._resending_stale(lambda: self.client.send(req, stream=True), req.url)
                else:  # the nudge (POST) may have reached the pod: never sent twice
                    resp = await self.client.send(req, stream=True)
                try:
                    if resp.headers.get("content-encoding", "identity").lower() != "identity":
                        raise UpstreamError("pod sent a content-encoded answer (the gateway asks for identity)")
                    data = b""
                    async for chunk in resp.aiter_bytes():  # identity only (checked above): no decoding
                        data += chunk
                        if len(data) > self.caps["other"]:
                            raise UpstreamTooLarge(f"answer to {method} over {self.caps['other']} bytes")
                finally:
                    discard_overrun(self.client._transport, resp)
                    await resp.aclose()
                return httpx.Response(resp.status_code, headers=resp.headers, content=data, request=req)
        except TimeoutError:
            raise UpstreamTimeout(f"pod did not answer within {self.deadline:g} s") from None
        except httpx.TimeoutException:
            raise UpstreamTimeout("pod timed out") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"pod unreachable: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        """Close the shared client."""
        await self.client.aclose()
