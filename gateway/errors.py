"""Exception tree of the ``gateway`` package.

``GatewayError`` is the root; each subclass maps to one HTTP status class so
the app never has to guess (auth → 401/403, upstream → 502/503/504).
"""


class GatewayError(Exception):
    """Root of every error raised by :mod:`gateway`."""


class ConfigError(GatewayError):
    """Invalid gateway configuration; ``str(exc)`` names the key path and reason."""


class GrantError(GatewayError):
    """A segment/playlist grant is missing, tampered, expired or for another camera (→ 403)."""


class PlaylistError(GatewayError):
    """The pod returned something that is not a usable HLS playlist (→ 502)."""


class ForeignURIError(PlaylistError):
    """A playlist URI resolves outside the pod's camera scope; it is never fetched (→ 502)."""


class UnsafePathError(GatewayError):
    """A request path tries to leave the camera's directory (→ 400)."""


class DiscoveryError(GatewayError):
    """The pod could not be located on the tailnet (→ 503)."""


class PodUnknown(DiscoveryError):
    """No pod with that id is known to discovery (→ 503)."""


class PodOffline(DiscoveryError):
    """The pod is known but offline (→ 503)."""


class UpstreamError(GatewayError):
    """The pod could not be reached or misbehaved (→ 502)."""


class UpstreamTimeout(UpstreamError):
    """The pod did not answer in time (→ 504)."""
