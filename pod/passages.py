"""Turn a stream of Frigate plate reads into one gate decision per passage (pure).

A *passage* is one vehicle going through the gate. Frigate republishes
``update`` for the same tracked object many times per car, may publish the
lpr ``tracked_object_update`` before or after the matching event, and may
never read the plate at all (a car that stops before its plate is read). This
state machine folds all of that into exactly one :class:`PassageDecision` per
tracked-object id, ever; the id is the idempotency key of the detection the
pod sends to the portal.

Time is passed in explicitly as ``now`` (Unix seconds, the pod's clock) so the
logic is testable without sleeping; Frigate's own timestamps are never used
for deadlines because Frigate's clock may differ from the pod's.

Decision rules (issue 3 spec, ``pod/passages.py``):

* allow at once when a read has confidence ≥ ``min_confidence`` and the judge
  allows it;
* otherwise keep the best read (highest confidence, ``None`` lowest) and deny
  with that read's verdict when the object ends or ``max_decision_wait``
  seconds after the first read (counted from when the object was first known
  to be in a gate zone, if that was later);
* a passage with no read at all gets exactly one deny ``no_plate_read`` on end
  or ``no_read_timeout`` seconds after it started;
* with ``gate_zones`` set, only objects whose entered/current zones meet them
  count; reads before the object reaches a gate zone are held, and an object
  that ends without reaching one is dropped silently;
* dedicated-LPR cameras (``lpr_only_cameras``) send only lpr updates, with a
  new id for every sighting: the same camera + normalised plate within
  ``passage_window`` seconds of its last read is one passage (the window
  slides with each read), keyed by the first lpr id.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from pod.frigate import ObjectMessage, PlateRead
from protocol.messages import Decision, Reason

if TYPE_CHECKING:  # pod.plates is only needed for the judge's return type
    from pod.plates import Verdict

__all__ = ["Judge", "PassageDecision", "PassageTracker"]

Judge = Callable[[str, "float | None"], "Verdict"]
"""``judge(plate_raw, confidence) -> Verdict``: usually
``lambda p, c: whitelist.match(p, c, now=utcnow(), min_confidence=…)``."""


class PassageDecision(msgspec.Struct, frozen=True):
    """The one decision for a passage.

    ``event_id`` is the idempotency key: the Frigate tracked-object id, or for a
    dedicated-LPR camera the id of the passage's first lpr update.
    ``frigate_camera`` is Frigate's camera name, ``camera_id`` the pod's.
    ``plate_raw`` is the deciding read as Frigate sent it, ``plate`` its
    normalised form (from the judge's verdict), ``confidence`` its OCR score in
    [0, 1] (all three ``None`` for ``no_plate_read``). ``near_match`` is the
    whitelist plate the read missed narrowly, if any. ``detected_at`` is when
    the pod received the deciding read (Unix seconds, pod clock), or the
    passage start for ``no_plate_read``.
    """

    event_id: str
    frigate_camera: str
    camera_id: str
    plate_raw: str | None
    plate: str | None
    confidence: float | None
    decision: Decision
    reason: Reason
    near_match: str | None
    detected_at: float


@dataclass
class _Read:
    read: PlateRead
    verdict: Any  # pod.plates.Verdict (duck-typed: decision, reason, plate, near_match)
    at: float


@dataclass
class _Passage:
    key: str
    frigate_camera: str
    camera_id: str
    lpr_only: bool
    created_at: float
    last_seen: float
    eligible_at: float | None = None  # first time known to be in a gate zone (or at once if no filter)
    first_read_at: float | None = None
    best: _Read | None = None
    ids: set[str] = field(default_factory=set)

    def deny_deadline(self, wait: float) -> float | None:
        if self.eligible_at is None or self.first_read_at is None:
            return None
        return max(self.first_read_at, self.eligible_at) + wait

    def no_read_deadline(self, timeout: float) -> float | None:
        if self.eligible_at is None or self.best is not None:
            return None
        return self.eligible_at + timeout


class PassageTracker:
    """Fold :class:`~pod.frigate.ObjectMessage` s into :class:`PassageDecision` s.

    ``cameras`` maps Frigate camera names to pod ``camera_id`` s; messages from
    other cameras are ignored. ``gate_zones``: Frigate zone names (empty = any
    zone). ``lpr_only_cameras``: Frigate camera names that send only lpr
    ``tracked_object_update`` s (they are exempt from the zone filter; their
    ``events`` messages are ignored). ``judge(plate_raw, confidence)`` returns a
    ``pod.plates.Verdict``. ``min_confidence`` in [0, 1]. Durations in seconds:
    ``max_decision_wait`` (first read → deny with the best read),
    ``passage_window`` (lpr-only dedupe), ``no_read_timeout`` (start → deny
    ``no_plate_read``), ``stale_after`` (an undecided object not seen for this
    long and not in a gate zone is forgotten), ``remember_for`` (how long
    decided/closed ids are remembered, at most ``max_remembered`` of them,
    oldest forgotten first). ``max_active`` bounds undecided passages (the
    least recently seen is dropped). Raises ``ValueError`` for negative
    durations or non-positive bounds.

    Frigate's ``available`` topic never reaches the tracker: ``offline`` must
    not reset in-flight passages.
    """

    def __init__(
        self,
        *,
        cameras: dict[str, str],
        gate_zones: list[str],
        lpr_only_cameras: set[str],
        judge: Judge,
        min_confidence: float,
        max_decision_wait: float = 5.0,
        passage_window: float = 15.0,
        no_read_timeout: float = 60.0,
        stale_after: float = 600.0,
        remember_for: float = 3600.0,
        max_remembered: int = 10_000,
        max_active: int = 1_000,
    ) -> None:
        for name, value in (("max_decision_wait", max_decision_wait), ("passage_window", passage_window),
                            ("no_read_timeout", no_read_timeout), ("stale_after", stale_after),
                            ("remember_for", remember_for)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
        if max_remembered < 1 or max_active < 1:
            raise ValueError("max_remembered and max_active must be >= 1")
        self._cameras = dict(cameras)
        self._gate_zones = frozenset(gate_zones)
        self._lpr_only = frozenset(lpr_only_cameras)
        self._judge = judge
        self.min_confidence = min_confidence
        self.max_decision_wait = max_decision_wait
        self.passage_window = passage_window
        self.no_read_timeout = no_read_timeout
        self.stale_after = stale_after
        self.remember_for = remember_for
        self.max_remembered = max_remembered
        self.max_active = max_active
        self._active: dict[str, _Passage] = {}  # passage key -> passage
        self._alias: dict[str, str] = {}  # tracked-object id -> passage key (active passages only)
        self._closed: OrderedDict[str, float] = OrderedDict()  # id -> when closed (decided or dropped)
        # lpr-only dedupe: (frigate camera, normalised plate) -> (passage key, last read time)
        self._recent: dict[tuple[str, str], tuple[str, float]] = {}
        self.dropped_active = 0
        """Undecided passages dropped because ``max_active`` was reached."""

    # ----------------------------------------------------------------- public

    def feed(self, msg: ObjectMessage, now: float) -> list[PassageDecision]:
        """Take one parsed message received at ``now`` (Unix s); return the decisions it
        causes (usually none or one). Due deadlines are processed too, as by :meth:`tick`."""
        out = self.tick(now)
        camera_id = self._cameras.get(msg.camera)
        if camera_id is None:
            return out
        if msg.camera in self._lpr_only:
            if msg.kind == "lpr" and msg.read is not None:
                out.extend(self._feed_lpr_only(msg, msg.read, camera_id, now))
            return out
        if msg.id in self._closed:
            return out
        p = self._active.get(msg.id)
        if p is None:
            p = self._open(msg.id, msg.camera, camera_id, lpr_only=False, now=now)
        p.last_seen = now
        if p.eligible_at is None and (not self._gate_zones or self._in_gate(msg)):
            p.eligible_at = now
        if msg.read is not None:
            self._add_read(p, msg.read, now)
        decision = self._maybe_decide(p, now, ended=msg.end)
        if decision is not None:
            out.append(decision)
        elif msg.end and msg.id in self._active:  # ended without reaching a gate zone
            self._close(p, now)
        return out

    def tick(self, now: float) -> list[PassageDecision]:
        """Process deadlines due at ``now`` (Unix s): deny after ``max_decision_wait``,
        ``no_plate_read`` after ``no_read_timeout``, forget stale objects and old ids."""
        out: list[PassageDecision] = []
        for p in list(self._active.values()):
            decision = self._maybe_decide(p, now, ended=False)
            if decision is not None:
                out.append(decision)
            elif p.eligible_at is None and now - p.last_seen >= self.stale_after:
                # never reached a gate zone and went quiet: forget it, but do not
                # remember the id, so it still counts if it moves into the gate later
                self._close(p, now, remember=False)
        self._forget(now)
        return out

    def next_deadline(self) -> float | None:
        """The earliest ``now`` (Unix s) at which :meth:`tick` has something to do for an
        active passage (a decision or forgetting a stale object), or ``None``."""
        best: float | None = None
        for p in self._active.values():
            for d in (p.deny_deadline(self.max_decision_wait), p.no_read_deadline(self.no_read_timeout),
                      p.last_seen + self.stale_after if p.eligible_at is None else None):
                if d is not None and (best is None or d < best):
                    best = d
        return best

    def active(self) -> int:
        """Number of undecided passages being tracked."""
        return len(self._active)

    def remembered(self) -> int:
        """Number of closed (decided or dropped) tracked-object ids remembered."""
        return len(self._closed)

    # ---------------------------------------------------------------- helpers

    def _in_gate(self, msg: ObjectMessage) -> bool:
        return not self._gate_zones.isdisjoint(msg.entered_zones) or not self._gate_zones.isdisjoint(
            msg.current_zones)

    def _open(self, key: str, frigate_camera: str, camera_id: str, *, lpr_only: bool, now: float) -> _Passage:
        while len(self._active) >= self.max_active:
            oldest = min(self._active.values(), key=lambda q: q.last_seen)
            self.dropped_active += 1
            self._close(oldest, now, remember=False)
        p = _Passage(key=key, frigate_camera=frigate_camera, camera_id=camera_id, lpr_only=lpr_only,
                     created_at=now, last_seen=now)
        p.ids.add(key)
        self._active[key] = p
        self._alias[key] = key
        return p

    def _feed_lpr_only(self, msg: ObjectMessage, read: PlateRead, camera_id: str, now: float) -> list[PassageDecision]:
        verdict = self._judge(read.plate_raw, read.score)
        dedupe = (msg.camera, verdict.plate)
        recent = self._recent.get(dedupe)
        recent_key = recent[0] if recent is not None and now - recent[1] <= self.passage_window else None
        if msg.id in self._closed:
            # the same object is still in front of the camera: (re)open the window
            self._recent[dedupe] = (recent_key or msg.id, now)
            return []
        key = self._alias.get(msg.id)
        if key is None and recent_key is not None:
            key = recent_key
            if key in self._closed:  # same plate, same camera, already decided: same passage
                self._remember(msg.id, now)
                self._recent[dedupe] = (key, now)
                return []
            if key in self._active:
                self._active[key].ids.add(msg.id)
                self._alias[msg.id] = key
            else:
                key = None
        if key is None:
            p = self._open(msg.id, msg.camera, camera_id, lpr_only=True, now=now)
            p.eligible_at = now
        else:
            p = self._active[key]
        p.last_seen = now
        self._recent[dedupe] = (p.key, now)
        self._add_read(p, read, now, verdict)
        decision = self._maybe_decide(p, now, ended=False)
        return [decision] if decision is not None else []

    def _add_read(self, p: _Passage, read: PlateRead, now: float, verdict: Any = None) -> None:
        if verdict is None:
            verdict = self._judge(read.plate_raw, read.score)
        if p.first_read_at is None:
            p.first_read_at = now
        r = _Read(read=read, verdict=verdict, at=now)
        if self._allows(r):
            if p.best is None or not self._allows(p.best):
                p.best = r  # the first good read decides
        elif p.best is None or (not self._allows(p.best) and _conf(read.score) > _conf(p.best.read.score)):
            p.best = r

    def _allows(self, r: _Read) -> bool:
        s = r.read.score
        return r.verdict.decision == "allow" and s is not None and s >= self.min_confidence

    def _maybe_decide(self, p: _Passage, now: float, *, ended: bool) -> PassageDecision | None:
        if p.eligible_at is None:
            return None
        if p.best is not None:
            if self._allows(p.best):
                return self._decide(p, p.best, now)
            deadline = p.deny_deadline(self.max_decision_wait)
            if ended or (deadline is not None and now >= deadline):
                return self._decide(p, p.best, now)
            return None
        deadline = p.no_read_deadline(self.no_read_timeout)
        if ended or (deadline is not None and now >= deadline):
            d = PassageDecision(event_id=p.key, frigate_camera=p.frigate_camera, camera_id=p.camera_id,
                                plate_raw=None, plate=None, confidence=None, decision="deny",
                                reason="no_plate_read", near_match=None, detected_at=p.eligible_at)
            self._close(p, now)
            return d
        return None

    def _decide(self, p: _Passage, r: _Read, now: float) -> PassageDecision:
        v = r.verdict
        decision, reason = v.decision, v.reason
        if decision == "allow" and not self._allows(r):  # a lenient judge never opens on a weak read
            decision, reason = "deny", "low_confidence"
        d = PassageDecision(event_id=p.key, frigate_camera=p.frigate_camera, camera_id=p.camera_id,
                            plate_raw=r.read.plate_raw, plate=v.plate, confidence=r.read.score,
                            decision=decision, reason=reason, near_match=v.near_match, detected_at=r.at)
        self._close(p, now)
        return d

    def _close(self, p: _Passage, now: float, *, remember: bool = True) -> None:
        self._active.pop(p.key, None)
        for i in p.ids:
            self._alias.pop(i, None)
            if remember:
                self._remember(i, now)

    def _remember(self, oid: str, now: float) -> None:
        self._closed[oid] = now
        self._closed.move_to_end(oid)
        while len(self._closed) > self.max_remembered:
            self._closed.popitem(last=False)

    def _forget(self, now: float) -> None:
        while self._closed:
            _, at = next(iter(self._closed.items()))
            if now - at < self.remember_for:
                break
            self._closed.popitem(last=False)
        for k, (_, last) in list(self._recent.items()):
            if now - last > self.passage_window:
                del self._recent[k]


def _conf(score: float | None) -> float:
    return -1.0 if score is None else score
