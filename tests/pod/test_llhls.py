"""pod/llhls.py without sockets: parts and segments from frames, the LL-HLS playlist tags
(RFC 8216bis-16 §4.4.3.7/8, §4.4.4.9, §4.4.5.3), blocking-reload decisions (§6.2.5.2),
program date-time from arrival times, memory bounds, and where the goal cannot be met."""

from __future__ import annotations

import re

import pytest

from pod.fmp4 import Fragment
from pod.llhls import Packager, advance_part_limit, part_name
from pod.segments import parse_media_playlist


def feed(p: Packager, *, fps: float = 15, gop: int = 15, frames: int = 60, t0: float = 1000.0, start: int = 0,
         jitter=lambda i: 0.0, size: int = 1000):
    """Frames at ``fps`` with a keyframe every ``gop`` frames, arriving ``1/fps`` apart at the
    wall clock ``t0 + media time + 1 frame + jitter(i)``. Returns the completed segments."""
    f = 1 / fps
    done = []
    for i in range(start, start + frames):
        frag = Fragment(data=bytes([i % 256]) * size, decode_time=i * f, duration=f, samples=1, keyframe=i % gop == 0)
        done += p.add_fragment(frag, t0 + (i + 1) * f + jitter(i))
    return done


def packager(**kw) -> Packager:
    args = {"first_msn": 500, "init_name": "init_500.mp4", "part_target": 0.2, "segment_seconds": 1.0}
    args.update(kw)
    p = Packager(**args)
    p.set_init(b"INIT")
    return p


def tags(text: str, name: str) -> list[str]:
    return [line.split(":", 1)[1] for line in text.splitlines() if line.startswith(f"#{name}:")]


def test_parts_of_whole_frames_segments_at_keyframes():
    p = packager()
    done = feed(p, frames=60)  # 4 s at 15 fps, keyframe every second
    assert [d.msn for d in done] == [500, 501, 502]
    assert all(d.duration == pytest.approx(1.0) and d.parts == 5 and d.independent for d in done)
    assert p.part_target == pytest.approx(0.2) and p.target_duration == 1
    seg = done[1]
    assert seg.data == b"".join(bytes([i]) * 1000 for i in range(15, 30))  # the frames, in order
    part = p.part(503, 0)
    assert part is not None and part.independent and part.complete and part.duration == pytest.approx(0.2)
    assert p.part(503, 1) and not p.part(503, 1).independent


def test_ll_playlist_tags_and_preload_hint():
    p = packager()
    feed(p, frames=52)  # 3 complete segments, 2 parts of the 4th + one frame of its 3rd
    text = p.playlist(low_latency=True)
    assert tags(text, "EXT-X-SERVER-CONTROL") == ["CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600"]
    assert tags(text, "EXT-X-PART-INF") == ["PART-TARGET=0.20000"]
    hold = float(re.search(r"PART-HOLD-BACK=([\d.]+)", text).group(1))
    assert hold >= 3 * 0.2 - 1e-9  # the floor (RFC: at least 2x)
    assert tags(text, "EXT-X-TARGETDURATION") == ["1"] and tags(text, "EXT-X-MEDIA-SEQUENCE") == ["500"]
    parts = tags(text, "EXT-X-PART")
    # parts listed for the last two complete segments and the one in progress
    assert [re.search(r'URI="([^"]+)"', x).group(1) for x in parts] == \
        [part_name(m, i) for m in (501, 502) for i in range(5)] + [part_name(503, 0), part_name(503, 1)]
    assert all(("INDEPENDENT=YES" in x) == x.endswith(("_0.m4s\",INDEPENDENT=YES",)) for x in parts)
    assert tags(text, "EXT-X-PRELOAD-HINT") == [f'TYPE=PART,URI="{part_name(503, 2)}"']
    assert text.index("#EXT-X-PRELOAD-HINT") > text.rindex("#EXT-X-PART:")
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in text and '#EXT-X-MAP:URI="init_500.mp4"' in text
    # a classic player sees a normal playlist of complete segments (ffmpeg/ffprobe ignore the rest)
    segs = parse_media_playlist(text)
    assert [s.name for s in segs] == ["seg_500.m4s", "seg_501.m4s", "seg_502.m4s"]


def test_classic_playlist_has_no_low_latency_tags():
    p = packager()
    feed(p, frames=52)
    text = p.playlist(low_latency=False)
    for tag in ("EXT-X-PART", "EXT-X-PART-INF", "EXT-X-SERVER-CONTROL", "EXT-X-PRELOAD-HINT"):
        assert f"#{tag}:" not in text
    assert text.count("#EXTINF:") == 3 and text.count("#EXT-X-PROGRAM-DATE-TIME:") == 3


def test_program_date_time_is_arrival_without_the_jitter():
    """Frames arrive one frame after their media time, some later (queueing). The PDT is the
    earliest arrival relation, so late frames do not push it."""
    p = packager()
    done = feed(p, frames=46, t0=2000.0, jitter=lambda i: 0.3 if i % 4 else 0.0)
    # media time 0 arrived (at best) at 2000 + 1 frame after... its own end: PDT = start + offset
    assert done[1].pdt == pytest.approx(2000.0 + 1.0, abs=1e-6)
    segs = parse_media_playlist(p.playlist(low_latency=True))
    assert segs[1].start == pytest.approx(2001.0, abs=0.001)
    assert segs[1].start - segs[0].end == pytest.approx(0, abs=0.01)


def test_part_target_is_whole_frames_and_never_below_one_frame():
    p = packager(part_target=0.25)
    feed(p, fps=25, gop=25, frames=60)
    assert p.part_target == pytest.approx(0.24) and p.max_part_seen <= 0.24 + 1e-9  # 6 frames of 40 ms
    q = packager(part_target=0.05)
    feed(q, fps=10, gop=10, frames=30)
    assert q.part_target == pytest.approx(0.1)  # one frame: a part is never shorter
    assert all(q.part(m, i) is None or q.part(m, i).duration == pytest.approx(0.1)
               for m in range(500, 503) for i in range(10))


def test_long_gop_makes_long_segments_and_a_longer_one_is_cut_at_a_part():
    """A camera with 4 s between keyframes: segments of 4 s (target duration 4), parts still
    0.2 s (independent only at keyframes). When a GOP grows past the target, the segment is
    cut without a keyframe instead of breaking EXT-X-TARGETDURATION."""
    p = packager(segment_seconds=2.0)
    feed(p, fps=15, gop=60, frames=130)
    assert p.target_duration == 4 and p.part_target == pytest.approx(0.2)
    text = p.playlist(low_latency=True)
    assert [s.duration for s in parse_media_playlist(text)] == pytest.approx([4.0, 4.0])
    q = packager(segment_seconds=1.0)
    done = feed(q, fps=10, gop=10, frames=20)
    done += feed(q, fps=10, gop=1000, frames=40, start=20)  # the camera stops sending keyframes
    assert q.forced_splits >= 1 and all(d.duration <= q.target_duration + 0.49 for d in done)
    assert "#EXT-X-INDEPENDENT-SEGMENTS" not in q.playlist(low_latency=True)


@pytest.mark.parametrize("msn,part,verdict", [
    (502, None, "ready"), (503, None, "wait"), (504, None, "wait"), (505, None, "too_far"),
    (503, 0, "ready"), (503, 1, "ready"), (503, 2, "wait"), (503, 1 + 15, "wait"), (503, 17, "too_far"),
    (502, 4, "ready"), (502, 5, "ready"),  # past the last part of 502 = part 0 of 503, which exists
    (504, 0, "wait"), (504, 15, "wait"), (504, 16, "too_far"), (400, 0, "ready"),
])
def test_blocking_reload_decisions(msn, part, verdict):
    p = packager()
    feed(p, frames=52)  # last complete 502; 503 has parts 0 and 1
    assert advance_part_limit(0.2) == 15 and advance_part_limit(1.5) == 3
    assert p.reload_state(msn, part) == verdict


def test_part_past_the_end_of_a_complete_segment_waits_for_the_next_segment():
    p = packager()
    feed(p, frames=46)  # 500..502 complete, 503 holds only the keyframe frame (part in progress)
    assert p.state().next_msn == 503 and p.state().next_part == 0
    assert p.reload_state(502, 5) == "wait"  # = (503, 0), not complete yet
    assert p.part_possible(503, 0) and p.part(503, 0) is not None and not p.part(503, 0).complete
    assert not p.part_possible(501, 9)  # a part that never existed


def test_parts_in_memory_are_bounded():
    p = packager(keep_part_segments=2, part_segments=1, max_part_bytes=40_000)
    feed(p, frames=150, size=1000)  # 10 s
    held = [(m, i) for m in range(500, 520) for i in range(5) if p.part(m, i) is not None]
    assert sum(p.part(m, i).size for m, i in held) <= 40_000
    assert min(m for m, _ in held) >= 507 and max(m for m, _ in held) == 509  # 507, 508 complete; 509 in progress
    with pytest.raises(ValueError):
        packager(keep_part_segments=1, part_segments=2)


def test_a_keyframe_inside_a_segment_starts_an_independent_part():
    """Keyframes every 7 frames, parts of 3 frames: the part before each keyframe is closed
    early, so every keyframe begins an INDEPENDENT=YES part (players can start there)."""
    p = packager()
    feed(p, fps=15, gop=7, frames=10)
    starts = [(p.part(500, i).independent, round(p.part(500, i).duration * 15)) for i in range(4)]
    assert starts == [(True, 3), (False, 3), (False, 1), (True, 3)]


@pytest.mark.parametrize("fps,gop,seg,part,expect", [
    (15, 1.0, 2.0, 0.2, (0.2, 2.0, 2, 0.7)),
    (15, 4.0, 2.0, 0.2, (0.2, 4.0, 4, 0.7)),  # long GOP: long segments, parts unchanged
    (25, 1.0, 1.0, 0.25, (0.24, 1.0, 1, 0.84)),
    (5, 2.0, 2.0, 0.1, (0.2, 2.0, 2, 0.7)),  # never shorter than one frame
])
def test_effective_timing_matches_what_the_packager_makes(fps, gop, seg, part, expect):
    from pod.llhls import effective_timing

    t = effective_timing(part_seconds=part, segment_seconds=seg, frame_interval=1 / fps, keyframe_interval=gop,
                         low_latency=True)
    assert (t.part_target, t.segment, t.target_duration, t.expected_latency) == pytest.approx(expect)
    p = packager(part_target=part, segment_seconds=seg)
    feed(p, fps=fps, gop=round(gop * fps), frames=round(3 * max(seg, gop) * fps) + 1)
    assert (p.part_target, p.target_duration) == pytest.approx((t.part_target, t.target_duration))
    classic = effective_timing(part_seconds=part, segment_seconds=seg, frame_interval=1 / fps, keyframe_interval=gop,
                               low_latency=False)
    assert classic.expected_latency == pytest.approx(3 * t.target_duration + t.segment / 2)
