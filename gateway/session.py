"""Authentication of viewers: one guard for ``/streams/…`` and ``/watch/…``.

A request carries either

* a **grant** (``pb_grant=``, written by the gateway into every playlist URI, see
  :mod:`gateway.grants`), or
* a **user stream token** from the portal, as ``?token=`` or
  ``Authorization: Bearer`` (the bearer header is parsed here and nowhere else),
  accepted only where a viewing session starts (``index.m3u8``, the watch page).

:class:`SessionGuard` checks both before anything else happens (no pod request,
no cache lookup). User tokens are checked by a chain of verifiers: the HS256 JWT
verifier (:func:`protocol.tokens.verify_user_token` with the user-token key)
first, then any verifier passed in ``extra_verifiers`` (e.g. the connection
guide's legacy token format). The first verifier that accepts the token wins; if
none does, the JWT verifier's reason is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.errors import BadRequest, CredentialsMissing, GrantError, SessionOver, TokenRejected, WrongCamera
from gateway.grants import GRANT_PARAM, Grant, GrantSigner, Kind, new_session_id, take_param
from protocol.errors import TokenError
from protocol.legacy_tokens import verify_legacy_token
from protocol.tokens import Keyring, UserStreamClaims, bearer_token, verify_user_token

ROOT_PLAYLIST = "index.m3u8"

#: ``verifier(token, now) -> claims``; raises :class:`protocol.errors.TokenError` to refuse.
UserTokenVerifier = Callable[[str, float], UserStreamClaims]


def legacy_token_verifier(keys: Keyring, max_ttl: float) -> UserTokenVerifier:
    """The connection guide's stream-token format (:mod:`protocol.legacy_tokens`) as a
    verifier for ``extra_verifiers``, checked against the user-token ``keys`` (the secret the
    portal signs with); ``max_ttl`` in seconds. Used when ``accept_legacy_tokens`` is on."""

    def verify(token: str, now: float) -> UserStreamClaims:
        return verify_legacy_token(token, keys, max_ttl=max_ttl, now=now)

    return verify


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


@dataclass(frozen=True)
class Credentials:
    """What a request presented: at most one grant or one user token, and the raw query
    without them (``rest``, byte for byte, for the pod)."""

    grant: str | None
    token: str | None
    rest: str


class SessionGuard:
    """Verifies user tokens and grants; starts sessions and mints grants.

    ``user_keys``: the user-token :class:`Keyring` (HS256, shared with the portal only).
    ``max_token_ttl`` / ``max_session_seconds`` / ``grant_ttl`` are seconds.
    ``extra_verifiers``: further user-token verifiers tried after the JWT one.
    """

    def __init__(
        self,
        *,
        user_keys: Keyring,
        grants: GrantSigner,
        max_token_ttl: float = 900.0,
        max_session_seconds: float = 3600.0,
        grant_ttl: float = 120.0,
        extra_verifiers: Sequence[UserTokenVerifier] = (),
    ) -> None:
        self.user_keys = user_keys
        self.grants = grants
        self.max_token_ttl = max_token_ttl
        self.max_session_seconds = max_session_seconds
        self.grant_ttl = grant_ttl
        self.verifiers: list[UserTokenVerifier] = [self._verify_jwt, *extra_verifiers]

    def _verify_jwt(self, token: str, now: float) -> UserStreamClaims:
        return verify_user_token(token, self.user_keys, max_ttl=self.max_token_ttl, now=now)

    # ---- parsing -----------------------------------------------------------------------------
    @staticmethod
    def credentials(scope, raw_query: str) -> Credentials:
        """Take ``pb_grant`` and ``token`` out of ``raw_query``; the bearer header counts as a
        token when no ``?token=`` is given. Raises :class:`BadRequest` for two of either."""
        grants, rest = take_param(raw_query, GRANT_PARAM)
        if len(grants) > 1:
            raise BadRequest("more than one grant")
        if grants:
            return Credentials(grants[0], None, rest)
        tokens, rest = take_param(rest, "token")
        if len(tokens) > 1:
            raise BadRequest("more than one token")
        token = unquote(tokens[0]) if tokens else bearer_token(_header(scope, b"authorization"))
        return Credentials(None, token or None, rest)

    # ---- user tokens -------------------------------------------------------------------------
    def verify_user(self, token: str | None, camera_id: str, now: float | None = None) -> UserStreamClaims:
        """The claims of a user token for ``camera_id``.

        Raises :class:`CredentialsMissing` (none), :class:`TokenRejected` (every verifier
        refused it; the JWT verifier's reason) or :class:`WrongCamera`.
        """
        if not token:
            raise CredentialsMissing("stream token required")
        now = time.time() if now is None else now
        first: TokenError | None = None
        for verify in self.verifiers:
            try:
                claims = verify(token, now)
                break
            except TokenError as exc:
                first = first or exc
        else:
            raise TokenRejected(f"invalid stream token: {first}")
        if claims.camera_id != camera_id:
            raise WrongCamera("token is for another camera")
        return claims

    def start_session(self, claims: UserStreamClaims, now: float | None = None) -> tuple[Grant, str]:
        """A new viewing session for verified ``claims``: its playlist grant for the root
        playlist and that grant's string. The session ends ``max_session_seconds`` after the
        token's ``iat`` (or now). Raises :class:`SessionOver` if that is already past."""
        now = time.time() if now is None else now
        start = min(now, claims.iat) if claims.iat else now
        session_exp = int(start + self.max_session_seconds)
        if session_exp <= now:
            raise SessionOver("viewing session is over; request a new token")
        grant = Grant("playlist", claims.pod_id, session_exp, session_exp, new_session_id())
        return grant, self.grants.mint(grant, camera_id=claims.camera_id, path=ROOT_PLAYLIST)

    # ---- grants ------------------------------------------------------------------------------
    def verify_grant(self, raw: str, *, camera_id: str, path: str, query: str, kind: Kind,
                     now: float | None = None) -> Grant:
        """The grant for this exact request. Raises :class:`GrantError` (→ 403)."""
        now = time.time() if now is None else now
        try:
            return self.grants.verify(raw, camera_id=camera_id, path=path, query=query, kind=kind, now=now)
        except GrantError as exc:
            raise GrantError(f"forbidden: {exc}") from None

    def grant_for(self, session: Grant, camera_id: str, now: float) -> Callable[[str, str, bool], str]:
        """A grant minter for one playlist response: ``mint(path, query, is_playlist)``.
        Playlist grants last the session; media grants ``grant_ttl`` seconds."""
        media_exp = int(min(now + self.grant_ttl, session.session_exp))
        playlist = self.grants.minter(Grant("playlist", session.pod_id, session.session_exp, session.session_exp,
                                            session.sid), camera_id=camera_id)
        media = self.grants.minter(Grant("media", session.pod_id, media_exp, session.session_exp, session.sid),
                                   camera_id=camera_id)

        def grant(path: str, query: str, is_playlist: bool) -> str:
            return playlist(path, query) if is_playlist else media(path, query)

        return grant
