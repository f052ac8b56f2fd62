"""Exception tree of the ``gateway`` package, and the one table that maps it to HTTP.

``GatewayError`` is the root. Every refusal the gateway answers is one of these
classes; :data:`STATUS` maps each class to its HTTP status (the most specific
class in an exception's MRO wins) and :func:`status_of` reads it, so the proxy
and the Litestar routes never write their own mapping. ``headers`` on an
instance adds response headers (``WWW-Authenticate``, ``Retry-After`` …);
``str(exc)`` is the short plain-text body and never contains a token or grant.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error raised by :mod:`gateway`.

    ``headers``: extra response headers as ``(name, value)`` byte pairs.
    """

    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, message: str = "", *, headers: tuple[tuple[bytes, bytes], ...] | None = None) -> None:
        super().__init__(message)
        if headers is not None:
            self.headers = headers


class ConfigError(GatewayError):
    """Invalid gateway configuration; ``str(exc)`` names the key path and reason."""


# ---- the request itself -----------------------------------------------------------------------
class BadRequest(GatewayError):
    """The request is malformed or ambiguous (two grants, two tokens …) (→ 400)."""


class UnsafePathError(BadRequest):
    """A request path tries to leave the camera's directory (→ 400)."""


class NotFound(GatewayError):
    """No such route, camera id or file type (→ 404)."""


class MethodNotAllowed(GatewayError):
    """Only GET, HEAD and OPTIONS exist on the stream routes (→ 405)."""

    headers = ((b"allow", b"GET, HEAD, OPTIONS"),)


class RangeNotSatisfiable(GatewayError):
    """The ``Range`` header cannot be served for this body (→ 416)."""


# ---- authentication ---------------------------------------------------------------------------
class AuthError(GatewayError):
    """No usable credentials: a user token is missing or refused (→ 401)."""

    headers = ((b"www-authenticate", b"Bearer"),)


class CredentialsMissing(AuthError):
    """Neither a grant nor a user token came with the request (→ 401)."""


class TokenRejected(AuthError):
    """The user stream token failed verification (→ 401)."""

    headers = ((b"www-authenticate", b'Bearer error="invalid_token"'),)


class Forbidden(GatewayError):
    """Valid credentials that do not cover this request (→ 403)."""


class WrongCamera(Forbidden):
    """The user token or grant is for another camera (→ 403)."""


class SessionOver(Forbidden):
    """The viewing session passed ``max_session_seconds`` (→ 403)."""


class GrantError(Forbidden):
    """A grant is tampered, expired, of the wrong kind or for another URI (→ 403)."""


# ---- the pod ----------------------------------------------------------------------------------
class DiscoveryError(GatewayError):
    """The pod could not be located on the tailnet (→ 503)."""

    headers = ((b"retry-after", b"5"),)


class PodUnknown(DiscoveryError):
    """No pod with that id is known to discovery (→ 503)."""


class PodOffline(DiscoveryError):
    """The pod is known but offline (→ 503)."""


class PodConflict(DiscoveryError):
    """Two tailnet devices claim the same pod_id: the gateway routes to neither (→ 503)."""


class UpstreamError(GatewayError):
    """The pod could not be reached or misbehaved (→ 502)."""


class UpstreamTimeout(UpstreamError):
    """The pod did not answer, or not completely, within the fetch deadline (→ 504)."""


class UpstreamTooLarge(UpstreamError):
    """The pod's body exceeded the cap for its kind (playlist, segment, init) (→ 502)."""


class UpstreamRefusedGateway(UpstreamError):
    """The pod refused the gateway's own token (401/403): a key or clock problem, never the viewer's (→ 502)."""


class UpstreamStatus(UpstreamError):
    """The pod answered an error the viewer should see as is: 4xx (404, B14's 400 …) passes
    through, 503/504 keep their ``Retry-After``. ``status`` is the pod's status code."""

    def __init__(self, status: int, message: str, *, headers: tuple[tuple[bytes, bytes], ...] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status


class Overloaded(UpstreamError):
    """The gateway's memory budget (``cache_max_bytes``) is taken by bodies in flight (→ 503)."""

    headers = ((b"retry-after", b"2"),)


class PlaylistError(GatewayError):
    """The pod returned something that is not a usable HLS playlist (→ 502)."""


class ForeignURIError(PlaylistError):
    """A playlist URI resolves outside the pod's camera scope; it is never fetched (→ 502)."""


#: class → HTTP status; ``None`` means "the status carried by the exception" (UpstreamStatus).
STATUS: dict[type[GatewayError], int | None] = {
    GatewayError: 500,
    ConfigError: 500,
    BadRequest: 400,
    NotFound: 404,
    MethodNotAllowed: 405,
    RangeNotSatisfiable: 416,
    AuthError: 401,
    Forbidden: 403,
    DiscoveryError: 503,
    UpstreamError: 502,
    UpstreamTimeout: 504,
    UpstreamStatus: None,
    Overloaded: 503,
    PlaylistError: 502,
}


def status_of(exc: GatewayError) -> int:
    """The HTTP status for ``exc`` from :data:`STATUS` (most specific class first)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            status = STATUS[cls]
            return status if status is not None else int(getattr(exc, "status", 502))
    return 500
