"""Grants: short, stateless capabilities the gateway writes into every playlist URI.

A user JWT only gates the start of a viewing session. Every playlist response
re-mints grants, so a viewer who keeps reloading never holds an expired URI,
and players that cannot send headers (Safari/AVPlayer) still authenticate
every request through the query string (``pb_grant=``).

Each grant is **bound to one URI**: its kind, camera, path and upstream query
are under the MAC, so a grant opens exactly the URI it was written into and
nothing else. Any process that holds the grant key can verify it; the gateway
keeps no record of what it handed out.

Kinds (RFC 8216 terms):

* ``playlist`` — a media or multivariant playlist (``.m3u8``); lives until the
  session ends (``session_exp``), because players reload the same URI.
* ``media`` — a segment, init segment (EXT-X-MAP), partial segment or key;
  lives ``grant_ttl`` seconds (each playlist reload hands out fresh ones).

A media grant is refused on a playlist (it would re-mint a whole session).

Wire form: unpadded base64url of ``body || mac`` (about 60 characters)::

    body = version (1 byte, 2) | kind (1: 0 playlist, 1 media) | exp (uint32 BE, Unix s)
           | session_exp (uint32 BE) | sid (8 random bytes) | len(pod_id) (1) | pod_id (ASCII)
    mac  = HMAC-SHA256(key, "pbg2" | body | lp(camera_id) | lp(path) | lp(query))[:16]

``lp(x)`` is a 2-byte big-endian length followed by the UTF-8 bytes; ``path`` is the
decoded path below ``/streams/<camera_id>/`` and ``query`` the upstream query
without ``pb_grant`` and without a trailing ``&``. The key is gateway-only
(``grant_secrets``, or HKDF of the gateway's signing key), never derived from
anything a pod or the portal holds. Verification tries every configured key
(primary first) and compares MACs in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

from gateway.errors import GrantError
from protocol.ids import is_dns_label

GRANT_PARAM = "pb_grant"
Kind = Literal["playlist", "media"]
_KINDS: tuple[Kind, Kind] = ("playlist", "media")
_VERSION = 2
_LABEL = b"pbg2"
_HEAD = struct.Struct(">BBII8sB")  # version, kind, exp, session_exp, sid, len(pod_id)
_MAC_BYTES = 16
_CANONICAL = re.compile(r"^[A-Za-z0-9_-]{40,160}\Z")


class Grant(msgspec.Struct, frozen=True):
    """Decoded grant: ``kind``, the pod that serves the camera, ``exp`` and ``session_exp``
    (Unix seconds, int) and ``sid`` (the viewing session's random id, 8 bytes)."""

    kind: Kind
    pod_id: str
    exp: int
    session_exp: int
    sid: bytes


def new_session_id() -> bytes:
    """A random 8-byte viewing-session id."""
    return secrets.token_bytes(8)


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _lp(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return struct.pack(">H", min(len(data), 0xFFFF)) + data


class GrantSigner:
    """Mints and verifies path-bound grants.

    ``keys``: grant keys (bytes, ≥ 16), the first one signs; all of them verify, so a
    key rotates by adding the new one first and dropping the old one after the longest
    session (``max_session_seconds``). Raises ``ValueError`` for no or short keys.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys or any(len(k) < 16 for k in keys):
            raise ValueError("grant keys: at least one, each at least 16 bytes")
        self._keys = [bytes(k) for k in keys]

    def _mac(self, key: bytes, body: bytes, camera_id: str, path: str, query: str) -> bytes:
        msg = b"".join((_LABEL, body, _lp(camera_id), _lp(path), _lp(query.rstrip("&"))))
        return hmac.new(key, msg, hashlib.sha256).digest()[:_MAC_BYTES]

    def mint(self, grant: Grant, *, camera_id: str, path: str, query: str = "") -> str:
        """The grant string for exactly ``camera_id``/``path``?``query`` (path decoded, below the camera)."""
        pod = grant.pod_id.encode("ascii")
        body = _HEAD.pack(_VERSION, _KINDS.index(grant.kind), grant.exp, grant.session_exp, grant.sid, len(pod)) + pod
        return _b64e(body + self._mac(self._keys[0], body, camera_id, path, query))

    def minter(self, grant: Grant, *, camera_id: str) -> Callable[[str, str], str]:
        """``mint(path, query="")``: the same strings as :meth:`mint` for ``grant`` on ``camera_id``,
        for many URIs of one playlist response. The MAC state over the label, the grant body and
        the camera is computed once and copied per URI, and the base64 of the body's leading
        whole 3-byte groups is reused (base64 encodes each 3-byte group on its own)."""
        pod = grant.pod_id.encode("ascii")
        body = _HEAD.pack(_VERSION, _KINDS.index(grant.kind), grant.exp, grant.session_exp, grant.sid, len(pod)) + pod
        keyed = hmac.new(self._keys[0], _LABEL + body + _lp(camera_id), hashlib.sha256)
        whole = len(body) - len(body) % 3
        head, tail = _b64e(body[:whole]), body[whole:]
        b64 = base64.urlsafe_b64encode

        def mint(path: str, query: str = "") -> str:
            h = keyed.copy()
            h.update(_lp(path) + _lp(query.rstrip("&")))
            return head + b64(tail + h.digest()[:_MAC_BYTES]).rstrip(b"=").decode("ascii")

        return mint

    def verify(self, token: str, *, camera_id: str, path: str, query: str, kind: Kind, now: float) -> Grant:
        """Check form, kind, MAC (binding camera, path and query) and expiry.

        ``kind`` is the kind of the requested file. Raises :class:`GrantError` with a
        reason (never the grant): ``malformed grant``, ``a media grant cannot open a
        playlist`` (or the reverse), ``grant is not valid for this URI`` (tampered, another
        key, another camera or another path), ``grant expired``.
        """
        if not token or not _CANONICAL.match(token):
            raise GrantError("malformed grant")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise GrantError("malformed grant") from None
        if _b64e(raw) != token or len(raw) < _HEAD.size + 1 + _MAC_BYTES:  # one spelling per grant
            raise GrantError("malformed grant")
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        version, kind_i, exp, session_exp, sid, pod_len = _HEAD.unpack_from(body)
        if version != _VERSION or kind_i > 1 or len(body) != _HEAD.size + pod_len:
            raise GrantError("malformed grant")
        grant_kind = _KINDS[kind_i]
        if grant_kind != kind:  # refusing on an unauthenticated field is safe; the reason helps operators
            raise GrantError(f"a {grant_kind} grant cannot open a {kind}")
        if not any(hmac.compare_digest(self._mac(k, body, camera_id, path, query), mac) for k in self._keys):
            raise GrantError("grant is not valid for this URI")
        pod_id = body[_HEAD.size:].decode("ascii", "replace")
        if not is_dns_label(pod_id):
            raise GrantError("malformed grant")
        if now > exp or now > session_exp:
            raise GrantError("grant expired")
        return Grant(grant_kind, pod_id, exp, session_exp, sid)


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
