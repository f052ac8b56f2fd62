"""Stream tokens: HS256 JWTs (RFC 7519) shared by portal, gateway and pods.

Two kinds, one shared secret (``stream_secret`` / env ``POD_STREAM_SECRET``):

* **User stream token** — minted by the portal for a browser session.
  Claims: ``aud`` = ``"platebridge-stream"``, ``exp``, ``iat``, ``camera_id``,
  ``pod_id`` and ``user_id`` (``sub`` is accepted instead of ``user_id``).
* **Gateway→pod token** — minted by the gateway per upstream request.
  Claims: ``aud`` = ``"platebridge-pod"``, ``exp`` (at most 60 s ahead),
  ``camera_id`` and ``pod_id``.

Verification accepts HS256 only (``none``, RS256, HS512 … are refused), requires
``aud`` and ``exp``, allows at most 5 s of clock leeway, and refuses tokens whose
``exp`` lies further ahead than ``max_ttl`` so a portal bug cannot mint
week-long tokens. Several secrets can be live at once, selected by the JOSE
header ``kid`` (RFC 7515 §4.1.4), so secrets rotate without downtime.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import warnings
from collections.abc import Mapping
from typing import Any

import jwt
import msgspec

from protocol.errors import TokenError, TokenExpired, TokenInvalid
from protocol.ids import is_camera_id, is_dns_label

USER_STREAM_AUDIENCE = "platebridge-stream"
GATEWAY_TO_POD_AUDIENCE = "platebridge-pod"
ALGORITHM = "HS256"
MAX_LEEWAY_SECONDS = 5.0
DEFAULT_MAX_TOKEN_TTL = 900.0
POD_TOKEN_MAX_TTL = 60.0


class UserStreamClaims(msgspec.Struct, frozen=True):
    """Verified claims of a user stream token.

    ``exp``/``iat`` are Unix seconds; ``iat`` is None when the token had none.
    """

    user_id: str
    camera_id: str
    pod_id: str
    exp: float
    iat: float | None = None


class PodStreamClaims(msgspec.Struct, frozen=True):
    """Verified claims of a gateway→pod token (``exp`` in Unix seconds)."""

    camera_id: str
    pod_id: str
    exp: float


class Keyring:
    """The live set of stream secrets, keyed by ``kid``.

    ``secrets`` maps kid → secret (str or bytes); ``primary`` names the kid used
    for signing. A token with a ``kid`` header is checked against that secret
    only (an unknown kid is refused); a token without one is tried against each
    secret, so tokens minted before ``kid`` was introduced keep working during
    a rotation. Raises ``ValueError`` when empty or ``primary`` is unknown.
    """

    __slots__ = ("_secrets", "primary")

    def __init__(self, secrets: Mapping[str, str | bytes], primary: str | None = None) -> None:
        if not secrets:
            raise ValueError("keyring needs at least one secret")
        self._secrets = {kid: (s.encode() if isinstance(s, str) else bytes(s)) for kid, s in secrets.items()}
        if any(not s for s in self._secrets.values()):
            raise ValueError("stream secrets must not be empty")
        self.primary = primary if primary is not None else next(iter(self._secrets))
        if self.primary not in self._secrets:
            raise ValueError(f"primary kid {self.primary!r} is not in the keyring")

    @classmethod
    def single(cls, secret: str | bytes) -> Keyring:
        """A keyring with one secret under kid ``"default"`` (signed without a kid header)."""
        return cls({"default": secret}, "default")

    def __repr__(self) -> str:  # never show secrets
        return f"Keyring(kids={sorted(self._secrets)!r}, primary={self.primary!r})"

    @property
    def kids(self) -> list[str]:
        """Key ids in the ring (no secrets)."""
        return list(self._secrets)

    def signing_key(self) -> tuple[str, bytes]:
        """Return ``(kid, secret)`` used for minting."""
        return self.primary, self._secrets[self.primary]

    def derive(self, label: bytes) -> list[bytes]:
        """HMAC-SHA256(secret, label) for every secret, primary first: sub-keys for
        other MACs (e.g. the gateway's grants) that rotate with the stream secret."""
        order = [self.primary] + [k for k in self._secrets if k != self.primary]
        return [hmac.new(self._secrets[k], label, hashlib.sha256).digest() for k in order]

    def candidates(self, kid: str | None) -> list[bytes]:
        """Secrets to try for a token with header ``kid`` (None: all). Raises TokenInvalid."""
        if kid is None:
            return list(self._secrets.values())
        if not isinstance(kid, str) or kid not in self._secrets:
            raise TokenInvalid("unknown key id")
        return [self._secrets[kid]]


def _encode(claims: dict[str, Any], keyring: Keyring) -> str:
    kid, secret = keyring.signing_key()
    headers = None if kid == "default" else {"kid": kid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short-key warnings are reported by config checks
        return jwt.encode(claims, secret, algorithm=ALGORITHM, headers=headers)


def mint_user_token(
    keyring: Keyring,
    *,
    user_id: str,
    camera_id: str,
    pod_id: str,
    ttl: float = 600.0,
    now: float | None = None,
) -> str:
    """Mint a user stream token valid for ``ttl`` seconds (what the portal does).

    Used by the portal stand-in, the demo and tests; production tokens come
    from the portal. Returns the compact JWS string.
    """
    now = time.time() if now is None else now
    claims = {
        "aud": USER_STREAM_AUDIENCE,
        "iat": int(now),
        "exp": int(now + ttl),
        "user_id": user_id,
        "camera_id": camera_id,
        "pod_id": pod_id,
    }
    return _encode(claims, keyring)


def mint_pod_token(
    keyring: Keyring, *, camera_id: str, pod_id: str, ttl: float = 30.0, now: float | None = None
) -> str:
    """Mint a gateway→pod token; ``ttl`` seconds, clamped to at most 60 s."""
    now = time.time() if now is None else now
    ttl = min(float(ttl), POD_TOKEN_MAX_TTL)
    claims = {
        "aud": GATEWAY_TO_POD_AUDIENCE,
        "iat": int(now),
        "exp": int(now + ttl),
        "camera_id": camera_id,
        "pod_id": pod_id,
    }
    return _encode(claims, keyring)


def _decode(token: str, keyring: Keyring, audience: str, leeway: float) -> dict[str, Any]:
    if not isinstance(token, str) or not token or len(token) > 8192:
        raise TokenInvalid("missing or oversized token")
    leeway = min(max(float(leeway), 0.0), MAX_LEEWAY_SECONDS)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenInvalid("malformed token") from None
    if header.get("alg") != ALGORITHM:
        raise TokenInvalid("algorithm not allowed")
    last: TokenError = TokenInvalid("bad signature")
    for secret in keyring.candidates(header.get("kid")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return jwt.decode(
                    token,
                    secret,
                    algorithms=[ALGORITHM],
                    audience=audience,
                    leeway=leeway,
                    options={"require": ["exp", "aud"], "verify_signature": True},
                )
        except jwt.ExpiredSignatureError:
            # the signature verified before exp was checked: this is the right key
            raise TokenExpired("token expired") from None
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAudienceError:
            raise TokenInvalid("wrong audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenInvalid(f"missing claim {exc.claim!r}") from None
        except jwt.ImmatureSignatureError:
            raise TokenInvalid("token not yet valid") from None
        except jwt.PyJWTError:
            raise TokenInvalid("invalid token") from None
    raise last


def _check_lifetime(claims: dict[str, Any], max_ttl: float, leeway: float, now: float | None) -> float:
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise TokenInvalid("exp must be a number")
    now = time.time() if now is None else now
    if exp - now > max_ttl + min(leeway, MAX_LEEWAY_SECONDS):
        raise TokenInvalid("token lifetime exceeds the maximum")
    if exp < now - min(leeway, MAX_LEEWAY_SECONDS):
        raise TokenExpired("token expired")
    return float(exp)


ANY_CAMERA = "*"


def _ids(claims: dict[str, Any], *, allow_any_camera: bool = False) -> tuple[str, str]:
    camera_id, pod_id = claims.get("camera_id"), claims.get("pod_id")
    if not isinstance(camera_id, str) or not (
            (allow_any_camera and camera_id == ANY_CAMERA) or is_camera_id(camera_id)):
        raise TokenInvalid("camera_id claim missing or malformed")
    if not isinstance(pod_id, str) or not is_dns_label(pod_id):
        raise TokenInvalid("pod_id claim is not a DNS label")
    return camera_id, pod_id


def verify_user_token(
    token: str,
    keyring: Keyring,
    *,
    max_ttl: float = DEFAULT_MAX_TOKEN_TTL,
    leeway: float = MAX_LEEWAY_SECONDS,
    now: float | None = None,
) -> UserStreamClaims:
    """Verify a user stream token and return its claims.

    ``max_ttl`` (seconds) bounds how far ahead ``exp`` may lie; ``leeway``
    (seconds, capped at 5) absorbs clock skew. Raises :class:`TokenExpired` or
    :class:`TokenInvalid`; never returns partially checked claims.
    """
    claims = _decode(token, keyring, USER_STREAM_AUDIENCE, leeway)
    exp = _check_lifetime(claims, max_ttl, leeway, now)
    camera_id, pod_id = _ids(claims)
    user = claims.get("user_id", claims.get("sub"))
    if not isinstance(user, str) or not user or len(user) > 256:
        raise TokenInvalid("user_id/sub claim missing")
    iat = claims.get("iat")
    iat_f = float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None
    return UserStreamClaims(user_id=user, camera_id=camera_id, pod_id=pod_id, exp=exp, iat=iat_f)


def verify_pod_token(
    token: str,
    keyring: Keyring,
    *,
    leeway: float = MAX_LEEWAY_SECONDS,
    now: float | None = None,
) -> PodStreamClaims:
    """Verify a gateway→pod token (``exp`` at most 60 s ahead).

    ``camera_id`` is a camera id, or ``"*"`` (:data:`ANY_CAMERA`) for pod-wide
    calls such as ``POST /nudge``; ``"*"`` can never equal a camera in a path.
    Raises :class:`TokenExpired` or :class:`TokenInvalid`.
    """
    claims = _decode(token, keyring, GATEWAY_TO_POD_AUDIENCE, leeway)
    exp = _check_lifetime(claims, POD_TOKEN_MAX_TTL, leeway, now)
    camera_id, pod_id = _ids(claims, allow_any_camera=True)
    return PodStreamClaims(camera_id=camera_id, pod_id=pod_id, exp=exp)
