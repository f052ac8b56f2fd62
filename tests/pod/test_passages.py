"""pod.passages.PassageTracker: one decision per passage, replayed from the shared Frigate cases.

Case files are copies in tests/data/frigate/ of the scenario files (format: `t`, `topic`,
`retain`, `payload`; `$pod/control` and `<prefix>/available` are harness/broker matters
and are skipped at this level). `now` is the message's `t`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pod.frigate import ObjectMessage, PlateRead, is_event_id, parse_message
from pod.passages import PassageDecision, PassageTracker

DATA = Path(__file__).resolve().parents[1] / "data" / "frigate"
NOW_UTC = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MIN_CONF = 0.75
CAMERAS = {"gate_cam": "gate-camera-1"}
FAR_FUTURE = 10**6

try:  # pod.plates is written in parallel; the tracker only needs its interface
    from pod.plates import Whitelist
    from protocol.messages import PlateEntry

    def make_judge(plates):
        wl = Whitelist([PlateEntry(plate=p) for p in plates], version="test")
        return lambda plate, conf: wl.match(plate, conf, now=NOW_UTC, min_confidence=MIN_CONF)
except ImportError:  # pragma: no cover - fallback only while pod/plates.py does not exist
    import unicodedata

    @dataclass(frozen=True)
    class _Verdict:
        decision: str
        reason: str
        plate: str
        near_match: str | None = None

    def _norm(raw):
        s = unicodedata.normalize("NFKC", raw).upper()
        return "".join(c for c in s if not c.isspace() and c not in "-.\u00b7\u2022_")

    def make_judge(plates):
        keys = {_norm(p) for p in plates}

        def judge(plate, conf):
            p = _norm(plate)
            if p not in keys:
                return _Verdict("deny", "not_whitelisted", p)
            if conf is None or conf < MIN_CONF:
                return _Verdict("deny", "low_confidence", p)
            return _Verdict("allow", "whitelisted", p)
        return judge


# ------------------------------------------------------------------ case replay

def load_case(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def replay(case: dict, *, plate_source: str = "recognized_license_plate"):
    """Feed a case's messages through parse_message + PassageTracker; return
    ``(decisions with the t they came out at, skip reasons)``."""
    cfg = case["pod_config"]
    prefix = cfg["topic_prefix"]
    tracker = PassageTracker(cameras=CAMERAS, gate_zones=cfg["gate_zones"], lpr_only_cameras=set(),
                             judge=make_judge(cfg["whitelist"]), min_confidence=MIN_CONF)
    out: list[tuple[float, PassageDecision]] = []
    skipped: list[str] = []
    last_t = 0.0
    for m in case["messages"]:
        topic, t = m["topic"], m["t"]
        if topic == "$pod/control" or topic == f"{prefix}/available":
            continue
        last_t = t
        out += [(t, d) for d in tracker.tick(t)]
        payload = m["payload"]
        raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        msg, reason = parse_message(topic.removeprefix(prefix + "/"), raw, plate_source=plate_source)
        if msg is None:
            skipped.append(reason)
            continue
        out += [(t, d) for d in tracker.feed(msg, t)]
    end = last_t + FAR_FUTURE
    out += [(end, d) for d in tracker.tick(end)]
    assert tracker.active() == 0
    assert tracker.tick(end + FAR_FUTURE) == []
    return out, skipped


def assert_detections(decisions: list[PassageDecision], expected: list[dict]):
    """Exactly the expected detections, in order; fields given in the case must match."""
    assert len(decisions) == len(expected), [(d.event_id, d.decision, d.reason) for d in decisions]
    for d, e in zip(decisions, expected):
        assert d.event_id == e["event_id"]
        assert d.camera_id == "gate-camera-1" and d.frigate_camera == "gate_cam"
        if "plate" in e:
            assert d.plate == e["plate"]
        if "plate_normalized" in e:
            assert d.plate == e["plate_normalized"]
        if "decision" in e:
            assert d.decision == e["decision"]
        if "reason" in e:
            assert d.reason == e["reason"]
        if "confidence" in e:
            assert d.confidence == e["confidence"]
        if d.decision == "allow":
            assert d.reason == "whitelisted"
    ids = [d.event_id for d in decisions]
    assert len(ids) == len(set(ids)), "one decision per tracked-object id"


def run_case(name: str, *, expected: list[dict] | None = None, **kw):
    """Replay a case and check its detections: the case's own list, or ``expected`` where
    the case states its expectation in prose (B07, B08)."""
    case = load_case(name)
    out, skipped = replay(case, **kw)
    decisions = [d for _, d in out]
    if expected is not None:
        assert_detections(decisions, expected)
    else:
        assert_detections(decisions, case["expected"]["detections"])
    if "max_detections" in case["expected"]:
        assert len(decisions) <= case["expected"]["max_detections"]
    return case, out, skipped


def test_every_case_file_has_a_test():
    names = {p.name for p in DATA.glob("B*.json")}
    tested = {n for n in names if any(f"{n}" in (f.__doc__ or "") for f in globals().values() if callable(f))}
    assert names == tested


def test_b01_same_plate_returns_later_must_retrigger():
    """Source: tests/data/frigate/B01_same_plate_returns_later_must_retrigger.json
    (blakeblackshear/frigate#18738): the same plate 8 h later is a new passage."""
    _, out, _ = run_case("B01_same_plate_returns_later_must_retrigger.json")
    # decided at the first good read (t=2 / t=28802), not at end
    assert [(t, d.detected_at) for t, d in out] == [(2, 2), (28802, 28802)]
    assert all(d.plate_raw == "TEST123" and d.confidence == 0.93 for _, d in out)


def test_b03_update_storm_single_passage():
    """Source: tests/data/frigate/B03_update_storm_single_passage.json
    (ljmerza/frigate_plate_recognizer#2): many updates for one id → one decision."""
    _, out, _ = run_case("B03_update_storm_single_passage.json")
    assert [t for t, _ in out] == [4]


def test_b07_sub_label_string_vs_list():
    """Source: tests/data/frigate/B07_sub_label_string_vs_list.json (OldTyT/frigate-telegram#21, #66).

    Both shapes parse in sub_label mode. Interpretation: the list read [TEST123, 0.92] allows;
    the bare-string read carries no score, so it is denied low_confidence after max_decision_wait."""
    case, out, skipped = run_case("B07_sub_label_string_vs_list.json", plate_source="sub_label", expected=[
        {"event_id": "1767225600.700001-sublbl", "plate": "TEST123", "decision": "deny",
         "reason": "low_confidence", "confidence": None},
        {"event_id": "1767225700.700002-sublbl", "plate": "TEST123", "decision": "allow",
         "reason": "whitelisted", "confidence": 0.92},
    ])
    assert skipped == []
    assert out[0][0] == 100 and out[0][1].detected_at == 0  # denied at the wait deadline (next tick)
    assert out[1][0] == 100
    # default mode: sub_label is not a plate, so both passages end up as no_plate_read
    out2, _ = replay(case)
    assert [(d.event_id, d.reason) for _, d in out2] == [
        ("1767225600.700001-sublbl", "no_plate_read"), ("1767225700.700002-sublbl", "no_plate_read")]


def test_b08_sub_label_null_score():
    """Source: tests/data/frigate/B08_sub_label_null_score.json (0x2142/frigate-notify#102):
    [PLATE, null] parses; unknown confidence is below threshold → deny low_confidence."""
    case, _, skipped = run_case("B08_sub_label_null_score.json", plate_source="sub_label", expected=[
        {"event_id": "1767225600.800001-nullsc", "plate": "TEST123", "confidence": None,
         "decision": "deny", "reason": "low_confidence"}])
    assert skipped == []
    assert "below threshold" in case["expected"]["detections"][0]["decision"]  # the prose this encodes


def test_b11_recognized_plate_list_vs_documented_string():
    """Source: tests/data/frigate/B11_recognized_plate_list_vs_documented_string.json
    (frigate v0.16 tracked_object.py [plate, score] vs docs string + recognized_license_plate_score)."""
    _, out, _ = run_case("B11_recognized_plate_list_vs_documented_string.json")
    assert [d.plate_raw for _, d in out] == ["TEST123", "TEST123"]
    assert [t for t, _ in out] == [0, 100]


def test_b13_plate_spaces_dashes_lowercase():
    """Source: tests/data/frigate/B13_plate_spaces_dashes_lowercase.json
    (ljmerza/frigate_plate_recognizer#30): separators/case differ, raw text is kept."""
    _, out, _ = run_case("B13_plate_spaces_dashes_lowercase.json")
    assert [d.plate_raw for _, d in out] == ["TEST 123", "test-123", "TE\u00b7ST123"]


def test_b16_availability_flapping_duplicate_client_id():
    """Source: tests/data/frigate/B16_availability_flapping_duplicate_client_id.json
    (blakeblackshear/frigate#3280): availability flaps never reach or reset the tracker."""
    _, out, _ = run_case("B16_availability_flapping_duplicate_client_id.json")
    assert [t for t, _ in out] == [5]


def test_b17_broker_restart_resubscribe():
    """Source: tests/data/frigate/B17_broker_restart_resubscribe.json
    (blakeblackshear/frigate#814): passages before and after a broker restart both decide."""
    _, out, _ = run_case("B17_broker_restart_resubscribe.json")
    assert [d.plate for _, d in out] == ["TEST123", "TEST123"]


def test_b19_car_stops_no_plate_end_event():
    """Source: tests/data/frigate/B19_car_stops_no_plate_end_event.json
    (blakeblackshear/frigate#20444): exactly one no_plate_read, emitted on 'end'."""
    _, out, _ = run_case("B19_car_stops_no_plate_end_event.json")
    [(t, d)] = out
    assert t == 9 and d.detected_at == 0
    assert (d.plate_raw, d.plate, d.confidence, d.near_match) == (None, None, None, None)


def test_b22_malformed_or_partial_messages():
    """Source: tests/data/frigate/B22_malformed_or_partial_messages.json
    (badbread/crumbvms frigate.rs; frigate-hass-integration tests/test_sensor.py): all dropped."""
    case, out, skipped = run_case("B22_malformed_or_partial_messages.json")
    assert out == []
    assert len(skipped) == len(case["messages"])


# ------------------------------------------------------------------ unit tests

GATE = ["gate_zone"]


def tracker(**kw) -> PassageTracker:
    args = dict(cameras={"gate_cam": "gate-camera-1", "lpr_cam": "lpr-camera-1"}, gate_zones=GATE,
                lpr_only_cameras={"lpr_cam"}, judge=make_judge(["TEST123", "ABC987"]), min_confidence=MIN_CONF)
    args.update(kw)
    return PassageTracker(**args)


def ev(oid, etype="update", plate=None, score=None, zones=("gate_zone",), current=None, camera="gate_cam"):
    read = None if plate is None else PlateRead(plate, score, "recognized_license_plate")
    return ObjectMessage(kind="event", event_type=etype, id=oid, camera=camera, label="car",
                         entered_zones=tuple(zones), current_zones=tuple(zones if current is None else current),
                         read=read, end=etype == "end", timestamp=None)


def lpr(oid, plate, score, camera="lpr_cam"):
    return ObjectMessage(kind="lpr", event_type=None, id=oid, camera=camera, label=None, entered_zones=(),
                         current_zones=(), read=PlateRead(plate, score, "lpr_update"), end=False, timestamp=None)


def summary(ds):
    return [(d.event_id, d.decision, d.reason, d.plate) for d in ds]


def test_lpr_only_camera_dedupes_within_window_across_ids_and_starts_new_passage_after():
    tr = tracker()
    assert summary(tr.feed(lpr("a", "TEST123", 0.9), 100)) == [("a", "allow", "whitelisted", "TEST123")]
    assert tr.feed(lpr("b", "test 123", 0.95), 105) == []  # new id, same plate, inside the window
    assert tr.feed(lpr("c", "TEST-123", 0.97), 119) == []  # window slides with the last read (105 + 15)
    assert tr.feed(lpr("b", "TEST123", 0.97), 121) == []  # an id already folded in never decides
    assert tr.tick(200) == []
    d = tr.feed(lpr("d", "TEST123", 0.9), 137)  # 16 s after the last read: a new passage
    assert summary(d) == [("d", "allow", "whitelisted", "TEST123")]
    assert d[0].camera_id == "lpr-camera-1" and d[0].frigate_camera == "lpr_cam"
    # a different plate inside the window is its own passage
    assert summary(tr.feed(lpr("e", "ABC987", 0.9), 138)) == [("e", "allow", "whitelisted", "ABC987")]


def test_lpr_only_repeated_reads_of_a_decided_id_keep_the_passage_open():
    tr = tracker()
    assert len(tr.feed(lpr("a", "TEST123", 0.9), 0)) == 1
    assert tr.feed(lpr("a", "TEST123", 0.9), 10) == []  # the car is still in front of the camera
    assert tr.feed(lpr("a", "TEST123", 0.9), 20) == []
    assert tr.feed(lpr("b", "TEST123", 0.9), 30) == []  # 10 s after the last read of "a"
    assert len(tr.feed(lpr("c", "TEST123", 0.9), 46)) == 1


def test_lpr_only_weak_then_good_read_across_ids_is_one_allow_keyed_by_first_id():
    tr = tracker()
    assert tr.feed(lpr("a", "TEST123", 0.5), 0) == []
    d = tr.feed(lpr("b", "TEST123", 0.9), 1)
    assert summary(d) == [("a", "allow", "whitelisted", "TEST123")] and d[0].confidence == 0.9
    assert tr.feed(lpr("c", "TEST123", 0.9), 2) == [] and tr.tick(1000) == []


def test_lpr_only_camera_is_exempt_from_zones_and_ignores_events():
    tr = tracker()
    assert tr.feed(ev("x", "new", zones=(), camera="lpr_cam"), 0) == []
    assert tr.feed(ev("x", "end", zones=(), camera="lpr_cam"), 1) == []
    assert tr.active() == 0
    assert summary(tr.feed(lpr("a", "ZZZ111", 0.9), 2)) == []
    assert summary(tr.tick(7)) == [("a", "deny", "not_whitelisted", "ZZZ111")]


def test_update_storm_gives_one_decision():
    tr = tracker()
    out = tr.feed(ev("s", "new"), 0)
    for i in range(1, 200):
        out += tr.feed(ev("s", plate="TEST123", score=0.93), i * 0.1)
        out += tr.feed(lpr("s", "TEST123", 0.93, camera="gate_cam"), i * 0.1 + 0.01)
        out += tr.tick(i * 0.1 + 0.02)
    out += tr.feed(ev("s", "end", plate="TEST123", score=0.93), 30)
    out += tr.tick(FAR_FUTURE)
    assert summary(out) == [("s", "allow", "whitelisted", "TEST123")]


def test_allow_is_decided_at_first_good_read_without_waiting_for_end():
    tr = tracker()
    assert tr.feed(ev("o", "new"), 0) == []
    assert tr.feed(ev("o", plate="TEST123", score=0.6), 1) == []  # weak read: keep waiting
    d = tr.feed(ev("o", plate="TEST 123", score=0.8), 2)
    assert summary(d) == [("o", "allow", "whitelisted", "TEST123")]
    assert (d[0].plate_raw, d[0].confidence, d[0].detected_at) == ("TEST 123", 0.8, 2)
    assert tr.active() == 0 and tr.next_deadline() is None
    assert tr.feed(ev("o", "end", plate="TEST123", score=0.99), 3) == []


def test_deny_after_max_decision_wait_with_best_read():
    tr = tracker(max_decision_wait=5.0)
    tr.feed(ev("o", "new"), 0)
    tr.feed(ev("o", plate="TEST123", score=0.5), 1)
    tr.feed(ev("o", plate="TEST12", score=0.7), 2)
    tr.feed(ev("o", plate="TEST123", score=0.6), 3)
    tr.feed(ev("o", plate="TEST123", score=None), 4)
    assert tr.next_deadline() == 6.0
    assert tr.tick(5.99) == []
    [d] = tr.tick(6.0)
    assert (d.event_id, d.decision, d.reason, d.plate_raw, d.confidence, d.detected_at) == (
        "o", "deny", "not_whitelisted", "TEST12", 0.7, 2)
    assert d.near_match == "TEST123"
    assert tr.tick(100) == [] and tr.feed(ev("o", "end"), 101) == []


def test_deny_low_confidence_on_end_before_the_wait_runs_out():
    tr = tracker()
    tr.feed(ev("o", "new"), 0)
    tr.feed(ev("o", plate="TEST123", score=0.5), 1)
    tr.feed(ev("o", plate="TEST123", score=0.6), 2)
    [d] = tr.feed(ev("o", "end"), 3)
    assert (d.decision, d.reason, d.confidence, d.detected_at) == ("deny", "low_confidence", 0.6, 2)
    assert tr.tick(FAR_FUTURE) == []


def test_wait_counts_from_gate_entry_when_reads_came_first():
    tr = tracker(max_decision_wait=5.0)
    tr.feed(ev("o", "new", plate="TEST123", score=0.5, zones=()), 0)
    assert tr.tick(50) == []  # not in a gate zone: held
    tr.feed(ev("o", zones=("gate_zone",)), 60)
    assert tr.next_deadline() == 65
    assert tr.tick(64) == []
    assert summary(tr.tick(65)) == [("o", "deny", "low_confidence", "TEST123")]


def test_exactly_one_no_plate_read_on_end():
    tr = tracker()
    out = tr.feed(ev("o", "new"), 0)
    for t in range(1, 10):
        out += tr.feed(ev("o"), t)
    out += tr.feed(ev("o", "end"), 10)
    out += tr.feed(ev("o", "end"), 11)
    out += tr.feed(lpr("o", "TEST123", 0.99, camera="gate_cam"), 12)  # a late read changes nothing
    out += tr.tick(FAR_FUTURE)
    assert [(d.event_id, d.decision, d.reason, d.plate, d.detected_at) for d in out] == [
        ("o", "deny", "no_plate_read", None, 0)]


def test_exactly_one_no_plate_read_on_timeout_without_end():
    tr = tracker(no_read_timeout=60.0)
    tr.feed(ev("o", "new"), 0)
    tr.feed(ev("o"), 30)
    assert tr.next_deadline() == 60
    assert tr.tick(59.9) == []
    assert summary(tr.tick(60)) == [("o", "deny", "no_plate_read", None)]
    assert tr.tick(120) == [] and tr.feed(ev("o", "end"), 121) == [] and tr.active() == 0


def test_object_never_entering_gate_zone_gets_no_decision():
    tr = tracker()
    out = tr.feed(ev("y", "new", zones=("yard",)), 0)
    out += tr.feed(ev("y", plate="TEST123", score=0.99, zones=("yard",)), 1)
    out += tr.tick(500)
    out += tr.feed(ev("y", "end", zones=("yard",)), 501)
    out += tr.tick(FAR_FUTURE)
    assert out == [] and tr.active() == 0


def test_object_without_end_outside_gate_is_forgotten_when_stale():
    tr = tracker(stale_after=600)
    tr.feed(ev("y", "new", zones=()), 0)
    assert tr.next_deadline() == 600
    assert tr.tick(599) == [] and tr.active() == 1
    assert tr.tick(600) == [] and tr.active() == 0
    # forgotten, not closed: it still counts if it drives into the gate later
    assert summary(tr.feed(ev("y", plate="TEST123", score=0.9), 700)) == [("y", "allow", "whitelisted", "TEST123")]


def test_held_read_allows_once_object_enters_gate_zone():
    tr = tracker()
    assert tr.feed(lpr("g", "TEST123", 0.9, camera="gate_cam"), 0) == []  # lpr before the event: held
    assert tr.feed(ev("g", "new", zones=("yard",)), 1) == []
    d = tr.feed(ev("g", zones=("yard",), current=("gate_zone",)), 2)  # current_zones counts too
    assert summary(d) == [("g", "allow", "whitelisted", "TEST123")] and d[0].detected_at == 0


def test_no_gate_zones_means_any_zone_and_lpr_update_alone_decides():
    tr = tracker(gate_zones=[])
    assert summary(tr.feed(lpr("g", "TEST123", 0.9, camera="gate_cam"), 0)) == [
        ("g", "allow", "whitelisted", "TEST123")]
    assert summary(tr.feed(ev("h", "new", zones=()), 1)) == []
    assert summary(tr.feed(ev("h", "end", zones=()), 2)) == [("h", "deny", "no_plate_read", None)]


def test_decided_ids_never_decide_again():
    tr = tracker()
    assert len(tr.feed(ev("o", plate="TEST123", score=0.9), 0)) == 1
    out = []
    for t, m in enumerate([ev("o", "new"), ev("o", plate="ABC987", score=0.99), ev("o", "end"),
                           lpr("o", "TEST123", 0.99, camera="gate_cam"), ev("o", "update")], start=1):
        out += tr.feed(m, t)
        out += tr.tick(t + 0.5)
    out += tr.tick(3000)  # still inside the hour the id is remembered for
    out += tr.feed(ev("o", plate="TEST123", score=0.9), 3500)
    assert out == [] and tr.active() == 0


def test_other_cameras_are_ignored():
    tr = tracker()
    assert tr.feed(ev("o", plate="TEST123", score=0.9, camera="back_yard"), 0) == []
    assert tr.feed(lpr("p", "TEST123", 0.9, camera="back_yard"), 0) == []
    assert tr.active() == 0 and tr.tick(FAR_FUTURE) == []


def test_lenient_judge_never_allows_weak_read():
    from pod.plates import Verdict

    tr = tracker(judge=lambda plate, conf: Verdict("allow", "whitelisted", plate.upper()))
    tr.feed(ev("o", plate="TEST123", score=0.5), 0)
    tr.feed(ev("o", plate="TEST123", score=None), 1)
    [d] = tr.feed(ev("o", "end"), 2)
    assert (d.decision, d.reason, d.confidence) == ("deny", "low_confidence", 0.5)


def test_remembered_ids_are_bounded_in_count_and_time():
    tr = tracker(passage_window=0.001)  # 10 ms apart: separate cars, not one car under many ids
    for i in range(10_050):
        assert len(tr.feed(ev(f"id{i}", plate="TEST123", score=0.9), i * 0.01)) == 1
    assert tr.remembered() == 10_000  # default bound
    assert tr.active() == 0
    # the newest are remembered, the oldest were let go
    assert tr.feed(ev("id10049", plate="TEST123", score=0.9), 200) == []
    assert len(tr.feed(ev("id0", plate="TEST123", score=0.9), 201)) == 1

    small = tracker(max_remembered=50)
    for i in range(200):
        small.feed(ev(f"id{i}", "end"), i)
    assert small.remembered() == 50
    small.tick(199 + 3599)
    assert small.remembered() > 0  # under an hour since the last ones closed
    small.tick(199 + 3600)
    assert small.remembered() == 0


def test_active_passages_are_bounded():
    tr = tracker(max_active=10)
    for i in range(100):
        tr.feed(ev(f"o{i}", "new", zones=("yard",)), i)
    assert tr.active() == 10 and tr.dropped_active == 90


def test_bad_parameters_rejected():
    with pytest.raises(ValueError):
        tracker(max_decision_wait=-1)
    with pytest.raises(ValueError):
        tracker(max_remembered=0)


def test_lpr_only_reread_of_decided_id_after_window_still_dedupes_new_ids():
    tr = tracker()
    assert len(tr.feed(lpr("a", "TEST123", 0.9), 0)) == 1
    assert tr.feed(lpr("a", "TEST123", 0.9), 40) == []  # same tracked object, long after
    assert tr.feed(lpr("b", "TEST123", 0.9), 45) == []  # a new id 5 s after that read: same passage


# ------------------------------------------------------------------ one car, one decision (issue 11)
# Frigate 0.16+ dedicated LPR cameras publish only tracked_object_update lpr messages and start a
# new id when the plate has been unseen for their expire_time (3 s by default), so a car waiting
# at the gate arrives under several ids. The guide's user never marks such a camera lpr_only.

def plain(**kw) -> PassageTracker:
    """A pod as the guide configures it: one camera, no zones, nothing marked lpr_only."""
    args = {"cameras": {"gate_cam": "gate-camera-1"}, "gate_zones": [], "lpr_only_cameras": set(),
            "judge": make_judge(["TEST123", "ABC987"]), "min_confidence": MIN_CONF}
    args.update(kw)
    return PassageTracker(**args)


def test_dedicated_lpr_camera_new_ids_for_a_waiting_car_are_one_allow_without_lpr_only():
    tr = plain()
    out = []
    for i, t in enumerate([0.0, 0.5, 4.0, 4.5, 8.0, 12.0, 16.0, 20.0, 24.0]):  # a new id every ~4 s, 24 s in all
        out += tr.feed(lpr(f"1767225600.{i}-lpr{i}", "TEST 123", 0.9, camera="gate_cam"), t)
    out += tr.tick(30)
    assert summary(out) == [("1767225600.0-lpr0", "allow", "whitelisted", "TEST123")]
    # the car leaves; the same plate 16 s after its last read is a new passage
    assert summary(tr.feed(lpr("1767225700.0-back", "TEST123", 0.9, camera="gate_cam"), 40)) == [
        ("1767225700.0-back", "allow", "whitelisted", "TEST123")]


def test_retracked_car_on_a_normal_camera_is_one_passage():
    tr = plain()
    assert len(tr.feed(ev("car-a", "new", plate="TEST123", score=0.9, zones=()), 0)) == 1
    assert tr.feed(ev("car-a", "end", zones=()), 2) == []
    # Frigate lost and re-found the car: a new id, the same plate, 3 s later
    assert tr.feed(ev("car-b", "new", zones=()), 5) == []
    assert tr.feed(ev("car-b", plate="TEST-123", score=0.95, zones=()), 5.5) == []
    assert tr.feed(ev("car-b", "end", zones=()), 9) == []
    assert tr.tick(1000) == [] and tr.active() == 0


def test_same_plate_on_another_camera_is_another_passage():
    tr = plain(cameras={"gate_cam": "gate-camera-1", "exit_cam": "exit-camera-1"})
    assert len(tr.feed(lpr("a", "TEST123", 0.9, camera="gate_cam"), 0)) == 1
    assert len(tr.feed(lpr("b", "TEST123", 0.9, camera="exit_cam"), 1)) == 1


def test_a_denied_waiting_car_is_allowed_by_a_better_read_under_a_new_id():
    """A deny for a weak read must not lock a resident out while the window slides."""
    tr = plain()
    assert tr.feed(lpr("a", "TEST123", 0.5, camera="gate_cam"), 0) == []
    assert summary(tr.tick(5)) == [("a", "deny", "low_confidence", "TEST123")]
    assert tr.feed(lpr("b", "TEST123", 0.6, camera="gate_cam"), 6) == []  # still weak: no second deny
    assert summary(tr.feed(lpr("c", "TEST123", 0.9, camera="gate_cam"), 7)) == [("c", "allow", "whitelisted",
                                                                                  "TEST123")]
    assert tr.feed(lpr("d", "TEST123", 0.95, camera="gate_cam"), 8) == []  # allowed: nothing more
    assert tr.tick(100) == []


def test_a_weak_read_under_a_new_id_joins_the_undecided_passage():
    tr = tracker()
    assert tr.feed(ev("a", "new", plate="TEST123", score=0.5), 0) == []
    assert tr.feed(ev("b", "new"), 1) == []  # a second object, no read yet
    assert tr.feed(ev("b", plate="TEST123", score=0.6), 2) == []  # folded into "a"
    assert tr.feed(ev("b", "end"), 3) == []  # the folded object's end does not decide "a"
    assert summary(tr.tick(5)) == [("a", "deny", "low_confidence", "TEST123")]
    assert tr.active() == 0 and tr.tick(1000) == []


def test_an_object_with_reads_of_its_own_is_not_folded_in():
    """Folding is for objects the passage explains; one that read another plate first decides
    on its own reads (documented in pod/passages.py)."""
    tr = plain()
    assert tr.feed(ev("a", "new", plate="ABC987", score=0.5, zones=()), 0) == []
    assert summary(tr.feed(ev("b", "new", plate="TEST123", score=0.9, zones=()), 1)) == [
        ("b", "allow", "whitelisted", "TEST123")]
    assert summary(tr.feed(ev("a", plate="TEST123", score=0.9, zones=()), 2)) == [
        ("a", "allow", "whitelisted", "TEST123")]
    assert tr.tick(100) == []


def test_an_object_that_left_without_reaching_the_gate_leaves_no_window():
    tr = tracker()
    assert tr.feed(ev("y", "new", plate="TEST123", score=0.9, zones=("yard",)), 0) == []
    assert tr.feed(ev("y", "end", zones=("yard",)), 1) == []
    assert len(tr.feed(ev("g", "new", plate="TEST123", score=0.9), 2)) == 1


def test_message_without_camera_belongs_to_the_only_camera():
    msg, _ = parse_message("events", json.dumps(
        {"type": "new", "after": {"id": "x1", "label": "car", "recognized_license_plate": ["TEST123", 0.9]}}).encode())
    assert msg.camera is None
    d = plain().feed(msg, 0)
    assert [(x.camera_id, x.frigate_camera) for x in d] == [("gate-camera-1", "gate_cam")]
    two = plain(cameras={"gate_cam": "gate-camera-1", "exit_cam": "exit-camera-1"})
    assert two.feed(msg, 0) == [] and two.active() == 0  # which camera? not ours to guess


GUIDE_EVENT = (Path(__file__).resolve().parents[1] / "data" / "seed" / "mqtt_event.json").read_bytes()


def test_the_guides_mqtt_example_allows_whitelisted_abc123():
    """tests/data/seed/mqtt_event.json verbatim: no id, no camera, a license_plate object with
    sub_label "ABC123" and score 0.95, min_confidence 0.75 (the guide's config)."""
    tr = plain(judge=make_judge(["ABC123"]))
    msg, reason = parse_message("events", GUIDE_EVENT)
    assert reason is None
    [d] = tr.feed(msg, 1767225600.25)
    assert (d.decision, d.reason, d.plate, d.confidence, d.camera_id) == (
        "allow", "whitelisted", "ABC123", 0.95, "gate-camera-1")
    assert d.event_id.startswith("1767225600.250000-noid") and is_event_id(d.event_id)
    # the same message again (a QoS 1 redelivery, a guide-style agent repeating it): one car, one decision
    assert tr.feed(msg, 1767225601.0) == []
    # below min_confidence it is a low_confidence deny, not an allow
    low = json.loads(GUIDE_EVENT)
    low["after"]["score"] = 0.5
    msg, _ = parse_message("events", json.dumps(low).encode())
    tr2 = plain(judge=make_judge(["ABC123"]))
    assert tr2.feed(msg, 0) == []
    assert [(x.decision, x.reason) for x in tr2.tick(10)] == [("deny", "low_confidence")]
