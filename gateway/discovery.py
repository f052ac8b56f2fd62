"""Discovery: ``pod_id`` → the pod's upstream base URL on the tailnet.

Three backends, one interface (:class:`Discovery`):

* ``static`` — a config map ``pod_id → http://host:port``.
* ``localapi`` — tailscaled's LocalAPI ``GET /localapi/v0/status`` over its unix
  socket; peers whose ``Tags`` contain ``pod_tag`` and whose ``HostName`` equals
  the pod_id; upstream is their 100.x IPv4 on ``pod_port``; ``Online`` is the
  online state.
* ``tailscale_api`` — the Tailscale API (``GET /api/v2/tailnet/{tailnet}/devices``)
  via the ``tailscale`` package; filter on ``tags``, match ``hostname``,
  ``connected_to_control`` is "online".

Results are cached for ``refresh`` seconds and refreshed single-flight; if a
refresh fails the last good map is kept (up to 10 refresh periods). The parsing
of each backend's answer is a pure function, tested without sockets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import httpx
import msgspec

from gateway.errors import DiscoveryError, PodOffline, PodUnknown
from protocol.ids import is_dns_label, pick_tailnet_ipv4

log = logging.getLogger("platebridge.gateway.discovery")


class PodInfo(msgspec.Struct, frozen=True):
    """Where a pod is: ``base_url`` like ``http://100.64.0.7:8000`` and whether it is online."""

    pod_id: str
    base_url: str
    online: bool = True


def pods_from_localapi_status(status: Mapping[str, Any], tag: str, port: int) -> dict[str, PodInfo]:
    """Pure: pods from a LocalAPI ``/localapi/v0/status`` body (``Peer`` map of PeerStatus)."""
    out: dict[str, PodInfo] = {}
    peers = status.get("Peer") or {}
    if not isinstance(peers, Mapping):
        return out
    for peer in peers.values():
        if not isinstance(peer, Mapping):
            continue
        tags = peer.get("Tags") or []
        if not isinstance(tags, list) or tag not in tags:
            continue
        name = str(peer.get("HostName") or "").lower()
        if not is_dns_label(name):
            dns = str(peer.get("DNSName") or "")
            name = dns.split(".", 1)[0].lower()
        ip = pick_tailnet_ipv4(peer.get("TailscaleIPs") or [])
        if not is_dns_label(name) or ip is None:
            continue
        out[name] = PodInfo(pod_id=name, base_url=f"http://{ip}:{port}", online=bool(peer.get("Online")))
    return out


def pods_from_devices(devices: Iterable[Any], tag: str, port: int) -> dict[str, PodInfo]:
    """Pure: pods from Tailscale API devices (objects with ``hostname``, ``name``,
    ``tags``, ``addresses``, ``connected_to_control``, as in the ``tailscale`` package)."""
    out: dict[str, PodInfo] = {}
    for d in devices:
        if tag not in (getattr(d, "tags", None) or []):
            continue
        name = str(getattr(d, "hostname", "") or "").lower()
        if not is_dns_label(name):
            name = str(getattr(d, "name", "") or "").split(".", 1)[0].lower()
        ip = pick_tailnet_ipv4(getattr(d, "addresses", None) or [])
        if not is_dns_label(name) or ip is None:
            continue
        out[name] = PodInfo(pod_id=name, base_url=f"http://{ip}:{port}",
                            online=bool(getattr(d, "connected_to_control", False)))
    return out


class Discovery:
    """Cached pod directory. Subclasses implement :meth:`fetch`.

    :meth:`resolve` returns the base URL or raises :class:`PodUnknown` /
    :class:`PodOffline` (both :class:`DiscoveryError`, → 503).
    """

    def __init__(self, refresh: float = 30.0) -> None:
        self.refresh = refresh
        self._pods: dict[str, PodInfo] = {}
        self._fetched_at = float("-inf")
        self._inflight: asyncio.Task | None = None

    async def fetch(self) -> dict[str, PodInfo]:  # pragma: no cover - abstract
        """Query the backend once; raises :class:`DiscoveryError` on failure."""
        raise NotImplementedError

    async def _refresh(self) -> None:
        try:
            pods = await self.fetch()
        except DiscoveryError as exc:
            log.warning("discovery refresh failed: %s", exc)
            if time.monotonic() - self._fetched_at > 10 * self.refresh:
                self._pods = {}
            return
        self._pods, self._fetched_at = pods, time.monotonic()

    async def pods(self) -> dict[str, PodInfo]:
        """The current map, refreshed (single-flight) when older than ``refresh``."""
        if time.monotonic() - self._fetched_at > self.refresh:
            if self._inflight is None or self._inflight.done():
                self._inflight = asyncio.create_task(self._refresh())
            await asyncio.shield(self._inflight)
        return self._pods

    async def resolve(self, pod_id: str) -> str:
        """Base URL for ``pod_id``. Raises PodUnknown, PodOffline."""
        if not is_dns_label(pod_id):
            raise PodUnknown("pod_id is not a DNS label")
        info = (await self.pods()).get(pod_id)
        if info is None:
            raise PodUnknown(f"pod {pod_id} is not on the tailnet")
        if not info.online:
            raise PodOffline(f"pod {pod_id} is offline")
        return info.base_url

    async def aclose(self) -> None:
        """Release backend resources."""


class StaticDiscovery(Discovery):
    """Fixed map from config (``pods``); always online."""

    def __init__(self, pods: Mapping[str, str]) -> None:
        super().__init__(refresh=float("inf"))
        self._pods = {k: PodInfo(pod_id=k, base_url=v.rstrip("/")) for k, v in pods.items()}
        self._fetched_at = time.monotonic()

    async def fetch(self) -> dict[str, PodInfo]:
        return self._pods


class LocalAPIDiscovery(Discovery):
    """tailscaled LocalAPI over its unix socket (``localapi_socket``)."""

    def __init__(self, socket_path: str, tag: str, port: int, refresh: float = 30.0) -> None:
        super().__init__(refresh)
        self.tag, self.port = tag, port
        self._client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket_path), timeout=3.0)

    async def fetch(self) -> dict[str, PodInfo]:
        try:
            r = await self._client.get("http://local-tailscaled.sock/localapi/v0/status")
            r.raise_for_status()
            data = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise DiscoveryError(f"LocalAPI status failed: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise DiscoveryError("LocalAPI status is not an object")
        return pods_from_localapi_status(data, self.tag, self.port)

    async def aclose(self) -> None:
        await self._client.aclose()


class TailscaleAPIDiscovery(Discovery):
    """Tailscale API devices list. ``devices`` is an async callable returning device
    objects (defaults to the ``tailscale`` package's ``Tailscale.devices``)."""

    def __init__(
        self,
        tag: str,
        port: int,
        refresh: float = 30.0,
        *,
        devices: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
        tailnet: str = "-",
        api_key: str | None = None,
        oauth_client_id: str | None = None,
        oauth_client_secret: str | None = None,
    ) -> None:
        super().__init__(refresh)
        self.tag, self.port = tag, port
        self._client = None
        if devices is None:
            from tailscale import Tailscale

            self._client = Tailscale(
                tailnet=tailnet, api_key=api_key, oauth_client_id=oauth_client_id,
                oauth_client_secret=oauth_client_secret
            )
            devices = self._client.devices
        self._devices = devices

    async def fetch(self) -> dict[str, PodInfo]:
        try:
            devices = await self._devices()
        except Exception as exc:  # noqa: BLE001 - the tailscale package raises its own tree plus aiohttp errors
            raise DiscoveryError(f"Tailscale API devices failed: {type(exc).__name__}") from None
        return pods_from_devices(devices.values() if isinstance(devices, Mapping) else devices, self.tag, self.port)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


def make_discovery(cfg) -> Discovery:
    """Build the backend named by ``cfg.discovery`` (a :class:`gateway.config.GatewayConfig`)."""
    if cfg.discovery == "static":
        return StaticDiscovery(cfg.pods)
    if cfg.discovery == "localapi":
        return LocalAPIDiscovery(cfg.localapi_socket, cfg.pod_tag, cfg.pod_port, cfg.discovery_refresh_seconds)
    return TailscaleAPIDiscovery(
        cfg.pod_tag, cfg.pod_port, cfg.discovery_refresh_seconds, tailnet=cfg.tailnet, api_key=cfg.tailscale_api_key,
        oauth_client_id=cfg.tailscale_oauth_client_id, oauth_client_secret=cfg.tailscale_oauth_client_secret,
    )
