"""The gateway's only HTTP client towards pods (one shared ``httpx.AsyncClient``).

Requests go over the tailnet, optionally through ``upstream_proxy`` (tailscaled's
SOCKS5/HTTP proxy in userspace-networking mode). URLs are built with
``raw_path`` so the client's query string reaches the pod byte for byte (httpx
``params=`` would re-encode and replace it). Each request carries a fresh-enough
gateway→pod token (``aud`` = ``platebridge-pod``, ``exp`` ≤ 60 s), cached per
(pod, camera) for half its lifetime.
"""

from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

import httpx

from gateway.cache import Flight
from gateway.errors import UpstreamError, UpstreamTimeout
from protocol.tokens import ANY_CAMERA, Keyring, mint_pod_token

POD_TOKEN_TTL = 30.0
_PASS_HEADERS = ("content-length", "content-type", "etag", "retry-after")


class Upstream:
    """Fetches from pods into :class:`~gateway.cache.Flight` objects.

    ``connect_timeout``/``read_timeout`` are seconds; ``transport`` lets tests
    count requests at the transport seam.
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        proxy: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.keyring = keyring
        self.read_timeout = read_timeout
        self.client = httpx.AsyncClient(
            proxy=proxy if transport is None else None,
            transport=transport,
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=5.0, pool=5.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,
        )
        self._tokens: dict[tuple[str, str], tuple[float, str]] = {}
        self.requests = 0

    def _auth(self, pod_id: str, camera_id: str) -> str:
        now = time.time()
        hit = self._tokens.get((pod_id, camera_id))
        if hit is not None and hit[0] > now:
            return hit[1]
        header = "Bearer " + mint_pod_token(self.keyring, camera_id=camera_id, pod_id=pod_id, ttl=POD_TOKEN_TTL,
                                            now=now)
        self._tokens[(pod_id, camera_id)] = (now + POD_TOKEN_TTL / 2, header)
        return header

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
        stale: Flight | None = None,
        read_timeout: float | None = None,
    ) -> None:
        """GET ``url`` and stream status, headers and body into ``flight``.

        With a complete ``stale`` flight that has an ETag, sends ``If-None-Match``
        and, on 304, copies the stale body into ``flight``. Never raises: failures
        finish the flight with :class:`UpstreamTimeout` (→ 504) or
        :class:`UpstreamError` (→ 502).
        """
        headers = {"authorization": self._auth(pod_id, camera_id), "accept-encoding": "identity"}
        if stale is not None and stale.etag and stale.error is None and stale.status == 200:
            headers["if-none-match"] = stale.etag
        # the client's timeouts unless overridden: timeout=None would switch every timeout off
        timeout = (httpx.USE_CLIENT_DEFAULT if read_timeout is None else
                   httpx.Timeout(connect=self.client.timeout.connect, read=read_timeout, write=5.0, pool=5.0))
        self.requests += 1
        try:
            req = self.client.build_request("GET", url, headers=headers, timeout=timeout)
            resp = await self.client.send(req, stream=True)
            try:
                if resp.status_code == 304 and stale is not None:
                    flight.start(200, dict(stale.headers))
                    for c in stale.chunks:
                        flight.append(c)
                    flight.finish()
                    return
                flight.start(resp.status_code, {k: resp.headers[k] for k in _PASS_HEADERS if k in resp.headers})
                async for chunk in resp.aiter_bytes():
                    flight.append(chunk)
            finally:
                await resp.aclose()
        except httpx.TimeoutException:
            flight.finish(UpstreamTimeout("pod timed out"))
            return
        except httpx.HTTPError as exc:
            flight.finish(UpstreamError(f"pod unreachable: {type(exc).__name__}"))
            return
        flight.finish()

    async def nudge(self, base_url: str, pod_id: str, body: bytes) -> int:
        """``POST <base>/nudge`` with a pod-wide gateway→pod token; returns the pod's status.

        Raises :class:`UpstreamTimeout` or :class:`UpstreamError`.
        """
        headers = {"authorization": self._auth(pod_id, ANY_CAMERA), "content-type": "application/json"}
        try:
            r = await self.client.post(base_url.rstrip("/") + "/nudge", content=body, headers=headers)
        except httpx.TimeoutException:
            raise UpstreamTimeout("pod timed out") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"pod unreachable: {type(exc).__name__}") from None
        return r.status_code

    async def aclose(self) -> None:
        """Close the shared client."""
        await self.client.aclose()
