"""Exception tree of the ``protocol`` package.

``ProtocolError`` is the root. Token verification raises ``TokenError``
subclasses only, so callers can map the whole family to HTTP 401/403 without
catching anything broader.
"""


class ProtocolError(Exception):
    """Root of every error raised by :mod:`protocol`."""


class TokenError(ProtocolError):
    """A stream token or grant was refused. ``str(exc)`` never contains the token."""


class TokenInvalid(TokenError):
    """Bad signature, algorithm, audience, claims, key id or format."""


class TokenExpired(TokenError):
    """The token's ``exp`` (plus leeway) lies in the past."""
