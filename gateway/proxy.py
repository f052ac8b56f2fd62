"""The stream proxy: ``/streams/{camera_id}/…`` as a raw ASGI app (the hot path).

Request flow (each step refuses before the next one runs):

1. Parse the raw path and query. The path below the camera is checked with
   :func:`protocol.paths.safe_relative_path` (→ 400); unknown file types → 404.
2. Authenticate **before any upstream request** (:class:`~gateway.session.SessionGuard`):
   * a ``pb_grant`` query parameter, bound to this very URI and kind (a media grant
     never opens a playlist), or
   * for the root playlist only, the user token (``?token=`` or ``Authorization:
     Bearer``). A valid token answers ``302`` to the same playlist with a session
     grant, so reloads keep working after the token expires (it only gates the start).
   Missing credentials → 401, bad or foreign ones → 401/403.
3. Locate the pod (discovery; unknown/offline/claimed twice → 503).
4. Playlists (:class:`~gateway.cache.PlaylistCache`): each upstream response is checked
   and compiled once (:func:`gateway.playlist.compile_playlist`) and rendered per viewer
   with fresh grants. A plain reload is answered from the newest playlist of its channel
   while that is younger than half a part target (half the target duration without
   parts), else by one shared fetch. LL-HLS blocking reloads (RFC 8216bis §6.2.5.2):
   ``_HLS_msn``/``_HLS_part`` are checked (malformed → 400, no pod request) and written
   canonically; a generation the newest playlist already holds is answered from it, one
   too far ahead of the live edge is a 400, and every viewer waiting on the same
   generation shares one upstream request, held up to the pod's 3 × target duration
   plus the normal deadline. Directives for a pod that never advertised
   CAN-BLOCK-RELOAD are dropped (a plain reload). A malformed playlist is a 502 whose
   reason is logged, and is never reused. Segments and parts: single-flight cache,
   streamed to every viewer as bytes arrive (a preload-hinted part the pod is still
   producing included: it is a held request, given the hold time); ``Range`` is served
   from the same flight without another copy.
5. Errors map through :data:`gateway.errors.STATUS`: pod unreachable → 502, over the
   deadline → 504, 4xx passes through, 503 passes with Retry-After, the pod refusing
   *our* token → 502 (never 401; the log says why, clock skew included).

Every response goes through :mod:`gateway.responses` (CORS on errors and redirects too).
"""

from __future__ import annotations

import copy
import email.utils
import logging
import math
import re
import time
from collections import deque
from urllib.parse import unquote

from gateway.cache import ByteBudget, Flight, PlaylistCache, SegmentCache
from gateway.discovery import Discovery
from gateway.errors import (
    BadRequest,
    CredentialsMissing,
    ForeignURIError,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PlaylistError,
    UpstreamError,
    UpstreamRefusedGateway,
    UpstreamStatus,
)
from gateway.grants import GRANT_PARAM, Grant, Kind
from gateway.hoststore import HostStore
from gateway.llhls import MAX_HOLD_TARGET, Directives, PlaylistInfo, inspect_playlist, parse_directives
from gateway.metrics import (
    BYTES_OUT,
    CACHE,
    CACHE_BYTES,
    CACHE_PEAK,
    PLAYLISTS,
    REQUESTS,
    UPSTREAM,
    VIEWERS,
    live_gauge,
)
from gateway.playlist import Template, compile_playlist, part_target, target_duration
from gateway.ranges import parse_range
from gateway.responses import PREFLIGHT, Cors, Headers, send_body, send_error, send_start, send_stream
from gateway.session import ROOT_PLAYLIST, SessionGuard, _header
from gateway.upstream import Upstream
from protocol.ids import is_camera_id
from protocol.paths import KEY_MEDIA_TYPE, UnsafePath, content_type_for, safe_relative_path
from protocol.redact import redact

log = logging.getLogger("platebridge.gateway")
access_log = logging.getLogger("platebridge.gateway.access")

M3U8 = "application/vnd.apple.mpegurl"
PREFIX = b"/streams/"
_DESCRIPTION = re.compile(r'error_description="([^"]{0,200})"')
_REFUSAL_LOG_EVERY = 60.0


class PlaylistView:
    """A checked upstream playlist: its :class:`~gateway.playlist.Template` (rendered per
    viewer) and what it says (:class:`~gateway.llhls.PlaylistInfo`). Kept on the flight."""

    __slots__ = ("info", "template")

    def __init__(self, template: Template, info: PlaylistInfo) -> None:
        self.template, self.info = template, info


class CameraLive:
    """What the newest media playlist of a camera says about LL-HLS: ``can_block`` and
    ``can_skip`` (EXT-X-SERVER-CONTROL), ``hold`` (s, how long the pod holds a blocking
    request or a hinted part) and ``hints`` (recent EXT-X-PRELOAD-HINT paths)."""

    __slots__ = ("can_block", "can_skip", "hints", "hold")

    def __init__(self) -> None:
        self.can_block = self.can_skip = False
        self.hold = 0.0
        self.hints: deque[str] = deque(maxlen=4)

    def update(self, info: PlaylistInfo) -> None:
        self.can_block, self.can_skip, self.hold = info.can_block, info.can_skip, info.hold()
        for hint in info.hints:
            if hint not in self.hints:
                self.hints.append(hint)


def clock_offset(pod_date: str | None, now: float) -> float | None:
    """Seconds the pod's clock (its ``Date`` header, RFC 9110 §6.6.1) is ahead of ``now``, or None."""
    if not pod_date:
        return None
    try:
        return email.utils.parsedate_to_datetime(pod_date).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class StreamProxy:
    """ASGI app serving ``/streams/…``. Construct once per process; see module docs.

    ``cache_max_bytes`` bounds every pod body the proxy holds (segments, playlists, in
    flight or cached); ``segment_max_age`` is the browser cache lifetime of segments (s).
    """

    def __init__(
        self,
        *,
        guard: SessionGuard,
        discovery: Discovery,
        upstream: Upstream,
        allowed_origins: list[str],
        cache_max_bytes: int = 256 * 1024 * 1024,
        segment_max_age: int = 60,
        access_log_enabled: bool = True,
        host_store: HostStore | None = None,
    ) -> None:
        self.guard = guard
        self.discovery = discovery
        self.upstream = upstream
        self.cors = Cors(allowed_origins)
        self.budget = ByteBudget(cache_max_bytes)
        self.host = host_store
        # complete segments stay in this worker's memory too (its share of cache_max_bytes): a hit
        # then costs no file read; a miss here is a hit in the host store, or one fetch per host
        self.segments = SegmentCache(self.budget)
        self.playlists = PlaylistCache(budget=self.budget,
                                       max_inflight=3 * MAX_HOLD_TARGET + upstream.deadline + 5.0)
        self.segment_cc = f"private, max-age={int(segment_max_age)}, immutable".encode()
        self.access_log_enabled = access_log_enabled
        self._viewers: dict[tuple[bytes, int], float] = {}
        self._req_counters: dict = {}
        self._cache_hit, self._cache_miss = CACHE.labels("hit"), CACHE.labels("miss")
        self._live: dict[tuple[str, str], CameraLive] = {}
        self._from = {source: PLAYLISTS.labels(source) for source in ("newest", "joined", "fetched")}
        self._refusals_logged: dict[str, float] = {}
        live_gauge(VIEWERS, self.active_viewers)
        live_gauge(CACHE_BYTES, lambda: self.budget.used)
        live_gauge(CACHE_PEAK, lambda: self.budget.peak)

    def active_viewers(self, window: float = 30.0) -> int:
        """Distinct viewing sessions that loaded a playlist in the last ``window`` s."""
        cutoff = time.monotonic() - window
        for k in [k for k, t in self._viewers.items() if t < cutoff]:
            del self._viewers[k]
        return len(self._viewers)

    # ---- ASGI entry ----------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        cors = self.cors.headers(scope)
        status = 500
        kind = "other"
        sent_status = 0

        async def tracked(message: dict[str, object]) -> None:
            nonlocal sent_status
            if message["type"] == "http.response.start":
                sent_status = int(message["status"])  # type: ignore[call-overload]
            await send(message)

        try:
            status, kind = await self._handle(scope, tracked, cors)
        except GatewayError as exc:
            if sent_status:  # the pod's body broke off mid-stream: the viewer's connection is closed unfinished
                status = sent_status
                log.warning("%s %s cut short: %s", scope["method"], scope["path"], exc)
            else:
                status = await send_error(send, exc, cors, head=scope["method"] == "HEAD")
        finally:
            counter = self._req_counters.get((kind, status))
            if counter is None:
                counter = self._req_counters[(kind, status)] = REQUESTS.labels(kind, str(status))
            counter.inc()
            if self.access_log_enabled:
                q = scope.get("query_string", b"").decode("latin-1")
                path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
                access_log.info(
                    "%s %s %d %.1fms", scope["method"], redact(path + ("?" + q if q else "")), status,
                    (time.perf_counter() - started) * 1000,
                )

    async def _handle(self, scope, send, cors: Headers) -> tuple[int, str]:
        method = scope["method"]
        if method == "OPTIONS":
            await send_body(send, 204, b"", cors + PREFLIGHT)
            return 204, "preflight"
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed("method not allowed")

        raw_path = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0]
        if not raw_path.startswith(PREFIX):
            raise NotFound("not found")
        cam_raw, sep, file_part = raw_path[len(PREFIX):].decode("latin-1").partition("/")
        camera_id = unquote(cam_raw)
        if not sep or not is_camera_id(camera_id):
            raise NotFound("not found")
        try:
            rel = safe_relative_path(file_part)
        except UnsafePath:
            raise BadRequest("bad path") from None
        ctype = content_type_for(rel)
        if ctype is None:
            raise NotFound("not found")
        is_playlist = ctype == M3U8
        kind = "playlist" if is_playlist else "segment"
        grant_kind: Kind = "playlist" if is_playlist else "media"

        now = time.time()
        creds = self.guard.credentials(scope, scope.get("query_string", b"").decode("latin-1"))
        query = creds.rest
        directives = None
        if is_playlist:
            directives, query = parse_directives(query)  # malformed: 400 before anything else
        if creds.grant is not None:
            grant = self.guard.verify_grant(creds.grant, camera_id=camera_id, path=rel, query=query,
                                            kind=grant_kind, now=now)
        else:
            if not is_playlist:
                raise CredentialsMissing("segment requests need the grant from the playlist")
            claims = self.guard.verify_user(creds.token, camera_id, now)
            _, session = self.guard.start_session(claims, now)
            if rel != ROOT_PLAYLIST:
                raise NotFound(f"a viewing session starts at {ROOT_PLAYLIST}")
            location = f"{ROOT_PLAYLIST}?{GRANT_PARAM}={session}"  # constant, never from input
            await send_body(send, 302, b"", [(b"location", location.encode("latin-1")),
                                             (b"cache-control", b"no-store"), *cors])
            return 302, kind

        base_url = await self.discovery.resolve(grant.pod_id)
        if is_playlist:
            return await self._playlist(scope, send, cors, grant, camera_id, base_url, rel, query, directives,
                                        now), kind
        return await self._segment(scope, send, cors, grant, camera_id, base_url, rel, query, ctype), kind

    # ---- upstream outcomes -------------------------------------------------
    def _raise_for(self, flight: Flight, pod_id: str) -> None:
        """Raise the :class:`GatewayError` a failed flight maps to (never a 401/403 to the viewer)."""
        if flight.status == 0:
            err = flight.error
            raise err if isinstance(err, GatewayError) else UpstreamError("pod unreachable")
        st = flight.status
        if st == 200:
            return
        if st in (401, 403):
            self._log_refusal(flight, pod_id)
            raise UpstreamRefusedGateway("pod refused the gateway")
        if st in (503, 504):
            ra = flight.headers.get("retry-after", "2")
            raise UpstreamStatus(st, "stream not ready", headers=((b"retry-after", ra.encode("latin-1")),))
        if 400 <= st < 500:
            raise UpstreamStatus(st, "not found" if st == 404 else f"pod answered {st}")
        raise UpstreamError(f"pod error {st}")

    def _log_refusal(self, flight: Flight, pod_id: str) -> None:
        """Say why a pod refused the gateway's token: clock skew (from the pod's ``Date`` and its
        reason) or a key mismatch. Once a minute per pod."""
        now = time.time()
        if now - self._refusals_logged.get(pod_id, 0.0) < _REFUSAL_LOG_EVERY:
            return
        self._refusals_logged[pod_id] = now
        m = _DESCRIPTION.search(flight.headers.get("www-authenticate", ""))
        reason = m.group(1) if m else "no reason given"
        offset = clock_offset(flight.headers.get("date"), now)
        if (offset is not None and abs(offset) >= 3) or "clock skew" in reason:
            drift = f"the pod's clock is {offset:+.0f} s off the gateway's" if offset is not None else "see reason"
            log.error("pod %s refused the gateway's token (HTTP %d: %s): clock skew: %s; check time sync "
                      "(NTP, `timedatectl`) on the pod and on this host", pod_id, flight.status, reason, drift)
        else:
            log.error("pod %s refused the gateway's token (HTTP %d: %s): check that the pod has this gateway's "
                      "public key (gateway_public_keys, kid %r) and that its pod_id is %r", pod_id, flight.status,
                      reason, getattr(self.upstream.signer, "kid", "legacy stream_secret"), pod_id)

    async def _complete_body(self, flight: Flight, pod_id: str) -> bytes:
        """The whole upstream body, or the GatewayError its failure maps to."""
        try:
            body = await flight.read_all()
        except GatewayError:
            if flight.status not in (0, 200):
                self._raise_for(flight, pod_id)
            raise
        except Exception as exc:  # noqa: BLE001 - the flight's status says what happened
            # the type only: an exception's text may quote what the pod sent
            log.warning("upstream transfer from pod %s failed: %s", pod_id, type(exc).__name__)
            self._raise_for(flight, pod_id)
            raise UpstreamError("pod connection broke mid-transfer") from None
        self._raise_for(flight, pod_id)
        return body

    # ---- playlists ---------------------------------------------------------
    def _check_playlist(self, body: bytes, camera_id: str, base_url: str, rel: str) -> PlaylistView:
        """Decode, check and compile a playlist once per upstream response.
        Raises :class:`PlaylistError` with the reason (the caller logs it)."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PlaylistError("pod sent an invalid playlist (not UTF-8)") from None
        pod_netloc = base_url.split("://", 1)[-1]
        scope_url = self._scope_url(base_url, camera_id)
        try:
            target_duration(text)
            part_target(text)
            template = compile_playlist(text, upstream_url=scope_url + rel, scope_url=scope_url,
                                        drop_comments_with=pod_netloc)
        except ForeignURIError as exc:
            raise ForeignURIError(f"pod sent a playlist with a foreign URI ({exc})") from None
        except PlaylistError as exc:
            raise PlaylistError(f"pod sent an invalid playlist ({exc})") from None
        if pod_netloc in template.literal_text():
            # e.g. in a tag's non-URI attribute: never reveal tailnet addresses
            raise PlaylistError("pod sent a playlist that reveals its address")
        return PlaylistView(template, inspect_playlist(text, template.hints))

    def _view(self, flight: Flight, pod_id: str, camera_id: str, base_url: str, rel: str) -> PlaylistView:
        """The checked view of a complete 200 playlist flight, made once and kept on it.
        Raises the :class:`PlaylistError` it maps to (logged once)."""
        verdict = flight.verdict
        if verdict is None:
            try:
                verdict = self._check_playlist(flight.complete_body(), camera_id, base_url, rel)
            except PlaylistError as exc:
                log.error("pod %s, camera %s, %s: %s; answered 502", pod_id, camera_id, rel, exc)
                verdict = exc
            flight.verdict = verdict
        if isinstance(verdict, PlaylistView):
            return verdict
        raise copy.copy(verdict) if isinstance(verdict, GatewayError) else PlaylistError("invalid playlist")

    @staticmethod
    def _scope_url(base_url: str, camera_id: str) -> str:
        return f"{base_url}/cameras/{camera_id}/"

    async def _playlist(self, scope, send, cors: Headers, grant: Grant, camera_id: str, base_url: str, rel: str,
                        query: str, directives: Directives | None, now: float) -> int:
        pod_id = grant.pod_id
        live = self._live.get((pod_id, camera_id))
        if directives is not None and (live is None or not live.can_block):
            directives = None  # the pod never offered blocking reloads (RFC 8216bis §6.2.5.2): a plain reload
        skip = directives.skip if directives is not None and live is not None and live.can_skip else None
        channel = (pod_id, camera_id, rel, query, skip)
        generation = directives if directives is not None and directives.blocking else None
        newest = self.playlists.newest(channel)
        flight = None
        if newest is not None:
            age = time.monotonic() - newest.at
            if generation is None:
                if age < newest.info.reload_ttl():
                    flight = newest.flight
            elif newest.info.too_far(generation, age):
                raise BadRequest("_HLS_msn/_HLS_part too far ahead of the live edge (RFC 8216bis 6.2.5.2)")
            elif age <= newest.info.hold() and newest.info.satisfies(generation):
                flight = newest.flight  # this generation is already answered
            if age > 2 * newest.info.hold() + newest.info.reload_ttl():
                self.playlists.drop(channel)  # idle channel: let its body go
        if flight is not None:
            self._from["newest"].inc()
        else:
            upstream_query = "&".join(q for q in (query, directives.query(with_skip=skip is not None)
                                                  if directives is not None else "") if q)
            hold = live.hold if generation is not None and live is not None else 0.0

            async def from_pod(flight: Flight, _stale: Flight | None = None) -> None:
                url = self.upstream.url(base_url, camera_id, rel, upstream_query)
                UPSTREAM.labels("playlist").inc()
                if hold:  # the pod holds it up to `hold` s, then it still has the normal time to answer
                    await self.upstream.fill(flight, url, pod_id=pod_id, camera_id=camera_id, kind="playlist",
                                             held=True, read_timeout=hold + self.upstream.read_timeout,
                                             deadline=hold + self.upstream.deadline)
                else:
                    await self.upstream.fill(flight, url, pod_id=pod_id, camera_id=camera_id, kind="playlist")

            def shared_for(flight: Flight) -> float | None:
                """Seconds the other workers may reuse this answer: the same pacing as here."""
                try:
                    info = self._view(flight, pod_id, camera_id, base_url, rel).info
                except PlaylistError:
                    return None
                return info.reload_ttl() if generation is None else info.hold()

            async def fetch(flight: Flight) -> None:
                if self.host is None:
                    await from_pod(flight)
                else:  # one fetch per host: the other workers follow or reuse it
                    await self.host.fill(("playlist", channel, generation), flight, from_pod, ttl=shared_for)

            def settle(flight: Flight) -> PlaylistInfo | None:
                try:
                    info = self._view(flight, pod_id, camera_id, base_url, rel).info
                except PlaylistError:
                    return None
                if info.next_msn is not None:  # a media playlist: what the camera offers now
                    state = self._live.get((pod_id, camera_id))
                    if state is None:
                        if len(self._live) > 10_000:
                            self._live.clear()
                        state = self._live[(pod_id, camera_id)] = CameraLive()
                    state.update(info)
                return info

            flight, started = self.playlists.get_or_fetch((channel, generation), fetch, settle)
            self._from["fetched" if started else "joined"].inc()
        with flight.held():  # held from here: a response dropped from the cache keeps its body for us
            await self._complete_body(flight, pod_id)
            view = self._view(flight, pod_id, camera_id, base_url, rel)
            data = view.template.render(self.guard.grant_for(grant, camera_id, now)).encode("utf-8")
        self._viewers[(grant.sid, grant.session_exp)] = time.monotonic()
        if len(self._viewers) > 10_000:
            self.active_viewers()
        await send_body(send, 200, data, [(b"content-type", M3U8.encode()), (b"cache-control", b"no-cache, private"),
                                          *cors], head=scope["method"] == "HEAD")
        BYTES_OUT.inc(len(data))
        return 200

    # ---- segments ----------------------------------------------------------
    async def _segment(self, scope, send, cors: Headers, grant: Grant, camera_id: str, base_url: str, rel: str,
                       query: str, ctype: str) -> int:
        is_init = rel.endswith(".mp4")
        is_key = ctype == KEY_MEDIA_TYPE  # EXT-X-KEY: revalidated like init, never stored by browsers
        pod_id = grant.pod_id
        key = (pod_id, camera_id, rel, query)
        live = self._live.get((pod_id, camera_id))
        # a preload-hinted part (RFC 8216bis §4.4.5.3): the pod holds the request until the part
        # starts, so it gets the hold time on top of the normal deadline, from the held pool
        hold = live.hold if live is not None and rel in live.hints else 0.0

        cache_control = b"private, no-store" if is_key else b"private, no-cache" if is_init else self.segment_cc
        host = None if is_key else self.host  # keys (secrets) never go through the host store's files

        async def from_pod(flight: Flight, stale: Flight | None) -> None:
            url = self.upstream.url(base_url, camera_id, rel, query)
            UPSTREAM.labels("init" if is_init else "segment").inc()
            if hold:
                await self.upstream.fill(flight, url, pod_id=pod_id, camera_id=camera_id, kind="segment",
                                         held=True, read_timeout=hold + self.upstream.read_timeout,
                                         deadline=hold + self.upstream.deadline)
            else:
                await self.upstream.fill(flight, url, pod_id=pod_id, camera_id=camera_id,
                                         kind="init" if is_init else "segment", stale=stale)

        revalidate = is_init or is_key

        async def fetch(flight: Flight, stale: Flight | None) -> None:
            if host is None:
                await from_pod(flight, stale)
                return
            # one fetch per host: the other workers follow this one or reuse its file
            ttl = self.segments.revalidate_after if is_init else math.inf
            outcome = await host.fill(key, flight, from_pod, ttl=lambda _f: ttl, revalidate=revalidate)
            (self._cache_miss if outcome == "fetched" else self._cache_hit).inc()  # a miss: the pod was asked

        before = self.segments.misses
        flight = self.segments.get_or_fetch(key, fetch, revalidate=revalidate)
        if self.segments.misses == before:
            self._cache_hit.inc()  # in this worker's memory, or its fetch already running
        elif host is None:
            self._cache_miss.inc()
        with flight.held():  # held from here: a body that leaves the cache stays readable (and charged) for us
            return await self._serve_segment(scope, send, cors, flight, pod_id, ctype, cache_control)

    async def _serve_segment(self, scope, send, cors: Headers, flight: Flight, pod_id: str, ctype: str,
                             cache_control: bytes) -> int:
        await flight.ready.wait()
        self._raise_for(flight, pod_id)
        head = scope["method"] == "HEAD"
        rng = _header(scope, b"range")
        if rng and cache_control == self.segment_cc:
            cache_control = b"private, no-store"  # as the data plane's nginx: a ranged answer is never kept
        headers = [(b"content-type", ctype.encode()), (b"accept-ranges", b"bytes"),
                   (b"cache-control", cache_control), *cors]
        # If-Range (RFC 9110 §13.1.5): the gateway sends no validator (no ETag, no Last-Modified),
        # so none can match, and the Range is ignored: the whole body
        if rng is not None and _header(scope, b"if-range") is None:
            status = await self._range(send, flight, pod_id, rng, headers, head)
            if status is not None:
                return status
        if flight.done and flight.error is None:
            body = flight.complete_body()
            await send_body(send, 200, body, headers, head=head)
            BYTES_OUT.inc(0 if head else len(body))
            return 200
        length = flight.headers.get("content-length")
        if length is not None:
            headers.append((b"content-length", length.encode("latin-1")))
        if head:
            await send_start(send, 200, headers)
            await send({"type": "http.response.body", "body": b""})
            return 200
        await send_stream(send, 200, headers, flight.body(), count=BYTES_OUT.inc)
        return 200

    async def _range(self, send, flight: Flight, pod_id: str, rng: str, headers: Headers, head: bool) -> int | None:
        """206 for one byte range, streamed from the shared flight as its bytes arrive (no copy
        of the body); the length comes from the finished flight or the pod's Content-Length.
        Returns the status sent, or None when the header is to be ignored (the caller sends
        the whole body). Raises :class:`RangeNotSatisfiable` (416); :mod:`gateway.ranges`
        says which header gets which answer (nginx's, so both data planes agree)."""
        if flight.done:
            await self._complete_body(flight, pod_id)
            size: int | None = flight.size
        else:
            length = flight.headers.get("content-length", "")
            size = int(length) if length.isdigit() else None
            if size is None:  # unknown length: the range can only be resolved at the end
                await self._complete_body(flight, pod_id)
                size = flight.size
        assert size is not None  # a finished flight knows its size
        span = parse_range(rng, size)
        if span is None:
            return None
        a, b = span
        headers = [*headers, (b"content-range", f"bytes {a}-{b}/{size}".encode()),
                   (b"content-length", str(b - a + 1).encode())]
        if head:
            await send_start(send, 206, headers)
            await send({"type": "http.response.body", "body": b""})
            return 206
        await send_stream(send, 206, headers, flight.body(start=a), limit=b - a + 1, count=BYTES_OUT.inc)
        return 206
