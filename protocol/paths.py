"""Request-path safety for files below a camera's HLS directory, and their media types.

Pure: no I/O. The gateway maps ``/streams/<camera_id>/<path>`` to
``<pod>/cameras/<camera_id>/<path>`` and the pod maps it to a file, so ``<path>``
must never be able to leave that directory however it is spelled. The gateway
wraps :class:`UnsafePath` into ``gateway.errors.UnsafePathError`` (→ 400).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["KEY_MEDIA_TYPE", "MAX_PATH_LENGTH", "UnsafePath", "content_type_for", "safe_relative_path"]

MAX_PATH_LENGTH = 255

# Checked on the raw (still encoded) text: encoded "/" (%2f), encoded "\" (%5c)
# and a double-encoded "%" in front of ".", "/" or "\" (%252e, %252f, %255c).
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|25(?:2e|2f|5c))", re.IGNORECASE)
# C0 controls, DEL and C1 controls (NUL included).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# "C:", "c:foo" — a Windows drive letter in the first segment.
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafePath(ValueError):
    """A request path could leave (or confuse) the camera directory. ``str(exc)`` names the rule."""


def safe_relative_path(path: str) -> str:
    """Validate *path*, relative to a camera directory, and return it decoded.

    Shape: ``"index.m3u8"``, ``"seg_17.m4s"``, ``"sub/a.ts"`` — ``/``-separated
    segments, no leading ``/``. The text is percent-decoded exactly once (RFC 3986
    §2.1); the returned value is that decoded path, which is the file name below
    the camera directory.

    Rule set ("camera-relative path rules"); any violation raises
    :class:`UnsafePath` (a :class:`ValueError`):

    1. not empty, at most 255 characters (before and after decoding);
    2. no encoded slash or backslash (``%2f``, ``%5c``) and no double encoding of
       ``.``, ``/`` or ``\\`` (``%252e``, ``%252f``, ``%255c``), checked before
       decoding;
    3. after decoding: no backslash, no NUL / C0 / DEL / C1 control character;
    4. not absolute (no leading ``/``) and no drive letter (``C:``);
    5. no empty segment (``a//b``, trailing ``/``), no ``.`` or ``..`` segment
       (RFC 3986 §3.3 dot segments) and no segment starting with ``.`` (hidden
       files such as ``.env``).
    """
    if not isinstance(path, str):
        raise UnsafePath("path must be text")
    if not path:
        raise UnsafePath("empty path")
    if len(path) > MAX_PATH_LENGTH:
        raise UnsafePath("path longer than 255 characters")
    if _ENCODED_SEPARATOR.search(path):
        raise UnsafePath("encoded separator or double encoding")
    try:
        decoded = unquote(path, errors="strict") if "%" in path else path
    except UnicodeDecodeError:
        raise UnsafePath("percent-encoding is not UTF-8") from None
    if not decoded:
        raise UnsafePath("empty path")
    if len(decoded) > MAX_PATH_LENGTH:
        raise UnsafePath("path longer than 255 characters")
    if "\\" in decoded:
        raise UnsafePath("backslash")
    if _CONTROL.search(decoded):
        raise UnsafePath("control character")
    if decoded.startswith("/"):
        raise UnsafePath("absolute path")
    if _DRIVE.match(decoded):
        raise UnsafePath("drive letter")
    for segment in decoded.split("/"):
        if not segment:
            raise UnsafePath("empty segment")
        if segment[0] == ".":
            # covers ".", ".." and hidden files
            raise UnsafePath("dot segment or hidden file")
    return decoded


#: media type of an ``EXT-X-KEY`` key file (``.key``; RFC 8216 §5.1: 16 octets for AES-128)
KEY_MEDIA_TYPE = "application/octet-stream"

_CONTENT_TYPES = {
    "m3u8": "application/vnd.apple.mpegurl",
    "m3u": "application/vnd.apple.mpegurl",
    "ts": "video/mp2t",
    "mp4": "video/mp4",
    "m4s": "video/mp4",
    "aac": "audio/aac",
    "vtt": "text/vtt",
    "key": KEY_MEDIA_TYPE,
}


def content_type_for(path: str) -> str | None:
    """Media type for an HLS file by extension (case-insensitive), or ``None``.

    ``.m3u8``/``.m3u`` → ``application/vnd.apple.mpegurl`` (RFC 8216 §4),
    ``.ts`` → ``video/mp2t``, ``.mp4``/``.m4s`` → ``video/mp4``,
    ``.aac`` → ``audio/aac``, ``.vtt`` → ``text/vtt``, ``.key`` (an ``EXT-X-KEY``
    key, RFC 8216 §4.3.2.4) → :data:`KEY_MEDIA_TYPE`. Only the last path
    segment is looked at; a query or fragment is not expected in *path*.
    """
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    if dot <= 0:
        return None
    return _CONTENT_TYPES.get(name[dot + 1 :].lower())
