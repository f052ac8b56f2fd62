"""Plate normalisation and whitelist matching (pure: no I/O, no clock, no logging).

Frigate joins multi-part OCR results with a space and applies no case folding
(Frigate ``license_plate/mixin.py``), and whitelists are typed by people with
whatever separators they like (frigate_plate_recognizer issue #30: ``"EN 167"`` vs
``"- EN 167"``). Both the read and every whitelist entry therefore go through
:func:`normalize_plate` before comparison; the raw text is kept for the record.

Matching is exact on the normalised text by default. Fuzzy matching
(``match_distance`` > 0, ``confusable_folding``) is available but off by
default: a gate opening for the wrong car is worse than asking a resident to
wait for a guard, so a near miss is only *reported* (``Verdict.near_match``) for
the audit log unless the site explicitly opts in.

Time rule for validity bounds (:func:`parse_time_bound`): ``starts``/``ends`` are
RFC 3339 date-times or plain dates. A date-time written without an offset is
taken as UTC. A plain date is a day of the site's local calendar (the pod's
``timezone``, an IANA zone): a plain ``starts`` means from 00:00 of that day, a
plain ``ends`` means through the end of that day (up to 00:00 of the next day),
both in local time, so ``"2025-01-01"``…``"2026-01-01"`` (as the PlateBridge POD
connection guide and a Postgres ``date`` column give them) covers both days
whole, also across DST changes (a day may last 23 or 25 hours). The window is
``[starts, ends)``: ``starts`` inclusive, ``ends`` exclusive. A bound that does
not parse makes the entry invalid (it never allows) — never "always valid".
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal

import msgspec

from protocol.messages import PlateEntry, Reason

# Separators removed from plates, on top of any Unicode whitespace.
_SEPARATORS = frozenset("-.\u00b7\u2022_")  # '-', '.', '·' (middle dot), '•' (bullet), '_'

# OCR-confusable pairs: letter → digit it is mistaken for (and vice versa).
CONFUSABLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("O", "0"), ("I", "1"), ("B", "8"), ("S", "5"), ("Z", "2"), ("G", "6"),
)
_FOLD = str.maketrans(dict(CONFUSABLE_PAIRS))

MAX_MATCH_DISTANCE = 2

_PLAIN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?$"
)


def normalize_plate(raw: str) -> str:
    """Canonical plate text: NFKC, upper case, with Unicode whitespace and the
    separators ``- . · • _`` removed. ``"test-123"`` → ``"TEST123"``; fullwidth
    ``"ＴＥＳＴ１２３"`` → ``"TEST123"``. Idempotent; never raises for a ``str``
    (may return ``""``)."""
    s = raw
    # Iterate to a fixed point: upper-casing or removing a separator can leave
    # text that NFKC would compose differently (e.g. a combining mark after '-').
    for _ in range(8):
        t = unicodedata.normalize("NFKC", s).upper()
        t = "".join(ch for ch in t if not ch.isspace() and ch not in _SEPARATORS)
        if t == s:
            break
        s = t
    return s


def fold_confusables(plate: str) -> str:
    """Map OCR-confusable letters to their digits (O→0, I→1, B→8, S→5, Z→2, G→6)
    on an already normalised plate; two plates that fold equal differ only by
    confusable characters."""
    return plate.translate(_FOLD)


def parse_time_bound(text: str, *, tz: tzinfo = UTC, end: bool = False) -> datetime:
    """Parse one validity bound into an aware UTC datetime.

    ``text`` is an RFC 3339 date-time (``2025-01-01T08:00:00Z``, ``…+02:00``,
    ``2025-01-01 08:00:00+00`` as PostgreSQL prints it; without an offset it is UTC)
    or a plain date ``YYYY-MM-DD``. A plain date is a day in ``tz`` (the site's zone):
    for a ``starts`` bound (``end=False``) the result is the first instant of that
    day (00:00 local), for an ``ends`` bound (``end=True``) the first instant of the
    next day, so the exclusive upper bound keeps the whole named day valid. Both are
    local midnights computed in ``tz`` (never "start + 24 h"), so DST days of 23 or
    25 hours are covered exactly; where a DST jump skips 00:00 the day starts at
    the jump. Raises ``ValueError`` for anything else (leap seconds, junk)."""
    if not isinstance(text, str):
        raise ValueError(f"not a date or RFC 3339 date-time: {text!r}")
    value = text.strip()
    if _PLAIN_DATE.match(value):
        day = date.fromisoformat(value)
        if end:
            day += timedelta(days=1)
        return local_midnight(day, tz)
    if not _RFC3339.match(value):
        raise ValueError(f"not a date or RFC 3339 date-time: {text!r}")
    dt = datetime.fromisoformat(value.upper())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def local_midnight(day: date, tz: tzinfo) -> datetime:
    """The first instant of ``day`` in zone ``tz``, as an aware UTC datetime.

    With ``fold=0`` a wall time that a DST jump skips takes the offset from before
    the jump, which lands exactly on the jump: the first instant the day has."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def edit_distance(a: str, b: str, limit: int) -> int | None:
    """Levenshtein distance between ``a`` and ``b`` (insert/delete/substitute, each
    cost 1) if it is ≤ ``limit``, else ``None``."""
    if abs(len(a) - len(b)) > limit:
        return None
    if a == b:
        return 0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        if min(cur) > limit:
            return None
        prev = cur
    return prev[-1] if prev[-1] <= limit else None


class Verdict(msgspec.Struct, frozen=True):
    """Outcome of :meth:`Whitelist.match`.

    ``plate`` is the normalised read; ``near_match`` is the normalised whitelist
    plate the read missed narrowly (or, with fuzzy matching enabled, the
    non-identical plate it was matched to); ``entry`` is the whitelist entry the
    decision is about (None for ``not_whitelisted``)."""

    decision: Literal["allow", "deny"]
    reason: Reason
    plate: str
    near_match: str | None = None
    entry: PlateEntry | None = None


@dataclass(frozen=True, slots=True)
class _Compiled:
    entry: PlateEntry
    key: str
    starts: datetime | None
    ends: datetime | None
    error: str | None

    def valid_at(self, now: datetime) -> bool:
        if self.error is not None:
            return False
        if self.starts is not None and now < self.starts:
            return False
        return self.ends is None or now < self.ends


def _compile(entry: PlateEntry, tz: tzinfo) -> _Compiled:
    key = normalize_plate(entry.plate)
    bounds: list[datetime | None] = []
    errors: list[str] = []
    for name in ("starts", "ends"):
        value = getattr(entry, name)
        if value is None:
            bounds.append(None)
            continue
        try:
            bounds.append(parse_time_bound(value, tz=tz, end=name == "ends"))
        except (ValueError, TypeError, OverflowError):
            bounds.append(None)
            errors.append(f"unparseable {name} {value!r}")
    starts, ends = bounds
    if not key:
        errors.append("plate is empty after normalisation")
    if starts is not None and ends is not None and starts >= ends:
        errors.append("empty validity window (starts >= ends)")
    return _Compiled(entry, key, starts, ends, "; ".join(errors) or None)


class Whitelist:
    """An immutable, indexed whitelist.

    Built from ``entries`` (``list[PlateEntry]``, the ``/api/plates`` wire form)
    and the portal's ``version`` (``config_version``); ``tz`` is the site's time zone,
    in which plain-date ``starts``/``ends`` are read (default UTC). Never raises on entry
    content: problems are reported in :attr:`collisions` (several raw plates
    normalising to the same text) and :attr:`invalid` (``(raw plate, reason)``
    for entries that can never allow: empty plate, unparseable or empty validity
    window). ``len()`` is the number of entries given.
    """

    def __init__(self, entries: list[PlateEntry] | tuple[PlateEntry, ...] = (), version: str = "",
                 tz: tzinfo = UTC):
        self.version: str = version
        self.tz = tz
        self.entries: list[PlateEntry] = list(entries)
        self._index: dict[str, list[_Compiled]] = {}
        self._by_len: dict[int, list[str]] = {}
        self.invalid: list[tuple[str, str]] = []
        for entry in self.entries:
            c = _compile(entry, tz)
            if c.error is not None:
                self.invalid.append((entry.plate, c.error))
            if not c.key:
                continue
            if c.key not in self._index:
                self._index[c.key] = []
                self._by_len.setdefault(len(c.key), []).append(c.key)
            self._index[c.key].append(c)
        self.collisions: list[tuple[str, list[str]]] = [
            (key, [c.entry.plate for c in group]) for key, group in self._index.items() if len(group) > 1
        ]

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Whitelist(version={self.version!r}, entries={len(self)})"

    def match(
        self,
        plate_raw: str,
        confidence: float | None,
        *,
        now: datetime,
        min_confidence: float,
        match_distance: int = 0,
        confusable_folding: bool = False,
    ) -> Verdict:
        """Decide whether the read ``plate_raw`` (OCR confidence 0..1 or None) opens
        the gate at ``now`` (aware datetime; a naive one is taken as UTC).

        Rules, on normalised text: an exact match is authoritative. For the
        matched plate (several entries may collide on it): no enabled entry →
        deny ``disabled``; no enabled entry inside ``[starts, ends)`` → deny
        ``outside_validity``; confidence None/NaN or < ``min_confidence`` → deny
        ``low_confidence``; else allow ``whitelisted``. No match → deny
        ``not_whitelisted`` with ``near_match`` set to the nearest whitelist
        plate within edit distance 1 or equal after confusable folding.

        ``match_distance`` (0..2) and ``confusable_folding`` loosen matching (off
        by default: a gate opening for the wrong car is worse than asking a
        resident to wait): then the nearest plate within that edit distance (on
        folded text when folding) counts as the match and is named in
        ``near_match``; if several distinct plates tie, the read is ambiguous and
        is denied ``not_whitelisted``. An empty whitelist never allows.
        Raises ``ValueError`` if ``match_distance`` is outside 0..2.
        """
        if not (0 <= match_distance <= MAX_MATCH_DISTANCE):
            raise ValueError(f"match_distance must be 0..{MAX_MATCH_DISTANCE}, got {match_distance}")
        plate = normalize_plate(plate_raw)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        if not plate or not self._index:
            return Verdict("deny", "not_whitelisted", plate)
        exact = self._index.get(plate)
        if exact is not None:
            return self._judge(plate, exact, confidence, now, min_confidence, None)
        if match_distance > 0 or confusable_folding:
            ranked = self._nearby(plate, match_distance, confusable_folding)
            if ranked:
                best = ranked[0][0]
                tied = [key for d, key in ranked if d == best]
                if len(tied) == 1:
                    return self._judge(plate, self._index[tied[0]], confidence, now, min_confidence, tied[0])
                return Verdict("deny", "not_whitelisted", plate, near_match=tied[0])
        near = self._nearby(plate, 1, True, fold_limit=0)
        return Verdict("deny", "not_whitelisted", plate, near_match=near[0][1] if near else None)

    def _nearby(self, plate: str, limit: int, folding: bool, fold_limit: int | None = None) -> list[tuple[int, str]]:
        """Whitelist keys within edit distance ``limit`` of ``plate``, or (when
        ``folding``) within ``fold_limit`` (default ``limit``) of it on
        confusable-folded text; sorted by (distance, key)."""
        folded = fold_confusables(plate) if folding else ""
        flimit = limit if fold_limit is None else fold_limit
        found: list[tuple[int, str]] = []
        for length in range(len(plate) - limit, len(plate) + limit + 1):
            for key in self._by_len.get(length, ()):
                d = edit_distance(plate, key, limit)
                if folding:
                    fd = edit_distance(folded, fold_confusables(key), flimit)
                    if fd is not None and (d is None or fd < d):
                        d = fd
                if d is not None:
                    found.append((d, key))
        found.sort()
        return found

    @staticmethod
    def _judge(
        plate: str,
        group: list[_Compiled],
        confidence: float | None,
        now: datetime,
        min_confidence: float,
        near: str | None,
    ) -> Verdict:
        enabled = [c for c in group if c.entry.enabled]
        if not enabled:
            return Verdict("deny", "disabled", plate, near, group[0].entry)
        valid = [c for c in enabled if c.valid_at(now)]
        if not valid:
            return Verdict("deny", "outside_validity", plate, near, enabled[0].entry)
        if confidence is None or not isinstance(confidence, (int, float)) or math.isnan(confidence) \
                or not (confidence >= min_confidence):
            return Verdict("deny", "low_confidence", plate, near, valid[0].entry)
        return Verdict("allow", "whitelisted", plate, near, valid[0].entry)
