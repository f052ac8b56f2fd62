"""``platebridge-gateway check``: operator checks of a gateway's setup, one line each.

    platebridge-gateway check --config gateway.yaml

Lines are ``PASS <name>: <detail>``, ``WARN <name>: <detail> — fix: <how>`` or
``FAIL <name>: <detail> — fix: <how>``; exit code 0 when nothing failed, 1 when a
check failed, 2 when the config is invalid (then nothing else is checked).

* ``config`` — file + ``PLATEBRIDGE_GATEWAY_*`` env, same rules as the server.
* ``secret`` — every stream secret is at least 32 bytes (never printed).
* ``discovery`` — asks the configured backend once (static map, tailscaled
  LocalAPI or the Tailscale API) and lists the pods it sees with their online state.
* ``pod <id>`` — a test fetch of ``GET <pod>/health`` over the tailnet with the
  gateway's own upstream client (same ``upstream_proxy`` and timeouts). The pod
  serves ``/health`` on its tailnet listener as well as on 127.0.0.1 (no auth, no
  secrets): 200 with the pod's own ``pod_id`` is a pass and reports latency and
  camera states; any other HTTP answer still proves the pod is reachable (WARN);
  a connect error or timeout is a FAIL.
* ``pod <id> token`` — one authenticated ``GET /cameras/<camera>/index.m3u8`` with
  a gateway→pod token, for a camera the pod's ``/health`` lists: 200/503 mean the
  pod accepted the token (shared secret matches); 401 means the secrets differ;
  404 means the address is not the pod's tailnet listener.
Offline pods (per discovery) are listed but not fetched.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import httpx

from gateway.config import GatewayConfig, load_config
from gateway.discovery import Discovery, PodInfo, make_discovery
from gateway.errors import ConfigError, DiscoveryError
from gateway.upstream import Upstream
from protocol.checks import CheckResult, ms, secret_length_result, summary
from protocol.tokens import mint_pod_token


def check_secret(cfg: GatewayConfig) -> list[CheckResult]:
    """Every stream secret must be ≥ 32 bytes."""
    return [secret_length_result(f"kid {kid!r}", secret) for kid, secret in sorted(cfg.secrets().items())]


_DISCOVERY_FIX = {
    "static": "list pods under `pods:` as pod_id: http://<tailnet IP>:8000",
    "localapi": "is tailscaled running on this host and joined (tailscale status)? check localapi_socket",
    "tailscale_api": "check tailscale_api_key (or the OAuth client id/secret) and tailnet",
}


async def check_discovery(cfg: GatewayConfig, discovery: Discovery) -> tuple[list[CheckResult], dict[str, PodInfo]]:
    """Ask the backend once; one line for the backend, pods listed with their online state."""
    try:
        pods = await discovery.fetch()
    except DiscoveryError as exc:
        return [CheckResult("FAIL", "discovery", f"{cfg.discovery}: {exc}", _DISCOVERY_FIX[cfg.discovery])], {}
    if not pods:
        where = "no pods configured" if cfg.discovery == "static" else f"no peers tagged {cfg.pod_tag}"
        fix = _DISCOVERY_FIX["static"] if cfg.discovery == "static" else (
            f"join pods with `tailscale up --advertise-tags={cfg.pod_tag} --hostname=<pod_id>`, or check pod_tag")
        return [CheckResult("WARN", "discovery", f"{cfg.discovery}: {where}", fix)], {}
    listing = ", ".join(f"{p.pod_id} ({'online' if p.online else 'offline'}) {p.base_url}"
                        for p in sorted(pods.values(), key=lambda p: p.pod_id))
    n = len(pods)
    return [CheckResult("PASS", "discovery", f"{cfg.discovery}: {n} pod{'' if n == 1 else 's'}: {listing}")], pods


_UNREACHABLE_FIX = ("is the pod running (systemctl status platebridge-pod) and on the tailnet? the tailnet policy must "
                    "let tag:gateway reach tag:pod on tcp:{port}; on hosts without /dev/net/tun set upstream_proxy to "
                    "tailscaled's SOCKS5 proxy")


async def check_pod(upstream: Upstream, pod: PodInfo) -> list[CheckResult]:
    """``GET <pod>/health`` (reachability, latency) then one authenticated playlist request."""
    name = f"pod {pod.pod_id}"
    if not pod.online:
        return [CheckResult("WARN", name, f"{pod.base_url}: offline per discovery; not fetched",
                            "start the pod / check its tailscaled (tailscale status on the pod)")]
    port = httpx.URL(pod.base_url).port or 80
    started = time.monotonic()
    try:
        r = await upstream.client.get(pod.base_url.rstrip("/") + "/health", headers={"accept": "application/json"})
    except httpx.TimeoutException:
        return [CheckResult("FAIL", name, f"{pod.base_url}: timed out after {ms(time.monotonic() - started)}",
                            _UNREACHABLE_FIX.format(port=port))]
    except httpx.HTTPError as exc:
        return [CheckResult("FAIL", name, f"{pod.base_url}: cannot connect ({type(exc).__name__}: {exc})",
                            _UNREACHABLE_FIX.format(port=port))]
    latency = ms(time.monotonic() - started)
    try:
        body = r.json() if r.status_code == 200 else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return [CheckResult("WARN", name, f"{pod.base_url}: reachable in {latency}, but GET /health answered "
                            f"HTTP {r.status_code} without a pod health document",
                            "is this address a PlateBridge pod (its stream_bind and stream_port)?")]
    if body.get("pod_id") != pod.pod_id:
        return [CheckResult("FAIL", name, f"{pod.base_url}: reachable in {latency}, but it is pod "
                            f"{body.get('pod_id')!r}, not {pod.pod_id!r}",
                            "fix the pod map / the pod's hostname (pod_id must equal its tailnet host name)")]
    cams = body.get("cameras") or {}
    states = ", ".join(f"{cid} {c.get('state', '?')}" for cid, c in sorted(cams.items())) or "no cameras"
    results = [CheckResult("PASS", name, f"{pod.base_url}: GET /health 200 in {latency}: status "
                           f"{body.get('status', '?')}, version {body.get('version', '?')}, {states}")]
    if cams:
        results.append(await _check_token(upstream, pod, min(cams)))
    return results


async def _check_token(upstream: Upstream, pod: PodInfo, camera_id: str) -> CheckResult:
    name = f"pod {pod.pod_id} token"
    url = Upstream.url(pod.base_url, camera_id, "index.m3u8", "")
    token = mint_pod_token(upstream.keyring, camera_id=camera_id, pod_id=pod.pod_id, ttl=30)
    try:
        r = await upstream.client.get(url, headers={"authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return CheckResult("FAIL", name, f"GET /cameras/{camera_id}/index.m3u8 failed ({type(exc).__name__})",
                           "the pod answered /health but not this request: check the pod's log")
    where = f"GET /cameras/{camera_id}/index.m3u8 → {r.status_code}"
    if r.status_code == 200:
        return CheckResult("PASS", name, f"{where}: the pod accepted the gateway's token (shared secret matches)")
    if r.status_code == 503:
        return CheckResult("PASS", name, f"{where}: token accepted; camera {camera_id} is (re)starting")
    if r.status_code == 401:
        return CheckResult("FAIL", name, f"{where}: the pod refused the gateway's token",
                           "stream_secret (POD_STREAM_SECRET) must be the same on the gateway and the pod; with "
                           "stream_secrets, the pod must know the gateway's primary kid")
    if r.status_code == 404:
        return CheckResult("FAIL", name, f"{where}: this address serves no HLS",
                           "point the pod map at the pod's tailnet address (its stream_bind), not 127.0.0.1")
    return CheckResult("WARN", name, f"{where}: unexpected answer", "check the pod's log")


async def run_checks(cfg: GatewayConfig, *, emit: Callable[[CheckResult], None] | None = None,
                     discovery: Discovery | None = None,
                     transport: httpx.AsyncBaseTransport | None = None) -> list[CheckResult]:
    """Run every check after ``config``, calling ``emit`` as each result is known."""
    results: list[CheckResult] = []

    def add(items: list[CheckResult]) -> None:
        for r in items:
            results.append(r)
            if emit:
                emit(r)

    add(check_secret(cfg))
    discovery = discovery or make_discovery(cfg)
    upstream = Upstream(cfg.keyring(), connect_timeout=cfg.upstream_connect_timeout,
                        read_timeout=cfg.upstream_read_timeout, proxy=cfg.upstream_proxy, transport=transport)
    try:
        lines, pods = await check_discovery(cfg, discovery)
        add(lines)
        for pod_id in sorted(pods):
            add(await check_pod(upstream, pods[pod_id]))
    finally:
        await upstream.client.aclose()
        await discovery.aclose()
    return results


def main(config: str | None, out=None) -> int:
    """``platebridge-gateway check``: print one line per check; returns the exit code."""
    out = out or sys.stdout

    def emit(r: CheckResult) -> None:
        print(r.line(), file=out, flush=True)

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        emit(CheckResult("FAIL", "config", str(exc),
                         f"edit {config or 'the PLATEBRIDGE_GATEWAY_* environment'} (see the README's config table)"))
        return 2
    emit(CheckResult("PASS", "config", f"{config or '(environment only)'}: discovery {cfg.discovery}, "
                     f"public_base_url {cfg.public_base_url}"))
    import uvloop

    results = uvloop.run(run_checks(cfg, emit=emit))
    line, code = summary(results, extra_passed=1)
    print(line, file=out, flush=True)
    return code
