"""pod.plates: normalisation, whitelist matching rules, validity windows, near matches."""

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pod.plates import (
    CONFUSABLE_PAIRS,
    Verdict,
    Whitelist,
    edit_distance,
    fold_confusables,
    normalize_plate,
    parse_time_bound,
)
from protocol.messages import PlateEntry

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
MIN = 0.75


def wl(*entries, version="v1"):
    return Whitelist([e if isinstance(e, PlateEntry) else PlateEntry(plate=e) for e in entries], version)


def m(w, plate, conf=0.9, now=NOW, **kw):
    return w.match(plate, conf, now=now, min_confidence=MIN, **kw)


# --------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("TEST123", "TEST123"),
        ("test123", "TEST123"),
        ("TEST 123", "TEST123"),
        ("  TEST\t123\n", "TEST123"),
        ("TEST\u00a0123", "TEST123"),  # no-break space
        ("TEST\u3000123", "TEST123"),  # ideographic space
        ("TE-ST-123", "TEST123"),
        ("TE.ST.123", "TEST123"),
        ("TE\u00b7ST123", "TEST123"),  # middle dot '·'
        ("TE\u2022ST123", "TEST123"),  # bullet '•'
        ("TE_ST_123", "TEST123"),
        ("- EN 167", "EN167"),  # frigate_plate_recognizer issue #30
        ("\uff34\uff25\uff33\uff34\uff11\uff12\uff13", "TEST123"),  # fullwidth → NFKC
        ("\u2160\u2161", "III"),  # roman numerals Ⅰ Ⅱ → NFKC "I", "II"
        ("abc\u2010123", "ABC\u2010123"),  # hyphen U+2010 is not a listed separator (NFKC keeps it)
        ("", ""),
        (" -.·_ ", ""),
    ],
)
def test_normalize_plate(raw, want):
    assert normalize_plate(raw) == want


def test_b13_spaces_dashes_lowercase_all_normalise_to_same_plate():
    """Shared case B13: 'TEST 123', 'test-123' and 'TE·ST123' are one plate.

    Source: /work/shared/cases/frigate/B13_plate_spaces_dashes_lowercase.json
    (Frigate joins multi-part OCR results with a space and applies no case
    folding; frigate_plate_recognizer issue #30). Values copied here; the shared
    file is not read at test time.
    """
    reads = ["TEST 123", "test-123", "TE\u00b7ST123"]
    assert {normalize_plate(r) for r in reads} == {"TEST123"}
    w = wl("TEST123")
    for r in reads:
        v = m(w, r, 0.93)
        assert (v.decision, v.reason, v.plate) == ("allow", "whitelisted", "TEST123"), r
        assert v.near_match is None
    # and the other way round: a whitelist typed with separators matches a clean read
    assert m(wl("te·st-123"), "TEST123").decision == "allow"


@given(st.text())
@example("A-\u0301")  # removing '-' lets NFKC compose A + combining acute → Á
@example("A\u00b4")  # NFKC turns the spacing acute into ' ' + combining acute
@settings(max_examples=500, deadline=None)
def test_normalize_is_idempotent(raw):
    once = normalize_plate(raw)
    assert normalize_plate(once) == once


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_normalized_has_no_separators_or_lowercase_ascii(raw):
    out = normalize_plate(raw)
    assert not any(ch.isspace() or ch in "-.\u00b7\u2022_" for ch in out)
    assert not any("a" <= ch <= "z" for ch in out)


# --------------------------------------------------------------------------- basic rules

def test_verdict_is_frozen():
    v = m(wl("ABC123"), "ABC123")
    assert isinstance(v, Verdict)
    with pytest.raises(AttributeError):
        v.decision = "deny"  # type: ignore[misc]


def test_whitelisted_allow_carries_entry():
    e = PlateEntry(plate="ab-c 123", unit="4B", tenant="Kim")
    v = m(Whitelist([e], "v7"), "ABC123")
    assert v == Verdict("allow", "whitelisted", "ABC123", None, e)


def test_not_whitelisted():
    v = m(wl("ABC123"), "XYZ999")
    assert (v.decision, v.reason, v.near_match, v.entry) == ("deny", "not_whitelisted", None, None)


def test_empty_whitelist_never_allows():
    w = Whitelist([], "")
    assert len(w) == 0
    v = m(w, "ABC123", 1.0, match_distance=2, confusable_folding=True)
    assert (v.decision, v.reason) == ("deny", "not_whitelisted")


def test_empty_read_never_allows():
    w = wl("ABC123")
    for raw in ("", "   ", "-·-"):
        assert m(w, raw, 1.0, match_distance=2, confusable_folding=True).decision == "deny"


def test_version_len_entries():
    entries = [PlateEntry(plate="A1"), PlateEntry(plate="B2")]
    w = Whitelist(entries, "2026-01-01T00:00:00Z#3")
    assert w.version == "2026-01-01T00:00:00Z#3"
    assert len(w) == 2
    assert w.entries == entries


@pytest.mark.parametrize("conf", [None, 0.0, 0.5, 0.7499, float("nan")])
def test_low_confidence(conf):
    v = m(wl("ABC123"), "ABC123", conf)
    assert (v.decision, v.reason) == ("deny", "low_confidence")
    assert v.entry is not None and v.entry.plate == "ABC123"


def test_confidence_exactly_min_allows():
    assert m(wl("ABC123"), "ABC123", MIN).decision == "allow"


# --------------------------------------------------------------------------- enabled flag

def test_disabled_entry_denies_disabled():
    e = PlateEntry(plate="ABC123", enabled=False)
    v = m(Whitelist([e], "v"), "ABC123", 0.99)
    assert (v.decision, v.reason, v.entry) == ("deny", "disabled", e)


def test_disabled_beats_low_confidence_and_validity():
    e = PlateEntry(plate="ABC123", enabled=False, ends="2000-01-01T00:00:00Z")
    assert m(Whitelist([e], "v"), "ABC123", None).reason == "disabled"


def test_colliding_entries_any_enabled_valid_allows():
    off = PlateEntry(plate="ABC 123", enabled=False)
    expired = PlateEntry(plate="abc-123", ends="2020-01-01T00:00:00Z")
    good = PlateEntry(plate="ABC.123", tenant="ok")
    w = Whitelist([off, expired, good], "v")
    v = m(w, "ABC123")
    assert (v.decision, v.entry) == ("allow", good)
    # without the good one: an enabled entry exists but is out of its window
    v = m(Whitelist([off, expired], "v"), "ABC123")
    assert (v.decision, v.reason, v.entry) == ("deny", "outside_validity", expired)


def test_collisions_reported_at_load():
    w = wl("TEST 123", "test-123", "OTHER1", "TE·ST123")
    assert w.collisions == [("TEST123", ["TEST 123", "test-123", "TE·ST123"])]
    assert wl("A1", "B2").collisions == []


# --------------------------------------------------------------------------- validity window

STARTS = "2026-01-01T08:00:00Z"
ENDS = "2026-01-01T18:00:00Z"
T_START = datetime(2026, 1, 1, 8, 0, 0, tzinfo=UTC)
T_END = datetime(2026, 1, 1, 18, 0, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("now", "want"),
    [
        (T_START - SEC, "outside_validity"),
        (T_START, "whitelisted"),  # starts is inclusive
        (T_START + SEC, "whitelisted"),
        (T_END - SEC, "whitelisted"),
        (T_END, "outside_validity"),  # ends is exclusive
        (T_END + SEC, "outside_validity"),
    ],
)
def test_validity_window_edges(now, want):
    w = Whitelist([PlateEntry(plate="ABC123", starts=STARTS, ends=ENDS)], "v")
    assert m(w, "ABC123", now=now).reason == want


def test_open_bounds():
    only_start = Whitelist([PlateEntry(plate="A1", starts=STARTS)], "v")
    assert m(only_start, "A1", now=T_START - SEC).reason == "outside_validity"
    assert m(only_start, "A1", now=T_START + timedelta(days=3650)).reason == "whitelisted"
    only_end = Whitelist([PlateEntry(plate="A1", ends=ENDS)], "v")
    assert m(only_end, "A1", now=datetime(1990, 1, 1, tzinfo=UTC)).reason == "whitelisted"
    assert m(only_end, "A1", now=T_END).reason == "outside_validity"


def test_bound_without_offset_is_utc():
    w = Whitelist([PlateEntry(plate="A1", starts="2026-01-01T08:00:00", ends="2026-01-01 18:00:00")], "v")
    assert m(w, "A1", now=T_START - SEC).reason == "outside_validity"
    assert m(w, "A1", now=T_START).reason == "whitelisted"
    assert m(w, "A1", now=T_END - SEC).reason == "whitelisted"
    assert m(w, "A1", now=T_END).reason == "outside_validity"
    assert w.invalid == []


def test_bound_with_offset():
    # 10:00+02:00 == 08:00Z ; 20:00+02:00 == 18:00Z
    w = Whitelist([PlateEntry(plate="A1", starts="2026-01-01T10:00:00+02:00", ends="2026-01-01T20:00:00+02:00")], "v")
    assert m(w, "A1", now=T_START - SEC).reason == "outside_validity"
    assert m(w, "A1", now=T_START).reason == "whitelisted"
    assert m(w, "A1", now=T_END).reason == "outside_validity"
    # `now` in another zone compares by instant
    cet = timezone(timedelta(hours=1))
    assert m(w, "A1", now=T_END.astimezone(cet) - SEC).reason == "whitelisted"


def test_naive_now_is_utc():
    w = Whitelist([PlateEntry(plate="A1", starts=STARTS, ends=ENDS)], "v")
    assert m(w, "A1", now=T_START.replace(tzinfo=None)).reason == "whitelisted"
    assert m(w, "A1", now=T_END.replace(tzinfo=None)).reason == "outside_validity"


@pytest.mark.parametrize("bad", ["tomorrow", "", "2026-13-01T00:00:00Z", "2026-13-01", "2026-02-30",
                                 "2026-01-01T25:00:00Z", "2026-01-01T00:00:00+99:99", "1767225600", "2026-1-1",
                                 "2026-01-01Z"])
@pytest.mark.parametrize("field", ["starts", "ends"])
def test_unparseable_bound_is_invalid_never_always_valid(bad, field):
    e = PlateEntry(plate="ABC123", **{field: bad})
    w = Whitelist([e], "v")
    assert [raw for raw, _ in w.invalid] == ["ABC123"]
    assert field in w.invalid[0][1]
    for now in (datetime(1970, 1, 2, tzinfo=UTC), NOW, datetime(2999, 1, 1, tzinfo=UTC)):
        v = m(w, "ABC123", 1.0, now=now)
        assert (v.decision, v.reason) == ("deny", "outside_validity")


def test_unparseable_bound_does_not_block_colliding_valid_entry():
    bad = PlateEntry(plate="ABC123", ends="garbage")
    good = PlateEntry(plate="ABC-123")
    assert m(Whitelist([bad, good], "v"), "ABC123").entry == good


def test_empty_window_and_empty_plate_reported():
    w = Whitelist([PlateEntry(plate="A1", starts=ENDS, ends=STARTS), PlateEntry(plate=" - ")], "v")
    assert len(w.invalid) == 2
    assert m(w, "A1", now=T_START + SEC).reason == "outside_validity"


def test_parse_time_bound():
    assert parse_time_bound("2026-01-01T10:00:00+02:00") == T_START
    assert parse_time_bound("2026-01-01t08:00:00z") == T_START
    assert parse_time_bound("2026-01-01 08:00:00+00") == T_START  # PostgreSQL text form
    assert parse_time_bound("2026-01-01T08:00:00.123Z").tzinfo == UTC
    # a plain date: 00:00 of that day (starts) or of the next day (ends, exclusive), in the zone given
    assert parse_time_bound("2026-01-01") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time_bound("2026-01-01", end=True) == datetime(2026, 1, 2, tzinfo=UTC)
    ny = ZoneInfo("America/New_York")
    assert parse_time_bound("2026-01-01", tz=ny) == datetime(2026, 1, 1, 5, tzinfo=UTC)  # EST, -05:00
    assert parse_time_bound("2026-07-01", tz=ny) == datetime(2026, 7, 1, 4, tzinfo=UTC)  # EDT, -04:00


# --------------------------------------------------------------------------- plain dates (site time)
# The guide's /api/plates example (tests/data/seed/plates_response.json) has date-only bounds,
# as a Postgres `date` column returns them: starts "2025-01-01", ends "2026-01-01".

NY = ZoneInfo("America/New_York")


def dated(starts="2025-01-01", ends="2026-01-01", tz=UTC):
    return Whitelist([PlateEntry(plate="ABC123", starts=starts, ends=ends)], "42", tz=tz)


def at(tz, *args, fold=0):
    return datetime(*args, tzinfo=tz, fold=fold).astimezone(UTC)


@pytest.mark.parametrize("tz", [UTC, NY, ZoneInfo("Asia/Kolkata"), ZoneInfo("Pacific/Chatham")],
                         ids=["UTC", "New_York", "Kolkata", "Chatham"])
def test_plain_dates_cover_both_named_days_whole_in_site_time(tz):
    w = dated(tz=tz)
    assert w.invalid == []
    reason = lambda now: m(w, "ABC123", now=now).reason  # noqa: E731
    assert reason(at(tz, 2024, 12, 31, 23, 59, 59, 999999)) == "outside_validity"  # just before starts
    assert reason(at(tz, 2025, 1, 1)) == "whitelisted"  # starts at local midnight
    assert reason(at(tz, 2025, 6, 15, 12)) == "whitelisted"
    assert reason(at(tz, 2026, 1, 1, 23, 59, 59, 999999)) == "whitelisted"  # the whole ends day counts
    assert reason(at(tz, 2026, 1, 2)) == "outside_validity"  # local midnight after it: over


def test_plain_date_bounds_are_local_not_utc():
    """In New York the day 2026-01-01 ends at 05:00 UTC on the 2nd: a UTC reading would cut
    the evening of the 1st off (and allow the early hours of the 2nd, New York time)."""
    w = dated(tz=NY)
    assert m(w, "ABC123", now=datetime(2026, 1, 2, 4, 59, tzinfo=UTC)).reason == "whitelisted"  # 23:59 in NY
    assert m(w, "ABC123", now=datetime(2026, 1, 2, 5, 0, tzinfo=UTC)).reason == "outside_validity"
    assert m(w, "ABC123", now=datetime(2025, 1, 1, 4, 59, tzinfo=UTC)).reason == "outside_validity"  # 23:59 NY, 31 Dec


@pytest.mark.parametrize(("day", "hours"), [("2025-03-09", 23), ("2025-11-02", 25)],
                         ids=["spring_forward", "fall_back"])
def test_plain_dates_on_dst_changes_cover_the_whole_local_day(day, hours):
    """America/New_York 2025-03-09 has 23 hours, 2025-11-02 has 25: a one-day entry must
    cover exactly that, from local midnight to local midnight."""
    w = dated(starts=day, ends=day, tz=NY)
    y, mo, d = map(int, day.split("-"))
    first = at(NY, y, mo, d)
    assert m(w, "ABC123", now=first - timedelta(microseconds=1)).reason == "outside_validity"
    assert m(w, "ABC123", now=first).reason == "whitelisted"
    last = first + timedelta(hours=hours) - timedelta(microseconds=1)
    assert m(w, "ABC123", now=last).reason == "whitelisted"
    assert m(w, "ABC123", now=last + timedelta(microseconds=1)).reason == "outside_validity"
    assert (last + timedelta(microseconds=1)).astimezone(NY).replace(tzinfo=None) == datetime(y, mo, d + 1)
    if hours == 25:  # the repeated hour (01:00-02:00 twice) is inside, both times
        assert m(w, "ABC123", now=at(NY, y, mo, d, 1, 30, fold=1)).reason == "whitelisted"


def test_midnight_skipped_by_dst_starts_at_the_jump():
    """America/Santiago jumped from 24:00 on 2024-09-07 to 01:00 on 2024-09-08: the day
    has no 00:00, so a plain starts date begins at the jump (04:00 UTC)."""
    santiago = ZoneInfo("America/Santiago")
    assert parse_time_bound("2024-09-08", tz=santiago) == datetime(2024, 9, 8, 4, tzinfo=UTC)
    assert parse_time_bound("2024-09-07", tz=santiago, end=True) == datetime(2024, 9, 8, 4, tzinfo=UTC)


def test_ends_today_is_valid_all_day_and_not_tomorrow():
    now_local = datetime(2026, 12, 4, 18, 30, tzinfo=NY)
    w = dated(starts="2026-12-01", ends=now_local.date().isoformat(), tz=NY)
    assert m(w, "ABC123", now=now_local.astimezone(UTC)).reason == "whitelisted"
    assert m(w, "ABC123", now=at(NY, 2026, 12, 4, 23, 59, 59)).reason == "whitelisted"
    assert m(w, "ABC123", now=at(NY, 2026, 12, 5)).reason == "outside_validity"


def test_plain_dates_mix_with_date_times():
    w = Whitelist([PlateEntry(plate="ABC123", starts="2025-01-01T12:00:00Z", ends="2025-01-02")], "v", tz=NY)
    assert m(w, "ABC123", now=datetime(2025, 1, 1, 11, 59, tzinfo=UTC)).reason == "outside_validity"
    assert m(w, "ABC123", now=datetime(2025, 1, 3, 4, 59, tzinfo=UTC)).reason == "whitelisted"
    assert m(w, "ABC123", now=datetime(2025, 1, 3, 5, 0, tzinfo=UTC)).reason == "outside_validity"


def test_same_plain_date_for_starts_and_ends_is_one_day_not_empty():
    w = dated(starts="2025-05-05", ends="2025-05-05")
    assert w.invalid == []
    assert m(w, "ABC123", now=datetime(2025, 5, 5, 23, tzinfo=UTC)).reason == "whitelisted"


# --------------------------------------------------------------------------- near matches

@pytest.mark.parametrize(("letter", "digit"), CONFUSABLE_PAIRS)
def test_near_match_each_confusable_pair_stays_deny(letter, digit):
    listed = f"AA{letter}123"
    w = wl(listed)
    for read in (f"AA{digit}123",):
        v = m(w, read, 0.99)
        assert (v.decision, v.reason, v.near_match, v.entry) == ("deny", "not_whitelisted", listed, None)
    # and the reverse direction (whitelist has the digit, OCR read the letter)
    w2 = wl(f"AA{digit}123")
    v = m(w2, f"AA{letter}123", 0.99)
    assert (v.decision, v.near_match) == ("deny", f"AA{digit}123")


@pytest.mark.parametrize(
    ("read", "kind"),
    [("ABC1234", "insert"), ("AB123", "delete"), ("ABX123", "substitute"), ("XABC123", "insert at start"),
     ("ABC12", "delete at end")],
)
def test_near_match_edit_distance_one_stays_deny(read, kind):
    v = m(wl("ABC123"), read, 0.99)
    assert (v.decision, v.reason, v.near_match) == ("deny", "not_whitelisted", "ABC123"), kind


def test_no_near_match_at_distance_two():
    assert m(wl("ABC123"), "ABX12", 0.99).near_match is None


def test_near_match_reports_multi_confusable_but_not_folded_distance_one():
    w = wl("SOB123")
    # several confusables at once (raw distance 3) still names the plate, still deny
    v = m(w, "50812 3", 0.99)
    assert (v.decision, v.near_match) == ("deny", "SOB123")
    # confusables plus an unrelated substitution is not "near"
    assert m(w, "50812X", 0.99).near_match is None


def test_match_distance_loosens():
    w = wl("ABC123")
    v = m(w, "ABX123", 0.99, match_distance=1)
    assert (v.decision, v.reason, v.near_match) == ("allow", "whitelisted", "ABC123")
    assert m(w, "AXX123", 0.99, match_distance=1).decision == "deny"
    v = m(w, "AXX123", 0.99, match_distance=2)
    assert (v.decision, v.near_match) == ("allow", "ABC123")
    # fuzzy match still obeys the other rules
    assert m(w, "ABX123", 0.5, match_distance=1).reason == "low_confidence"
    off = Whitelist([PlateEntry(plate="ABC123", enabled=False)], "v")
    assert m(off, "ABX123", 0.99, match_distance=1).reason == "disabled"


def test_confusable_folding_loosens():
    w = wl("SOB123")
    v = m(w, "50B123", 0.99, confusable_folding=True)  # two confusables, distance 2 raw
    assert (v.decision, v.near_match) == ("allow", "SOB123")
    assert m(w, "50B123", 0.99).decision == "deny"
    # folding alone does not accept a non-confusable substitution
    assert m(w, "SOX123", 0.99, confusable_folding=True).decision == "deny"


def test_exact_match_is_authoritative_over_fuzzy():
    off = PlateEntry(plate="ABC123", enabled=False)
    other = PlateEntry(plate="ABC124")
    v = m(Whitelist([off, other], "v"), "ABC123", 0.99, match_distance=1)
    assert (v.decision, v.reason, v.entry) == ("deny", "disabled", off)


def test_ambiguous_fuzzy_match_denies():
    w = wl("ABC123", "ABC124")
    v = m(w, "ABC125", 0.99, match_distance=1)
    assert (v.decision, v.reason) == ("deny", "not_whitelisted")
    assert v.near_match in {"ABC123", "ABC124"}


def test_match_distance_out_of_range():
    with pytest.raises(ValueError):
        m(wl("A1"), "A1", match_distance=3)
    with pytest.raises(ValueError):
        m(wl("A1"), "A1", match_distance=-1)


def test_helpers():
    assert fold_confusables("OISBZG") == "015826"
    assert edit_distance("ABC", "ABC", 0) == 0
    assert edit_distance("ABC", "ABD", 1) == 1
    assert edit_distance("ABC", "AXY", 1) is None
    assert edit_distance("ABC", "", 2) is None
    assert edit_distance("KITTEN", "SITTING", 3) == 3


# --------------------------------------------------------------------------- properties

plates = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -.·abc", min_size=0, max_size=9)
entries_st = st.lists(
    st.builds(
        PlateEntry,
        plate=plates,
        enabled=st.booleans(),
        starts=st.one_of(st.none(), st.just(STARTS), st.just("junk")),
        ends=st.one_of(st.none(), st.just(ENDS), st.just("")),
    ),
    max_size=6,
)
confidences = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
nows = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@given(entries_st, st.text(max_size=12), confidences, nows, st.floats(0.0, 1.0),
       st.integers(0, 2), st.booleans())
@settings(max_examples=400, deadline=None)
def test_match_never_raises_and_never_allows_below_min_confidence(entries, read, conf, now, min_conf, dist, fold):
    w = Whitelist(entries, "v")
    v = w.match(read, conf, now=now, min_confidence=min_conf, match_distance=dist, confusable_folding=fold)
    assert isinstance(v, Verdict)
    assert v.plate == normalize_plate(read)
    if v.decision == "allow":
        assert v.reason == "whitelisted"
        assert conf is not None and conf >= min_conf
        assert v.entry is not None and v.entry.enabled
    else:
        assert v.reason != "whitelisted"


@given(st.text(max_size=12), confidences, nows, st.floats(0.0, 1.0), st.integers(0, 2), st.booleans())
@settings(max_examples=200, deadline=None)
def test_empty_whitelist_never_allows_property(read, conf, now, min_conf, dist, fold):
    v = Whitelist([], "").match(read, conf, now=now, min_confidence=min_conf, match_distance=dist,
                                confusable_folding=fold)
    assert (v.decision, v.reason) == ("deny", "not_whitelisted")


@given(plates, plates)
@settings(max_examples=300, deadline=None)
def test_exact_normalised_equality_allows(listed, read):
    w = Whitelist([PlateEntry(plate=listed)], "v")
    v = w.match(read, 1.0, now=NOW, min_confidence=MIN)
    should = bool(normalize_plate(listed)) and normalize_plate(listed) == normalize_plate(read)
    assert (v.decision == "allow") == should
