"""HLS playlist rewriting for the gateway (RFC 8216, with the LL-HLS tags of RFC 8216bis).

Pure: no I/O, no sockets. The gateway fetches
``http://<pod>:<port>/cameras/<camera_id>/<name>.m3u8`` and serves it to browsers as
``/streams/<camera_id>/<name>.m3u8``. :func:`rewrite_playlist` turns every URI in the
playlist into a *relative* reference (so it resolves back through the gateway under
``/streams/<camera_id>/``) carrying the grant in the ``pb_grant`` query parameter,
and refuses the whole playlist if any URI points outside the pod's camera directory.

Everything that is not a URI — tags, comments, blank lines, line endings, a missing
final newline — is kept byte for byte. Note that comments are therefore passed through
verbatim as well (they are not URIs; players ignore them, RFC 8216 §4.1).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import quote, unquote_plus

from gateway.errors import ForeignURIError, PlaylistError
from protocol.paths import UnsafePath, safe_relative_path

__all__ = [
    "GRANT_PARAM",
    "MAX_PLAYLIST_BYTES",
    "Slot",
    "Template",
    "compile_playlist",
    "is_multivariant",
    "part_target",
    "rewrite_playlist",
    "target_duration",
]

GRANT_PARAM = "pb_grant"
MAX_PLAYLIST_BYTES = 2 * 1024 * 1024
#: ``grant(decoded relative path, upstream query, is_playlist) -> grant string``
GrantFor = Callable[[str, str, bool], str]

# URI-bearing attributes per tag. Value: True = always a playlist (playlist grant);
# False = decide by extension (.m3u8/.m3u → playlist grant, else segment grant).
_URI_ATTRIBUTES: dict[str, dict[str, bool]] = {
    "EXT-X-MAP": {"URI": False},  # §4.3.2.5
    "EXT-X-KEY": {"URI": False},  # §4.3.2.4
    "EXT-X-SESSION-KEY": {"URI": False},  # §4.3.4.5
    "EXT-X-MEDIA": {"URI": True},  # §4.3.4.1
    "EXT-X-I-FRAME-STREAM-INF": {"URI": True},  # §4.3.4.3
    "EXT-X-SESSION-DATA": {"URI": False},  # §4.3.4.4
    "EXT-X-PART": {"URI": False},  # RFC 8216bis §4.4.4.9
    "EXT-X-PRELOAD-HINT": {"URI": False},  # RFC 8216bis §4.4.5.3
    "EXT-X-RENDITION-REPORT": {"URI": True},  # RFC 8216bis §4.4.5.4
    "EXT-X-CONTENT-STEERING": {"SERVER-URI": False},  # RFC 8216bis §4.4.6.6
    # HLS Interstitials (RFC 8216bis Appendix D): X-ASSET-URI names a multivariant
    # playlist, X-ASSET-LIST a JSON asset list.
    "EXT-X-DATERANGE": {"X-ASSET-URI": True, "X-ASSET-LIST": False},
}

# RFC 8216 §4.2 attribute: NAME=VALUE, VALUE a quoted-string (may hold commas) or an
# unquoted token running to the next comma. Whitespace around '=' and ',' is tolerated.
_ATTRIBUTE = re.compile(r'[ \t]*([A-Za-z0-9-]+)[ \t]*=[ \t]*("[^"\r\n]*"|[^,"\r\n]*?)[ \t]*(?:,|\Z)')
# RFC 3986 §3.1 scheme followed by ':'.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# Characters that cannot appear in a URI we emit or in a quoted-string.
_BAD_URI_CHARS = re.compile(r'[\x00-\x20\x7f"<>]')
#: characters of a URI line the rewriter accepts: a longer one cannot be asked for by a viewer
#: (the data plane and the gateway read request lines of up to 16 KiB), and a grant's
#: length-prefixed fields hold at most 65535 bytes
MAX_URI_CHARS = 8192
# Encoded '.', '/', '\' (and their double encodings) inside a path.
_ENCODED_DOT_OR_SLASH = re.compile(r"%(?:2e|2f|5c|25(?:2e|2f|5c))", re.IGNORECASE)
_TARGET_DURATION = re.compile(r"^#EXT-X-TARGETDURATION:([^\r\n]*)", re.MULTILINE)
_PART_INF = re.compile(r"^#EXT-X-PART-INF:([^\r\n]*)", re.MULTILINE)
_VARIANT_TAG = re.compile(r"^#EXT-X-(?:I-FRAME-)?STREAM-INF(?=[:\r\n]|\Z)", re.MULTILINE)
_QUERY_SEPARATOR = re.compile(r"[&;]")
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?")
_DEFAULT_PORT = {"http": 80, "https": 443}
# Line breaks some player honours besides LF and CRLF (RFC 8216 §4.1): a lone CR (ExoPlayer's
# readLine; hls.js's regexes, whose "." also stops at U+2028/U+2029), NEL, VT, FF, FS/GS/RS.
# A tag or comment hiding one would reach the player as two lines, the second one unseen here.
_OTHER_LINE_BREAK = re.compile(r"\r(?!\n)|[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _parse_attributes(payload: str) -> list[tuple[str, int, int]]:
    """Parse an attribute list (RFC 8216 §4.2) into ``(name, value_start, value_end)``.

    Offsets index *payload*, so callers can replace single values and keep every other
    byte. Raises :class:`PlaylistError` if *payload* is not an attribute list.
    """
    attributes: list[tuple[str, int, int]] = []
    pos = 0
    end = len(payload)
    match = _ATTRIBUTE.match
    while pos < end:
        m = match(payload, pos)
        if m is None or m.end() == pos:
            raise PlaylistError("malformed attribute list")
        attributes.append((m.group(1), m.start(2), m.end(2)))
        pos = m.end()
    return attributes


def _split_authority(authority: str) -> tuple[str, int | None] | None:
    """``host[:port]`` → ``(lower-case host, port or None)``; ``None`` if unusable."""
    if "@" in authority:  # userinfo (RFC 3986 §3.2.1) — never trusted
        return None
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return None
        host, rest = authority[: close + 1], authority[close + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        return None
    if port_text:
        if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
            return None
        return host.lower(), int(port_text)
    return host.lower(), None


def _origin(scheme: str, authority: str) -> tuple[str, str, int] | None:
    parsed = _split_authority(authority)
    if parsed is None:
        return None
    host, port = parsed
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORT:
        return None
    return scheme, host, _DEFAULT_PORT[scheme] if port is None else port


def _split_url(url: str, what: str) -> tuple[tuple[str, str, int], str]:
    """Absolute http(s) URL → (origin, path); query and fragment are dropped."""
    m = _SCHEME.match(url)
    rest = url[m.end() :] if m else ""
    if m is None or not rest.startswith("//"):
        raise PlaylistError(f"{what} is not an absolute http(s) URL")
    rest = rest[2:].partition("#")[0].partition("?")[0]
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    origin = _origin(m.group()[:-1], authority)
    if origin is None:
        raise PlaylistError(f"{what} is not an absolute http(s) URL")
    return origin, path


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path; refuses ``..`` above the root."""
    if "." not in path:
        return path
    out: list[str] = []
    directory = False
    for segment in path.split("/")[1:]:
        if segment == ".":
            directory = True
        elif segment == "..":
            if not out:
                raise ForeignURIError("URI climbs above the root")
            out.pop()
            directory = True
        else:
            out.append(segment)
            directory = False
    if directory:
        out.append("")
    return "/" + "/".join(out)


def _has_grant(query: str) -> bool:
    for part in _QUERY_SEPARATOR.split(query):
        name = part.partition("=")[0]
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if name.lower() == GRANT_PARAM:
            return True
    return False


class Slot(NamedTuple):
    """One URI of a compiled playlist: ``prefix`` (the relative reference, the upstream query
    and ``pb_grant=``) is followed by the grant for ``path`` (decoded, below the camera)
    with ``query`` (the upstream query, no trailing ``&``); ``playlist`` says which grant kind."""

    prefix: str
    path: str
    query: str
    playlist: bool


class Template:
    """A checked playlist, ready to be rendered per viewer (see :func:`compile_playlist`).

    ``pieces`` are the literal text around the URIs (one more than ``slots``); ``hints`` the
    decoded paths named by ``EXT-X-PRELOAD-HINT`` (RFC 8216bis §4.4.5.3): resources the pod
    may still be producing. Immutable once built; shared by every viewer of one upstream response.
    """

    __slots__ = ("hints", "pieces", "slots")

    def __init__(self, pieces: list[str], slots: list[Slot], hints: tuple[str, ...]) -> None:
        self.pieces = pieces
        self.slots = slots
        self.hints = hints

    def literal_text(self) -> str:
        """Everything the viewer gets except the grants (for checks on what a playlist reveals)."""
        return "".join(self.pieces) + "".join(s.prefix for s in self.slots)

    def render(self, grant: GrantFor) -> str:
        """The playlist with ``grant(path, query, is_playlist)`` after every URI's ``pb_grant=``.

        A grant of unreserved characters only (RFC 3986 §2.3, as
        :class:`~gateway.grants.GrantSigner` mints them) is used as is; anything else is
        percent-encoded."""
        pieces = self.pieces
        out = [pieces[0]]
        append = out.append
        safe = _UNRESERVED.fullmatch
        for i, slot in enumerate(self.slots, 1):
            value = grant(slot.path, slot.query, slot.playlist)
            append(slot.prefix)
            append(value if safe(value) else quote(value, safe="-._~"))
            append(pieces[i])
        return "".join(out)

    def render_fixed(self, segment_grant: str, playlist_grant: str) -> str:
        """The playlist with one fixed grant per kind (``segment_grant`` for everything but playlists)."""
        return self.render(lambda _path, _query, is_playlist: playlist_grant if is_playlist else segment_grant)


class _Rewriter:
    """Per-call state: the base URL and the scope; resolves each distinct URI once."""

    __slots__ = ("base_dirs", "base_origin", "base_path", "cache", "scope_path")

    def __init__(self, upstream_url: str, scope_url: str) -> None:
        scope_origin, scope_path = _split_url(scope_url, "scope_url")
        if not scope_path.endswith("/"):
            scope_path += "/"
        base_origin, base_path = _split_url(upstream_url, "upstream_url")
        if base_origin != scope_origin or not base_path.startswith(scope_path):
            raise PlaylistError("upstream_url lies outside scope_url")
        self.base_origin = base_origin
        self.base_path = base_path
        self.scope_path = scope_path
        self.base_dirs = base_path[len(scope_path) :].split("/")[:-1]
        self.cache: dict[tuple[str, bool], Slot] = {}

    def rewrite(self, uri: str, playlist: bool) -> Slot:
        key = (uri, playlist)
        cached = self.cache.get(key)
        if cached is None:
            cached = self.cache[key] = self._rewrite(uri, playlist)
        return cached

    def _rewrite(self, uri: str, playlist: bool) -> Slot:
        if "\\" in uri:
            raise ForeignURIError("backslash in URI")
        if _BAD_URI_CHARS.search(uri):
            raise PlaylistError("URI contains whitespace, control or quote characters")
        if not uri.isascii():
            # RFC 3986 has no raw non-ASCII (an IRI): a player sends it percent-encoded, which
            # the grant minted over the raw form would not match
            raise PlaylistError("URI has characters outside ASCII (RFC 8216 §4.2: URIs per RFC 3986)")
        if len(uri) > MAX_URI_CHARS:
            raise PlaylistError(f"URI longer than {MAX_URI_CHARS} characters")
        reference = uri.partition("#")[0]  # fragments are dropped
        if not reference:
            raise PlaylistError("empty URI")
        # RFC 3986 §5.2.2: split the reference, then merge with the base.
        m = _SCHEME.match(reference)
        if m is not None:
            scheme = m.group()[:-1].lower()
            rest = reference[m.end() :]
            if scheme not in _DEFAULT_PORT or not rest.startswith("//"):
                raise ForeignURIError("URI has a foreign scheme")
        else:
            scheme = self.base_origin[0]
            rest = reference
        path, has_query, query = rest.partition("?")
        if path.startswith("//"):  # network-path or absolute URI: check the authority
            slash = path.find("/", 2)
            authority, path = (path[2:], "/") if slash < 0 else (path[2:slash], path[slash:])
            if _origin(scheme, authority) != self.base_origin:
                raise ForeignURIError("URI points to another origin")
        elif path.startswith("/"):
            pass
        elif not path:
            if not has_query:
                raise PlaylistError("empty URI")
            path = self.base_path
        else:
            path = self.base_path[: self.base_path.rfind("/") + 1] + path
        if _ENCODED_DOT_OR_SLASH.search(path):
            raise ForeignURIError("encoded dot, slash or backslash in URI path")
        path = _remove_dot_segments(path)
        if not path.startswith(self.scope_path):
            raise ForeignURIError("URI leaves the camera scope")
        relative = path[len(self.scope_path) :]
        try:
            decoded = safe_relative_path(relative)
        except UnsafePath as exc:
            raise ForeignURIError(f"URI path refused: {exc}") from None
        if has_query and _has_grant(query):
            raise PlaylistError(f"upstream URI already carries {GRANT_PARAM}")

        # Relative reference from the playlist's directory to the target.
        target = relative.split("/")
        base_dirs = self.base_dirs
        limit = min(len(base_dirs), len(target) - 1)
        common = 0
        while common < limit and base_dirs[common] == target[common]:
            common += 1
        parts = [".."] * (len(base_dirs) - common) + target[common:]
        out = "/".join(parts)
        if ":" in parts[0]:  # would parse as a scheme (RFC 3986 §4.2)
            out = "./" + out

        if not playlist:
            lowered = decoded.lower()
            playlist = lowered.endswith((".m3u8", ".m3u"))
        if has_query:
            prefix = f"{out}?{query}&" if query and not query.endswith("&") else f"{out}?{query}"
        else:
            prefix = f"{out}?"
        return Slot(prefix + GRANT_PARAM + "=", decoded, query.rstrip("&"), playlist)


def _check_playlist(text: str) -> None:
    if len(text) > MAX_PLAYLIST_BYTES or (
        len(text) * 4 > MAX_PLAYLIST_BYTES and len(text.encode("utf-8", "surrogatepass")) > MAX_PLAYLIST_BYTES
    ):
        raise PlaylistError("playlist larger than 2 MB")
    first = text.removeprefix("\ufeff")
    end = first.find("\n")
    first = first if end < 0 else first[:end]
    if first.rstrip() != "#EXTM3U":
        raise PlaylistError("not an HLS playlist: first line is not #EXTM3U")
    if _OTHER_LINE_BREAK.search(text):
        raise PlaylistError("line break other than LF or CRLF (a player could see a line that is not rewritten)")


def rewrite_playlist(
    text: str,
    *,
    upstream_url: str,
    scope_url: str,
    segment_grant: str = "",
    playlist_grant: str = "",
    grant: GrantFor | None = None,
) -> str:
    """Rewrite every URI of an HLS playlist to a gateway-relative, granted reference.

    Args:
        text: the playlist body as fetched (RFC 8216 §4: UTF-8, first line ``#EXTM3U``,
            an optional UTF-8 BOM is accepted, at most 2 MB).
        upstream_url: absolute URL the playlist was fetched from, e.g.
            ``http://127.0.0.2:8000/cameras/gate/index.m3u8?x=1``; the base URI for
            resolving references (RFC 3986 §5.1/§5.2, like ``urllib.parse.urljoin``).
        scope_url: e.g. ``http://127.0.0.2:8000/cameras/gate/``; every resolved URI must
            have the same scheme, host and port and a path below this prefix.
        segment_grant / playlist_grant: values for the ``pb_grant`` query parameter;
            ``playlist_grant`` is used for URIs naming playlists (``.m3u8``/``.m3u``
            paths, the URI line after ``EXT-X-STREAM-INF``, ``URI`` of ``EXT-X-MEDIA``,
            ``EXT-X-I-FRAME-STREAM-INF``, ``EXT-X-RENDITION-REPORT`` and ``X-ASSET-URI``
            of ``EXT-X-DATERANGE``), ``segment_grant`` for everything else.
        grant: when given, called as ``grant(decoded relative path, upstream query without
            a trailing "&", is_playlist)`` for every URI and its answer used as that URI's
            ``pb_grant`` (instead of ``segment_grant``/``playlist_grant``): the gateway binds
            each grant to the one URI it is written into.

    Returns:
        The playlist with only its URIs changed. Lines are classified per RFC 8216 §4.1
        (blank, tag ``#EXT…``, comment ``#…``, URI); tags, comments, blank lines, line
        endings (LF or CRLF) and a missing final newline are kept byte for byte. URIs
        are URI lines and these attributes (§4.2 attribute lists, parsed so that e.g.
        ``SERVER-URI`` is not taken for ``URI``): ``URI`` of EXT-X-MAP (§4.3.2.5),
        EXT-X-KEY (§4.3.2.4), EXT-X-SESSION-KEY, EXT-X-MEDIA, EXT-X-I-FRAME-STREAM-INF,
        EXT-X-SESSION-DATA (§4.3.4), EXT-X-PART, EXT-X-PRELOAD-HINT,
        EXT-X-RENDITION-REPORT (RFC 8216bis §4.4); ``SERVER-URI`` of
        EXT-X-CONTENT-STEERING; ``X-ASSET-URI``/``X-ASSET-LIST`` of EXT-X-DATERANGE.
        Each becomes a relative reference from the playlist's directory to the target
        (``seg.m4s``, ``../b/x.ts``; ``./`` is prefixed when the first segment contains
        ``:``), never with scheme or host. The upstream query is kept byte for byte and
        the grant appended (``seg.m4s?a=1&pb_grant=G``, ``seg.m4s?pb_grant=G``);
        fragments are dropped.

    Raises:
        ForeignURIError: a URI resolves outside the scope — other scheme (``data:``,
            ``skd:``, …), host, port or userinfo, a path outside the scope prefix, a
            ``..`` above the root, ``%2e``/``%2f``/``%5c`` or a backslash in the path,
            or a target the gateway would refuse to serve (hidden or empty segment,
            see :func:`protocol.paths.safe_relative_path`). The whole playlist is
            refused; nothing is emitted.
        PlaylistError: not a playlist (no ``#EXTM3U``), over 2 MB, a line break other than LF
            or CRLF (lone CR, U+2028, U+2029, NEL, VT, FF, FS/GS/RS: players split lines there
            differently), a URI-bearing tag
            whose attribute list is malformed or whose URI is unquoted, an empty URI or
            one with whitespace/control/quote characters, an upstream URI that already
            carries ``pb_grant``, or *upstream_url* outside *scope_url*.
    """
    template = compile_playlist(text, upstream_url=upstream_url, scope_url=scope_url)
    if grant is not None:
        return template.render(grant)
    return template.render_fixed(segment_grant, playlist_grant)


def compile_playlist(text: str, *, upstream_url: str, scope_url: str,
                     drop_comments_with: str | None = None) -> Template:
    """Check a playlist and split it into literal text and URI slots, once per upstream response.

    Same arguments, checks and errors as :func:`rewrite_playlist` (which is
    ``compile_playlist(...).render(grant)``); ``drop_comments_with``: comment lines containing
    this text are left out (see :func:`drop_comments_containing`). Rendering a template for
    each viewer costs only the grants: nothing is parsed again.
    """
    _check_playlist(text)
    rewriter = _Rewriter(upstream_url, scope_url)
    lines = text.split("\n")
    pieces: list[str] = []
    slots: list[Slot] = []
    hints: list[str] = []
    buf = [lines[0]]  # the validated #EXTM3U line (with BOM / CR as received)
    append = buf.append
    uri_attributes = _URI_ATTRIBUTES
    rewrite = rewriter.rewrite
    variant_pending = False

    def slot(s: Slot) -> None:
        nonlocal buf, append
        pieces.append("".join(buf))
        slots.append(s)
        buf = []
        append = buf.append

    last = len(lines) - 1
    for i in range(1, last + 1):
        raw = lines[i]
        if (drop_comments_with and raw.startswith("#") and not raw.startswith("#EXT")
                and drop_comments_with in raw):
            if i == last:
                append("\n")  # the line break before it stays, as drop_comments_containing keeps it
            continue  # the comment and its line break
        append("\n")
        if not raw:
            continue
        if raw[0] == "#":
            if raw.startswith("#EXT"):
                name, colon, payload = raw[1:].partition(":")
                if name == "EXT-X-STREAM-INF":
                    variant_pending = True
                elif colon and name in uri_attributes:
                    for piece in _tag_pieces(raw, len(name) + 2, payload, uri_attributes[name], rewrite):
                        if isinstance(piece, str):
                            append(piece)
                        else:
                            slot(piece)
                            if name == "EXT-X-PRELOAD-HINT":
                                hints.append(piece.path)
                    continue
            append(raw)
            continue
        uri = raw.strip()
        if not uri:  # whitespace-only: a blank line
            append(raw)
            continue
        slot(rewrite(uri, variant_pending))
        if raw[-1] == "\r":
            append("\r")
        variant_pending = False
    pieces.append("".join(buf))
    return Template(pieces, slots, tuple(hints))


def _tag_pieces(raw: str, offset: int, payload: str, wanted: dict[str, bool],
                rewrite: Callable[[str, bool], Slot]) -> list[str | Slot]:
    """A URI-bearing tag line as literal text and slots (only its URI attributes are slots)."""
    cr = payload.endswith("\r")
    body = payload[:-1] if cr else payload
    pieces: list[str | Slot] = []
    last = 0
    for name, start, end in _parse_attributes(body):
        playlist = wanted.get(name)
        if playlist is None:
            continue
        value = body[start:end]
        if len(value) < 2 or value[0] != '"':
            raise PlaylistError(f"{name} attribute is not a quoted-string")
        pieces.append((raw[:offset] if not pieces else "") + body[last : start + 1])
        pieces.append(rewrite(value[1:-1], playlist))
        last = end - 1
    if not pieces:
        return [raw]
    pieces.append(payload[last:])
    return pieces


def target_duration(text: str) -> float | None:
    """``EXT-X-TARGETDURATION`` in seconds (RFC 8216 §4.3.3.1), or ``None`` if absent.

    The first occurrence wins. Raises :class:`PlaylistError` if the value is not a
    non-negative decimal number.
    """
    m = _TARGET_DURATION.search(text)
    if m is None:
        return None
    return _decimal(m.group(1), "EXT-X-TARGETDURATION")


def is_multivariant(text: str) -> bool:
    """True if *text* has ``EXT-X-STREAM-INF`` or ``EXT-X-I-FRAME-STREAM-INF`` (RFC 8216 §4.3.4).

    Such a playlist is a Multivariant (master) Playlist, not a Media Playlist.
    """
    return _VARIANT_TAG.search(text) is not None


def part_target(text: str) -> float | None:
    """``PART-TARGET`` of ``EXT-X-PART-INF`` in seconds (RFC 8216bis §4.4.3.7), or ``None``.

    ``None`` when the tag is absent (not a Low-Latency HLS playlist). Raises
    :class:`PlaylistError` if the tag is present but its attribute list is malformed,
    lacks PART-TARGET or the value is not a non-negative decimal number.
    """
    m = _PART_INF.search(text)
    if m is None:
        return None
    payload = m.group(1)
    for name, start, end in _parse_attributes(payload):
        if name == "PART-TARGET":
            return _decimal(payload[start:end], "PART-TARGET")
    raise PlaylistError("EXT-X-PART-INF without PART-TARGET")


def _decimal(value: str, what: str) -> float:
    value = value.strip()
    if not _DECIMAL.fullmatch(value):
        raise PlaylistError(f"{what} is not a decimal number")
    return float(value)


def drop_comments_containing(text: str, needle: str) -> str:
    """Remove comment lines (``#`` but not ``#EXT``, RFC 8216 §4.1) that contain ``needle``.

    Clients ignore comments, so dropping them changes nothing for playback;
    the gateway uses it so a pod's own address never leaks through a comment.
    Every other line, and every line ending, is kept byte for byte.
    """
    if needle not in text:
        return text
    return "".join(
        line for line in text.splitlines(keepends=True)
        if not (line.startswith("#") and not line.startswith("#EXT") and needle in line)
    )
