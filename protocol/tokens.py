"""Stream tokens (RFC 7519 JWTs): one key per role, one algorithm per key.

Two kinds of token, each with its own key, so that no party holds more than
its role needs:

* **User stream token** — minted by the portal for a browser session, verified
  by the gateway. **HS256** with a secret only the portal and the gateway hold
  (:class:`Keyring`; gateway key ``user_token_secrets``). Claims: ``aud`` =
  ``"platebridge-stream"``, ``exp``, ``iat``, ``camera_id``, ``pod_id`` and
  ``user_id`` (``sub`` is accepted instead of ``user_id``).
* **Gateway→pod token** — minted by the gateway per upstream request, verified
  by one pod. **EdDSA** (Ed25519, RFC 8037): the gateway signs with its private
  key (:class:`SigningKey`), pods hold only public keys (:class:`PublicKeyring`),
  so a pod's disk holds nothing that can mint a token for anyone. Claims:
  ``aud`` = ``"platebridge-pod"``, ``exp`` (at most 60 s ahead), ``iat``,
  ``camera_id`` (or ``"*"`` for pod-wide calls) and ``pod_id``; a pod accepts
  only its own ``pod_id`` (:func:`verify_pod_token` with ``pod_id=``).
  *Legacy*: a deployment from the connection guide has one shared HS256
  ``stream_secret``; pod tokens signed with it are still accepted by a pod
  configured that way (the pod and the gateway warn: a stolen pod can then mint
  tokens for every pod).

Verification accepts only the algorithm of the key it is checked against
(``none``, RS256, HS512 … are refused; an EdDSA public key is never used as an
HMAC secret), requires ``aud`` and ``exp``, and refuses tokens whose ``exp``
lies further ahead than ``max_ttl`` so a bug cannot mint week-long tokens.
``exp`` is enforced with at most 5 s of leeway. ``iat``/``nbf`` in the future
are tolerated up to ``max_skew`` seconds (default 5 s for user tokens, 30 s for
gateway→pod tokens: a Pi without an RTC before NTP sync), and a refusal beyond
that names the clock skew. Several keys can be live at once, selected by the
JOSE header ``kid`` (RFC 7515 §4.1.4), so every key rotates without downtime.
"""

from __future__ import annotations

import hmac
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jwt
import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.errors import TokenError, TokenExpired, TokenInvalid
from protocol.ids import is_camera_id, is_dns_label

USER_STREAM_AUDIENCE = "platebridge-stream"
GATEWAY_TO_POD_AUDIENCE = "platebridge-pod"
HS256 = "HS256"
EDDSA = "EdDSA"
ALGORITHM = HS256  # the user-token algorithm (kept for callers that name it)
MAX_LEEWAY_SECONDS = 5.0
DEFAULT_MAX_TOKEN_TTL = 900.0
POD_TOKEN_MAX_TTL = 60.0
DEFAULT_POD_CLOCK_SKEW = 30.0
MAX_CLOCK_SKEW = 300.0
ANY_CAMERA = "*"


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


class VerifyKeys(Protocol):
    """A set of verification keys for one algorithm (:class:`Keyring`, :class:`PublicKeyring`)."""

    algorithm: str

    def candidates(self, kid: str | None) -> list[Any]:
        """Keys to try for header ``kid`` (None: all). Raises :class:`TokenInvalid` for an unknown kid."""
        ...


class Signer(Protocol):
    """A signing key for one algorithm (:class:`Keyring` for HS256, :class:`SigningKey` for EdDSA)."""

    algorithm: str

    def signing_key(self) -> tuple[str, Any]:
        """``(kid, key)`` used for minting."""
        ...


def _candidates(keys: Mapping[str, Any], kid: str | None) -> list[Any]:
    if kid is None:
        return list(keys.values())
    if not isinstance(kid, str) or kid not in keys:
        raise TokenInvalid("unknown key id")
    return [keys[kid]]


class Keyring:
    """HS256 secrets, keyed by ``kid`` (the user-token key; the legacy stream secret).

    ``secrets`` maps kid → secret (str or bytes, used as its UTF-8 bytes); ``primary``
    names the kid used for signing. A token with a ``kid`` header is checked against
    that secret only (an unknown kid is refused); a token without one is tried against
    each secret, so tokens minted before ``kid`` was introduced keep working during a
    rotation. Raises ``ValueError`` when empty or ``primary`` is unknown.
    """

    __slots__ = ("_secrets", "primary")
    algorithm = HS256

    def __init__(self, secrets: Mapping[str, str | bytes], primary: str | None = None) -> None:
        if not secrets:
            raise ValueError("keyring needs at least one secret")
        self._secrets = {kid: (s.encode() if isinstance(s, str) else bytes(s)) for kid, s in secrets.items()}
        if any(not s for s in self._secrets.values()):
            raise ValueError("secrets must not be empty")
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

    def secrets_primary_first(self) -> list[bytes]:
        """Every secret, primary first (e.g. to key other MACs that rotate with this ring)."""
        order = [self.primary] + [k for k in self._secrets if k != self.primary]
        return [self._secrets[k] for k in order]

    def candidates(self, kid: str | None) -> list[bytes]:
        """Secrets to try for a token with header ``kid`` (None: all). Raises TokenInvalid."""
        return _candidates(self._secrets, kid)


def _load_public(value: Ed25519PublicKey | str | bytes) -> Ed25519PublicKey:
    if isinstance(value, Ed25519PublicKey):
        return value
    data = value.encode() if isinstance(value, str) else bytes(value)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key (make one with `openssl genpkey -algorithm ed25519`)")
    return key


class PublicKeyring:
    """Ed25519 public keys of the gateway, keyed by ``kid``: all a pod holds to verify
    gateway→pod tokens (EdDSA). Values are key objects or PEM text
    (``-----BEGIN PUBLIC KEY-----``). Raises ``ValueError`` naming the kid of a key that
    is not an Ed25519 public key, or when empty."""

    __slots__ = ("_keys",)
    algorithm = EDDSA

    def __init__(self, keys: Mapping[str, Ed25519PublicKey | str | bytes]) -> None:
        if not keys:
            raise ValueError("at least one public key is required")
        out: dict[str, Ed25519PublicKey] = {}
        for kid, value in keys.items():
            try:
                out[kid] = _load_public(value)
            except ValueError as exc:
                raise ValueError(f"key {kid!r}: {exc}") from None
        self._keys = out

    def __repr__(self) -> str:
        return f"PublicKeyring(kids={sorted(self._keys)!r})"

    @property
    def kids(self) -> list[str]:
        """Key ids (public: they may be logged)."""
        return list(self._keys)

    def candidates(self, kid: str | None) -> list[Ed25519PublicKey]:
        """Public keys to try for header ``kid`` (None: all). Raises TokenInvalid."""
        return _candidates(self._keys, kid)


class SigningKey:
    """The gateway's Ed25519 private key with its ``kid`` (mints gateway→pod tokens).

    ``private_key`` is a key object or PKCS#8 PEM text (``-----BEGIN PRIVATE KEY-----``,
    as written by ``openssl genpkey -algorithm ed25519``). Raises ``ValueError`` when it
    is not an unencrypted Ed25519 private key or ``kid`` is empty.
    """

    __slots__ = ("_key", "kid")
    algorithm = EDDSA

    def __init__(self, private_key: Ed25519PrivateKey | str | bytes, kid: str) -> None:
        if not kid:
            raise ValueError("a signing key needs a key id (kid)")
        if isinstance(private_key, Ed25519PrivateKey):
            key = private_key
        else:
            data = private_key.encode() if isinstance(private_key, str) else bytes(private_key)
            try:
                loaded = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError):
                raise ValueError("not an unencrypted PEM private key (-----BEGIN PRIVATE KEY-----)") from None
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ValueError("not an Ed25519 private key (make one with `openssl genpkey -algorithm ed25519`)")
            key = loaded
        self._key, self.kid = key, kid

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        """A fresh random key (demo, dev stack and tests)."""
        return cls(Ed25519PrivateKey.generate(), kid)

    def __repr__(self) -> str:  # never show the key
        return f"SigningKey(kid={self.kid!r})"

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        """Return ``(kid, private key)`` used for minting."""
        return self.kid, self._key

    def private_pem(self) -> bytes:
        """PKCS#8 PEM of the private key (to write a key file with mode 0600)."""
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def public_pem(self) -> str:
        """SubjectPublicKeyInfo PEM of the public key (what pods are given)."""
        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def public_keys(self) -> PublicKeyring:
        """A :class:`PublicKeyring` holding this key's public half under its kid."""
        return PublicKeyring({self.kid: self._key.public_key()})

    def derive(self, info: bytes, length: int = 32) -> bytes:
        """HKDF-SHA256 (RFC 5869) of the raw private key with ``info``: a sub-key for another
        job (e.g. the gateway's grant MAC) that only the holder of this key can compute."""
        raw = self._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(raw)


def bearer_token(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (RFC 6750 §2.1),
    or None when the header is missing, empty or another scheme."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _encode(claims: dict[str, Any], signer: Signer) -> str:
    kid, key = signer.signing_key()
    headers = None if kid == "default" and signer.algorithm == HS256 else {"kid": kid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short-key warnings are reported by config checks
        return jwt.encode(claims, key, algorithm=signer.algorithm, headers=headers)


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
    from the portal. Returns the compact JWS string (HS256).
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
    signer: SigningKey | Keyring, *, camera_id: str, pod_id: str, ttl: float = 30.0, now: float | None = None
) -> str:
    """Mint a gateway→pod token for ``pod_id``; ``ttl`` seconds, clamped to at most 60 s.

    ``signer`` is the gateway's :class:`SigningKey` (EdDSA), or, in legacy mode, the
    shared stream-secret :class:`Keyring` (HS256).
    """
    now = time.time() if now is None else now
    ttl = min(float(ttl), POD_TOKEN_MAX_TTL)
    claims = {
        "aud": GATEWAY_TO_POD_AUDIENCE,
        "iat": int(now),
        "exp": int(now + ttl),
        "camera_id": camera_id,
        "pod_id": pod_id,
    }
    return _encode(claims, signer)


MAX_NUMERIC_DATE = float(2**53)  # the largest integer a JSON number holds exactly (RFC 7493 §2.2)


def _number(claims: dict[str, Any], name: str) -> float | None:
    """Claim ``name`` as a NumericDate (RFC 7519 §2: Unix seconds), or None when absent.

    Raises :class:`TokenInvalid` unless it is a finite number in 0…2^53: ``NaN`` compares
    false with everything (an ``exp`` of NaN would never expire), and ``1e400``-sized
    integers overflow a float."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenInvalid(f"{name} must be a number")
    if isinstance(value, int) and not 0 <= value <= MAX_NUMERIC_DATE:
        raise TokenInvalid(f"{name} is out of range")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= MAX_NUMERIC_DATE:
        raise TokenInvalid(f"{name} is out of range")
    return number


def _decode(token: str, keys: Sequence[VerifyKeys], audience: str, now: float, leeway: float,
            max_skew: float) -> dict[str, Any]:
    """Signature (with the keys of the token's ``alg`` only), ``aud``, ``exp`` (± ``leeway``),
    and ``iat``/``nbf`` no further than ``max_skew`` seconds in the future."""
    if not isinstance(token, str) or not token or len(token) > 8192:
        raise TokenInvalid("missing or oversized token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenInvalid("malformed token") from None
    alg = header.get("alg")
    ring = next((k for k in keys if k.algorithm == alg), None)
    if ring is None:
        raise TokenInvalid("algorithm not allowed")
    claims: dict[str, Any] | None = None
    for key in ring.candidates(header.get("kid")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                claims = jwt.decode(
                    token, key, algorithms=[ring.algorithm], audience=audience,
                    options={"require": ["exp", "aud"], "verify_signature": True, "verify_exp": False,
                             "verify_nbf": False, "verify_iat": False},
                )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.InvalidAudienceError:
            raise TokenInvalid("wrong audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenInvalid(f"missing claim {exc.claim!r}") from None
        except jwt.PyJWTError:
            raise TokenInvalid("invalid token") from None
    if claims is None:
        raise TokenInvalid("bad signature")
    # the signature is good: the key is right, so the times below are the token's real ones
    exp = _number(claims, "exp")
    if exp is None:  # required above; kept for the type checker
        raise TokenInvalid("missing claim 'exp'")
    if exp < now - leeway:
        raise TokenExpired(f"token expired {now - exp:.0f} s ago")
    for name in ("nbf", "iat"):
        t = _number(claims, name)
        if t is not None and t > now + max_skew:
            raise TokenInvalid(f"token not yet valid: {name} is {t - now:.0f} s ahead of this clock "
                               f"(clock skew beyond {max_skew:g} s?)")
    return claims


def _check_lifetime(claims: dict[str, Any], max_ttl: float, tolerance: float, now: float) -> float:
    exp = _number(claims, "exp")
    if exp is None:  # required by _decode; kept for the type checker
        raise TokenInvalid("missing claim 'exp'")
    if exp - now > max_ttl + tolerance:
        raise TokenInvalid("token lifetime exceeds the maximum")
    return exp


def _ids(claims: dict[str, Any], *, allow_any_camera: bool = False) -> tuple[str, str]:
    camera_id, pod_id = claims.get("camera_id"), claims.get("pod_id")
    if not isinstance(camera_id, str) or not (
            (allow_any_camera and camera_id == ANY_CAMERA) or is_camera_id(camera_id)):
        raise TokenInvalid("camera_id claim missing or malformed")
    if not isinstance(pod_id, str) or not is_dns_label(pod_id):
        raise TokenInvalid("pod_id claim is not a DNS label")
    return camera_id, pod_id


def _bounded(value: float, cap: float) -> float:
    return min(max(float(value), 0.0), cap)


def verify_user_token(
    token: str,
    keyring: Keyring,
    *,
    max_ttl: float = DEFAULT_MAX_TOKEN_TTL,
    leeway: float = MAX_LEEWAY_SECONDS,
    now: float | None = None,
) -> UserStreamClaims:
    """Verify a user stream token (HS256 only) and return its claims.

    ``max_ttl`` (seconds) bounds how far ahead ``exp`` may lie; ``leeway``
    (seconds, capped at 5) absorbs portal↔gateway clock skew on ``exp``, ``iat`` and
    ``nbf``. Raises :class:`TokenExpired` or :class:`TokenInvalid`; never returns
    partially checked claims.
    """
    now = time.time() if now is None else now
    leeway = _bounded(leeway, MAX_LEEWAY_SECONDS)
    claims = _decode(token, [keyring], USER_STREAM_AUDIENCE, now, leeway, leeway)
    exp = _check_lifetime(claims, max_ttl, leeway, now)
    camera_id, pod_id = _ids(claims)
    user = claims.get("user_id", claims.get("sub"))
    if not isinstance(user, str) or not user or len(user) > 256:
        raise TokenInvalid("user_id/sub claim missing")
    return UserStreamClaims(user_id=user, camera_id=camera_id, pod_id=pod_id, exp=exp, iat=_number(claims, "iat"))


def verify_pod_token(
    token: str,
    keys: VerifyKeys | Sequence[VerifyKeys],
    *,
    pod_id: str | None = None,
    max_skew: float = DEFAULT_POD_CLOCK_SKEW,
    now: float | None = None,
) -> PodStreamClaims:
    """Verify a gateway→pod token (``exp`` at most 60 s ahead).

    ``keys``: the gateway's :class:`PublicKeyring` (EdDSA), and/or in legacy mode the
    shared-secret :class:`Keyring` (HS256); the token's ``alg`` selects which one, any
    other algorithm is refused. ``pod_id``: when given, a token for any other pod is
    refused. ``max_skew`` (seconds, capped at 300): how far ``iat``/``nbf`` may lie in
    the future (gateway↔pod clock skew); ``exp`` is still enforced (5 s leeway).
    ``camera_id`` is a camera id, or ``"*"`` (:data:`ANY_CAMERA`) for pod-wide calls
    (``POST /nudge``, ``/health``); ``"*"`` can never equal a camera in a path.
    Raises :class:`TokenExpired` or :class:`TokenInvalid`.
    """
    now = time.time() if now is None else now
    skew = _bounded(max_skew, MAX_CLOCK_SKEW)
    rings: list[VerifyKeys] = [keys] if isinstance(keys, (Keyring, PublicKeyring)) else list(keys)  # type: ignore[arg-type]
    claims = _decode(token, rings, GATEWAY_TO_POD_AUDIENCE, now, MAX_LEEWAY_SECONDS, skew)
    exp = _check_lifetime(claims, POD_TOKEN_MAX_TTL, max(skew, MAX_LEEWAY_SECONDS), now)
    camera_id, claimed_pod = _ids(claims, allow_any_camera=True)
    if pod_id is not None and not hmac.compare_digest(claimed_pod.encode(), pod_id.encode()):
        raise TokenInvalid("token is for another pod")
    return PodStreamClaims(camera_id=camera_id, pod_id=claimed_pod, exp=exp)


__all__ = [
    "ALGORITHM", "ANY_CAMERA", "DEFAULT_MAX_TOKEN_TTL", "DEFAULT_POD_CLOCK_SKEW", "EDDSA",
    "GATEWAY_TO_POD_AUDIENCE", "HS256", "MAX_LEEWAY_SECONDS", "POD_TOKEN_MAX_TTL", "USER_STREAM_AUDIENCE",
    "Keyring", "PodStreamClaims", "PublicKeyring", "SigningKey", "TokenError", "UserStreamClaims",
    "bearer_token", "mint_pod_token", "mint_user_token", "verify_pod_token", "verify_user_token",
]
