"""Grants: short-lived HMAC capabilities the gateway writes into every playlist URI.

A user JWT only gates the start of a viewing session. Every playlist response
re-mints grants, so a viewer who keeps reloading never holds an expired URI,
and players that cannot send headers (Safari/AVPlayer) still authenticate
every segment request through the query string.

Wire form (URL-safe, no padding)::

    v1.<base64url(msgspec-JSON [user, camera_id, pod_id, exp, session_exp])>.<base64url(mac)>

``mac`` = first 16 bytes of HMAC-SHA256(key, ``b"pbg1." + payload``), key derived
from the stream secret (:meth:`protocol.tokens.Keyring.derive`), compared in
constant time. ``exp`` bounds the grant; ``session_exp`` bounds the whole
viewing session (``max_session_seconds``) and is carried unchanged into every
re-minted grant. Times are Unix seconds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time

import msgspec

from gateway.errors import GrantError
from protocol.tokens import Keyring

GRANT_PARAM = "pb_grant"
_PREFIX = "v1."
_MAC_LABEL = b"pbg1."
_MAC_BYTES = 16
_MAX_LEN = 1024
_CANONICAL = re.compile(r"^v1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}\Z")  # 16-byte MAC, unpadded base64url


class Grant(msgspec.Struct, array_like=True, frozen=True):
    """Decoded grant. ``exp``/``session_exp`` are Unix seconds (int)."""

    user: str
    camera_id: str
    pod_id: str
    exp: int
    session_exp: int


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Grant)


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class GrantSigner:
    """Mints and verifies grants. Built from the stream :class:`Keyring`, so grants
    rotate with the secret; verification tries every derived key (primary first)."""

    def __init__(self, keyring: Keyring) -> None:
        self._keys = keyring.derive(b"platebridge-grant-key-v1")

    def _mac(self, key: bytes, payload: bytes) -> bytes:
        return hmac.new(key, _MAC_LABEL + payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def mint(self, grant: Grant) -> str:
        """Serialise and sign ``grant``; returns the URL-safe string (< 300 bytes typical)."""
        payload = _enc.encode(grant)
        return _PREFIX + _b64e(payload) + "." + _b64e(self._mac(self._keys[0], payload))

    def verify(self, token: str, *, camera_id: str, now: float | None = None) -> Grant:
        """Check signature, expiry (``exp`` and ``session_exp``) and camera.

        Raises :class:`GrantError` on any failure (message never contains the grant).
        """
        if not token or len(token) > _MAX_LEN or not _CANONICAL.match(token):
            raise GrantError("malformed grant")
        payload_b64, _, mac_b64 = token[len(_PREFIX):].partition(".")
        try:
            payload, mac = _b64d(payload_b64), _b64d(mac_b64)
        except (binascii.Error, ValueError):
            raise GrantError("malformed grant") from None
        if _b64e(payload) != payload_b64:  # one spelling per grant: no padding or alphabet variants
            raise GrantError("malformed grant")
        if not any(hmac.compare_digest(self._mac(k, payload), mac) for k in self._keys):
            raise GrantError("bad grant signature")
        try:
            grant = _dec.decode(payload)
        except msgspec.DecodeError:
            raise GrantError("malformed grant") from None
        now = time.time() if now is None else now
        if now > grant.exp or now > grant.session_exp:
            raise GrantError("grant expired")
        if not hmac.compare_digest(grant.camera_id.encode(), camera_id.encode()):
            raise GrantError("grant is for another camera")
        return grant


def take_param(raw_query: str, name: str) -> tuple[list[str], str]:
    """Remove every ``name=`` parameter from a raw query string.

    Returns ``(values, rest)``: the raw (undecoded) values in order, and the
    query without them, every other byte kept as it was (no decoding, no
    re-encoding, no reordering) so it can pass to the pod unchanged. More
    than one value means the request is ambiguous and must be refused.
    """
    if not raw_query:
        return [], ""
    values, keep = [], []
    for part in raw_query.split("&"):
        if part == name or part.startswith(name + "="):
            values.append(part[len(name) + 1:])
        else:
            keep.append(part)
    return values, "&".join(keep)
