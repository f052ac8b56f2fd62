"""pod/fmp4.py without sockets: box splitting in any chunking, init and fragment parsing
with every place a keyframe flag can live (ISO/IEC 14496-12 §8.8), malformed input, and a
real fragmented MP4 written by ffmpeg checked against ffprobe's keyframe flags."""

from __future__ import annotations

import json
import struct
import subprocess

import pytest

from pod.errors import Fmp4Error
from pod.fmp4 import NON_SYNC, BoxSplitter, InitInfo, iter_boxes, parse_fragment, parse_init

SYNC = 0x02000000  # depends_on = 2 (I-frame), sync
DELTA = 0x01010000  # depends_on = 1, non-sync


def box(typ: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), typ) + payload


def full(typ: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return box(typ, struct.pack(">I", (version << 24) | flags) + payload)


def init_section(track_id: int = 1, timescale: int = 90000, trex_flags: int = DELTA, trex_dur: int = 0) -> bytes:
    tkhd = full(b"tkhd", 0, 3, struct.pack(">III", 0, 0, track_id) + b"\0" * 68)
    mdhd = full(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, timescale, 0) + b"\0" * 4)
    hdlr = full(b"hdlr", 0, 0, b"\0" * 4 + b"vide" + b"\0" * 13)
    stsd = full(b"stsd", 0, 0, struct.pack(">I", 1) + box(b"avc1", b"\0" * 78))
    minf = box(b"minf", box(b"stbl", stsd))
    trak = box(b"trak", tkhd + box(b"mdia", mdhd + hdlr + minf))
    trex = full(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, trex_dur, 0, trex_flags))
    return box(b"ftyp", b"iso5\0\0\0\1iso5") + box(b"moov", trak + box(b"mvex", trex))


def moof(*, track_id: int = 1, base: int = 0, tfhd_flags: int = 0x020000, default_duration: int | None = None,
         default_flags: int | None = None, trun_flags: int = 0x01, first_flags: int | None = None,
         samples: list[tuple[int | None, int | None]] = ((3000, None),), tfdt_version: int = 1) -> bytes:
    tf = struct.pack(">I", track_id)
    if default_duration is not None:
        tfhd_flags |= 0x08
        tf += struct.pack(">I", default_duration)
    if default_flags is not None:
        tfhd_flags |= 0x20
        tf += struct.pack(">I", default_flags)
    tfhd = full(b"tfhd", 0, tfhd_flags, tf)
    tfdt = full(b"tfdt", tfdt_version, 0, struct.pack(">Q" if tfdt_version else ">I", base))
    body = struct.pack(">I", len(samples)) + struct.pack(">i", 0)
    if first_flags is not None:
        trun_flags |= 0x04
        body += struct.pack(">I", first_flags)
    for dur, flags in samples:
        if dur is not None:
            body += struct.pack(">I", dur)
        body += struct.pack(">I", 100)  # size (0x200)
        if flags is not None:
            body += struct.pack(">I", flags)
    has_dur = all(d is not None for d, _ in samples)
    has_flags = all(f is not None for _, f in samples)
    trun_flags |= 0x200 | (0x100 if has_dur else 0) | (0x400 if has_flags else 0)
    trun = full(b"trun", 0, trun_flags, body)
    return box(b"moof", full(b"mfhd", 0, 0, struct.pack(">I", 1)) + box(b"traf", tfhd + tfdt + trun))


MDAT = box(b"mdat", b"\0" * 100)


def test_init_section_gives_track_timescale_codec_and_trex_defaults():
    info = parse_init(init_section(track_id=7, timescale=30000, trex_flags=SYNC, trex_dur=1001))
    assert info == InitInfo(track_id=7, timescale=30000, handler="vide", codec="avc1", default_duration=1001,
                            default_flags=SYNC)


@pytest.mark.parametrize("kw,key", [
    ({"first_flags": SYNC, "samples": [(3000, None), (3000, None)], "default_flags": DELTA}, True),  # trun first
    ({"first_flags": DELTA, "samples": [(3000, None)], "default_flags": SYNC}, False),
    ({"samples": [(3000, SYNC), (3000, DELTA)]}, True),  # per-sample flags
    ({"samples": [(3000, DELTA), (3000, SYNC)]}, False),  # only the FIRST sample decides
    ({"samples": [(3000, None)], "default_flags": SYNC}, True),  # tfhd default
    ({"samples": [(3000, None)], "default_flags": DELTA}, False),
    ({"samples": [(3000, None)]}, False),  # trex default of this init (DELTA)
])
def test_keyframe_from_every_place_the_flags_can_live(kw, key):
    frag = parse_fragment(moof(**kw), MDAT, parse_init(init_section()))
    assert frag.keyframe is key


def test_trex_default_sync_and_durations_from_tfhd_or_trex():
    info = parse_init(init_section(trex_flags=SYNC, trex_dur=4500))
    f = parse_fragment(moof(base=90000, samples=[(None, None), (None, None)]), MDAT, info)
    assert f.keyframe and f.samples == 2 and f.duration == pytest.approx(0.1) and f.decode_time == 1.0
    f = parse_fragment(moof(base=45000, tfdt_version=0, default_duration=6000, samples=[(None, None)]), MDAT, info)
    assert f.duration == pytest.approx(6000 / 90000) and f.decode_time == 0.5
    assert f.data == moof(base=45000, tfdt_version=0, default_duration=6000, samples=[(None, None)]) + MDAT


def test_malformed_fragments_raise_fmp4error():
    info = parse_init(init_section())
    with pytest.raises(Fmp4Error, match=r"without a traf"):
        parse_fragment(moof(track_id=2), MDAT, info)
    good = moof()
    with pytest.raises(Fmp4Error):
        parse_fragment(good[:-4], MDAT, info)  # cut: a box runs past its parent
    with pytest.raises(Fmp4Error, match="moov"):
        parse_init(box(b"ftyp", b"x" * 8))
    with pytest.raises(Fmp4Error, match="size 0"):
        BoxSplitter().feed(struct.pack(">I4s", 0, b"mdat") + b"x" * 20)
    with pytest.raises(Fmp4Error, match="larger than"):
        BoxSplitter(max_box=1000).feed(struct.pack(">I4s", 5000, b"mdat"))
    with pytest.raises(Fmp4Error, match="less than its header"):
        iter_boxes(struct.pack(">I4s", 4, b"free"))


def test_splitter_yields_the_same_boxes_whatever_the_chunking():
    stream = init_section() + moof(first_flags=SYNC) + MDAT + moof() + MDAT
    large = struct.pack(">I4sQ", 1, b"free", 16 + 5) + b"12345"  # 64-bit largesize
    stream += large
    whole = BoxSplitter().feed(stream)
    assert [b.type for b in whole] == [b"ftyp", b"moov", b"moof", b"mdat", b"moof", b"mdat", b"free"]
    assert b"".join(b.data for b in whole) == stream
    for size in (1, 3, 7, 64):
        sp = BoxSplitter()
        got = []
        for i in range(0, len(stream), size):
            got += sp.feed(stream[i:i + size])
        assert got == whole and sp.pending == 0 and sp.total == len(stream)


def test_a_real_ffmpeg_fragmented_mp4_matches_ffprobe_keyframes(tmp_path):
    """ffmpeg writes what the streamer asks of it (a fragment per frame) from a synthetic
    source with a keyframe every 10 frames; our flags and times must agree with ffprobe's."""
    out = tmp_path / "f.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "2",
                    "-c:v", "libx264", "-g", "10", "-keyint_min", "10", "-sc_threshold", "0", "-bf", "0",
                    "-f", "mp4", "-movflags", "empty_moov+default_base_moof+frag_every_frame", str(out)],
                   check=True, timeout=60)
    data = out.read_bytes()
    boxes = BoxSplitter().feed(data)
    info = parse_init(b"".join(b.data for b in boxes if b.type in (b"ftyp", b"moov")))
    frags = []
    pending = None
    for b in boxes:
        if b.type == b"moof":
            pending = b.data
        elif b.type == b"mdat" and pending is not None:
            frags.append(parse_fragment(pending, b.data, info))
            pending = None
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "packet=dts_time,flags", "-of", "json", str(out)], capture_output=True, text=True,
                           timeout=60, check=True)
    packets = json.loads(probe.stdout)["packets"]
    assert len(frags) == len(packets) == 50
    assert [f.keyframe for f in frags] == ["K" in p["flags"] for p in packets]
    assert [i for i, f in enumerate(frags) if f.keyframe] == list(range(0, 50, 10))
    assert [round(f.decode_time, 3) for f in frags] == [round(float(p["dts_time"]), 3) for p in packets]
    assert all(f.duration == pytest.approx(0.04) for f in frags[:-1])
    assert NON_SYNC == 0x10000
