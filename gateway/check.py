"""``platebridge-gateway check``: operator checks of a gateway's setup, one line each.

    platebridge-gateway check --config gateway.yaml

Lines are ``PASS <name>: <detail>``, ``WARN <name>: <detail> — fix: <how>`` or
``FAIL <name>: <detail> — fix: <how>``; exit code 0 when nothing failed, 1 when a
check failed, 2 when the config is invalid (then nothing else is checked).

* ``config`` — file + ``PLATEBRIDGE_GATEWAY_*`` env, same rules as the server.
* ``secret`` — every HMAC secret (user-token, grant, legacy stream secret) is at
  least 32 bytes (never printed); ``keys`` — the key layout: WARN for each role
  still on the legacy shared ``stream_secret``, WARN when the signing key file is
  readable by group or others.
* ``discovery`` — asks the configured backend once (static map, tailscaled
  LocalAPI or the Tailscale API) and lists the pods it sees with their online state
  and tailnet name; FAIL when two devices claim one pod_id (neither is routed).
* ``pod <id>`` — a test fetch of ``GET <pod>/health`` over the tailnet with the
  gateway's own upstream client and a pod-wide gateway→pod token (the pod's tailnet
  listener wants one): 200 with the pod's own ``pod_id`` is a pass and reports
  latency and camera states; 401 means the pod refused the token (key or clock);
  any other HTTP answer still proves the pod is reachable (WARN); a connect error
  or timeout is a FAIL.
* ``pod <id> token`` — one authenticated ``GET /cameras/<camera>/index.m3u8`` for a
  camera the pod's ``/health`` lists: 200/503 mean the pod accepted the token; 401
  means it did not (its ``gateway_public_keys`` lack this gateway's key, or clock
  skew); 404 means the address is not the pod's tailnet listener.
Offline pods (per discovery) are listed but not fetched.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable

import httpx

from gateway.config import GatewayConfig, load_config
from gateway.discovery import Discovery, PodInfo, make_discovery
from gateway.errors import ConfigError, DiscoveryError, UpstreamError, UpstreamTimeout
from gateway.upstream import Upstream
from protocol.checks import CheckResult, ms, secret_length_result, summary


def check_secret(cfg: GatewayConfig) -> list[CheckResult]:
    """Every HMAC secret must be ≥ 32 bytes; the key layout is reported (legacy roles WARN)."""
    results = []
    for where, secret in sorted(cfg.named_secrets()):
        result = secret_length_result(where, secret)
        # the config refuses short user-token and grant secrets; a short legacy stream_secret
        # (the connection guide's example) runs, with a warning at startup: the same here
        if result.status == "FAIL" and where.startswith("stream_secrets."):
            result = dataclasses.replace(result, status="WARN")
        results.append(result)
    for warning in cfg.legacy_warnings():
        results.append(CheckResult("WARN", "keys", warning.split(". Set ")[0],
                                   "set " + warning.split(". Set ", 1)[1] if ". Set " in warning else None))
    if cfg.pod_signing_key_file:
        mode = os.stat(cfg.pod_signing_key_file).st_mode & 0o077
        if mode:
            results.append(CheckResult("WARN", "keys", f"{cfg.pod_signing_key_file} is readable by group or others",
                                       f"chmod 600 {cfg.pod_signing_key_file}"))
        else:
            results.append(CheckResult("PASS", "keys", f"gateway→pod tokens signed with Ed25519 key "
                                       f"{cfg.pod_signing_key_id!r} ({cfg.pod_signing_key_file}, mode 0600)"))
    return results


_DISCOVERY_FIX = {
    "static": "list pods under `pods:` as pod_id: http://<tailnet IP>:8000",
    "localapi": "is tailscaled running on this host and joined (tailscale status)? check localapi_socket",
    "tailscale_api": "check tailscale_api_key (or the OAuth client id/secret) and tailnet",
}


def check_data_plane(cfg: GatewayConfig) -> list[CheckResult]:
    """The data plane: ``auto``/``managed``, is nginx with its Lua module installed for the gateway to run
    (``auto`` without it: WARN, ``managed``: FAIL)? ``nginx``: can nginx's workers read the host
    store? (Nothing for ``gateway``.)"""
    from gateway.dataplane import Found, find_nginx, lua_self_test

    if cfg.data_plane in ("auto", "managed"):
        found = find_nginx(cfg)
        if isinstance(found, Found):
            found = lua_self_test(found) or found
        if isinstance(found, Found):
            return [CheckResult("PASS", "data plane",
                                f"the gateway runs nginx ({found.nginx}, with {found.modules[-1]}) "
                                "in front of its workers; it serves kept segments (Lua self-test passed)")]
        return [CheckResult("FAIL" if cfg.data_plane == "managed" else "WARN", "data plane",
                            f"{cfg.data_plane}: {found}",
                            "without nginx the gateway serves every segment itself, with a longer tail under load "
                            "(docs/benchmarks.md)")]
    if cfg.data_plane != "nginx":
        return []
    from gateway.nginxconf import store_access_problem

    # the nginx you run: this host's, found as the managed one would be (nginx_bin,
    # nginx_modules_dir), must run the Lua grant check too
    found = find_nginx(cfg)
    problem = found if isinstance(found, str) else lua_self_test(found)
    if problem:
        return [CheckResult("WARN", "data plane", f"this host's nginx cannot run the grant check: {problem}",
                            "install nginx-extras (libnginx-mod-http-lua, lua-resty-core) where nginx runs; "
                            "until then nginx refuses to start with the written config")]
    problem = store_access_problem(str(cfg.host_cache_dir))
    if problem:
        return [CheckResult("WARN", "data plane", f"nginx cannot serve kept segments: {problem}",
                            "until fixed, every segment goes to the gateway (deploy/gateway/README.md, "
                            "\"nginx data plane\")")]
    return [CheckResult("PASS", "data plane", f"nginx's workers can read the host store {cfg.host_cache_dir} "
                        "(is nginx's config current? platebridge-gateway nginx-conf after any key change)")]


async def check_discovery(cfg: GatewayConfig, discovery: Discovery) -> tuple[list[CheckResult], dict[str, PodInfo]]:
    """Ask the backend once; one line for the backend, pods listed with their online state, and a
    FAIL line per pod_id that two devices claim."""
    try:
        found = await discovery.directory()
    except DiscoveryError as exc:
        return [CheckResult("FAIL", "discovery", f"{cfg.discovery}: {exc}", _DISCOVERY_FIX[cfg.discovery])], {}
    pods = found.pods
    results = [CheckResult("FAIL", "discovery", f"{cfg.discovery}: pod_id {pod_id} is claimed by {len(nodes)} "
                           f"devices ({', '.join(nodes)}); the gateway routes to none of them",
                           "remove the device that is not the pod from the tailnet (or its tag:pod), or rename one")
               for pod_id, nodes in sorted(found.conflicts.items())]
    if not pods:
        if results:
            return results, {}
        where = "no pods configured" if cfg.discovery == "static" else f"no peers tagged {cfg.pod_tag}"
        fix = _DISCOVERY_FIX["static"] if cfg.discovery == "static" else (
            f"join pods with `tailscale up --advertise-tags={cfg.pod_tag} --hostname=<pod_id>`, or check pod_tag")
        return [CheckResult("WARN", "discovery", f"{cfg.discovery}: {where}", fix)], {}
    listing = ", ".join(f"{p.pod_id} ({'online' if p.online else 'offline'}) {p.base_url}"
                        + (f" [{p.node}]" if p.node else "")
                        for p in sorted(pods.values(), key=lambda p: p.pod_id))
    n = len(pods)
    return [CheckResult("PASS", "discovery", f"{cfg.discovery}: {n} pod{'' if n == 1 else 's'}: {listing}"),
            *results], pods


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
        r = await upstream.get(pod.base_url, "/health", pod.pod_id)
    except UpstreamTimeout:
        return [CheckResult("FAIL", name, f"{pod.base_url}: timed out after {ms(time.monotonic() - started)}",
                            _UNREACHABLE_FIX.format(port=port))]
    except UpstreamError as exc:
        return [CheckResult("FAIL", name, f"{pod.base_url}: cannot connect ({exc})",
                            _UNREACHABLE_FIX.format(port=port))]
    latency = ms(time.monotonic() - started)
    try:
        body = r.json() if r.status_code == 200 else None
    except ValueError:
        body = None
    if r.status_code == 401:
        return [CheckResult("FAIL", name, f"{pod.base_url}: reachable in {latency}, but the pod refused the "
                            f"gateway's token on GET /health ({_reason(r)})", _TOKEN_FIX)]
    other = re.search(r"this is pod ([a-z0-9-]{1,63})", r.text) if r.status_code == 403 else None
    if other:
        return [CheckResult("FAIL", name, f"{pod.base_url}: reachable in {latency}, but it is pod "
                            f"{other.group(1)!r}, not {pod.pod_id!r}",
                            "fix the pod map / the pod's name (pod_id must equal the first label of its "
                            "MagicDNS name)")]
    if not isinstance(body, dict):
        return [CheckResult("WARN", name, f"{pod.base_url}: reachable in {latency}, but GET /health answered "
                            f"HTTP {r.status_code} without a pod health document",
                            "is this address a PlateBridge pod (its stream_bind and stream_port)?")]
    if body.get("pod_id") != pod.pod_id:
        return [CheckResult("FAIL", name, f"{pod.base_url}: reachable in {latency}, but it is pod "
                            f"{body.get('pod_id')!r}, not {pod.pod_id!r}",
                            "fix the pod map / the pod's name (pod_id must equal the first label of its "
                            "MagicDNS name)")]
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
    try:
        r = await upstream.client.get(url, headers={"authorization": upstream.auth_header(pod.pod_id, camera_id)})
    except httpx.HTTPError as exc:
        return CheckResult("FAIL", name, f"GET /cameras/{camera_id}/index.m3u8 failed ({type(exc).__name__})",
                           "the pod answered /health but not this request: check the pod's log")
    where = f"GET /cameras/{camera_id}/index.m3u8 → {r.status_code}"
    if r.status_code == 200:
        return CheckResult("PASS", name, f"{where}: the pod accepted the gateway's token")
    if r.status_code == 503:
        return CheckResult("PASS", name, f"{where}: token accepted; camera {camera_id} is (re)starting")
    if r.status_code == 401:
        return CheckResult("FAIL", name, f"{where}: the pod refused the gateway's token ({_reason(r)})", _TOKEN_FIX)
    if r.status_code == 404:
        return CheckResult("FAIL", name, f"{where}: this address serves no HLS",
                           "point the pod map at the pod's tailnet address (its stream_bind), not 127.0.0.1")
    return CheckResult("WARN", name, f"{where}: unexpected answer", "check the pod's log")


# advice text, not a secret (ruff S105 looks at the name)
_TOKEN_FIX = ("give the pod this gateway's public key under its kid (gateway_public_keys; "  # noqa: S105
              "openssl pkey -in <pod_signing_key_file> -pubout), or, legacy, the same stream_secret on both; "
              "if the reason says clock skew, sync the clocks (timedatectl)")


def _reason(r: httpx.Response) -> str:
    m = re.search(r'error_description="([^"]{0,200})"', r.headers.get("www-authenticate", ""))
    return m.group(1) if m else r.text.strip()[:200] or "no reason given"


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
    add(check_data_plane(cfg))
    discovery = discovery or make_discovery(cfg)
    upstream = Upstream(cfg.pod_signer(), connect_timeout=cfg.upstream_connect_timeout,
                        read_timeout=cfg.upstream_read_timeout, deadline=min(cfg.upstream_deadline, 10.0),
                        proxy=cfg.upstream_proxy, transport=transport)
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
        env = re.search(r"\(set by env ([A-Za-z0-9_]+)\)|^env ([A-Za-z0-9_]+):", str(exc))
        where = (f"the environment variable {env.group(1) or env.group(2)}" if env
                 else config or "the PLATEBRIDGE_GATEWAY_* environment")
        emit(CheckResult("FAIL", "config", str(exc), f"edit {where} (see the README's config table)"))
        return 2
    emit(CheckResult("PASS", "config", f"{config or '(environment only)'}: discovery {cfg.discovery}, "
                     f"public_base_url {cfg.public_base_url}"))
    import uvloop

    results = uvloop.run(run_checks(cfg, emit=emit))
    line, code = summary(results, extra_passed=1)
    print(line, file=out, flush=True)
    return code
