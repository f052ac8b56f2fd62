"""How a permissive HLS player reads a playlist and resolves its URIs (test helper).

:func:`fetched_uris` finds every URI a player would fetch (URI lines and URI attributes,
lines split at every line break any common player honours); :func:`player_target`
resolves one against the playlist's URL the way a browser does (WHATWG URL: ``\\`` is
``/`` in http(s) URLs, IPv4 hosts in any inet_aton spelling, a trailing dot ignored).
Independent of ``gateway.playlist``: the tests use it to check the gateway's output.
"""

from __future__ import annotations

import re
import socket
from urllib.parse import urljoin, urlsplit

__all__ = ["PLAYER_LINE_BREAK", "URI_ATTRS", "attribute_values", "fetched_uris", "player_target"]

# every tag whose attributes a player fetches, and which attributes (RFC 8216 / 8216bis)
URI_ATTRS = {
    "EXT-X-MAP": {"URI"}, "EXT-X-KEY": {"URI"}, "EXT-X-SESSION-KEY": {"URI"}, "EXT-X-MEDIA": {"URI"},
    "EXT-X-I-FRAME-STREAM-INF": {"URI"}, "EXT-X-SESSION-DATA": {"URI"}, "EXT-X-PART": {"URI"},
    "EXT-X-PRELOAD-HINT": {"URI"}, "EXT-X-RENDITION-REPORT": {"URI"}, "EXT-X-CONTENT-STEERING": {"SERVER-URI"},
    "EXT-X-DATERANGE": {"X-ASSET-URI", "X-ASSET-LIST"},
}


def attribute_values(payload: str) -> list[tuple[str, str]] | None:
    """RFC 8216 §4.2 attribute list → ``[(name, raw value)]`` (quotes kept), or None when the
    text is not an attribute list. Independent of ``gateway.playlist``'s regex."""
    out, i, n = [], 0, len(payload)
    while i < n:
        while i < n and payload[i] in " \t":
            i += 1
        j = i
        while j < n and (payload[j].isascii() and (payload[j].isalnum() or payload[j] == "-")):
            j += 1
        name = payload[i:j]
        while j < n and payload[j] in " \t":
            j += 1
        if not name or j >= n or payload[j] != "=":
            return None
        j += 1
        while j < n and payload[j] in " \t":
            j += 1
        if j < n and payload[j] == '"':
            k = payload.find('"', j + 1)
            if k < 0:
                return None
            value, j = payload[j:k + 1], k + 1
        else:
            k = j
            while k < n and payload[k] != ",":
                if payload[k] == '"':
                    return None
                k += 1
            value, j = payload[j:k].rstrip(" \t"), k
        while j < n and payload[j] in " \t":
            j += 1
        if j < n and payload[j] != ",":
            return None
        out.append((name, value))
        i = j + 1
    return out


# Where players end a line: RFC 8216 says LF or CRLF, but hls.js runs JavaScript regexes whose
# "." stops at CR, U+2028 and U+2029, ExoPlayer reads lines that also end at a lone CR, and
# Python's str.splitlines adds VT, FF, FS, GS, RS and NEL. A URI is whatever any of them sees.
PLAYER_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def fetched_uris(playlist: str) -> list[str]:
    """Every URI a player would fetch from ``playlist``: URI lines and the URI attributes of
    :data:`URI_ATTRS` (RFC 8216 §4.1 line classification, lines split like the most
    permissive player, :data:`PLAYER_LINE_BREAK`)."""
    found = []
    for line in PLAYER_LINE_BREAK.split(playlist):
        if not line.strip():
            continue
        if line.startswith("#"):
            name, colon, payload = line[1:].partition(":")
            wanted = URI_ATTRS.get(name)
            if wanted and colon:
                attrs = attribute_values(payload)
                assert attrs is not None, f"emitted an unparseable URI-bearing tag: {line!r}"
                found += [v[1:-1] if v.startswith('"') else v for k, v in attrs if k in wanted]
            continue
        found.append(line.strip())
    return found


def player_target(playlist_url: str, uri: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path?query)`` a browser-based player would fetch for ``uri``
    found in the playlist at ``playlist_url``. ``host`` is an IPv4 address when the URL's
    host is one in any spelling browsers accept (``2130706441``, ``127.0.0.9.``)."""
    ref = uri.replace("\\", "/")  # WHATWG: a backslash is a slash in http(s) URLs, relative ones included
    url = urlsplit(urljoin(playlist_url, ref))
    host = (url.hostname or "").rstrip(".")
    try:
        host = socket.inet_ntoa(socket.inet_aton(host))  # "2130706441" → "127.0.0.9", as browsers do
    except OSError:
        pass
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.scheme, host, port, url.path + ("?" + url.query if url.query else "")
