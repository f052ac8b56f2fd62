"""Media playlist parsing (RFC 8216 §4.3.2.1 EXTINF, §4.3.2.5 EXT-X-MAP, §4.3.2.6
EXT-X-PROGRAM-DATE-TIME) and the segment time index used to cut detection clips."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pod.segments import SegmentIndex, SegmentInfo, parse_media_playlist, parse_program_date_time

T0 = datetime(2026, 11, 30, 2, 24, 9, 258000, tzinfo=UTC).timestamp()

# exactly what ffmpeg 5.1 writes with -hls_flags program_date_time: PDT after EXTINF, "+0000"
FFMPEG_PLAYLIST = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:3
#EXT-X-MEDIA-SEQUENCE:1796005449
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI="init_1796005447.mp4"
#EXTINF:2.933333,
#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:24:09.258+0000
seg_1796005449.m4s
#EXTINF:2.000000,
#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:24:12.191+0000
seg_1796005450.m4s
#EXTINF:2.000000,
#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:24:14.191+0000
seg_1796005451.m4s
"""


def seg(n: int, start: float, dur: float = 2.0, init: str | None = "init_1.mp4") -> SegmentInfo:
    return SegmentInfo(name=f"seg_{n}.m4s", start=start, duration=dur, init=init, sequence=n)


def test_parses_ffmpeg_playlist_pdt_after_extinf():
    segs = parse_media_playlist(FFMPEG_PLAYLIST)
    assert [s.name for s in segs] == ["seg_1796005449.m4s", "seg_1796005450.m4s", "seg_1796005451.m4s"]
    assert [s.sequence for s in segs] == [1796005449, 1796005450, 1796005451]
    assert all(s.init == "init_1796005447.mp4" for s in segs)
    assert segs[0].start == pytest.approx(T0, abs=1e-6)
    assert segs[0].duration == pytest.approx(2.933333)
    assert segs[1].start == pytest.approx(T0 + 2.933, abs=1e-6)
    assert segs[2].end == pytest.approx(T0 + 2.933 + 4.0, abs=1e-6)


@pytest.mark.parametrize("offset", ["Z", "z", "+00:00", "+0000", "+00", "-00:00"])
def test_pdt_before_extinf_and_utc_offset_forms(offset):
    text = ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n"
            f"#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:24:09.258{offset}\n#EXTINF:2.0,\nseg_7.ts\n"
            f"#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:24:11.258{offset}\n#EXTINF:1.5,title\nseg_8.ts\n")
    segs = parse_media_playlist(text)
    assert [(s.name, s.sequence, s.init) for s in segs] == [("seg_7.ts", 7, None), ("seg_8.ts", 8, None)]
    assert segs[0].start == pytest.approx(T0, abs=1e-6) and segs[1].start == pytest.approx(T0 + 2, abs=1e-6)
    assert segs[1].duration == 1.5


def test_pdt_non_utc_offsets_and_no_fraction():
    assert parse_program_date_time("2026-11-30T03:24:09.258+01:00") == pytest.approx(T0, abs=1e-6)
    assert parse_program_date_time("2026-11-30T03:24:09.258+0100") == pytest.approx(T0, abs=1e-6)
    assert parse_program_date_time("2026-11-29T21:24:09.258-0500") == pytest.approx(T0, abs=1e-6)
    assert parse_program_date_time("2026-11-30T02:24:09Z") == pytest.approx(T0 - 0.258, abs=1e-6)
    for bad in ("", "yesterday", "2026-13-30T02:24:09Z", "2026-11-30T25:00:00Z", "2026-11-30T02:24:09+99:00"):
        assert parse_program_date_time(bad) is None


def test_segments_without_pdt_follow_the_previous_one_and_are_backfilled():
    text = ("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:10\n#EXT-X-MAP:URI=\"init_a.mp4\"\n"
            "#EXTINF:1.0,\nseg_10.m4s\n#EXTINF:2.0,\nseg_11.m4s\n"
            "#EXTINF:2.0,\n#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:24:09.258Z\nseg_12.m4s\n"
            "#EXTINF:2.5,\nseg_13.m4s\n#EXTINF:2.0,\nseg_14.m4s\n")
    segs = {s.name: s for s in parse_media_playlist(text)}
    assert segs["seg_10.m4s"].start == pytest.approx(T0 - 3.0)  # placed backwards from the first PDT
    assert segs["seg_11.m4s"].start == pytest.approx(T0 - 2.0)
    assert segs["seg_13.m4s"].start == pytest.approx(T0 + 2.0)
    assert segs["seg_14.m4s"].start == pytest.approx(T0 + 4.5)
    assert segs["seg_14.m4s"].sequence == 14


def test_no_pdt_at_all_cannot_be_placed():
    assert parse_media_playlist("#EXTM3U\n#EXTINF:2.0,\nseg_1.ts\n#EXTINF:2.0,\nseg_2.ts\n") == []


def test_map_changes_apply_to_following_segments_and_byterange_is_skipped():
    text = ("#EXTM3U\n#EXT-X-MAP:URI=\"init_1.mp4\",BYTERANGE=\"700@0\"\n"
            "#EXTINF:2,\n#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:24:09.258Z\nseg_0.m4s\n"
            "#EXT-X-MAP:URI=\"init_2.mp4\"\n"
            "#EXTINF:2,\n#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:25:00Z\nseg_1.m4s\n"
            "#EXTINF:2,\n#EXT-X-BYTERANGE:1000@0\n#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:25:02Z\nall.mp4\n")
    segs = parse_media_playlist(text)
    assert [(s.name, s.init, s.sequence) for s in segs] == [("seg_0.m4s", "init_1.mp4", 0),
                                                            ("seg_1.m4s", "init_2.mp4", 1)]


def test_bad_extinf_falls_back_to_target_duration_else_dropped():
    text = ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:abc,\n#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:24:09.258Z\n"
            "a.ts\n#EXTINF:-1,\nb.ts\n#EXTINF:nan,\nc.ts\n")
    segs = parse_media_playlist(text)
    assert [(s.name, s.duration) for s in segs] == [("a.ts", 2.0), ("b.ts", 2.0), ("c.ts", 2.0)]
    assert parse_media_playlist("#EXTINF:x,\n#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:24:09Z\na.ts\n") == []


_TAGS = st.sampled_from([
    "#EXTM3U", "#EXTINF:2.0,", "#EXTINF:", "#EXTINF:1e308,", "#EXTINF:-0,", "#EXT-X-MEDIA-SEQUENCE:",
    "#EXT-X-MEDIA-SEQUENCE:99999999999999999999999", "#EXT-X-PROGRAM-DATE-TIME:", "#EXT-X-MAP:URI=\"",
    "#EXT-X-MAP:URI=\"i.mp4\"", "#EXT-X-PROGRAM-DATE-TIME:9999-12-31T23:59:60.999999999-2359",
    "#EXT-X-PROGRAM-DATE-TIME:0001-01-01T00:00:00+2359", "#EXT-X-PROGRAM-DATE-TIME:2026-11-30T02:24:09.258+0000",
    "#EXT-X-TARGETDURATION:inf", "#EXT-X-BYTERANGE:", "#EXT-X-DISCONTINUITY", "seg_1.m4s", "", "#",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_TAGS, st.text(max_size=40)), max_size=40), st.sampled_from(["\n", "\r\n", "\r"]))
def test_parse_never_raises_and_returns_finite_segments(lines, sep):
    segs = parse_media_playlist(sep.join(lines))
    assert isinstance(segs, list)
    for s in segs:
        assert isinstance(s, SegmentInfo) and math.isfinite(s.start) and s.duration >= 0
        assert s.name and not s.name.startswith("#")


@given(st.binary(max_size=200))
def test_parse_never_raises_on_bytes(data):
    assert isinstance(parse_media_playlist(data), list)


# ----------------------------------------------------------------- index


def test_index_update_is_idempotent_and_keeps_segments_that_left_the_playlist():
    ix = SegmentIndex()
    first = [seg(n, 100.0 + 2 * (n - 1)) for n in (1, 2, 3)]
    ix.update(first)
    ix.update(first)
    assert len(ix) == 3 and ix.latest_end() == 106.0
    ix.update([seg(n, 100.0 + 2 * (n - 1)) for n in (3, 4)])  # 1 and 2 left the live window
    assert [s.name for s in ix.segments()] == ["seg_1.m4s", "seg_2.m4s", "seg_3.m4s", "seg_4.m4s"]
    assert ix.latest_end() == 108.0


def test_index_is_bounded_oldest_first_and_forgets_missing_files():
    ix = SegmentIndex(max_entries=3)
    ix.update([seg(n, 10.0 * n) for n in range(5)])
    assert [s.sequence for s in ix.segments()] == [2, 3, 4]
    assert ix.forget_missing({"seg_2.m4s", "seg_3.m4s"}) == 1
    assert ix.latest_end() == 32.0
    assert ix.forget_missing(set()) == 2 and ix.latest_end() is None and len(ix) == 0
    with pytest.raises(ValueError):
        SegmentIndex(max_entries=0)


def test_select_window_overlap_and_missing_preroll():
    ix = SegmentIndex()
    ix.update([seg(n, 100.0 + 2 * n) for n in range(10)])  # covers [100, 120)
    sel = ix.select(104.5, 109.0, event=106.0)
    assert [s.sequence for s in sel.segments] == [2, 3, 4]  # [104,106) [106,108) [108,110)
    assert (sel.covered_start, sel.covered_end, sel.preroll_missing_s, sel.postroll_missing_s) == (104, 110, 0, 0)
    sel = ix.select(95.0, 103.0, event=100.0)
    assert sel.segments[0].sequence == 0 and sel.preroll_missing_s == 5.0
    sel = ix.select(116.0, 125.0, event=118.0)
    assert sel.postroll_missing_s == 5.0
    empty = ix.select(200.0, 210.0)
    assert empty.segments == [] and empty.preroll_missing_s == 10.0


def test_select_prefers_the_run_containing_the_event_across_an_ffmpeg_restart():
    ix = SegmentIndex()
    run_a = [seg(n, 100.0 + 2 * (n - 1), init="init_100.mp4") for n in (1, 2, 3)]  # [100, 106)
    run_b = [seg(n, 107.0 + 2 * (n - 107), init="init_107.mp4") for n in (107, 108, 109, 110)]  # [107, 115)
    ix.update(run_a + run_b)
    sel = ix.select(101.0, 113.0, event=104.0)
    assert [s.sequence for s in sel.segments] == [1, 2, 3] and {s.init for s in sel.segments} == {"init_100.mp4"}
    assert sel.postroll_missing_s == pytest.approx(7.0)
    sel = ix.select(101.0, 113.0, event=108.0)
    assert [s.sequence for s in sel.segments] == [107, 108, 109] and sel.preroll_missing_s == 6.0
    sel = ix.select(101.0, 113.0, event=106.5)  # in the gap: the nearer run (b, 0.5 s away)
    assert sel.segments[0].init == "init_107.mp4"
    sel = ix.select(101.0, 113.0)  # no event: the larger overlap
    assert sel.segments[0].init == "init_107.mp4"


def test_select_splits_runs_on_a_missing_sequence_number():
    ix = SegmentIndex()
    ix.update([seg(n, 100.0 + 2 * n) for n in (0, 1, 3, 4)])  # seg 2 forgotten (file deleted)
    sel = ix.select(100.0, 110.0, event=101.0)
    assert [s.sequence for s in sel.segments] == [0, 1]
    sel = ix.select(100.0, 110.0, event=107.0)
    assert [s.sequence for s in sel.segments] == [3, 4]
