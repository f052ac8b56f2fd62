"""HLS media playlists → a time index of the segments on disk (pure, no I/O).

The streamer's ffmpeg writes an RFC 8216 media playlist with an
``EXT-X-PROGRAM-DATE-TIME`` (PDT) for every segment. :func:`parse_media_playlist`
turns it into :class:`SegmentInfo` s placed on the Unix time line; a
:class:`SegmentIndex` remembers segments after they leave the live window (the
streamer keeps ``hls_keep_extra_segments`` of them on disk for pre-roll) and
:meth:`SegmentIndex.select` picks the contiguous run that covers a clip window.

Sources:

* RFC 8216 §4.3.2.1 ``EXTINF:<duration>,[<title>]`` — the segment's duration in
  seconds; applies to the next URI line.
* RFC 8216 §4.3.2.5 ``EXT-X-MAP:URI="…"`` — the init section (fMP4, ISO/IEC
  14496-12 ``ftyp``+``moov``) for every following segment until the next MAP.
* RFC 8216 §4.3.2.6 ``EXT-X-PROGRAM-DATE-TIME:<ISO 8601 date-time>`` — the
  wall-clock time of the segment's first sample; applies to the next URI line.
  Segments without one follow on from the previous segment (start + duration).
* RFC 8216 §4.3.3.2 ``EXT-X-MEDIA-SEQUENCE`` — sequence number of the first
  segment (default 0); each following URI adds one.

ffmpeg (5.1, ``-hls_flags program_date_time``) writes the PDT *after* EXTINF and
with a ``+0000`` offset; both orders and the ``Z``/``+00:00``/``+0000`` offset
forms are accepted here. Note that ffmpeg's PDTs are "muxer start wall time +
sum of the previous EXTINFs", not the capture time of the samples: the muxer
starts after input probing, while the packets read during probing go into the
first segment (which is therefore longer than ``hls_time``). Measured with the
dev RTSP camera: every PDT is ~1.7 s later than the real capture time (a
segment's file appears ~1.7 s before its PDT end), so a clip selected by PDT
holds that much more pre-roll and less post-roll.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import msgspec

__all__ = ["SegmentIndex", "SegmentInfo", "Selection", "parse_media_playlist", "parse_program_date_time"]


class SegmentInfo(msgspec.Struct, frozen=True):
    """One media segment.

    ``name``: the URI line as written (for the streamer a file name such as
    ``seg_1796005449.m4s``); ``start``: Unix seconds of its first sample (from the
    PDT, RFC 8216 §4.3.2.6); ``duration``: seconds (EXTINF, §4.3.2.1); ``init``:
    URI of the EXT-X-MAP in force (§4.3.2.5), ``None`` for MPEG-TS; ``sequence``:
    its media sequence number (§4.3.3.2).
    """

    name: str
    start: float
    duration: float
    init: str | None
    sequence: int

    @property
    def end(self) -> float:
        """Unix seconds just after its last sample (``start + duration``)."""
        return self.start + self.duration


class Selection(msgspec.Struct, frozen=True):
    """The segments chosen for a clip window ``[window_start, window_end]`` (Unix s).

    ``segments``: a contiguous run (consecutive sequence numbers, one init) in
    playback order, empty when nothing overlaps the window; ``covered_start`` /
    ``covered_end``: the run's time span (both ``window_start`` when empty);
    ``preroll_missing_s`` = ``max(0, covered_start - window_start)``;
    ``postroll_missing_s`` = ``max(0, window_end - covered_end)``; ``event``: the
    time the clip is about (the plate read), if given to :meth:`SegmentIndex.select`.
    """

    segments: list[SegmentInfo]
    covered_start: float
    covered_end: float
    preroll_missing_s: float
    postroll_missing_s: float = 0.0
    window_start: float | None = None
    window_end: float | None = None
    event: float | None = None


# ------------------------------------------------------------------ parsing

_PDT = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"\s*(?:(Z|z)|([+-])(\d{2})(?::?(\d{2}))?)?$"
)
_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def parse_program_date_time(value: str) -> float | None:
    """Unix seconds of an ISO 8601 date-time as used by EXT-X-PROGRAM-DATE-TIME
    (RFC 8216 §4.3.2.6), e.g. ``2026-11-30T02:24:09.258+0000``. Offsets ``Z``,
    ``±hh:mm``, ``±hhmm`` and ``±hh``; no offset is read as UTC. Returns ``None``
    for anything else (never raises)."""
    m = _PDT.match(value.strip())
    if not m:
        return None
    try:
        y, mo, d, h, mi, s = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
        frac = float("0." + m.group(7)) if m.group(7) else 0.0
        offset = 0
        if m.group(9):
            offset = int(m.group(10)) * 3600 + int(m.group(11) or 0) * 60
            if offset >= 24 * 3600:
                return None
            offset = -offset if m.group(9) == "-" else offset
        leap = 1 if s == 60 else 0  # 23:59:60 leap second → the next second
        dt = datetime(y, mo, d, h, mi, s - leap, tzinfo=UTC) + timedelta(seconds=leap)
        ts = dt.timestamp() + frac - offset
    except (ValueError, OverflowError, OSError):
        return None
    return ts if math.isfinite(ts) else None


def _attr_uri(attrs: str) -> str | None:
    for key, raw in _ATTR.findall(attrs):
        if key == "URI":
            val = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
            return val or None
    return None


def _duration(value: str) -> float | None:
    try:
        d = float(value.split(",", 1)[0].strip())
    except ValueError:
        return None
    return d if math.isfinite(d) and d >= 0 else None


def parse_media_playlist(text: str) -> list[SegmentInfo]:
    """Segments of an HLS media playlist, in playlist order, placed in time.

    ``start`` comes from the segment's EXT-X-PROGRAM-DATE-TIME (before or after its
    EXTINF); a segment without one starts where the previous one ended; segments
    before the first PDT are placed backwards from it. Segments that cannot be
    placed (no PDT anywhere, or a broken chain) or have no usable duration (no
    valid EXTINF and no EXT-X-TARGETDURATION), and EXT-X-BYTERANGE sub-ranges, are
    left out (their sequence numbers still count). Never raises: garbage yields
    what could be read, often ``[]``.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    if not isinstance(text, str):
        return []
    out: list[SegmentInfo] = []
    unplaced: list[tuple[str, float, str | None, int]] = []  # waiting for a later PDT
    seq = 0
    seen_uri = False
    init: str | None = None
    target: float | None = None
    dur: float | None = None
    pdt: float | None = None
    byterange = False
    next_start: float | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            tag, _, value = line.partition(":")
            if tag == "#EXTINF":
                dur = _duration(value)
            elif tag == "#EXT-X-PROGRAM-DATE-TIME":
                pdt = parse_program_date_time(value)
            elif tag == "#EXT-X-MAP":
                init = _attr_uri(value)
            elif tag == "#EXT-X-BYTERANGE":
                byterange = True
            elif tag == "#EXT-X-MEDIA-SEQUENCE" and not seen_uri:
                try:
                    seq = int(value.strip())
                except ValueError:
                    pass
            elif tag == "#EXT-X-TARGETDURATION":
                target = _duration(value)
            continue
        # a URI line: the media segment the pending tags apply to
        seen_uri = True
        d = dur if dur is not None else target
        if d is None or byterange:
            next_start = None  # cannot place what follows without a PDT
            unplaced.clear()
        elif pdt is not None:
            if unplaced:  # place earlier segments backwards from this PDT
                t = pdt
                back = []
                for name, ud, uinit, useq in reversed(unplaced):
                    t -= ud
                    back.append(SegmentInfo(name=name, start=t, duration=ud, init=uinit, sequence=useq))
                out.extend(reversed(back))
                unplaced.clear()
            out.append(SegmentInfo(name=line, start=pdt, duration=d, init=init, sequence=seq))
            next_start = pdt + d
        elif next_start is not None:
            out.append(SegmentInfo(name=line, start=next_start, duration=d, init=init, sequence=seq))
            next_start += d
        else:
            unplaced.append((line, d, init, seq))
        seq += 1
        dur, pdt, byterange = None, None, False
    return [s for s in out if math.isfinite(s.start) and math.isfinite(s.end)]


# -------------------------------------------------------------------- index


def contiguous(a: SegmentInfo, b: SegmentInfo) -> bool:
    """True when ``b`` directly follows ``a`` in one ffmpeg run: same init, next
    sequence number, and no time gap or overlap beyond ``max(1 s, a.duration)``."""
    return (
        a.init == b.init
        and b.sequence == a.sequence + 1
        and abs(b.start - a.end) <= max(1.0, a.duration)
    )


def split_runs(segments: Iterable[SegmentInfo]) -> list[list[SegmentInfo]]:
    """Split segments (in playback order) into maximal :func:`contiguous` runs."""
    runs: list[list[SegmentInfo]] = []
    for s in segments:
        if runs and contiguous(runs[-1][-1], s):
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


class SegmentIndex:
    """Segments seen in a camera's playlists, kept after they leave the live window.

    Keyed by segment name (the streamer never reuses one). At most
    ``max_entries`` are kept; the oldest (by start) go first. Not thread-safe:
    use it from the event loop. Raises ``ValueError`` for ``max_entries < 1``.
    """

    def __init__(self, max_entries: int = 2000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._by_name: dict[str, SegmentInfo] = {}
        self._latest: float | None = None

    def __len__(self) -> int:
        return len(self._by_name)

    def segments(self) -> list[SegmentInfo]:
        """All remembered segments in playback order (start, then sequence)."""
        return sorted(self._by_name.values(), key=lambda s: (s.start, s.sequence))

    def update(self, segments: Iterable[SegmentInfo]) -> None:
        """Add or refresh segments (idempotent); entries not in ``segments`` are kept."""
        for s in segments:
            self._by_name[s.name] = s
            if self._latest is None or s.end > self._latest:
                self._latest = s.end
        if len(self._by_name) > self.max_entries:
            keep = self.segments()[-self.max_entries:]
            self._by_name = {s.name: s for s in keep}
            self._recompute_latest()

    def forget_missing(self, existing_names: set[str]) -> int:
        """Drop entries whose name is not in ``existing_names`` (e.g. the files left in
        the camera's HLS directory). Returns how many were dropped."""
        gone = [n for n in self._by_name if n not in existing_names]
        for n in gone:
            del self._by_name[n]
        if gone:
            self._recompute_latest()
        return len(gone)

    def latest_end(self) -> float | None:
        """Largest ``start + duration`` (Unix s) of any remembered segment, or ``None``."""
        return self._latest

    def _recompute_latest(self) -> None:
        self._latest = max((s.end for s in self._by_name.values()), default=None)

    def select(self, start: float, end: float, *, event: float | None = None) -> Selection:
        """The contiguous run of segments (one init, consecutive sequence numbers)
        overlapping ``[start, end]`` (Unix s).

        When several runs overlap (an ffmpeg restart inside the window): the run
        containing ``event`` (Unix s), else the run nearest to it (the later one on
        a tie); without ``event`` the run with the largest overlap (the later on a
        tie). Segments are whole (a ``-c copy`` clip can only cut at segment
        boundaries), so a boundary segment is kept only when at least half of it
        lies inside the window (and always when it holds ``event``): the clip then
        differs from the window by at most half a segment at each end, one segment
        in all.
        """
        hits = [s for s in self.segments() if s.end > start and s.start < end]
        if not hits:
            return Selection(segments=[], covered_start=start, covered_end=start,
                             preroll_missing_s=max(0.0, end - start), postroll_missing_s=max(0.0, end - start),
                             window_start=start, window_end=end, event=event)
        runs = split_runs(hits)

        def score(run: list[SegmentInfo]) -> float:
            a, b = run[0].start, run[-1].end
            if event is None:
                return min(b, end) - max(a, start)
            return -(0.0 if a <= event <= b else min(abs(event - a), abs(event - b)))

        best = runs[0]
        for run in runs[1:]:
            if score(run) >= score(best):  # ties go to the later run
                best = run
        best = list(best)
        # what the buffer could not provide (before trimming to the nearest boundaries)
        pre_missing, post_missing = max(0.0, best[0].start - start), max(0.0, end - best[-1].end)

        def mostly_outside(seg: SegmentInfo) -> bool:
            inside = min(seg.end, end) - max(seg.start, start)
            holds_event = event is not None and seg.start <= event < seg.end
            return inside < seg.duration / 2 and not holds_event

        while len(best) > 1 and mostly_outside(best[0]):
            best.pop(0)
        while len(best) > 1 and mostly_outside(best[-1]):
            best.pop()
        cs, ce = best[0].start, best[-1].end
        return Selection(segments=best, covered_start=cs, covered_end=ce,
                         preroll_missing_s=pre_missing, postroll_missing_s=post_missing,
                         window_start=start, window_end=end, event=event)
