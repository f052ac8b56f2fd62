"""Discovery: ``pod_id`` → the pod's upstream base URL on the tailnet.

Three backends, one interface (:class:`Discovery`):

* ``static`` — a config map ``pod_id → http://host:port``.
* ``localapi`` — tailscaled's LocalAPI ``GET /localapi/v0/status`` over its unix
  socket; peers whose ``Tags`` contain ``pod_tag``; upstream is their 100.x IPv4 on
  ``pod_port``; ``Online`` is the online state.
* ``tailscale_api`` — the Tailscale API (``GET /api/v2/tailnet/{tailnet}/devices``)
  via the ``tailscale`` package; filter on ``tags``, ``connected_to_control`` is "online".

**Identity.** A pod is identified by the name the tailnet gives it, its MagicDNS
name (``DNSName`` / the device ``name``, e.g. ``main-gate-pod.tail1234.ts.net``),
which the control plane keeps unique; its ``pod_id`` is that name's first label.
The self-reported ``HostName`` is never used: a second device calling itself
``main-gate-pod`` is given ``main-gate-pod-1`` by MagicDNS and takes nothing over.
Should two devices still map to one ``pod_id`` (e.g. a node shared in from another
tailnet), that id is a **conflict**: the gateway routes to neither
(:class:`~gateway.errors.PodConflict`, 503), logs it, counts it in
``platebridge_gateway_discovery_conflicts`` and ``gateway check`` FAILs.

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

from gateway.errors import DiscoveryError, PodConflict, PodOffline, PodUnknown
from gateway.metrics import DISCOVERY_CONFLICTS
from protocol.ids import is_dns_label, pick_tailnet_ipv4

log = logging.getLogger("platebridge.gateway.discovery")


class PodInfo(msgspec.Struct, frozen=True):
    """Where a pod is: ``base_url`` like ``http://100.64.0.7:8000``, whether it is online, and
    ``node``, the tailnet's unique name of the device (MagicDNS FQDN; empty for static pods)."""

    pod_id: str
    base_url: str
    online: bool = True
    node: str = ""


class Directory(msgspec.Struct, frozen=True):
    """One discovery answer: routable ``pods`` and ``conflicts`` (pod_id → the devices claiming it)."""

    pods: dict[str, PodInfo]
    conflicts: dict[str, list[str]] = {}


def pod_id_of(fqdn: str) -> str | None:
    """The pod_id of a MagicDNS name (its first label, lower-case), or None if it is not a DNS label."""
    label = fqdn.strip().rstrip(".").split(".", 1)[0].lower()
    return label if is_dns_label(label) else None


def build_directory(claims: Iterable[PodInfo]) -> Directory:
    """Pure: a :class:`Directory` from per-device claims; a pod_id claimed by two devices goes
    to ``conflicts`` and is not routable."""
    seen: dict[str, list[PodInfo]] = {}
    for c in claims:
        seen.setdefault(c.pod_id, []).append(c)
    pods = {k: v[0] for k, v in seen.items() if len(v) == 1}
    conflicts = {k: sorted(c.node or c.base_url for c in v) for k, v in seen.items() if len(v) > 1}
    return Directory(pods, conflicts)


def claims_from_localapi_status(status: Mapping[str, Any], tag: str, port: int) -> list[PodInfo]:
    """Pure: one claim per tagged peer of a LocalAPI ``/localapi/v0/status`` body (``Peer`` map of
    PeerStatus, keyed by node key), identified by its ``DNSName``."""
    out: list[PodInfo] = []
    peers = status.get("Peer") or {}
    if not isinstance(peers, Mapping):
        return out
    for node_key, peer in peers.items():
        if not isinstance(peer, Mapping):
            continue
        tags = peer.get("Tags") or []
        if not isinstance(tags, list) or tag not in tags:
            continue
        fqdn = str(peer.get("DNSName") or "").rstrip(".").lower()
        pod_id = pod_id_of(fqdn)
        ip = pick_tailnet_ipv4(peer.get("TailscaleIPs") or [])
        if pod_id is None or ip is None:
            continue
        out.append(PodInfo(pod_id=pod_id, base_url=f"http://{ip}:{port}", online=bool(peer.get("Online")),
                           node=fqdn or str(node_key)))
    return out


def claims_from_devices(devices: Iterable[Any], tag: str, port: int) -> list[PodInfo]:
    """Pure: one claim per tagged Tailscale API device (objects with ``name`` (the MagicDNS FQDN),
    ``tags``, ``addresses``, ``connected_to_control``, as in the ``tailscale`` package)."""
    out: list[PodInfo] = []
    for d in devices:
        if tag not in (getattr(d, "tags", None) or []):
            continue
        fqdn = str(getattr(d, "name", "") or "").rstrip(".").lower()
        pod_id = pod_id_of(fqdn)
        ip = pick_tailnet_ipv4(getattr(d, "addresses", None) or [])
        if pod_id is None or ip is None:
            continue
        out.append(PodInfo(pod_id=pod_id, base_url=f"http://{ip}:{port}",
                           online=bool(getattr(d, "connected_to_control", False)), node=fqdn))
    return out


def pods_from_localapi_status(status: Mapping[str, Any], tag: str, port: int) -> dict[str, PodInfo]:
    """Pure: the routable pods of a LocalAPI status body (conflicting ids left out)."""
    return build_directory(claims_from_localapi_status(status, tag, port)).pods


def pods_from_devices(devices: Iterable[Any], tag: str, port: int) -> dict[str, PodInfo]:
    """Pure: the routable pods of a Tailscale API device list (conflicting ids left out)."""
    return build_directory(claims_from_devices(devices, tag, port)).pods


class Discovery:
    """Cached pod directory. Subclasses implement :meth:`fetch`.

    :meth:`resolve` returns the base URL or raises :class:`PodUnknown` /
    :class:`PodOffline` (both :class:`DiscoveryError`, → 503).
    """

    def __init__(self, refresh: float = 30.0) -> None:
        self.refresh = refresh
        self._pods: dict[str, PodInfo] = {}
        self.conflicts: dict[str, list[str]] = {}
        self._fetched_at = float("-inf")
        self._inflight: asyncio.Task | None = None

    async def fetch(self) -> Directory | dict[str, PodInfo]:  # pragma: no cover - abstract
        """Query the backend once; raises :class:`DiscoveryError` on failure."""
        raise NotImplementedError

    async def directory(self) -> Directory:
        """Query the backend once (no cache): pods and conflicts. Raises :class:`DiscoveryError`."""
        found = await self.fetch()
        return found if isinstance(found, Directory) else Directory(found)

    async def _refresh(self) -> None:
        try:
            found = await self.directory()
        except DiscoveryError as exc:
            log.warning("discovery refresh failed: %s", exc)
            if time.monotonic() - self._fetched_at > 10 * self.refresh:
                self._pods = {}
            return
        self._set_conflicts(found.conflicts)
        self._pods, self._fetched_at = found.pods, time.monotonic()

    def _set_conflicts(self, conflicts: dict[str, list[str]]) -> None:
        for pod_id, nodes in conflicts.items():
            if self.conflicts.get(pod_id) != nodes:
                log.error("discovery: pod_id %s is claimed by %d tailnet devices (%s); routing to none of them "
                          "until one is removed or renamed", pod_id, len(nodes), ", ".join(nodes))
        self.conflicts = dict(conflicts)
        DISCOVERY_CONFLICTS.set(len(self.conflicts))

    async def pods(self) -> dict[str, PodInfo]:
        """The current map, refreshed (single-flight) when older than ``refresh``."""
        if time.monotonic() - self._fetched_at > self.refresh:
            if self._inflight is None or self._inflight.done():
                self._inflight = asyncio.create_task(self._refresh())
            await asyncio.shield(self._inflight)
        return self._pods

    async def resolve(self, pod_id: str) -> str:
        """Base URL for ``pod_id``. Raises PodUnknown, PodOffline, PodConflict."""
        if not is_dns_label(pod_id):
            raise PodUnknown("pod_id is not a DNS label")
        info = (await self.pods()).get(pod_id)
        if pod_id in self.conflicts:
            raise PodConflict(f"pod {pod_id} is claimed by more than one tailnet device")
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

    async def fetch(self) -> Directory:
        try:
            r = await self._client.get("http://local-tailscaled.sock/localapi/v0/status")
            r.raise_for_status()
            data = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise DiscoveryError(f"LocalAPI status failed: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise DiscoveryError("LocalAPI status is not an object")
        return build_directory(claims_from_localapi_status(data, self.tag, self.port))

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

    async def fetch(self) -> Directory:
        try:
            devices = await self._devices()
        except Exception as exc:  # noqa: BLE001 - the tailscale package raises its own tree plus aiohttp errors
            raise DiscoveryError(f"Tailscale API devices failed: {type(exc).__name__}") from None
        found = devices.values() if isinstance(devices, Mapping) else devices
        return build_directory(claims_from_devices(found, self.tag, self.port))

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
