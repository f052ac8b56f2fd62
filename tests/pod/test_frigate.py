"""pod.frigate.parse_message: every documented/real Frigate payload shape, malformed input, fuzz.

Payloads come from tests/data/frigate/corpus (copies of Frigate's MQTT docs v0.12–v0.18
examples and third-party fixtures) and tests/data/frigate/B*.json (scenario files).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pod.frigate import MAX_PAYLOAD_BYTES, ObjectMessage, PlateRead, parse_message

DATA = Path(__file__).resolve().parents[1] / "data" / "frigate"
CORPUS = DATA / "corpus"


def enc(obj) -> bytes:
    return json.dumps(obj).encode()


def load(name: str):
    return json.loads((CORPUS / name).read_text())


# file -> (topic suffix, expectation). Expectation is either ("skip", substring of reason)
# or a dict of ObjectMessage fields to check (read given for the default plate_source).
CORPUS_EXPECT = {
    "events_update_docs_v0.12.0.json": ("events", {
        "kind": "event", "event_type": "update", "id": "1607123955.475377-mxklsc", "camera": "front_door",
        "label": "person", "entered_zones": ("yard", "driveway"), "current_zones": ("yard", "driveway"),
        "read": None, "end": False, "timestamp": 1607123962.082975}),
    "events_update_docs_v0.13.0-v0.14.x.json": ("events", {
        "kind": "event", "id": "1607123955.475377-mxklsc", "read": None}),  # sub_label is a face name
    "events_update_docs_v0.15.x.json": ("events", {"kind": "event", "read": None}),
    "events_update_docs_v0.16.0.json": ("events", {
        "kind": "event", "event_type": "update",
        "read": PlateRead("ABC12345", 0.933451, "recognized_license_plate")}),
    "events_update_docs_v0.16.4-v0.18.json": ("events", {
        "kind": "event", "read": PlateRead("ABC12345", 0.933451, "recognized_license_plate")}),
    "third_party_fixture_events_new_person_fpr_fake_event.json": ("events", {
        "kind": "event", "event_type": "new", "id": "1733152597.08157-flkir5", "camera": "driveway_camera",
        "label": "person", "entered_zones": ("mailbox",), "current_zones": ("mailbox",), "read": None,
        "end": False, "timestamp": 1733152600.076167}),
    "reviews_update_docs_v0.14-v0.18.json": ("reviews", ("skip", "not handled")),
    "triggers_docs_v0.17-v0.18.json": ("triggers", ("skip", "not handled")),
    "tracked_object_update_classification_attribute_docs_v0.17-v0.18.json":
        ("tracked_object_update", ("skip", "'classification' ignored")),
    "tracked_object_update_classification_sub_label_docs_v0.17-v0.18.json":
        ("tracked_object_update", ("skip", "'classification' ignored")),
    "tracked_object_update_description_docs_v0.15-v0.18.json":
        ("tracked_object_update", ("skip", "'description' ignored")),
    "tracked_object_update_face_docs_v0.16-v0.18.json": ("tracked_object_update", ("skip", "'face' ignored")),
    "tracked_object_update_lpr_docs_v0.16-v0.17.json": ("tracked_object_update", {
        "kind": "lpr", "event_type": None, "id": "1607123955.475377-mxklsc", "camera": "driveway_cam",
        "label": None, "entered_zones": (), "current_zones": (), "end": False, "timestamp": 1607123958.748393,
        "read": PlateRead("123ABC", 0.95, "lpr_update")}),
    "tracked_object_update_lpr_docs_v0.18.json": ("tracked_object_update", {
        "kind": "lpr", "id": "1607123955.475377-mxklsc", "read": PlateRead("123ABC", 0.95, "lpr_update")}),
    # home-assistant integration fixtures: no id (cannot be an idempotency key) / no plate
    "third_party_fixture_tracked_object_update_lpr_name_only_hass_tests.json":
        ("tracked_object_update", ("skip", "without 'id'")),
    "third_party_fixture_tracked_object_update_lpr_plate_only_hass_tests.json":
        ("tracked_object_update", ("skip", "without 'id'")),
}


def test_corpus_expectations_cover_every_file():
    assert sorted(CORPUS_EXPECT) == sorted(p.name for p in CORPUS.glob("*.json"))


@pytest.mark.parametrize("name", sorted(CORPUS_EXPECT))
def test_corpus_payload(name):
    """Source: tests/data/frigate/corpus/<name> (Frigate MQTT docs / third-party fixtures)."""
    topic, expect = CORPUS_EXPECT[name]
    raw = (CORPUS / name).read_bytes()
    msg, reason = parse_message(topic, raw)
    if isinstance(expect, tuple):
        assert msg is None, name
        assert reason is not None and expect[1] in reason, (name, reason)
        return
    assert reason is None and isinstance(msg, ObjectMessage), (name, reason)
    for key, value in expect.items():
        assert getattr(msg, key) == value, (name, key, getattr(msg, key))
    # the full topic works the same as the suffix
    assert parse_message(f"frigate/{topic}", raw) == (msg, None)


@pytest.mark.parametrize("name", [n for n, (t, e) in CORPUS_EXPECT.items() if t == "events" and isinstance(e, dict)])
def test_corpus_events_in_sub_label_mode(name):
    """Source: tests/data/frigate/corpus/<name>. In sub_label mode the sub_label is the read."""
    after = load(name)["after"]
    msg, reason = parse_message("events", (CORPUS / name).read_bytes(), plate_source="sub_label")
    assert reason is None
    sub = after.get("sub_label")
    if sub is None:
        assert msg.read is None
    else:
        assert msg.read == PlateRead(sub[0], sub[1], "sub_label")


# ---------------------------------------------------------------- event shapes

def event(after_overrides=None, *, etype="update", drop=()):
    """A Frigate 0.16-style event with no plate and no sub_label, then overrides."""
    doc = load("events_update_docs_v0.16.4-v0.18.json")
    doc["type"] = etype
    after = doc["after"]
    after.update(sub_label=None, camera="gate_cam", label="car")
    del after["recognized_license_plate"], after["recognized_license_plate_score"]
    after.update(after_overrides or {})
    for key in drop:
        after.pop(key, None)
    return doc


def read_of(doc, plate_source="recognized_license_plate"):
    msg, reason = parse_message("events", enc(doc), plate_source=plate_source)
    assert reason is None, reason
    return msg.read


@pytest.mark.parametrize(("sub_label", "expected"), [
    pytest.param(..., None, id="absent"),
    pytest.param(None, None, id="null"),
    pytest.param("TEST123", PlateRead("TEST123", None, "sub_label"), id="string"),
    pytest.param(["TEST123", 0.92], PlateRead("TEST123", 0.92, "sub_label"), id="name-score"),
    pytest.param(["TEST123", None], PlateRead("TEST123", None, "sub_label"), id="name-null"),
    pytest.param([None, None], None, id="null-null"),
    pytest.param(["TEST123"], PlateRead("TEST123", None, "sub_label"), id="name-only-list"),
    pytest.param([], None, id="empty-list"),
    pytest.param(["   ", 0.9], None, id="blank-name"),
    pytest.param(["TEST123", "0.9"], PlateRead("TEST123", None, "sub_label"), id="string-score"),
    pytest.param(["TEST123", True], PlateRead("TEST123", None, "sub_label"), id="bool-score"),
    pytest.param(["TEST123", 7], PlateRead("TEST123", None, "sub_label"), id="out-of-range-score"),
    pytest.param({"name": "TEST123"}, None, id="object"),
    pytest.param(42, None, id="number"),
])
def test_sub_label_shapes(sub_label, expected):
    """Source: B07 (string vs list, OldTyT/frigate-telegram#21/#66) and B08 ([name, null])."""
    doc = event(drop=("sub_label",)) if sub_label is ... else event({"sub_label": sub_label})
    assert read_of(doc, "sub_label") == expected
    # never a read in the default mode: Frigate's LPR puts the known_plates *name* there
    assert read_of(doc) is None


def test_sub_label_ignored_unless_plate_source_is_sub_label():
    doc = event({"sub_label": ["TEST123", 0.97], "recognized_license_plate": ["XYZ999", 0.91]})
    assert read_of(doc) == PlateRead("XYZ999", 0.91, "recognized_license_plate")
    assert read_of(doc, "sub_label") == PlateRead("TEST123", 0.97, "sub_label")
    only_sub = event({"sub_label": ["TEST123", 0.97]})
    assert read_of(only_sub) is None


@pytest.mark.parametrize(("fields", "expected"), [
    pytest.param({"recognized_license_plate": ["TEST123", 0.9347]}, ("TEST123", 0.9347), id="list-0.16-live"),
    pytest.param({"recognized_license_plate": "TEST123", "recognized_license_plate_score": 0.9347},
                 ("TEST123", 0.9347), id="string-plus-sibling-docs"),
    pytest.param({"recognized_license_plate": "TEST123"}, ("TEST123", None), id="string-no-score"),
    pytest.param({"recognized_license_plate": ["TEST123", None], "recognized_license_plate_score": 0.8},
                 ("TEST123", 0.8), id="list-null-score-sibling"),
    pytest.param({"recognized_license_plate": ["TEST123"]}, ("TEST123", None), id="list-no-score"),
    pytest.param({"recognized_license_plate": ["TEST 123", 0.93]}, ("TEST 123", 0.93), id="raw-kept"),
    pytest.param({"recognized_license_plate": None}, None, id="null"),
    pytest.param({"recognized_license_plate": ""}, None, id="empty"),
    pytest.param({"recognized_license_plate": ["  ", 0.9]}, None, id="blank"),
    pytest.param({"recognized_license_plate": [None, None]}, None, id="null-null"),
    pytest.param({"recognized_license_plate": []}, None, id="empty-list"),
    pytest.param({"recognized_license_plate": 123456}, None, id="number"),
    pytest.param({"recognized_license_plate": ["X" * 500, 0.9]}, None, id="implausibly-long"),
    pytest.param({"recognized_license_plate": ["TEST123", 1.5]}, ("TEST123", None), id="score-above-1"),
    pytest.param({"recognized_license_plate": ["TEST123", -0.1]}, ("TEST123", None), id="negative-score"),
])
def test_recognized_license_plate_shapes(fields, expected):
    """Source: B11 (frigate v0.16 tracked_object.py sends [plate, score]; docs show string + *_score)."""
    msg, reason = parse_message("events", enc(event(fields)))
    assert reason is None
    assert msg.read == (None if expected is None else PlateRead(*expected, "recognized_license_plate"))


def test_object_scores_are_never_plate_confidence():
    """after.score/top_score say "this is a car", not how sure the OCR is."""
    doc = event({"score": 0.99, "top_score": 0.99, "recognized_license_plate": ["TEST123", None]})
    doc["after"]["snapshot"]["score"] = 0.99
    assert read_of(doc) == PlateRead("TEST123", None, "recognized_license_plate")
    assert read_of(event({"score": 0.99, "top_score": 0.99})) is None
    # a plate score nested in the snapshot is not the tracked object's current read either
    snap = event({"score": 0.99})
    snap["after"]["snapshot"].update(recognized_license_plate="TEST123", recognized_license_plate_score=0.99)
    assert read_of(snap) is None


def test_before_is_never_read():
    doc = event()
    doc["before"]["recognized_license_plate"] = ["TEST123", 0.99]
    assert read_of(doc) is None


@pytest.mark.parametrize("etype", ["new", "update", "end"])
def test_event_types(etype):
    msg, reason = parse_message("events", enc(event({"recognized_license_plate": ["A1", 0.9]}, etype=etype)))
    assert reason is None and msg.event_type == etype and msg.end is (etype == "end") and msg.kind == "event"


def test_unknown_keys_ignored_and_zones_tolerant():
    doc = event({"brand_new_key": {"x": [1, 2]}, "entered_zones": ["gate", 3, None], "current_zones": None})
    doc["also_new"] = True
    msg, reason = parse_message("events", enc(doc))
    assert reason is None and msg.entered_zones == ("gate",) and msg.current_zones == ()


# ---------------------------------------------------------------- lpr updates

@pytest.mark.parametrize(("payload", "expected"), [
    pytest.param({"type": "lpr", "id": "a", "camera": "c", "plate": "TEST123", "score": 0.93, "name": None,
                  "timestamp": 1767225602.0}, PlateRead("TEST123", 0.93, "lpr_update"), id="full-name-null"),
    pytest.param({"type": "lpr", "id": "a", "camera": "c", "plate": "TEST123", "score": 0.93, "name": "Bob's car"},
                 PlateRead("TEST123", 0.93, "lpr_update"), id="with-name"),
    pytest.param({"type": "lpr", "id": "a", "camera": "c", "plate": "TEST123"},
                 PlateRead("TEST123", None, "lpr_update"), id="no-score"),
    pytest.param({"type": "lpr", "id": "a", "camera": "c", "plate": "TEST123", "score": None},
                 PlateRead("TEST123", None, "lpr_update"), id="null-score"),
    pytest.param({"type": "lpr", "id": "a", "camera": "c", "name": "Bob's car", "score": 0.9}, None, id="name-only"),
    pytest.param({"type": "lpr", "id": "a", "camera": "c", "plate": "", "score": 0.9}, None, id="empty-plate"),
    pytest.param({"type": "lpr", "id": "a", "camera": "c", "plate": None}, None, id="null-plate"),
    pytest.param({"type": "lpr", "camera": "c", "plate": "TEST123"}, None, id="no-id"),
    pytest.param({"type": "lpr", "id": "a", "plate": "TEST123"}, None, id="no-camera"),
])
def test_lpr_update(payload, expected):
    msg, reason = parse_message("tracked_object_update", enc(payload))
    if expected is None:
        assert msg is None and reason
    else:
        assert reason is None
        assert (msg.kind, msg.event_type, msg.id, msg.camera, msg.read, msg.end) == ("lpr", None, "a", "c",
                                                                                     expected, False)
        assert msg.timestamp == payload.get("timestamp")
    # the plate_source setting does not change lpr updates
    assert parse_message("tracked_object_update", enc(payload), plate_source="sub_label") == (msg, reason)


def test_lpr_payload_on_events_topic_is_not_an_lpr_read():
    payload = {"type": "lpr", "id": "a", "camera": "c", "plate": "TEST123", "score": 0.9}
    msg, reason = parse_message("events", enc(payload))
    assert msg is None and "'lpr' ignored" in reason


# ---------------------------------------------------------------- malformed (B22)

def b22_payloads():
    case = json.loads((DATA / "B22_malformed_or_partial_messages.json").read_text())
    out = []
    for m in case["messages"]:
        p = m["payload"]
        out.append((m["topic"].split("/", 1)[1], p if isinstance(p, str) else json.dumps(p)))
    return out


B22_REASONS = ["not JSON", "without 'after'", "without 'after'", "'heartbeat' ignored", "empty payload",
               "without 'id'"]


def test_b22_malformed_messages_are_skipped_with_reason():
    """Source: tests/data/frigate/B22_malformed_or_partial_messages.json (badbread/crumbvms frigate.rs;
    frigate-hass-integration tests/test_sensor.py)."""
    payloads = b22_payloads()
    assert len(payloads) == len(B22_REASONS)
    for (topic, text), want in zip(payloads, B22_REASONS):
        msg, reason = parse_message(topic, text.encode())
        assert msg is None and reason is not None and want in reason, (text, reason)


@pytest.mark.parametrize(("topic", "payload", "want"), [
    ("events", b"", "empty"),
    ("events", b"   \n", "empty"),
    ("events", b"not json", "not JSON"),
    ("events", b"{", "not JSON"),
    ("events", b"\xff\xfe", "not JSON"),
    ("events", b"[1, 2]", "not an object"),
    ("events", b"null", "not an object"),
    ("events", b'"online"', "not an object"),
    ("events", b'{"type": "update", "before": {"id": "x", "camera": "c"}}', "without 'after'"),
    ("events", b'{"type": "update", "after": null}', "without 'after'"),
    ("events", b'{"type": "update", "after": [1]}', "not an object"),
    ("events", b'{"type": "update", "after": {"camera": "c"}}', "after.id"),
    ("events", b'{"type": "new", "after": {"camera": "c", "label": "license_plate", "score": 0.9}}', "after.id"),
    ("events", b'{"type": "new", "after": {"id": null, "label": "car", "sub_label": "ABC123"}}', "after.id"),
    ("events", b'{"type": "update", "after": {"id": "", "camera": "c"}}', "after.id"),
    ("events", b'{"type": "update", "after": {"id": 5, "camera": "c"}}', "after.id"),
    ("events", b'{"type": "update", "after": {"id": "x", "camera": ""}}', "after.camera"),
    ("events", b'{"type": "update", "after": {"id": "x", "camera": 7}}', "after.camera"),
    ("events", b'{"type": "update", "after": {"id": "x", "camera": "c", "entered_zones": "gate"}}', "zones"),
    ("events", b'{"after": {"id": "x", "camera": "c"}}', "type"),
    ("events", b'{"type": 1, "after": {"id": "x", "camera": "c"}}', "type"),
    ("events", b'{"type": "NEW", "after": {"id": "x", "camera": "c"}}', "ignored"),
    ("events", b'{"type": "update", "after": {"id": "x", "camera": "c"}} trailing', "not JSON"),
    ("events", b'{"type": "update", "after": {"id": "x", "camera": "c", "frame_time": NaN}}', "not JSON"),
    ("tracked_object_update", b'{"type": "lpr", "camera": "gate_cam"}', "without 'id'"),
    ("tracked_object_update", b'{"id": "x", "camera": "c", "plate": "A"}', "type"),
    ("available", b"online", "not handled"),
    ("reviews", b"{}", "not handled"),
])
def test_malformed_payloads(topic, payload, want):
    msg, reason = parse_message(topic, payload)
    assert msg is None and reason is not None and want in reason, reason


def test_oversized_payload_is_skipped_unparsed():
    doc = event({"recognized_license_plate": ["TEST123", 0.9], "padding": "x" * MAX_PAYLOAD_BYTES})
    msg, reason = parse_message("events", enc(doc))
    assert msg is None and "too large" in reason
    just_fits = event({"recognized_license_plate": ["TEST123", 0.9]})
    assert parse_message("events", enc(just_fits))[0] is not None


def test_non_bytes_and_deep_nesting_do_not_raise():
    assert parse_message("events", None)[0] is None  # type: ignore[arg-type]
    assert parse_message(None, b"{}")[0] is None  # type: ignore[arg-type]
    deep = b"[" * 100_000 + b"]" * 100_000
    assert parse_message("events", deep)[0] is None
    msg, reason = parse_message("events", json.dumps(event({"recognized_license_plate": ["A1", 0.9]})))  # str
    assert reason is None and msg.read.plate_raw == "A1"
    assert parse_message("events", b"{}", plate_source="bogus")[0] is None  # type: ignore[arg-type]


# ---------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
small_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)
field_names = st.sampled_from(["label", "sub_label", "recognized_license_plate", "recognized_license_plate_score",
                               "entered_zones", "current_zones", "frame_time", "score", "top_score", "plate",
                               "name", "timestamp", "snapshot", "before"])
ids = st.text(min_size=1, max_size=12).filter(str.strip)
unit = st.floats(0, 1)
plate_text = st.sampled_from(["TEST123", "test-123", "TE·ST 123", " ", ""]) | st.text(max_size=12)
plate_like = st.one_of(
    plate_text,
    st.tuples(plate_text | st.none(), unit | st.none() | small_json).map(list),
    st.lists(st.one_of(st.none(), st.text(max_size=12), st.floats(-0.5, 1.5), st.integers(-2, 2)), max_size=3),
    small_json,
)
zones = st.lists(st.sampled_from(["gate_zone", "yard"]) | small_json, max_size=3) | small_json
plate_fields = st.fixed_dictionaries({}, optional={
    "sub_label": plate_like, "recognized_license_plate": plate_like,
    "recognized_license_plate_score": unit | small_json, "plate": plate_like, "score": unit | small_json,
    "entered_zones": zones, "current_zones": zones, "frame_time": st.floats(0, 2e9) | small_json,
    "timestamp": st.floats(0, 2e9) | small_json})
near_after = st.builds(lambda base, plates, extra: {**base, **extra, **plates},
                       st.fixed_dictionaries({"id": ids, "camera": ids}), plate_fields,
                       st.dictionaries(field_names, small_json, max_size=2))
event_types = st.sampled_from(["new", "update", "end"] * 3 + ["lpr", None, 1, "NEW"])
lpr_types = st.sampled_from(["lpr"] * 5 + ["face", None, ["lpr"]])
near_valid_event = st.builds(
    lambda t, after, extra: {**extra, "type": t, "after": after},
    event_types, st.one_of(*[near_after] * 6, st.none(), small_json),
    st.dictionaries(st.sampled_from(["before", "id"]), small_json, max_size=2))
near_valid_lpr = st.builds(lambda t, body: {**body, "type": t}, lpr_types, near_after)
near_valid = st.one_of(near_valid_event, near_valid_lpr)
topics = st.sampled_from(["events", "tracked_object_update", "frigate/events", "reviews", "", "/"]) | st.text()
sources = st.sampled_from(["recognized_license_plate", "sub_label"])


def check_result(result):
    msg, reason = result
    assert (msg is None) != (reason is None)
    if msg is not None:
        assert isinstance(msg, ObjectMessage) and msg.id.strip() and msg.camera.strip()
        if msg.read is not None:
            assert msg.read.plate_raw.strip()
            assert msg.read.score is None or 0.0 <= msg.read.score <= 1.0
        assert msg.timestamp is None or math.isfinite(msg.timestamp)
        assert all(isinstance(z, str) for z in msg.entered_zones + msg.current_zones)
    else:
        assert isinstance(reason, str) and reason


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=st.binary(max_size=2048), source=sources)
def test_fuzz_arbitrary_bytes_never_raise(topic, payload, source):
    check_result(parse_message(topic, payload, plate_source=source))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.sampled_from(["events", "tracked_object_update"]), value=json_values, source=sources)
def test_fuzz_arbitrary_json_never_raise(topic, value, source):
    check_result(parse_message(topic, json.dumps(value).encode(), plate_source=source))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(doc=near_valid_event, source=sources)
def test_fuzz_near_valid_events_never_raise(doc, source):
    check_result(parse_message("events", json.dumps(doc).encode(), plate_source=source))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(doc=near_valid_lpr, source=sources)
def test_fuzz_near_valid_lpr_updates_never_raise(doc, source):
    check_result(parse_message("tracked_object_update", json.dumps(doc).encode(), plate_source=source))


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.sampled_from(["events", "tracked_object_update"]), doc=near_valid, source=sources)
def test_fuzz_near_valid_on_either_topic_never_raise(topic, doc, source):
    check_result(parse_message(topic, json.dumps(doc).encode(), plate_source=source))


@settings(max_examples=200)
@given(doc=near_valid)
def test_fuzz_mutated_real_payload(doc):
    real = load("events_update_docs_v0.16.4-v0.18.json")
    mutated = copy.deepcopy(real)
    mutated["type"] = doc.get("type")
    if isinstance(doc.get("after"), dict):
        mutated["after"].update(doc["after"])
    check_result(parse_message("events", json.dumps(mutated).encode()))


@pytest.mark.parametrize("bad_id", ["a\x00b", "café-1", " lead", "x\ny", "..", "../../tmp/x", "col/1", "del\x7f",
                                    "L" * 129, "", "-start"])
def test_unsafe_tracked_object_ids_are_refused(bad_id):
    """Adversarial review: an id that cannot be an HTTP header value or a file-name part
    blocked the in-order outbox forever or collided with another clip's name."""
    import json

    event = {"type": "update", "after": {"id": bad_id, "camera": "gate_cam", "label": "car",
                                         "recognized_license_plate": ["TEST123", 0.93], "entered_zones": []}}
    msg, why = parse_message("events", json.dumps(event).encode())
    assert msg is None and why
    lpr = {"type": "lpr", "id": bad_id, "camera": "gate_cam", "plate": "TEST123", "score": 0.9}
    msg, why = parse_message("tracked_object_update", json.dumps(lpr).encode())
    assert msg is None and why


def test_frigate_style_ids_pass_and_control_characters_are_not_plates():
    import json

    ok = {"type": "lpr", "id": "1767225600.100001-abc123", "camera": "gate_cam", "plate": "TEST123", "score": 0.9}
    msg, _ = parse_message("tracked_object_update", json.dumps(ok).encode())
    assert msg is not None and msg.id == "1767225600.100001-abc123"
    for plate in ("\x1b[31mRED", "TEST\u200b123", "AB\x00C"):
        bad = dict(ok, plate=plate)
        msg, _ = parse_message("tracked_object_update", json.dumps(bad).encode())
        assert msg is None or msg.read is None, plate


# ------------------------------------------------------------------ the guide's example (issue 11)

GUIDE_EVENT = (Path(__file__).resolve().parents[1] / "data" / "seed" / "mqtt_event.json").read_bytes()


def test_guides_example_is_a_plate_read_with_after_score_as_confidence():
    """tests/data/seed/mqtt_event.json, verbatim from the PlateBridge POD connection guide:
    {"type": "new", "after": {"label": "license_plate", "sub_label": "ABC123", "score": 0.95}}.
    A license_plate object's plain-string sub_label is its plate, its score the plate's
    confidence; it names neither id nor camera."""
    for source in ("recognized_license_plate", "sub_label"):
        msg, reason = parse_message("events", GUIDE_EVENT, plate_source=source)
        assert reason is None, reason
        assert (msg.kind, msg.event_type, msg.id, msg.camera, msg.label) == ("event", "new", None, None,
                                                                             "license_plate")
        assert msg.read == PlateRead("ABC123", 0.95, "sub_label")


@pytest.mark.parametrize(("after", "want"), [
    # a plate object's own score fills in a plate without confidence ...
    ({"label": "license_plate", "recognized_license_plate": "ABC123", "score": 0.8}, ("ABC123", 0.8)),
    ({"label": "license_plate", "recognized_license_plate": ["ABC123", None], "score": 0.8}, ("ABC123", 0.8)),
    # ... but never overrides the plate's own confidence
    ({"label": "license_plate", "recognized_license_plate": ["ABC123", 0.6], "score": 0.99}, ("ABC123", 0.6)),
    ({"label": "license_plate", "recognized_license_plate": "ABC123", "recognized_license_plate_score": 0.5,
      "score": 0.99}, ("ABC123", 0.5)),
    # recognized_license_plate wins over the sub_label
    ({"label": "license_plate", "recognized_license_plate": "XYZ9", "sub_label": "ABC123", "score": 0.9},
     ("XYZ9", 0.9)),
    # a car's score is the car's, not the plate's; a car's sub_label is a known_plates name
    ({"label": "car", "recognized_license_plate": "ABC123", "score": 0.99}, ("ABC123", None)),
    ({"label": "car", "sub_label": "ABC123", "score": 0.99}, None),
    # Frigate's own [name, score] list on a plate object stays a name
    ({"label": "license_plate", "sub_label": ["John's Car", 0.9], "score": 0.9}, None),
    # a score outside [0, 1] is no confidence
    ({"label": "license_plate", "sub_label": "ABC123", "score": 95}, ("ABC123", None)),
])
def test_license_plate_object_score_rule(after, want):
    doc = {"type": "update", "after": {"id": "1767225600.1-abc", "camera": "gate_cam", **after}}
    msg, reason = parse_message("events", json.dumps(doc).encode())
    assert reason is None, reason
    got = None if msg.read is None else (msg.read.plate_raw, msg.read.score)
    assert got == want


def test_event_without_camera_parses_with_camera_none():
    msg, reason = parse_message("events", b'{"type": "update", "after": {"id": "x", "label": "car"}}')
    assert reason is None and msg.camera is None and msg.id == "x"
