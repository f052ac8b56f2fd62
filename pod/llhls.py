"""Low-Latency HLS packaging of one camera's fMP4 fragments (pure: no I/O, no clock).

:class:`Packager` takes the init section and the movie fragments (one per frame, from
:mod:`pod.fmp4`) with the wall-clock time each arrived at the pod, and groups them into

* **partial segments** ("parts", RFC 8216bis-16 §4.4.4.9 EXT-X-PART) of at most the part
  target: a part is closed as soon as the next frame would not fit, and a keyframe
  always starts a new part, which is then ``INDEPENDENT=YES``. Parts are never shorter
  than one frame;
* **media segments** (RFC 8216 §3): a segment ends at the first keyframe once it holds
  ``segment_seconds``; a camera whose keyframes are further apart makes longer segments
  (the target duration is fixed from the first segment of a run). A segment that would
  outgrow the target duration is cut at a part boundary even without a keyframe
  (RFC 8216 §4.3.3.1: EXTINF rounded must not exceed EXT-X-TARGETDURATION); such a segment
  is not independent and the playlist then drops EXT-X-INDEPENDENT-SEGMENTS.

Program date-time (RFC 8216 §4.3.2.6): the media time line is placed on the wall clock by
``offset = min(arrival - media end time)`` over the recent fragments, i.e. the frames'
arrival at the pod with the queueing jitter taken out; a segment's PDT is its media
start + offset.

:meth:`Packager.playlist` renders the media playlist, with (``low_latency``) or without
the LL-HLS tags: EXT-X-SERVER-CONTROL ``CAN-BLOCK-RELOAD=YES`` and ``PART-HOLD-BACK`` =
3 × part target (§4.4.3.8: at least twice; three times is Apple's recommendation),
EXT-X-PART-INF (§4.4.3.7), EXT-X-PART for the last :attr:`Packager.part_segments`
segments and the one in progress, and EXT-X-PRELOAD-HINT (§4.4.5.3) for the next part.
Without ``low_latency`` only complete segments are listed (classic HLS, RFC 8216).

:meth:`Packager.reload_state` decides a blocking playlist reload (§6.2.5.2).

Memory: parts are kept for :attr:`Packager.keep_part_segments` complete segments and at
most ``max_part_bytes`` bytes; complete segments are handed out (:class:`SegmentDone`)
for the caller to write to disk and are not kept here.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pod.fmp4 import Fragment

__all__ = ["Packager", "Part", "PlaylistState", "ReloadState", "SegmentDone", "Timing", "advance_part_limit",
           "effective_timing", "expected_latency", "part_name", "segment_name"]


def segment_name(msn: int) -> str:
    """File name of media segment ``msn`` (its media sequence number)."""
    return f"seg_{msn}.m4s"


def part_name(msn: int, index: int) -> str:
    """URI of part ``index`` (0-based) of segment ``msn``."""
    return f"part_{msn}_{index}.m4s"


def advance_part_limit(part_target: float) -> int:
    """The Advance Part Limit of RFC 8216bis §6.2.5.2: ``3 / part target`` parts when the
    part target is under one second, else 3."""
    return max(3, math.floor(3 / part_target)) if part_target < 1 else 3


def expected_latency(low_latency: bool, part_target: float, target_duration: float, segment: float) -> float:
    """Rough pod-ingest-to-screen latency (s) a player settles at: LL-HLS (hls.js
    ``lowLatencyMode``) plays PART-HOLD-BACK (3 parts) behind the newest part, which is
    itself half a part old on average; classic HLS plays 3 target durations behind the end
    of the newest complete segment, half a segment old on average."""
    if low_latency:
        return 3 * part_target + part_target / 2
    return 3 * target_duration + segment / 2


@dataclass(frozen=True)
class Timing:
    """What a camera's frame rate and keyframe interval make of the configured durations
    (seconds): ``part_target`` (whole frames, at least one), ``segment`` (a whole number of
    keyframe intervals, at least ``hls_segment_seconds``), ``target_duration`` (integer) and
    ``expected_latency`` (see :func:`expected_latency`)."""

    part_target: float
    segment: float
    target_duration: int
    expected_latency: float


def effective_timing(*, part_seconds: float, segment_seconds: float, frame_interval: float,
                     keyframe_interval: float, low_latency: bool) -> Timing:
    """The durations :class:`Packager` will produce for a camera (pure; same rules): parts
    are whole frames, at least one; a segment ends at the first keyframe once it holds
    ``segment_seconds`` (less half a frame). Raises ``ValueError`` for intervals <= 0."""
    if frame_interval <= 0 or keyframe_interval <= 0:
        raise ValueError("frame and keyframe intervals must be > 0")
    part = max(frame_interval, math.floor(part_seconds / frame_interval + 1e-6) * frame_interval)
    n = max(1, math.ceil((segment_seconds - frame_interval / 2) / keyframe_interval - 1e-6))
    segment = n * keyframe_interval
    td = max(1, math.ceil(segment_seconds - 1e-6), math.floor(segment + 0.5))
    return Timing(part, segment, td, expected_latency(low_latency, part, td, segment))


def _pdt(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Part:
    """One partial segment. ``chunks``: its fragments' bytes so far (a part in progress
    grows); ``duration``: seconds; ``independent``: starts with a keyframe; ``complete``:
    closed (no more bytes will come)."""

    msn: int
    index: int
    chunks: list[bytes] = field(default_factory=list)
    duration: float = 0.0
    independent: bool = False
    complete: bool = False

    @property
    def name(self) -> str:
        """Its URI (see :func:`part_name`)."""
        return part_name(self.msn, self.index)

    @property
    def size(self) -> int:
        """Bytes so far."""
        return sum(len(c) for c in self.chunks)

    def data(self) -> bytes:
        """All bytes so far (moof+mdat pairs)."""
        return b"".join(self.chunks)


@dataclass
class _Segment:
    msn: int
    media_start: float
    parts: list[Part] = field(default_factory=list)
    duration: float = 0.0
    pdt: float = 0.0
    independent: bool = False
    size: int = 0


@dataclass(frozen=True)
class SegmentDone:
    """A completed media segment: ``msn``; ``name`` (file name); ``data`` (its bytes:
    the parts' moof+mdat pairs in order, to be preceded by the init section);
    ``duration`` (s); ``pdt`` (Unix s of its first frame); ``independent`` (starts with a
    keyframe); ``parts`` (how many)."""

    msn: int
    name: str
    data: bytes
    duration: float
    pdt: float
    independent: bool
    parts: int


@dataclass(frozen=True)
class _Listed:
    msn: int
    duration: float
    pdt: float
    independent: bool
    parts: tuple[tuple[str, float, bool], ...]


ReloadState = Literal["ready", "wait", "too_far"]


@dataclass(frozen=True)
class PlaylistState:
    """Where the live edge is: ``next_msn`` (the segment in progress), ``next_part`` (parts
    of it completed so far), ``last_msn`` (newest complete segment, -1 before the first)."""

    next_msn: int
    next_part: int
    last_msn: int


class Packager:
    """Groups one run's fMP4 fragments into LL-HLS parts and segments (see the module doc).

    ``first_msn``: media sequence number of the run's first segment (the pod uses the
    run's start in Unix seconds, so numbers never repeat across restarts);
    ``init_name``: the EXT-X-MAP URI; ``part_target``: wanted part duration (s, > 0);
    ``segment_seconds``: minimum segment duration before a keyframe ends it (s);
    ``list_size``: complete segments in the playlist; ``part_segments``: complete segments
    whose parts are still listed; ``keep_part_segments``: complete segments whose parts
    stay in memory (>= ``part_segments``); ``max_part_bytes``: bound of those bytes;
    ``pdt_window``: fragments over which the wall-clock offset is taken.
    Raises ``ValueError`` for out-of-range arguments."""

    def __init__(self, *, first_msn: int, init_name: str, part_target: float, segment_seconds: float,
                 list_size: int = 6, part_segments: int = 2, keep_part_segments: int = 4,
                 max_part_bytes: int = 32 * 1024 * 1024, pdt_window: int = 300) -> None:
        if part_target <= 0 or segment_seconds <= 0 or list_size < 1 or keep_part_segments < part_segments:
            raise ValueError("part_target and segment_seconds must be > 0, list_size >= 1, "
                             "keep_part_segments >= part_segments")
        self.first_msn = first_msn
        self.init_name = init_name
        self.part_target_wanted = part_target
        self.segment_seconds = segment_seconds
        self.list_size = list_size
        self.part_segments = part_segments
        self.keep_part_segments = keep_part_segments
        self.max_part_bytes = max_part_bytes
        self.init: bytes | None = None
        self.frame_duration: float | None = None
        """Median recent frame interval (s), once fragments arrived."""
        self.target_duration: int | None = None
        """EXT-X-TARGETDURATION (s), fixed when the first segment completes."""
        self.part_target: float | None = None
        """Advertised PART-TARGET (s): the wanted target rounded down to whole frames,
        never less than one frame; fixed when the first segment completes."""
        self.generation = 0
        """Bumped on every change (new bytes, part or segment): waiters compare it."""
        self.forced_splits = 0
        self.max_part_seen = 0.0
        self.last_arrival: float | None = None
        self.ingest_lag = 0.0
        """How much later than the earliest-arriving frames the newest frame arrived (s): a pod
        or network that falls behind (CPU load) shows here."""
        self._offsets: collections.deque[float] = collections.deque(maxlen=pdt_window)
        self._durations: collections.deque[float] = collections.deque(maxlen=31)
        self._listed: collections.deque[_Listed] = collections.deque(maxlen=list_size)
        self._parts: dict[tuple[int, int], Part] = {}
        self._part_order: collections.deque[Part] = collections.deque()
        self._part_bytes = 0
        self._cur: _Segment | None = None
        self._part: Part | None = None
        self._closed_parts: dict[int, int] = {}  # msn -> part count, for complete segments still known

    # ------------------------------------------------------------------ input

    def set_init(self, data: bytes) -> None:
        """The init section (``ftyp`` + ``moov``) of this run."""
        self.init = data
        self.generation += 1

    def _offset(self) -> float:
        return min(self._offsets) if self._offsets else 0.0

    def _frame(self) -> float:
        if self.frame_duration:
            return self.frame_duration
        return min(self.part_target_wanted, 0.04)

    def add_fragment(self, frag: Fragment, arrival: float) -> list[SegmentDone]:
        """Add one fragment that arrived at ``arrival`` (Unix s). Returns the segments it
        completed (0 or 1)."""
        done: list[SegmentDone] = []
        self.last_arrival = arrival
        if frag.duration > 0:
            self._offsets.append(arrival - frag.end_time)
            self.ingest_lag = arrival - frag.end_time - self._offset()
            self._durations.append(frag.duration)
            self.frame_duration = sorted(self._durations)[len(self._durations) // 2]
        seg = self._cur
        if seg is not None and seg.parts:
            cut = False
            if frag.keyframe and seg.duration >= self.segment_seconds - self._frame() / 2:
                cut = True
            elif self.target_duration is not None and seg.duration + frag.duration > self.target_duration + 0.49:
                cut = True  # never let a segment outgrow the target duration (RFC 8216 §4.3.3.1)
                self.forced_splits += 1
            if cut:
                done.append(self._close_segment())
                seg = None
        if seg is None:
            seg = self._cur = _Segment(msn=self._next_msn(), media_start=frag.decode_time, independent=frag.keyframe)
        part = self._part
        if part is not None and frag.keyframe and part.chunks:
            self._close_part()
            part = None
        if part is None:
            part = self._part = Part(msn=seg.msn, index=len(seg.parts), independent=frag.keyframe)
            seg.parts.append(part)
            self._parts[(seg.msn, part.index)] = part
            self._part_order.append(part)
        part.chunks.append(frag.data)
        part.duration += frag.duration
        seg.duration += frag.duration
        seg.size += len(frag.data)
        self._part_bytes += len(frag.data)
        limit = self.part_target if self.part_target is not None else self.part_target_wanted
        if part.duration + self._frame() > limit + self._frame() * 0.25:
            self._close_part()
        self.generation += 1
        self._evict()
        return done

    def _next_msn(self) -> int:
        if self._cur is not None:
            return self._cur.msn + 1
        if self._listed:
            return self._listed[-1].msn + 1
        return self.first_msn

    def _close_part(self) -> None:
        part = self._part
        if part is None:
            return
        part.complete = True
        self.max_part_seen = max(self.max_part_seen, part.duration)
        self._part = None

    def _close_segment(self) -> SegmentDone:
        seg = self._cur
        assert seg is not None
        self._close_part()
        seg.pdt = seg.media_start + self._offset()
        if self.target_duration is None:
            # EXTINF rounded to the nearest integer must not exceed it (RFC 8216 §4.3.3.1)
            self.target_duration = max(1, math.ceil(self.segment_seconds - 1e-6), math.floor(seg.duration + 0.5))
            frame = self._frame()
            self.part_target = max(frame, math.floor(self.part_target_wanted / frame + 1e-6) * frame)
            self.part_target = max(self.part_target, self.max_part_seen)
        parts = tuple((p.name, p.duration, p.independent) for p in seg.parts)
        self._listed.append(_Listed(seg.msn, seg.duration, seg.pdt, seg.independent, parts))
        self._closed_parts[seg.msn] = len(seg.parts)
        data = b"".join(c for p in seg.parts for c in p.chunks)
        self._cur = None
        self.generation += 1
        return SegmentDone(msn=seg.msn, name=segment_name(seg.msn), data=data, duration=seg.duration, pdt=seg.pdt,
                           independent=seg.independent, parts=len(parts))

    def _evict(self) -> None:
        keep_from = (self._listed[-1].msn - self.keep_part_segments + 1) if self._listed else None
        while self._part_order:
            old = self._part_order[0]
            too_old = keep_from is not None and old.msn < keep_from
            too_big = self._part_bytes > self.max_part_bytes and old.complete and (
                self._cur is None or old.msn != self._cur.msn)
            if not (too_old or too_big):
                break
            self._part_order.popleft()
            self._parts.pop((old.msn, old.index), None)
            self._part_bytes -= old.size
        if keep_from is not None:
            for msn in [m for m in self._closed_parts if m < keep_from - self.list_size]:
                del self._closed_parts[msn]

    # ----------------------------------------------------------------- output

    @property
    def ready(self) -> bool:
        """True once the init section and one complete segment exist (a playlist can be served)."""
        return self.init is not None and bool(self._listed)

    def part(self, msn: int, index: int) -> Part | None:
        """Part ``index`` of segment ``msn`` if still in memory (complete or in progress)."""
        return self._parts.get((msn, index))

    def part_possible(self, msn: int, index: int) -> bool:
        """Whether part (``msn``, ``index``) can still appear: it is in memory, or it lies
        at or after the next part of the segment in progress (a preload-hint request)."""
        if (msn, index) in self._parts:
            return True
        st = self.state()
        return (msn, index) >= (st.next_msn, st.next_part) and msn <= st.next_msn + 1

    def state(self) -> PlaylistState:
        """The live edge (see :class:`PlaylistState`)."""
        last = self._listed[-1].msn if self._listed else -1
        if self._cur is not None:
            done = sum(1 for p in self._cur.parts if p.complete)
            return PlaylistState(self._cur.msn, done, last)
        return PlaylistState(last + 1 if last >= 0 else self.first_msn, 0, last)

    def reload_state(self, msn: int, part: int | None) -> ReloadState:
        """Blocking playlist reload decision (RFC 8216bis §6.2.5.2) for ``_HLS_msn=msn``
        and optional ``_HLS_part=part``:

        * ``ready``: the playlist already holds segment ``msn`` (complete; with ``part``:
          that part of it, or any later one — a part index past the last part of a
          complete segment means part 0 of the next segment);
        * ``too_far``: ``msn`` is more than two past the last complete segment, or ``part``
          exceeds the newest part by more than the Advance Part Limit → HTTP 400;
        * ``wait``: hold the request."""
        st = self.state()
        if msn > st.last_msn + 2:
            return "too_far"
        if part is None:
            return "ready" if msn <= st.last_msn else "wait"
        if msn < st.next_msn:
            count = self._closed_parts.get(msn)
            if count is not None and part >= count:
                msn, part = msn + 1, 0
                if msn == st.next_msn:
                    return "ready" if part < st.next_part else "wait"
            return "ready"
        limit = advance_part_limit(self.part_target or self.part_target_wanted)
        if msn == st.next_msn:
            if part < st.next_part:
                return "ready"
            return "too_far" if part > st.next_part - 1 + limit else "wait"
        # msn == next_msn + 1: a part of the segment after the one in progress
        return "too_far" if part > limit else "wait"

    def playlist(self, *, low_latency: bool) -> str:
        """The media playlist (RFC 8216 §4.3.3; LL-HLS tags of RFC 8216bis-16 when
        ``low_latency``). Call only when :attr:`ready`."""
        td = self.target_duration or max(1, math.ceil(self.segment_seconds))
        pt = self.part_target or self.part_target_wanted
        listed = list(self._listed)
        lines = ["#EXTM3U", f"#EXT-X-VERSION:{9 if low_latency else 7}", f"#EXT-X-TARGETDURATION:{td}"]
        if low_latency:
            lines += [f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * pt:.3f}",
                      f"#EXT-X-PART-INF:PART-TARGET={pt:.5f}"]
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{listed[0].msn if listed else self.first_msn}")
        if all(s.independent for s in listed) and (not low_latency or self._cur is None or self._cur.independent):
            lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
        lines.append(f'#EXT-X-MAP:URI="{self.init_name}"')
        with_parts = {s.msn for s in listed[-self.part_segments:]} if low_latency else set()
        for s in listed:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(s.pdt)}")
            if s.msn in with_parts:
                lines += [_part_line(name, d, ind) for name, d, ind in s.parts]
            lines += [f"#EXTINF:{s.duration:.5f},", segment_name(s.msn)]
        if low_latency:
            cur = self._cur
            if cur is not None and cur.parts and cur.parts[0].complete:
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(cur.media_start + self._offset())}")
                lines += [_part_line(p.name, p.duration, p.independent) for p in cur.parts if p.complete]
            st = self.state()
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part_name(st.next_msn, st.next_part)}"')
        return "\n".join(lines) + "\n"


def _part_line(name: str, duration: float, independent: bool) -> str:
    return f'#EXT-X-PART:DURATION={duration:.5f},URI="{name}"' + (",INDEPENDENT=YES" if independent else "")
