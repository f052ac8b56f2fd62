"""Fragmented MP4 (ISO/IEC 14496-12, ISOBMFF) read from a byte stream (pure, no I/O).

The pod's ffmpeg writes one fragmented MP4 to a pipe (``-f mp4 -movflags
empty_moov+default_base_moof+frag_every_frame``): an init section (``ftyp`` + ``moov``,
what RFC 8216 §4.3.2.5 EXT-X-MAP points at) and then one ``moof`` + ``mdat`` pair per
video frame. This module

* splits the stream into top-level boxes (:class:`BoxSplitter`, incremental: bytes can
  arrive in any chunking);
* reads the init section (:func:`parse_init`: track id, timescale from ``mdhd``, the
  ``trex`` sample defaults);
* reads each movie fragment (:func:`parse_fragment`: ``tfdt`` base media decode time,
  the summed ``trun`` sample durations, and whether the first sample is a sync sample —
  a keyframe — from the ``trun`` first-sample/sample flags, else ``tfhd`` default flags,
  else ``trex`` defaults).

Box layout (ISO/IEC 14496-12:2015): header ``size:u32 type:4cc`` (``size == 1``: a
``u64`` largesize follows; ``size == 0``: the box runs to the end of the file — not
allowed on a live pipe and rejected here). Full boxes add ``version:u8 flags:u24``.
Sample flags (§8.8.3.1): bit 16 (``0x00010000``) is ``sample_is_non_sync_sample``.

Errors: :class:`pod.errors.Fmp4Error` for anything malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pod.errors import Fmp4Error

__all__ = [
    "NON_SYNC", "Box", "BoxSplitter", "Fragment", "InitInfo", "iter_boxes", "parse_fragment", "parse_init",
]

NON_SYNC = 0x00010000
"""``sample_is_non_sync_sample`` in ISO/IEC 14496-12 §8.8.3.1 sample flags."""
MAX_BOX = 64 * 1024 * 1024
"""Largest top-level box accepted from the pipe (bytes); a 4K I-frame is a few MB."""

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf", b"edts", b"dinf"}


@dataclass(frozen=True)
class Box:
    """A complete top-level box: ``type`` (4 bytes, e.g. ``b"moof"``) and ``data`` (the
    whole box, header included)."""

    type: bytes
    data: bytes


def _header(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[bytes, int, int] | None:
    """(type, header length, box size) at ``pos``, or None when the header is incomplete."""
    if end - pos < 8:
        return None
    size, typ = struct.unpack_from(">I4s", buf, pos)
    hdr = 8
    if size == 1:
        if end - pos < 16:
            return None
        (size,) = struct.unpack_from(">Q", buf, pos + 8)
        hdr = 16
    elif size == 0:
        raise Fmp4Error(f"box {typ!r} with size 0 (to end of file) on a live stream")
    if size < hdr:
        raise Fmp4Error(f"box {typ!r} declares {size} bytes, less than its header")
    return bytes(typ), hdr, size


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int, int]]:
    """The boxes directly inside ``data[start:end]`` as ``(type, box start, payload start,
    box end)``. Raises :class:`Fmp4Error` when a box runs past ``end``."""
    end = len(data) if end is None else end
    out = []
    pos = start
    while pos < end:
        h = _header(data, pos, end)
        if h is None:
            raise Fmp4Error(f"truncated box header at byte {pos}")
        typ, hdr, size = h
        if pos + size > end:
            raise Fmp4Error(f"box {typ!r} at byte {pos} runs past its parent ({size} bytes)")
        out.append((typ, pos, pos + hdr, pos + size))
        pos += size
    return out


class BoxSplitter:
    """Incremental splitter of a byte stream into top-level boxes.

    ``feed(chunk)`` returns the boxes completed by ``chunk`` (in order); bytes of an
    unfinished box are kept (at most :data:`MAX_BOX`). Raises :class:`Fmp4Error` for a
    malformed header or an oversized box; the splitter is then unusable."""

    def __init__(self, max_box: int = MAX_BOX) -> None:
        self._buf = bytearray()
        self.max_box = max_box
        self.total = 0
        """Bytes fed so far."""

    @property
    def pending(self) -> int:
        """Bytes held for a box not yet complete."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[Box]:
        """Add ``chunk``; return the boxes it completed."""
        self.total += len(chunk)
        self._buf += chunk
        out: list[Box] = []
        pos = 0
        buf = self._buf
        while True:
            h = _header(buf, pos, len(buf))
            if h is None:
                break
            typ, _hdr, size = h
            if size > self.max_box:
                raise Fmp4Error(f"box {typ!r} of {size} bytes is larger than {self.max_box}")
            if len(buf) - pos < size:
                break
            out.append(Box(typ, bytes(buf[pos:pos + size])))
            pos += size
        if pos:
            del self._buf[:pos]
        return out


@dataclass(frozen=True)
class InitInfo:
    """What the init section says about the (first video, else first) track:
    ``track_id``; ``timescale`` (ticks per second, ``mdhd``); ``handler`` (``vide``,
    ``soun``, ...); ``codec`` (the first sample entry's 4cc, e.g. ``avc1``);
    ``default_duration`` / ``default_flags``: the ``trex`` defaults (ticks / sample flags)."""

    track_id: int
    timescale: int
    handler: str
    codec: str
    default_duration: int = 0
    default_flags: int = 0


def _children(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    out: dict[bytes, tuple[int, int]] = {}
    for typ, _b, p, e in iter_boxes(data, start, end):
        out.setdefault(typ, (p, e))
    return out


def parse_init(data: bytes) -> InitInfo:
    """Read an init section (``ftyp`` + ``moov``, or just ``moov``).

    Raises :class:`Fmp4Error` when there is no ``moov``, no track, or a box is cut."""
    moov = next(((p, e) for t, _b, p, e in iter_boxes(data) if t == b"moov"), None)
    if moov is None:
        raise Fmp4Error("init section without a moov box")
    tracks: list[InitInfo] = []
    trex: dict[int, tuple[int, int]] = {}
    for typ, _b, p, e in iter_boxes(data, *moov):
        if typ == b"mvex":
            for t2, _b2, p2, e2 in iter_boxes(data, p, e):
                if t2 == b"trex" and e2 - p2 >= 24:
                    _vf, tid, _sdi, dur, _size, flags = struct.unpack_from(">IIIIII", data, p2)
                    trex[tid] = (dur, flags)
        if typ != b"trak":
            continue
        kids = _children(data, p, e)
        if b"tkhd" not in kids or b"mdia" not in kids:
            continue
        tp, _te = kids[b"tkhd"]
        version = data[tp]
        tid = struct.unpack_from(">I", data, tp + (20 if version == 1 else 12))[0]
        mdia = _children(data, *kids[b"mdia"])
        if b"mdhd" not in mdia:
            continue
        mp, _me = mdia[b"mdhd"]
        timescale = struct.unpack_from(">I", data, mp + (20 if data[mp] == 1 else 12))[0]
        handler = ""
        if b"hdlr" in mdia:
            hp, _he = mdia[b"hdlr"]
            handler = data[hp + 8:hp + 12].decode("latin-1")
        codec = ""
        try:
            stbl = _children(data, *_children(data, *mdia[b"minf"])[b"stbl"])
            sp, se = stbl[b"stsd"]
            entries = iter_boxes(data, sp + 8, se)
            codec = entries[0][0].decode("latin-1") if entries else ""
        except (KeyError, Fmp4Error):
            codec = ""
        if timescale <= 0:
            raise Fmp4Error(f"track {tid} has timescale 0")
        tracks.append(InitInfo(tid, timescale, handler, codec))
    if not tracks:
        raise Fmp4Error("moov without a usable track")
    track = next((t for t in tracks if t.handler == "vide"), tracks[0])
    dur, flags = trex.get(track.track_id, (0, 0))
    return InitInfo(track.track_id, track.timescale, track.handler, track.codec, dur, flags)


@dataclass(frozen=True)
class Fragment:
    """One movie fragment (``moof`` + ``mdat``) of the init's track.

    ``data``: the bytes (moof then mdat); ``decode_time``: ``tfdt`` baseMediaDecodeTime in
    seconds; ``duration``: the summed sample durations in seconds; ``samples``: sample
    count; ``keyframe``: the first sample is a sync sample (an IDR frame for H.264)."""

    data: bytes
    decode_time: float
    duration: float
    samples: int
    keyframe: bool

    @property
    def end_time(self) -> float:
        """``decode_time + duration`` (seconds)."""
        return self.decode_time + self.duration


def parse_fragment(moof: bytes, mdat: bytes, init: InitInfo) -> Fragment:
    """Read the ``traf`` of ``init.track_id`` in ``moof`` (ISO/IEC 14496-12 §8.8.4–8.8.12).

    Sample durations come from ``trun`` (flag 0x100), else ``tfhd`` (0x08), else ``trex``;
    the first sample's flags from ``trun`` first-sample-flags (0x04), else its per-sample
    flags (0x400), else ``tfhd`` default flags (0x20), else ``trex``. Raises
    :class:`Fmp4Error` when ``moof`` is malformed or holds no fragment of that track."""
    boxes = iter_boxes(moof)
    if len(boxes) != 1 or boxes[0][0] != b"moof":
        raise Fmp4Error("expected exactly one moof box")
    _t, _b, mp, me = boxes[0]
    for typ, _b2, p, e in iter_boxes(moof, mp, me):
        if typ != b"traf":
            continue
        kids = iter_boxes(moof, p, e)
        tfhd = next(((kp, ke) for kt, _kb, kp, ke in kids if kt == b"tfhd"), None)
        if tfhd is None:
            raise Fmp4Error("traf without tfhd")
        hp, he = tfhd
        (vflags, track_id) = struct.unpack_from(">II", moof, hp)
        if track_id != init.track_id:
            continue
        tf_flags = vflags & 0xFFFFFF
        q = hp + 8
        q += 8 if tf_flags & 0x01 else 0  # base_data_offset
        q += 4 if tf_flags & 0x02 else 0  # sample_description_index
        default_duration, default_flags = init.default_duration, init.default_flags
        if tf_flags & 0x08:
            (default_duration,) = struct.unpack_from(">I", moof, q)
            q += 4
        q += 4 if tf_flags & 0x10 else 0  # default_sample_size
        if tf_flags & 0x20:
            (default_flags,) = struct.unpack_from(">I", moof, q)
            q += 4
        if q > he:
            raise Fmp4Error("tfhd shorter than its flags say")
        base = 0
        total = 0
        count = 0
        first_flags: int | None = None
        for kt, _kb, kp, ke in kids:
            if kt == b"tfdt":
                base = struct.unpack_from(">Q" if moof[kp] == 1 else ">I", moof, kp + 4)[0]
            elif kt == b"trun":
                (rv, n) = struct.unpack_from(">II", moof, kp)
                r_flags = rv & 0xFFFFFF
                q = kp + 8
                q += 4 if r_flags & 0x01 else 0  # data_offset
                if r_flags & 0x04:
                    (ff,) = struct.unpack_from(">I", moof, q)
                    if first_flags is None and n:
                        first_flags = ff
                    q += 4
                per = 4 * (r_flags & 0xF00).bit_count()
                if q + per * n > ke:
                    raise Fmp4Error(f"trun with {n} samples is longer than its box")
                for _ in range(n):
                    d = default_duration
                    if r_flags & 0x100:
                        (d,) = struct.unpack_from(">I", moof, q)
                    off = q + (4 if r_flags & 0x100 else 0) + (4 if r_flags & 0x200 else 0)
                    if r_flags & 0x400 and first_flags is None:
                        (first_flags,) = struct.unpack_from(">I", moof, off)
                    total += d
                    count += 1
                    q += per
        if count == 0:
            raise Fmp4Error("traf without samples")
        flags = default_flags if first_flags is None else first_flags
        ts = init.timescale
        return Fragment(data=moof + mdat, decode_time=base / ts, duration=total / ts, samples=count,
                        keyframe=not flags & NON_SYNC)
    raise Fmp4Error(f"moof without a traf for track {init.track_id}")
