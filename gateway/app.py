"""The gateway's Litestar application.

Routes: ``/streams/{camera_id}/…`` (the proxy, :mod:`gateway.proxy`),
``GET /watch/{camera_id}?token=…`` (a small hls.js page), ``/assets/*``,
``/healthz`` (process up), ``/readyz`` (discovery answers and hls.js is
installed), ``/metrics`` (Prometheus text format) and ``/schema/openapi.json``
(the OpenAPI document, :mod:`gateway.openapi`).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
from collections.abc import Sequence
from pathlib import Path

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.enums import ScopeType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery
from litestar.types import Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.config import GatewayConfig
from gateway.discovery import Discovery, make_discovery
from gateway.errors import (
    CredentialsMissing,
    DiscoveryError,
    TokenRejected,
    UpstreamError,
    WrongCamera,
    status_of,
)
from gateway.grants import GrantSigner
from gateway.hoststore import HostStore
from gateway.metrics import exposition, gauge_refresher
from gateway.openapi import openapi_config
from gateway.proxy import StreamProxy
from gateway.session import SessionGuard, UserTokenVerifier, legacy_token_verifier
from gateway.upstream import Upstream
from protocol.ids import is_camera_id, is_dns_label
from protocol.messages import Nudge
from protocol.tokens import bearer_token

log = logging.getLogger("platebridge.gateway")
STATIC = Path(__file__).parent / "static"
#: hls.js as vendored into an installed wheel by the build (setup.py)
VENDORED_HLSJS = STATIC / "vendor" / "hls.min.js"
#: hls.js in a source checkout, after ``npm ci --prefix gateway/web`` (deploy/setup.sh)
SOURCE_HLSJS = Path(__file__).parent / "web" / "node_modules" / "hls.js" / "dist" / "hls.min.js"


def default_hlsjs() -> Path:
    """Where the watch page's hls.js is when ``hlsjs_path`` is not set: the copy vendored
    into the installed package, else the source checkout's npm copy (which may be missing:
    ``/assets/hls.min.js`` then answers 503 and ``/readyz`` says so)."""
    return VENDORED_HLSJS if VENDORED_HLSJS.is_file() else SOURCE_HLSJS
_WATCH_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; media-src 'self' blob:; "
    "connect-src 'self'; img-src 'self' data:; worker-src 'self' blob:; base-uri 'none'; frame-ancestors 'self'"
)


class ErrorBody(msgspec.Struct):
    """JSON error body of the nudge relay."""

    error: str


def _html(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=str, media_type="text/html", description=description, generate_examples=False)


def _json_error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("platebridge")
    except Exception:  # noqa: BLE001 - not installed (source tree): the document still renders
        return "0.0.0"


class GatewayASGI:
    """The gateway's ASGI entry point.

    ``/streams/…`` goes straight to :class:`~gateway.proxy.StreamProxy` (the hot
    path: no framework routing, middleware or scope copies); everything else,
    lifespan included, goes to the Litestar app.
    """

    def __init__(self, litestar: Litestar, proxy: StreamProxy) -> None:
        self.litestar, self.proxy = litestar, proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["path"].startswith("/streams/"):
            await self.proxy(scope, receive, send)
            return
        await self.litestar(scope, receive, send)


def create_app(
    cfg: GatewayConfig,
    *,
    discovery: Discovery | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    extra_verifiers: Sequence[UserTokenVerifier] = (),
) -> GatewayASGI:
    """Build the gateway app from config.

    ``discovery`` and ``transport`` replace the configured discovery backend
    and the upstream HTTP transport (tests and benchmarks use them to count
    pod requests). ``extra_verifiers`` are user-token verifiers tried after the
    JWT one (:class:`gateway.session.SessionGuard`). The shared upstream client is
    closed on shutdown.
    """
    for warning in cfg.legacy_warnings():
        log.warning("legacy key layout: %s", warning)
    for where in cfg.weak_secrets():
        log.warning("secret %s is shorter than 32 bytes; use a long random secret (openssl rand -base64 48)", where)
    discovery = discovery or make_discovery(cfg)
    upstream = Upstream(
        cfg.pod_signer(), connect_timeout=cfg.upstream_connect_timeout, read_timeout=cfg.upstream_read_timeout,
        deadline=cfg.upstream_deadline, pod_connections=cfg.upstream_pod_connections,
        pod_held_requests=cfg.upstream_pod_held_requests, caps=cfg.body_caps(),
        proxy=cfg.upstream_proxy, transport=transport,
    )
    verifiers = list(extra_verifiers)
    if cfg.accept_legacy_tokens:  # the connection guide's token format (off by default)
        verifiers.append(legacy_token_verifier(cfg.user_keyring(), cfg.max_token_ttl))
    guard = SessionGuard(
        user_keys=cfg.user_keyring(), grants=GrantSigner(cfg.grant_keys()), max_token_ttl=cfg.max_token_ttl,
        max_session_seconds=cfg.max_session_seconds, grant_ttl=cfg.grant_ttl, extra_verifiers=verifiers,
    )
    proxy = StreamProxy(
        guard=guard, discovery=discovery, upstream=upstream, allowed_origins=cfg.allowed_origins,
        cache_max_bytes=cfg.worker_memory_bytes(), segment_max_age=cfg.segment_max_age,
        access_log_enabled=cfg.access_log,
        host_store=HostStore(cfg.host_cache_dir, max_bytes=cfg.cache_max_bytes, group_read=cfg.data_plane == "nginx")
        if cfg.host_cache_dir else None,
    )
    hlsjs = Path(cfg.hlsjs_path) if cfg.hlsjs_path else default_hlsjs()

    @get("/watch/{camera_id:str}", sync_to_thread=False, media_type="text/html", responses={
        401: _html("No or invalid stream token."), 403: _html("Token for another camera."),
        404: _html("Not a camera id.")})
    def watch(camera_id: FromPath[str], token: FromQuery[str | None] = None) -> Response:
        headers = {"Content-Security-Policy": _WATCH_CSP, "Referrer-Policy": "no-referrer",
                   "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        problem = None
        if not is_camera_id(camera_id):
            problem = (404, "Unknown camera.")
        else:
            try:
                guard.verify_user(token, camera_id)
            except CredentialsMissing:
                problem = (401, "This link has no stream token. Open the camera from the portal.")
            except WrongCamera:
                problem = (403, "This stream link is for another camera.")
            except TokenRejected as exc:
                reason = str(exc).removeprefix("invalid stream token: ")
                problem = (401, f"This stream link is not valid ({reason}). Open the camera from the portal again.")
        if problem:
            page = f"<!doctype html><meta charset=utf-8><title>PlateBridge</title><p>{html.escape(problem[1])}</p>"
            return Response(content=page, status_code=problem[0], media_type="text/html", headers=headers)
        return Response(content=(STATIC / "watch.html").read_bytes(), media_type="text/html", headers=headers)

    @get("/assets/watch.js", sync_to_thread=False, media_type="text/javascript")
    def watch_js() -> Response:
        return Response(content=(STATIC / "watch.js").read_bytes(), media_type="text/javascript",
                        headers={"Cache-Control": "no-cache"})

    @get("/assets/hls.min.js", sync_to_thread=False, media_type="text/javascript", responses={
        503: ResponseSpec(data_container=str, media_type="text/plain", description="hls.js is not installed.",
                          generate_examples=False)})
    def hls_js() -> Response:
        try:
            data = hlsjs.read_bytes()
        except OSError:
            return Response(content="hls.js is not installed: run `bash deploy/setup.sh` (source checkout) "
                            "or set hlsjs_path\n", status_code=503, media_type="text/plain")
        return Response(content=data, media_type="text/javascript", headers={"Cache-Control": "public, max-age=3600"})

    @post("/pods/{pod_id:str}/nudge", status_code=202, security=[{"adminBearer": []}], responses={
        400: _json_error("pod_id is not a DNS label, or the body is not a JSON nudge object."),
        401: _json_error("Missing or wrong admin token."),
        404: _json_error("The relay is disabled (no admin_token configured)."),
        502: _json_error("Pod unreachable or it refused the nudge."),
        503: _json_error("Pod unknown or offline."), 504: _json_error("Pod timed out.")})
    async def nudge(request: Request, pod_id: FromPath[str]) -> Response:
        """Relay a whitelist nudge from the portal to a pod over the tailnet."""
        if not cfg.admin_token:
            return Response(content={"error": "nudge relay disabled: set admin_token"}, status_code=404)
        presented = bearer_token(request.headers.get("authorization"))
        if presented is None or not hmac.compare_digest(presented.encode(), cfg.admin_token.encode()):
            return Response(content={"error": "admin token required"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
        if not is_dns_label(pod_id):
            return Response(content={"error": "pod_id must be a DNS label"}, status_code=400)
        raw = await request.body()
        try:
            msg = msgspec.json.decode(raw, type=Nudge) if raw.strip() else Nudge()
        except msgspec.DecodeError:
            return Response(content={"error": "body must be a JSON nudge object"}, status_code=400)
        try:
            base_url = await discovery.resolve(pod_id)
            status = await upstream.nudge(base_url, pod_id, msgspec.json.encode(msg))
        except (DiscoveryError, UpstreamError) as exc:
            prefix = "pod unavailable: " if isinstance(exc, DiscoveryError) else ""
            return Response(content={"error": f"{prefix}{exc}"}, status_code=status_of(exc))
        if 200 <= status < 300:
            return Response(content={"relayed": True, "pod_id": pod_id}, status_code=202)
        log.error("pod %s refused a nudge with HTTP %d", pod_id, status)
        return Response(content={"error": f"pod answered {status}"}, status_code=502)

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict:
        return {"status": "ok"}

    @get("/readyz", responses={503: ResponseSpec(data_container=dict, description="Not ready.",
                                                 generate_examples=False)})
    async def readyz() -> Response:
        pods = await discovery.pods()
        ok = hlsjs.exists() and (bool(pods) or cfg.discovery != "static")
        body = {"status": "ready" if ok else "not ready", "pods_known": len(pods), "hlsjs": hlsjs.exists()}
        return Response(content=body, status_code=200 if ok else 503)

    @get("/metrics", sync_to_thread=False, media_type="text/plain")
    def metrics() -> Response:
        return Response(content=exposition(), media_type=CONTENT_TYPE_LATEST)

    tasks: list[asyncio.Task[None]] = []

    def startup() -> None:
        tasks.append(asyncio.create_task(gauge_refresher()))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.aclose()
        await discovery.aclose()

    app = Litestar(
        route_handlers=[watch, watch_js, hls_js, nudge, healthz, readyz, metrics],
        on_startup=[startup],
        on_shutdown=[shutdown],
        openapi_config=openapi_config(_version()),
        logging_config=None,
    )
    return GatewayASGI(app, proxy)
