"""Low-Latency HLS at the gateway: delivery directives and where a playlist's live edge is
(RFC 8216bis-16 §6.2.5, §4.4.3.7–4.4.5.3). Pure: no I/O, no clock (times are arguments).

The gateway shares one upstream blocking playlist request among every viewer waiting on
the same ``(camera, _HLS_msn, _HLS_part)`` (a *generation*), and answers a generation it
already holds from its newest playlist. This module decides, without sockets:

* :func:`parse_directives`: the directives of a request, checked and in one canonical
  spelling (so ``_HLS_part=3&_HLS_msn=0273`` and ``_HLS_msn=273&_HLS_part=3`` share one
  upstream request); malformed ones raise :class:`~gateway.errors.BadRequest` (→ 400)
  before any pod request;
* :func:`inspect_playlist`: what a playlist says about the live edge, its timing and its
  preload hints (:class:`PlaylistInfo`), once per upstream response;
* :meth:`PlaylistInfo.satisfies`: whether a held playlist already answers a generation
  (the pod would answer it at once with this playlist or a newer one);
* :meth:`PlaylistInfo.too_far`: a generation no pod can ever answer from the edge the
  gateway knows (→ 400, as the pod would, without asking it);
* :meth:`PlaylistInfo.reload_ttl` and :meth:`PlaylistInfo.hold`: how long a non-blocking
  reload may be shared (half a part target with parts, half the target duration
  otherwise) and how long a pod holds a blocking request (3 × target duration).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gateway.errors import BadRequest

__all__ = ["MAX_DIRECTIVE", "Directives", "PlaylistInfo", "advance_part_limit", "inspect_playlist",
           "parse_directives"]

MAX_DIRECTIVE = 10**18 - 1
"""Largest ``_HLS_msn``/``_HLS_part`` accepted (18 digits, below 2**63: what a pod parses)."""
MAX_HOLD_TARGET = 20.0
"""Target durations above this (s) are taken as this for hold times: a pod cannot make the
gateway hold a request for minutes by announcing a huge EXT-X-TARGETDURATION."""
_PREFIXES = ("_HLS_msn=", "_HLS_part=", "_HLS_skip=")
_DIGITS = re.compile(r"[0-9]{1,18}")
_TAG_VALUE = re.compile(r"^#EXT-X-(MEDIA-SEQUENCE|TARGETDURATION|SKIP|PART-INF|SERVER-CONTROL):([^\r\n]*)",
                        re.MULTILINE)
_ATTR_NUMBER = r"(?:^|,)\s*{name}\s*=\s*([0-9]+(?:\.[0-9]*)?)"
_YES = r"(?:^|,)\s*{name}\s*=\s*YES\s*(?:,|$)"


@dataclass(frozen=True, slots=True)
class Directives:
    """Delivery directives of one playlist request (RFC 8216bis §6.2.5): ``msn`` and ``part``
    (None when absent) and ``skip`` (``"YES"``, ``"v2"`` or None)."""

    msn: int | None
    part: int | None
    skip: str | None = None

    @property
    def blocking(self) -> bool:
        """A blocking reload (§6.2.5.2): ``_HLS_msn`` is given."""
        return self.msn is not None

    def query(self, *, with_skip: bool = False) -> str:
        """The canonical query for the pod: ``_HLS_msn=M[&_HLS_part=P][&_HLS_skip=S]``
        (``skip`` only ``with_skip``, i.e. when the pod advertised CAN-SKIP-UNTIL)."""
        out = []
        if self.msn is not None:
            out.append(f"_HLS_msn={self.msn}")
            if self.part is not None:
                out.append(f"_HLS_part={self.part}")
        if with_skip and self.skip is not None:
            out.append(f"_HLS_skip={self.skip}")
        return "&".join(out)


def _number(name: str, values: list[str]) -> int | None:
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name} given more than once")
    value = values[0]
    if not _DIGITS.fullmatch(value):
        raise BadRequest(f"{name} must be a decimal integer of at most 18 digits (RFC 8216bis 6.2.5.2)")
    return int(value)


def parse_directives(raw_query: str) -> tuple[Directives | None, str]:
    """Split LL-HLS delivery directives from the rest of a raw query string.

    Returns ``(directives or None, rest)``; ``rest`` keeps every other byte as it was.
    Raises :class:`BadRequest` (→ 400) for a directive given twice, a value that is not a
    decimal integer of 1–18 digits (signs, spaces, percent-encoding, ``0x…`` or an empty
    value included), ``_HLS_part`` without ``_HLS_msn`` (§6.2.5.2) or a ``_HLS_skip``
    other than ``YES``/``v2`` (§6.2.5.1).
    """
    if "_HLS_" not in raw_query:
        return None, raw_query
    found: dict[str, list[str]] = {p: [] for p in _PREFIXES}
    rest: list[str] = []
    for item in raw_query.split("&"):
        for prefix in _PREFIXES:
            if item.startswith(prefix):
                found[prefix].append(item[len(prefix):])
                break
        else:
            if item.startswith("_HLS_"):
                raise BadRequest("unknown or malformed LL-HLS delivery directive")
            rest.append(item)
    msn = _number("_HLS_msn", found["_HLS_msn="])
    part = _number("_HLS_part", found["_HLS_part="])
    skips = found["_HLS_skip="]
    if len(skips) > 1 or (skips and skips[0] not in ("YES", "v2")):
        raise BadRequest("_HLS_skip must be YES or v2, once (RFC 8216bis 6.2.5.1)")
    if part is not None and msn is None:
        raise BadRequest("_HLS_part needs _HLS_msn (RFC 8216bis 6.2.5.2)")
    return Directives(msn, part, skips[0] if skips else None), "&".join(rest)


def advance_part_limit(part_target: float) -> int:
    """RFC 8216bis §6.2.5.2 Advance Part Limit: 3 ÷ part target (s) below one second, else 3."""
    return max(3, math.ceil(3 / part_target)) if 0 < part_target < 1 else 3


@dataclass(frozen=True, slots=True)
class PlaylistInfo:
    """What one media playlist says about its stream.

    ``next_msn``: media sequence number of the segment after the last complete one (the
    one in progress), None for a playlist without segments (multivariant); ``next_part``:
    parts of ``next_msn`` listed; ``last_parts``: parts listed for the last complete segment
    (None: not listed); ``first_msn``: the first listed segment's number; ``target_duration``
    and ``part_target`` in seconds (None when absent); ``can_block``: CAN-BLOCK-RELOAD=YES;
    ``can_skip``: CAN-SKIP-UNTIL is given; ``hints``: decoded paths of EXT-X-PRELOAD-HINT URIs.
    """

    next_msn: int | None
    next_part: int
    last_parts: int | None
    first_msn: int
    target_duration: float | None
    part_target: float | None
    can_block: bool
    can_skip: bool
    hints: tuple[str, ...] = ()

    def satisfies(self, d: Directives) -> bool:
        """Whether this playlist answers the blocking reload ``d`` (§6.2.5.2: it holds segment
        ``d.msn`` — with ``d.part``, that part of it — or a later one). A part index past the
        last part of a complete segment means part 0 of the next one, as pods read it; when
        the part count is not listed the answer errs towards asking the pod."""
        if self.next_msn is None or d.msn is None:
            return False
        last = self.next_msn - 1
        if d.part is None:
            return d.msn <= last
        if d.msn < last:
            return True
        if d.msn == last:
            return (self.last_parts is not None and d.part < self.last_parts) or self.next_part > 0
        if d.msn == self.next_msn:
            return d.part < self.next_part
        return False

    def too_far(self, d: Directives, elapsed: float) -> bool:
        """Whether no pod can answer ``d`` (§6.2.5.2 "400 Bad Request"), judged from this
        playlist received ``elapsed`` seconds ago: ``_HLS_msn`` more than two segments past
        the last complete one, allowing one more segment per part target since then; or a
        ``_HLS_part`` beyond any segment's parts (target duration ÷ part target, plus one)
        plus the Advance Part Limit. Errs towards asking the pod."""
        if self.next_msn is None or d.msn is None:
            return False
        step = self.part_target or self.target_duration or 1.0
        if d.msn > self.next_msn + 1 + math.ceil(max(0.0, elapsed) / step) + 1:
            return True
        if d.part is not None and self.part_target and self.target_duration:
            per_segment = math.ceil(self.target_duration / self.part_target) + 1
            return d.part > per_segment + advance_part_limit(self.part_target)
        return False

    def reload_ttl(self) -> float:
        """Seconds a non-blocking reload of this playlist may be shared: half the part target
        when it has parts (RFC 8216bis §6.2.5.2 reload pacing), else half the target duration
        (RFC 8216 §6.3.4), at most 5 s; 1 s for a playlist without either (multivariant)."""
        if self.part_target:
            return max(0.01, self.part_target / 2)
        if self.target_duration:
            return max(0.1, min(self.target_duration / 2, 5.0))
        return 1.0

    def hold(self) -> float:
        """Seconds a pod may hold a blocking reload or a preload-hinted part: 3 × the target
        duration (§6.2.5.2), the target taken as at most :data:`MAX_HOLD_TARGET`."""
        return 3.0 * min(self.target_duration or 2.0, MAX_HOLD_TARGET)

    def newer_than(self, other: PlaylistInfo) -> bool:
        """Whether this playlist may replace ``other`` as the newest of its channel: its
        edge is not behind, or its window does not overlap (the pod's stream restarted)."""
        if self.next_msn is None or other.next_msn is None:
            return True
        if self.next_msn < other.first_msn or self.first_msn > other.next_msn:
            return True
        return (self.next_msn, self.next_part) >= (other.next_msn, other.next_part)


def _attr_number(payload: str, name: str) -> float | None:
    m = re.search(_ATTR_NUMBER.format(name=name), payload)
    return float(m.group(1)) if m else None


def inspect_playlist(text: str, hints: tuple[str, ...] = ()) -> PlaylistInfo:
    """Read :class:`PlaylistInfo` from a playlist already checked by
    :func:`gateway.playlist.compile_playlist` (which also gives ``hints``).

    Media segments are the URI lines (RFC 8216 §4.3.2); parts (EXT-X-PART) before a segment's
    URI belong to it, those after the last URI to the segment in progress; EXT-X-SKIP's
    SKIPPED-SEGMENTS count as segments (§4.4.5.2). Never raises: unreadable numbers count as
    absent.
    """
    first = 0
    td = pt = None
    can_block = can_skip = False
    for name, payload in _TAG_VALUE.findall(text):
        if name == "MEDIA-SEQUENCE":
            value = payload.strip()
            first = int(value) if _DIGITS.fullmatch(value) else 0
        elif name == "TARGETDURATION" and td is None:
            try:
                td = float(payload.strip()) or None
            except ValueError:
                td = None
        elif name == "PART-INF":
            pt = _attr_number(payload, "PART-TARGET") or None
        elif name == "SERVER-CONTROL":
            can_block = re.search(_YES.format(name="CAN-BLOCK-RELOAD"), payload) is not None
            can_skip = _attr_number(payload, "CAN-SKIP-UNTIL") is not None
    segments = 0
    parts = 0
    last_parts: int | None = None
    multivariant = False
    for line in text.split("\n"):
        if not line or line == "\r":
            continue
        if line[0] == "#":
            if line.startswith("#EXT-X-PART:"):
                parts += 1
            elif line.startswith("#EXT-X-SKIP:"):
                skipped = _attr_number(line[12:], "SKIPPED-SEGMENTS")
                segments += int(skipped or 0)
            elif line.startswith(("#EXT-X-STREAM-INF", "#EXT-X-I-FRAME-STREAM-INF")):
                multivariant = True
            continue
        if line.strip():
            segments += 1
            last_parts = parts or None
            parts = 0
    next_msn = None if multivariant or (segments == 0 and parts == 0) else first + segments
    return PlaylistInfo(next_msn, parts, last_parts, first, td, pt, can_block, can_skip, hints)
