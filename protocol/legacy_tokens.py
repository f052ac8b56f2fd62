"""The PlateBridge POD connection guide's stream token ("legacy"; JWTs are preferred).

The guide ("3. Live Stream Flow", step 3) has the portal mint::

    token = {"user_id": …, "camera_id": …, "pod_id": …, "exp": now + 10 minutes}
    signature = sha256(json(token) + secret)
    signed_token = base64(token) + "." + signature

i.e. ``base64(<JSON text>) + "." + hex(SHA-256(<JSON text> || secret))`` with the shared
stream secret. A portal that already mints these can point its players at the gateway
unchanged while it moves to JWTs: the gateway accepts them when ``accept_legacy_tokens``
is on (off by default). Verification (:func:`verify_legacy_token`) is pure (no I/O):

* the signature is recomputed over the exact bytes inside the base64 part and compared
  in constant time (``hmac.compare_digest``) against every configured stream secret,
  **before** the JSON is parsed;
* ``exp`` is required, in the future (≤ 5 s leeway) and at most ``max_ttl`` seconds ahead
  (the gateway's ``max_token_ttl``); ``exp`` above 10^11 is read as milliseconds
  (JavaScript's ``Date.now() + 600000``);
* ``camera_id`` (a safe camera id), ``pod_id`` (a DNS label) and ``user_id`` (1-256
  characters) are required; the caller compares ``camera_id`` with the URL;
* the result is the same :class:`~protocol.tokens.UserStreamClaims` a JWT yields
  (``iat`` is None: the format has none).

Why JWT is preferred: the guide's token has no audience (a token for one service is a
token for every service sharing the secret), no algorithm or key id (no rotation
without downtime), no issue time (a session cannot be bounded from minting), and its
MAC is a bare hash of message‖secret rather than HMAC; its base64 alphabet (``+ / =``)
also needs URL encoding, which some players and frameworks get wrong. HS256 JWTs
(:mod:`protocol.tokens`) have none of these problems and every language has a library.

Errors: :class:`~protocol.errors.TokenInvalid` / :class:`~protocol.errors.TokenExpired`
(the same tree as JWTs), with short reasons that never contain the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from typing import Any

from protocol.errors import TokenExpired, TokenInvalid
from protocol.ids import is_camera_id, is_dns_label
from protocol.tokens import MAX_LEEWAY_SECONDS, MAX_NUMERIC_DATE, Keyring, UserStreamClaims

__all__ = ["MAX_LEGACY_TOKEN_CHARS", "is_legacy_token", "mint_legacy_token", "verify_legacy_token"]

MAX_LEGACY_TOKEN_CHARS = 4096
"""Longer strings are refused unread (a real guide token is about 250 characters)."""
MILLISECONDS_ABOVE = 10**11
"""An ``exp`` above this is milliseconds (10^11 s is the year 5138)."""

_SHAPE = re.compile(r"^[A-Za-z0-9+/_ -]+={0,2}\.[0-9A-Fa-f]{64}\Z")


def is_legacy_token(token: str) -> bool:
    """Whether ``token`` has the guide's shape: ``<base64>.<64 hex digits>`` (one dot; a JWT
    has two). Says nothing about its validity."""
    return isinstance(token, str) and len(token) <= MAX_LEGACY_TOKEN_CHARS and bool(_SHAPE.match(token))


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional; a space is a ``+`` that a query-string
    decoder turned into one."""
    s = text.replace(" ", "+").replace("-", "+").replace("_", "/").rstrip("=")
    s += "=" * (-len(s) % 4)
    return base64.b64decode(s, validate=True)


def _secrets(keyring: Keyring) -> list[bytes]:
    return keyring.candidates(None)


def verify_legacy_token(
    token: str,
    keyring: Keyring,
    *,
    max_ttl: float,
    leeway: float = MAX_LEEWAY_SECONDS,
    now: float | None = None,
) -> UserStreamClaims:
    """Verify a guide-format stream token against every secret in ``keyring`` and return its
    claims (the same type a user JWT yields).

    ``max_ttl`` (seconds) bounds how far ahead ``exp`` may lie; ``leeway`` (seconds, capped
    at 5) absorbs clock skew; ``now`` is Unix seconds (default: the clock). Raises
    :class:`TokenInvalid` (bad shape or signature, missing or malformed claim, lifetime over
    ``max_ttl``) or :class:`TokenExpired`.
    """
    if not is_legacy_token(token):
        raise TokenInvalid("not a legacy stream token")
    payload_b64, sig_hex = token.rsplit(".", 1)
    try:
        payload = _b64decode(payload_b64)
    except (binascii.Error, ValueError):
        raise TokenInvalid("malformed token") from None
    sig = sig_hex.lower().encode()
    ok = False
    for secret in _secrets(keyring):  # every secret, no early exit
        ok |= hmac.compare_digest(hashlib.sha256(payload + secret).hexdigest().encode(), sig)
    if not ok:
        raise TokenInvalid("bad signature")
    try:
        claims: Any = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TokenInvalid("malformed claims") from None
    if not isinstance(claims, dict):
        raise TokenInvalid("malformed claims")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or exp != exp:
        raise TokenInvalid("exp must be a number")
    if not 0 <= exp <= MAX_NUMERIC_DATE:  # seconds or JavaScript milliseconds; 1e400 overflowed float()
        raise TokenInvalid("exp is out of range")
    exp_s = float(exp) / 1000.0 if exp > MILLISECONDS_ABOVE else float(exp)
    now = time.time() if now is None else now
    skew = min(max(float(leeway), 0.0), MAX_LEEWAY_SECONDS)
    if exp_s - now > max_ttl + skew:
        raise TokenInvalid("token lifetime exceeds the maximum")
    if exp_s < now - skew:
        raise TokenExpired("token expired")
    camera_id, pod_id, user_id = claims.get("camera_id"), claims.get("pod_id"), claims.get("user_id")
    if not isinstance(camera_id, str) or not is_camera_id(camera_id):
        raise TokenInvalid("camera_id claim missing or malformed")
    if not isinstance(pod_id, str) or not is_dns_label(pod_id):
        raise TokenInvalid("pod_id claim is not a DNS label")
    if not isinstance(user_id, str) or not user_id or len(user_id) > 256:
        raise TokenInvalid("user_id claim missing")
    return UserStreamClaims(user_id=user_id, camera_id=camera_id, pod_id=pod_id, exp=exp_s, iat=None)


def mint_legacy_token(
    secret: str | bytes,
    *,
    user_id: str,
    camera_id: str,
    pod_id: str,
    ttl: float = 600.0,
    now: float | None = None,
    milliseconds: bool = False,
    urlsafe: bool = False,
) -> str:
    """Mint a token exactly as the guide's portal does (for tests and stand-ins): JSON with
    keys in the guide's order, standard base64 (``urlsafe``: the URL-safe alphabet),
    ``exp`` in seconds (``milliseconds``: as JavaScript's ``Date.now()`` counts)."""
    now = time.time() if now is None else now
    exp = int((now + ttl) * 1000) if milliseconds else int(now + ttl)
    text = json.dumps({"user_id": user_id, "camera_id": camera_id, "pod_id": pod_id, "exp": exp},
                      separators=(",", ":")).encode()
    key = secret.encode() if isinstance(secret, str) else secret
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(text).decode() + "." + hashlib.sha256(text + key).hexdigest()
