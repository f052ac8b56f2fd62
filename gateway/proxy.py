"""The stream proxy: ``/streams/{camera_id}/…`` as a raw ASGI app (the hot path).

Request flow (each step refuses before the next one runs):

1. Parse the raw path and query. The path below the camera is checked with
   :func:`protocol.paths.safe_relative_path` (→ 400); unknown file types → 404.
2. Authenticate **before any upstream request**:
   * a ``pb_grant`` query parameter (segments and playlist reloads), or
   * for a playlist only, the user JWT (``?token=`` or ``Authorization: Bearer``).
     A valid JWT answers ``302`` to the same playlist with a session grant, so
     reloads keep working after the JWT expires (the JWT only gates the start).
   Missing credentials → 401, bad or foreign ones → 401/403.
3. Locate the pod (discovery; unknown/offline → 503).
4. Playlists: one shared upstream fetch per camera per half target duration
   (:class:`~gateway.cache.PlaylistCache`), rewritten per viewer with fresh
   grants (:mod:`gateway.playlist`). Segments: single-flight byte-bounded cache,
   streamed to every viewer as bytes arrive.
5. Errors: pod unreachable → 502, timeout → 504, 404 passes through, 503 passes
   with Retry-After, the pod refusing *our* token → 502 (never 401).

CORS (exact-origin echo + ``Vary: Origin``) is added to every response here,
errors and redirects included; preflights allow ``Range`` and ``Authorization``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from urllib.parse import unquote

from gateway.cache import Flight, PlaylistCache, SegmentCache
from gateway.discovery import Discovery
from gateway.errors import DiscoveryError, ForeignURIError, GrantError, PlaylistError, UpstreamTimeout
from gateway.grants import GRANT_PARAM, Grant, GrantSigner, take_param
from gateway.metrics import BYTES_OUT, CACHE, CACHE_BYTES, REQUESTS, UPSTREAM, VIEWERS
from gateway.playlist import drop_comments_containing, rewrite_playlist, target_duration
from gateway.upstream import Upstream
from protocol.errors import TokenError
from protocol.ids import is_camera_id
from protocol.legacy_tokens import is_legacy_token, verify_legacy_token
from protocol.paths import UnsafePath, content_type_for, safe_relative_path
from protocol.redact import redact
from protocol.tokens import Keyring, verify_user_token

log = logging.getLogger("platebridge.gateway")
access_log = logging.getLogger("platebridge.gateway.access")

M3U8 = "application/vnd.apple.mpegurl"
ROOT_PLAYLIST = "index.m3u8"
MAX_ISSUED_PER_CAMERA = 4096
_DIRECTIVES = ("_HLS_msn=", "_HLS_part=", "_HLS_skip=")
PREFIX = b"/streams/"
_COMMON = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


class HTTPError(Exception):
    """An error response to send (status + short text + extra headers)."""

    def __init__(self, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or []


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def split_directives(raw_query: str) -> tuple[str, str]:
    """Split LL-HLS delivery directives (``_HLS_msn``, ``_HLS_part``, ``_HLS_skip``;
    RFC 8216bis §6.2.5) from the rest of a raw query: ``(directives, rest)``, both raw."""
    if "_HLS_" not in raw_query:
        return "", raw_query
    parts = raw_query.split("&")
    return ("&".join(p for p in parts if p.startswith(_DIRECTIVES)),
            "&".join(p for p in parts if not p.startswith(_DIRECTIVES)))


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=a-b`` / ``a-`` / ``-n`` range (RFC 9110 §14.1.2).

    Returns inclusive ``(start, end)`` or None when unsatisfiable/malformed
    (multi-range is not supported and also yields None).
    """
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return None
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or start >= size or end < start:
        return None
    return start, min(end, size - 1)


class StreamProxy:
    """ASGI app serving ``/streams/…``. Construct once per process; see module docs."""

    def __init__(
        self,
        *,
        keyring: Keyring,
        discovery: Discovery,
        upstream: Upstream,
        allowed_origins: list[str],
        max_token_ttl: float = 900.0,
        accept_legacy_tokens: bool = False,
        max_session_seconds: float = 3600.0,
        grant_ttl: float = 120.0,
        cache_max_bytes: int = 256 * 1024 * 1024,
        segment_max_age: int = 60,
        access_log_enabled: bool = True,
    ) -> None:
        self.keyring = keyring
        self.signer = GrantSigner(keyring)
        self.discovery = discovery
        self.upstream = upstream
        self.origins = {o.encode() for o in allowed_origins}
        self.max_token_ttl = max_token_ttl
        self.accept_legacy_tokens = accept_legacy_tokens
        self.max_session_seconds = max_session_seconds
        self.grant_ttl = grant_ttl
        self.segments = SegmentCache(cache_max_bytes)
        self.playlists = PlaylistCache()
        self.segment_cc = f"private, max-age={int(segment_max_age)}, immutable".encode()
        self.access_log_enabled = access_log_enabled
        self._viewers: dict[tuple[str, int], float] = {}
        self._req_counters: dict = {}
        self._cache_hit, self._cache_miss = CACHE.labels("hit"), CACHE.labels("miss")
        self._bytes_out = BYTES_OUT
        self._grant_cache: dict[str, Grant] = {}
        self._issued: dict[tuple[str, str], OrderedDict[tuple[str, str], None]] = {}
        self._can_block: dict[tuple[str, str], bool] = {}
        VIEWERS.set_function(self.active_viewers)
        CACHE_BYTES.set_function(lambda: self.segments.size_bytes)

    def active_viewers(self, window: float = 30.0) -> int:
        """Distinct viewer sessions (user, session) that loaded a playlist in the last ``window`` s."""
        cutoff = time.monotonic() - window
        for k in [k for k, t in self._viewers.items() if t < cutoff]:
            del self._viewers[k]
        return len(self._viewers)

    # ---- ASGI entry ----------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        cors = self._cors(scope)
        status = 500
        kind = "other"
        try:
            status, kind = await self._handle(scope, send, cors)
        except HTTPError as exc:
            status = exc.status
            await self._send_text(send, exc.status, exc.text, cors + exc.headers, head=scope["method"] == "HEAD")
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

    def _cors(self, scope) -> list[tuple[bytes, bytes]]:
        origin = None
        for k, v in scope.get("headers", ()):
            if k == b"origin":
                origin = v
                break
        out = [(b"vary", b"Origin")]
        if origin is not None and origin in self.origins:
            out += [
                (b"access-control-allow-origin", origin),
                (b"access-control-expose-headers", b"Content-Length, Content-Range, Accept-Ranges"),
            ]
        return out

    async def _send_text(self, send, status: int, text: str, headers, *, head: bool = False) -> None:
        body = (text + "\n").encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"), *_COMMON, *headers]})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def _handle(self, scope, send, cors) -> tuple[int, str]:
        method = scope["method"]
        if method == "OPTIONS":
            headers = cors + [(b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
                              (b"access-control-allow-headers", b"Range, Authorization"),
                              (b"access-control-max-age", b"600"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return 204, "preflight"
        if method not in ("GET", "HEAD"):
            raise HTTPError(405, "method not allowed", [(b"allow", b"GET, HEAD, OPTIONS")])

        raw_path = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0]
        if not raw_path.startswith(PREFIX):
            raise HTTPError(404, "not found")
        rest = raw_path[len(PREFIX):].decode("latin-1")
        cam_raw, sep, file_part = rest.partition("/")
        camera_id = unquote(cam_raw)
        if not sep or not is_camera_id(camera_id):
            raise HTTPError(404, "not found")
        try:
            rel = safe_relative_path(file_part)
        except UnsafePath:
            raise HTTPError(400, "bad path") from None
        ctype = content_type_for(rel)
        if ctype is None:
            raise HTTPError(404, "not found")
        is_playlist = ctype == M3U8
        kind = "playlist" if is_playlist else "segment"

        query = scope.get("query_string", b"").decode("latin-1")
        grants, query = take_param(query, GRANT_PARAM)
        if len(grants) > 1:
            raise HTTPError(400, "more than one grant")
        now = time.time()
        if grants:
            grant = self._verified_grant(grants[0], camera_id, now)
        else:
            tokens, query = take_param(query, "token")
            if not is_playlist:
                raise HTTPError(401, "segment requests need the grant from the playlist",
                                [(b"www-authenticate", b"Bearer")])
            if len(tokens) > 1:
                raise HTTPError(400, "more than one token")
            token = unquote(tokens[0]) if tokens else None
            if token is None:
                auth = _header(scope, b"authorization") or ""
                scheme, _, value = auth.partition(" ")
                token = value.strip() if scheme.lower() == "bearer" and value.strip() else None
            if not token:
                raise HTTPError(401, "stream token required", [(b"www-authenticate", b"Bearer")])
            try:
                if self.accept_legacy_tokens and is_legacy_token(token):  # the guide's format (off by default)
                    claims = verify_legacy_token(token, self.keyring, max_ttl=self.max_token_ttl, now=now)
                else:
                    claims = verify_user_token(token, self.keyring, max_ttl=self.max_token_ttl, now=now)
            except TokenError as exc:
                raise HTTPError(401, f"invalid stream token: {exc}",
                                [(b"www-authenticate", b'Bearer error="invalid_token"')]) from None
            if claims.camera_id != camera_id:
                raise HTTPError(403, "token is for another camera")
            start = min(now, claims.iat) if claims.iat else now
            session_exp = int(start + self.max_session_seconds)
            if session_exp <= now:
                raise HTTPError(403, "viewing session is over; request a new token")
            if rel != ROOT_PLAYLIST:
                raise HTTPError(404, f"a viewing session starts at {ROOT_PLAYLIST}")
            grant = Grant(claims.user_id, camera_id, claims.pod_id, session_exp, session_exp)
            location = f"{ROOT_PLAYLIST}?{GRANT_PARAM}={self.signer.mint(grant)}"  # constant, never from input
            await send({"type": "http.response.start", "status": 302, "headers": [
                (b"location", location.encode("latin-1")), (b"cache-control", b"no-store"),
                (b"content-length", b"0"), *_COMMON, *cors]})
            await send({"type": "http.response.body", "body": b""})
            return 302, kind

        directives = ""
        if is_playlist:
            directives, query = split_directives(query)
            if directives and not self._can_block.get((grant.pod_id, camera_id)):
                directives = ""  # the pod never offered blocking reloads (RFC 8216bis §6.2.5.2): share the cache
        if not (is_playlist and rel == ROOT_PLAYLIST and not query) and not self._was_issued(
                grant.pod_id, camera_id, rel, query):
            raise HTTPError(404, "not in a current playlist")
        try:
            base_url = await self.discovery.resolve(grant.pod_id)
        except DiscoveryError as exc:
            raise HTTPError(503, f"pod unavailable: {exc}", [(b"retry-after", b"5")]) from None
        if is_playlist:
            query = "&".join(q for q in (query, directives) if q)
            return await self._playlist(scope, send, cors, grant, base_url, rel, query, now, bool(directives)), kind
        return await self._segment(scope, send, cors, grant, base_url, rel, query, ctype), kind

    def _was_issued(self, pod_id: str, camera_id: str, rel: str, query: str) -> bool:
        issued = self._issued.get((pod_id, camera_id))
        return issued is not None and (rel, query.rstrip("&")) in issued

    def _remember_issued(self, pod_id: str, camera_id: str, uris: set[tuple[str, str]], text: str) -> None:
        issued = self._issued.setdefault((pod_id, camera_id), OrderedDict())
        for u in uris:
            issued[u] = None
            issued.move_to_end(u)
        while len(issued) > MAX_ISSUED_PER_CAMERA:
            issued.popitem(last=False)
        if "#EXT-X-SERVER-CONTROL:" in text:
            self._can_block[(pod_id, camera_id)] = "CAN-BLOCK-RELOAD=YES" in text

    def _verified_grant(self, token: str, camera_id: str, now: float) -> Grant:
        """Verify a grant, memoising the signature check per grant string (expiry and
        camera are re-checked on every request). Raises HTTPError(403)."""
        grant = self._grant_cache.get(token)
        if grant is None:
            try:
                grant = self.signer.verify(token, camera_id=camera_id, now=now)
            except GrantError as exc:
                raise HTTPError(403, f"forbidden: {exc}") from None
            if len(self._grant_cache) >= 10_000:
                self._grant_cache.clear()
            self._grant_cache[token] = grant
        if now > grant.exp or now > grant.session_exp:
            raise HTTPError(403, "forbidden: grant expired")
        if grant.camera_id != camera_id:
            raise HTTPError(403, "forbidden: grant is for another camera")
        return grant

    # ---- upstream outcomes -------------------------------------------------
    @staticmethod
    def _check_upstream(flight: Flight) -> None:
        """Map a finished/started flight's failure to an HTTPError (never 401/403)."""
        if flight.status == 0:
            err = flight.error
            if isinstance(err, UpstreamTimeout):
                raise HTTPError(504, "pod timed out")
            raise HTTPError(502, "pod unreachable")
        st = flight.status
        if st == 200:
            return
        if st in (401, 403):
            log.error("pod refused the gateway's credentials (HTTP %d): check stream_secret on both sides", st)
            raise HTTPError(502, "pod refused the gateway")
        if st == 503 or st == 504:
            ra = flight.headers.get("retry-after", "2")
            raise HTTPError(st, "stream not ready", [(b"retry-after", ra.encode("latin-1"))])
        if 400 <= st < 500:
            raise HTTPError(st, "not found" if st == 404 else f"pod answered {st}")
        raise HTTPError(502, f"pod error {st}")

    async def _complete_body(self, flight: Flight) -> bytes:
        """The whole upstream body, or the HTTPError its failure maps to."""
        try:
            body = await flight.read_all()
        except Exception as exc:  # noqa: BLE001 - the flight's status says what happened
            log.warning("upstream transfer failed: %r", exc)
            self._check_upstream(flight)
            raise HTTPError(502, "pod connection broke mid-transfer") from None
        self._check_upstream(flight)
        return body

    async def _playlist(self, scope, send, cors, grant: Grant, base_url: str, rel: str, query: str, now: float,
                        blocking: bool) -> int:
        key = (grant.pod_id, grant.camera_id, rel, query)

        async def fetch(flight: Flight) -> None:
            url = self.upstream.url(base_url, grant.camera_id, rel, query)
            UPSTREAM.labels("playlist").inc()
            await self.upstream.fill(flight, url, pod_id=grant.pod_id, camera_id=grant.camera_id,
                                     read_timeout=max(self.upstream.read_timeout, 30.0) if blocking else None)

        def ttl_of(flight: Flight) -> float:
            if blocking:
                return 0.0
            td = target_duration(b"".join(flight.chunks).decode("utf-8", "replace"))
            return max(0.2, min((td or 2.0) / 2, 5.0))

        flight = self.playlists.get_or_fetch(key, fetch, ttl_of)
        body = await self._complete_body(flight)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(502, "pod sent an invalid playlist") from None
        seg_grant = self.signer.mint(Grant(grant.user, grant.camera_id, grant.pod_id,
                                           int(min(now + self.grant_ttl, grant.session_exp)), grant.session_exp))
        pl_grant = self.signer.mint(Grant(grant.user, grant.camera_id, grant.pod_id, grant.session_exp,
                                          grant.session_exp))
        scope_url = f"{base_url}/cameras/{grant.camera_id}/"
        issued: set[tuple[str, str]] | None = None if flight.scanned else set()
        try:
            out = rewrite_playlist(text, upstream_url=scope_url + rel + ("?" + query if query else ""),
                                   scope_url=scope_url,
                                   segment_grant=seg_grant, playlist_grant=pl_grant, issued=issued)
        except ForeignURIError:
            log.error("pod %s sent a playlist with a URI outside its camera directory; refused", grant.pod_id)
            raise HTTPError(502, "pod sent a playlist with a foreign URI") from None
        except PlaylistError:
            raise HTTPError(502, "pod sent an invalid playlist") from None
        pod_netloc = base_url.split("://", 1)[-1]
        out = drop_comments_containing(out, pod_netloc)
        if pod_netloc in out:  # e.g. in a tag's non-URI attribute: never reveal tailnet addresses
            log.error("pod %s sent a playlist that names its own address outside a URI; refused", grant.pod_id)
            raise HTTPError(502, "pod sent a playlist that reveals its address")
        if issued is not None:  # once per upstream response, not per viewer
            flight.scanned = True
            self._remember_issued(grant.pod_id, grant.camera_id, issued, text)
        self._viewers[(grant.user, grant.session_exp)] = time.monotonic()
        if len(self._viewers) > 10_000:
            self.active_viewers()
        data = out.encode("utf-8")
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", M3U8.encode()), (b"content-length", str(len(data)).encode()),
            (b"cache-control", b"no-cache, private"), *_COMMON, *cors]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else data})
        self._bytes_out.inc(len(data))
        return 200

    async def _segment(self, scope, send, cors, grant: Grant, base_url: str, rel: str, query: str, ctype: str) -> int:
        is_init = rel.endswith(".mp4")
        key = (grant.pod_id, grant.camera_id, rel, query)

        async def fetch(flight: Flight, stale: Flight | None) -> None:
            url = self.upstream.url(base_url, grant.camera_id, rel, query)
            UPSTREAM.labels("init" if is_init else "segment").inc()
            await self.upstream.fill(flight, url, pod_id=grant.pod_id, camera_id=grant.camera_id, stale=stale)

        before = self.segments.misses
        flight = self.segments.get_or_fetch(key, fetch, revalidate=is_init)
        (self._cache_miss if self.segments.misses != before else self._cache_hit).inc()
        await flight.ready.wait()
        self._check_upstream(flight)
        headers = [(b"content-type", ctype.encode()), (b"accept-ranges", b"bytes"),
                   (b"cache-control", b"private, no-cache" if is_init else self.segment_cc), *_COMMON, *cors]
        head = scope["method"] == "HEAD"
        rng = _header(scope, b"range")
        if rng is not None:
            body = await self._complete_body(flight)
            span = parse_range(rng, len(body))
            if span is None:
                raise HTTPError(416, "range not satisfiable", [(b"content-range", f"bytes */{len(body)}".encode())])
            a, b = span
            part = body[a:b + 1]
            await send({"type": "http.response.start", "status": 206, "headers": [
                *headers, (b"content-range", f"bytes {a}-{b}/{len(body)}".encode()),
                (b"content-length", str(len(part)).encode())]})
            await send({"type": "http.response.body", "body": b"" if head else part})
            self._bytes_out.inc(0 if head else len(part))
            return 206
        if flight.done and flight.error is None:
            body = flight.complete_body()
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if head else body})
            self._bytes_out.inc(0 if head else len(body))
            return 200
        length = flight.headers.get("content-length")
        if length is not None:
            headers.append((b"content-length", length.encode("latin-1")))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return 200
        sent = 0
        try:
            async for chunk in flight.body():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
        finally:
            self._bytes_out.inc(sent)
        await send({"type": "http.response.body", "body": b""})
        return 200
