"""The pod's HTTP server (Litestar): HLS on the tailnet address, health on loopback.

Routes:

* ``GET /cameras/{camera_id}/index.m3u8`` and ``GET /cameras/{camera_id}/{file}``
  — only on the tailnet listener, and only with ``Authorization: Bearer <gateway→pod
  token>`` whose ``camera_id`` matches the path and whose ``pod_id`` is this pod.
  Paths are checked on the raw (still percent-encoded) request path, so encoded
  traversal (``%2e%2e``, ``%2f``) is refused too.
  When the pod packages (fMP4, :mod:`pod.llhls`), the playlist and the parts come from
  memory:

  - ``index.m3u8?_HLS_msn=M[&_HLS_part=P]`` is a blocking playlist reload (RFC
    8216bis-16 §6.2.5.2): answered as soon as the playlist holds segment M (part P of
    it); **400** when M is more than two segments past the last one, or P more than the
    Advance Part Limit past the newest part; **503** + ``Retry-After`` when it is not
    there after 3 × the target duration (§6.2.5.2 lets the server give up; players
    retry 5xx). ``_HLS_skip`` (delta updates, §6.2.5.1) is ignored: the full playlist
    is always sent, which the spec allows (the server decides whether to skip) and
    which keeps one cacheable answer per ``(msn, part)`` for the gateway;
  - ``part_<msn>_<i>.m4s`` is a partial segment (§4.4.4.9) from memory. A request for
    a part not produced yet — the EXT-X-PRELOAD-HINT (§4.4.5.3) — is held until the
    part starts, then streamed as its frames arrive and ended when it is complete; 404
    when that part will never exist (its segment ended first) or has left memory;
  - segments and init sections are read from disk.

  Every route checks the gateway→pod token the same way, before anything else.
* ``GET /health`` — state per camera and the age of the newest segment; no URLs, no
  secrets. Open on 127.0.0.1; on the tailnet listener it needs a gateway→pod token
  for this pod (any camera, or ``"*"``).
* ``GET /metrics`` — Prometheus text format; same rule as ``/health``.

Gateway→pod tokens are EdDSA, verified with the gateway's public key(s) only
(legacy: the shared HS256 stream secret), with ``max_clock_skew`` seconds of
tolerance on ``iat``/``nbf``. A refusal is a 401 whose ``WWW-Authenticate`` carries
the reason (RFC 6750 §3, ``error_description``; never the token), and is logged at
most once a minute per reason, saying "clock skew" when that is the cause.

A configured camera whose playlist does not exist yet (ffmpeg starting or
restarting) answers **503** with ``Retry-After`` — players retry 5xx but give up
on 4xx, so a camera restart must not look like a missing resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Stream
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pod.llhls import Packager, Part
from pod.metrics import HLS_REQUESTS, REGISTRY
from pod.streamer import PLAYLIST, CameraStreamer
from protocol.errors import TokenError
from protocol.messages import Nudge
from protocol.paths import KEY_MEDIA_TYPE, UnsafePath, content_type_for, safe_relative_path
from protocol.tokens import DEFAULT_POD_CLOCK_SKEW, VerifyKeys, bearer_token, verify_pod_token

VERSION = "0.1.0"
M3U8 = "application/vnd.apple.mpegurl"
_PART = re.compile(r"^part_(\d{1,18})_(\d{1,6})\.m4s$")
_INT = re.compile(r"^\d{1,18}$")
log = logging.getLogger("platebridge.pod.hls")


_REFUSAL_LOG_EVERY = 60.0


def _kind(path: str) -> str:
    if path.startswith("part_"):
        return "part"
    if path.endswith(".m3u8"):
        return "playlist"
    if path.endswith(".mp4"):
        return "init"
    if path.endswith(".key"):
        return "key"
    return "segment" if path.endswith((".m4s", ".ts")) else "other"


def _plain(status: int, text: str, headers: dict[str, str] | None = None, kind: str = "other") -> Response:
    HLS_REQUESTS.labels(kind, str(status)).inc()
    return Response(content=text + "\n", status_code=status, media_type="text/plain", headers=headers or {})


def _from_disk(request: Request, streamer: CameraStreamer, rel: str, ctype: str, kind: str) -> Response:
    base = streamer.dir.resolve()
    path = (base / rel).resolve()
    if base not in path.parents:
        return _plain(400, "bad path", kind=kind)
    try:
        st = path.stat()
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        if rel == PLAYLIST:
            return _plain(503, "stream starting", {"Retry-After": "2"}, kind)
        return _plain(404, "not found", kind=kind)
    tag = hashlib.blake2b(f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}".encode(), digest_size=8).hexdigest()
    etag = f'"{tag}"'
    is_playlist = ctype == M3U8
    headers = {
        "ETag": etag,
        "Cache-Control": ("no-store" if ctype == KEY_MEDIA_TYPE else "no-cache" if is_playlist or rel.endswith(".mp4")
                          else "max-age=300"),
    }
    if request.headers.get("if-none-match") == etag:
        HLS_REQUESTS.labels(kind, "304").inc()
        return Response(content=b"", status_code=304, headers=headers)
    HLS_REQUESTS.labels(kind, "200").inc()
    return Response(content=data, media_type=ctype, headers=headers)


def _hold_seconds(streamer: CameraStreamer) -> float:
    """How long a blocking request is held: 3 × the target duration (RFC 8216bis §6.2.5.2)."""
    live = streamer.live
    td = (live.target_duration if live else None) or streamer.cfg.hls_segment_seconds
    return 3.0 * td


async def _wait_change(streamer: CameraStreamer, deadline: float) -> bool:
    """Wait for the streamer's next change; False when ``deadline`` (monotonic) passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(streamer.changed().wait(), timeout=left)
    return time.monotonic() < deadline


async def _live_playlist(request: Request, streamer: CameraStreamer) -> Response:
    """The media playlist from the packager, with blocking reloads (see the module doc)."""
    params = request.query_params
    msn_raw, part_raw = params.get("_HLS_msn"), params.get("_HLS_part")
    blocking = streamer.low_latency and msn_raw is not None
    if streamer.low_latency and part_raw is not None and msn_raw is None:
        return _plain(400, "_HLS_part needs _HLS_msn", kind="playlist")
    msn = part = None
    if blocking:
        if not _INT.match(msn_raw or "") or (part_raw is not None and not _INT.match(part_raw)):
            return _plain(400, "_HLS_msn and _HLS_part must be decimal integers", kind="playlist")
        msn, part = int(msn_raw or 0), None if part_raw is None else int(part_raw)
    deadline = time.monotonic() + _hold_seconds(streamer)
    while True:
        live = streamer.live
        if live is None or not live.ready:
            if not blocking or not await _wait_change(streamer, deadline):
                return _plain(503, "stream starting", {"Retry-After": "2"}, "playlist")
            continue
        if msn is not None:
            verdict = live.reload_state(msn, part)
            if verdict == "too_far":
                return _plain(400, "_HLS_msn/_HLS_part too far ahead of the live edge (RFC 8216bis 6.2.5.2)",
                              kind="playlist")
            if verdict == "wait":
                if not await _wait_change(streamer, deadline):
                    return _plain(503, "requested segment/part not produced in time", {"Retry-After": "1"},
                                  "playlist")
                continue
        text = live.playlist(low_latency=streamer.low_latency)
        HLS_REQUESTS.labels("playlist", "200").inc()
        return Response(content=text.encode(), media_type=M3U8, headers={"Cache-Control": "no-cache"})


async def _live_part(streamer: CameraStreamer, rel: str) -> Response:
    """A partial segment from memory; a hinted one is held, then streamed (module doc)."""
    m = _PART.match(rel)
    assert m is not None
    msn, index = int(m.group(1)), int(m.group(2))
    live = streamer.live
    if not streamer.low_latency or live is None:
        return _plain(404, "not found", kind="part")
    deadline = time.monotonic() + _hold_seconds(streamer)
    while (p := live.part(msn, index)) is None:
        if streamer.live is not live or not live.part_possible(msn, index):
            return _plain(404, "no such part", kind="part")
        if not await _wait_change(streamer, deadline):
            return _plain(503, "part not produced in time", {"Retry-After": "1"}, "part")
    headers = {"Cache-Control": "max-age=300"}
    HLS_REQUESTS.labels("part", "200").inc()
    if p.complete:
        return Response(content=p.data(), media_type="video/mp4", headers=headers)
    return Stream(_stream_part(streamer, live, p), media_type="video/mp4", headers=headers)


async def _stream_part(streamer: CameraStreamer, live: Packager, p: Part) -> AsyncIterator[bytes]:
    """Yield a part's bytes as its frames arrive, until it is complete; also ends when its
    run is replaced (ffmpeg restarted) or nothing changed for the hold time (ffmpeg gone)."""
    sent = 0
    while True:
        event = streamer.changed()
        chunks = p.chunks[sent:]
        if chunks:
            sent += len(chunks)
            yield b"".join(chunks)
        if p.complete or streamer.live is not live:
            return
        try:
            await asyncio.wait_for(event.wait(), timeout=_hold_seconds(streamer))
        except TimeoutError:
            return


def create_hls_app(
    *,
    pod_id: str,
    token_keys: Sequence[VerifyKeys],
    streamers: dict[str, CameraStreamer],
    tailnet_host: str | Callable[[], str | None],
    extra_status: Callable[[], dict] | None = None,
    on_nudge: Callable[[Nudge], Awaitable[None]] | None = None,
    max_clock_skew: float = DEFAULT_POD_CLOCK_SKEW,
) -> Litestar:
    """Build the pod's Litestar app.

    ``streamers`` maps camera_id → :class:`CameraStreamer`; ``tailnet_host`` is the
    address HLS may be served on, or a callable returning it once known
    (requests arriving on any other listener get 404 for camera routes). ``extra_status`` adds keys to ``/health``.
    ``on_nudge`` handles ``POST /nudge`` (tailnet listener only, gateway→pod
    token for this pod, any camera): it starts an immediate whitelist refresh.
    ``token_keys``: the gateway's :class:`~protocol.tokens.PublicKeyring` and/or the
    legacy stream-secret keyring; ``max_clock_skew`` in seconds.
    """
    started = time.time()
    host_of = tailnet_host if callable(tailnet_host) else (lambda: tailnet_host)

    def on_tailnet(request: Request) -> bool:
        server = request.scope.get("server")
        host = host_of()
        return bool(server and host and server[0] == host)

    logged: dict[str, float] = {}

    def refuse(reason: str, kind: str) -> Response:
        now = time.monotonic()
        label = "clock skew" if "clock skew" in reason else reason
        if now - logged.get(label, -_REFUSAL_LOG_EVERY) >= _REFUSAL_LOG_EVERY:
            logged[label] = now
            if "clock skew" in reason:
                log.warning("refused a gateway token: clock skew: %s; is this pod's clock synced (timedatectl)? "
                            "tolerated: max_clock_skew %g s", reason, max_clock_skew)
            else:
                log.warning("refused a gateway token: %s", reason)
        safe = reason.replace('"', "'")
        return _plain(401, f"invalid token: {reason}",
                      {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{safe}"'}, kind)

    def authorize(request: Request, camera_id: str | None, kind: str = "other") -> Response | None:
        """None when the request carries a gateway→pod token for this pod (and ``camera_id``,
        when given); else the 401/403 answer."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return _plain(401, "missing bearer token", {"WWW-Authenticate": "Bearer"}, kind)
        try:
            claims = verify_pod_token(token, token_keys, max_skew=max_clock_skew)
        except TokenError as exc:
            return refuse(str(exc), kind)
        if claims.pod_id != pod_id:  # pod ids are tailnet names, not secrets: say which pod this is
            return _plain(403, f"token is for pod {claims.pod_id}; this is pod {pod_id}", kind=kind)
        if camera_id is not None and claims.camera_id != camera_id:
            return _plain(403, "token is for another camera or pod", kind=kind)
        return None

    @get("/health", sync_to_thread=False)
    def health(request: Request) -> Response:
        if on_tailnet(request) and (refused := authorize(request, None)) is not None:
            return refused
        cams = {cid: s.status() for cid, s in streamers.items()}
        ok = all(c["state"] == "running" for c in cams.values())
        body = {"status": "ok" if ok else "degraded", "pod_id": pod_id, "version": VERSION,
                "uptime_s": round(time.time() - started, 1), "cameras": cams}
        if extra_status:
            body.update(extra_status())
        return Response(content=body, media_type="application/json")

    @get("/metrics", sync_to_thread=False)
    def metrics(request: Request) -> Response:
        if on_tailnet(request) and (refused := authorize(request, None)) is not None:
            return refused
        return Response(content=generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @get("/cameras/{camera_id:str}/{file:path}")
    async def hls_file(request: Request, camera_id: FromPath[str], file: FromPath[str]) -> Response:
        kind = _kind(file)
        if not on_tailnet(request):
            return _plain(404, "not found", kind=kind)
        streamer = streamers.get(camera_id)
        if (refused := authorize(request, camera_id, kind)) is not None:
            return refused
        if streamer is None:
            return _plain(404, "unknown camera", kind=kind)
        raw = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0]
        prefix = f"/cameras/{camera_id}/"
        if not raw.startswith(prefix):
            return _plain(400, "bad path", kind=kind)
        try:
            rel = safe_relative_path(raw[len(prefix):])
        except UnsafePath:
            return _plain(400, "bad path", kind=kind)
        ctype = content_type_for(rel)
        if ctype is None:
            return _plain(404, "not found", kind=kind)
        if streamer.packaged:
            if rel == PLAYLIST:
                return await _live_playlist(request, streamer)
            if _PART.match(rel):
                return await _live_part(streamer, rel)
        return _from_disk(request, streamer, rel, ctype, kind)

    @post("/nudge", status_code=202)
    async def nudge(request: Request) -> Response:
        if not on_tailnet(request) or on_nudge is None:
            return _plain(404, "not found")
        if (refused := authorize(request, None)) is not None:
            return refused
        raw = await request.body()
        try:
            body = msgspec.json.decode(raw, type=Nudge) if raw.strip() else Nudge()
        except msgspec.DecodeError:
            return _plain(400, "body must be a JSON nudge object")
        await on_nudge(body)
        return Response(content={"accepted": True}, status_code=202)

    def _not_found(_: Request, exc: HTTPException) -> Response:
        return _plain(exc.status_code, exc.detail or "error")

    return Litestar(
        route_handlers=[health, metrics, hls_file, nudge],
        exception_handlers={HTTPException: _not_found},
        openapi_config=None,
        logging_config=None,
    )

