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
* one car, one decision, across tracked-object ids: the same camera and the
  same normalised plate within ``passage_window`` seconds of that plate's last
  read is one passage (the window slides with each read), keyed by its first
  id. Frigate 0.16+ dedicated LPR cameras send only lpr updates and start a
  new id whenever the plate was unseen for their ``expire_time`` (about 3 s),
  so a car waiting at the gate shows up under several ids; a normal camera
  that loses and re-finds a car does the same. An object with reads of its own
  is never folded into another passage. After a passage was decided, a new id
  with that plate in the window adds nothing — unless the passage was denied
  and the new read allows: then it gets its own passage, and the gate its
  allow (a deny for a weak read must not lock a waiting resident out);
* dedicated-LPR cameras (``lpr_only_cameras``) are exempt from the zone filter
  and their ``events`` messages are ignored;
* a message without a camera belongs to the only camera, when there is one; a
  message without an id (the PlateBridge POD connection guide's example) gets
  ``<now>-noid<hash>`` as its id.
"""

from __future__ import annotations

import hashlib
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

    ``event_id`` is the idempotency key: the Frigate tracked-object id of the
    passage's first object (several ids of one car on one camera are one
    passage), or ``<now>-noid<hash>`` for a message that had no id.
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
class _Recent:
    """The last read of one (Frigate camera, normalised plate): which passage it went to,
    when (pod clock, Unix s) and that passage's decision once it has one."""

    key: str
    last: float
    decision: Decision | None = None


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
    plates: set[tuple[str, str]] = field(default_factory=set)  # (frigate camera, normalised plate) read

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
    ``passage_window`` (same camera + plate across ids: one passage), ``no_read_timeout`` (start → deny
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
        # id -> (when closed, the passage's decision or None when it ended undecided)
        self._closed: OrderedDict[str, tuple[float, Decision | None]] = OrderedDict()
        # one car, one decision: (frigate camera, normalised plate) -> its last read
        self._recent: dict[tuple[str, str], _Recent] = {}
        self.dropped_active = 0
        """Undecided passages dropped because ``max_active`` was reached."""

    # ----------------------------------------------------------------- public

    def feed(self, msg: ObjectMessage, now: float) -> list[PassageDecision]:
        """Take one parsed message received at ``now`` (Unix s); return the decisions it
        causes (usually none or one). Due deadlines are processed too, as by :meth:`tick`."""
        out = self.tick(now)
        camera = self._camera_of(msg)
        if camera is None:
            return out
        camera_id = self._cameras[camera]
        lpr_only = camera in self._lpr_only
        if lpr_only and msg.kind != "lpr":
            return out  # a dedicated LPR camera's events add nothing to its lpr updates
        oid = msg.id if msg.id is not None else synthetic_id(camera, msg, now)
        verdict = self._judge(msg.read.plate_raw, msg.read.score) if msg.read is not None else None
        plate_key = (camera, verdict.plate) if verdict is not None and verdict.plate else None
        recent = self._recent.get(plate_key) if plate_key is not None else None
        if recent is not None and (self.passage_window <= 0 or now - recent.last > self.passage_window):
            recent = None  # passage_window 0: every tracked object is a passage of its own
        if oid in self._closed:
            if plate_key is not None:  # the same object is still in front of the camera: (re)open the window
                self._recent[plate_key] = (_Recent(recent.key, now, recent.decision) if recent is not None
                                           else _Recent(oid, now, self._closed[oid][1]))
            return out
        key = self._alias.get(oid)
        p = self._active.get(key) if key is not None else None
        if (recent is not None and msg.read is not None and verdict is not None and plate_key is not None
                and (p is None or (p.key != recent.key and p.best is None))):
            # another object with this plate on this camera within passage_window: the same car
            target = self._active.get(recent.key)
            if target is not None:
                if p is not None:
                    self._absorb(target, p)
                else:
                    target.ids.add(oid)
                    self._alias[oid] = target.key
                p = target
            elif recent.decision is not None and (recent.decision == "allow"
                                                  or not self._allows(_Read(msg.read, verdict, now))):
                if p is not None:
                    self._close(p, now, decision=recent.decision)
                else:
                    self._remember(oid, now, recent.decision)
                self._recent[plate_key] = _Recent(recent.key, now, recent.decision)
                return out
            # else: that passage was denied and this read allows — a passage (and a decision) of its own
        if p is None:
            p = self._open(oid, camera, camera_id, lpr_only=lpr_only, now=now)
        p.last_seen = now
        if p.eligible_at is None and (lpr_only or not self._gate_zones or self._in_gate(msg)):
            p.eligible_at = now
        if msg.read is not None:
            self._add_read(p, msg.read, now, verdict)
            if plate_key is not None:
                p.plates.add(plate_key)
                self._recent[plate_key] = _Recent(p.key, now)
        ended = msg.end and oid == p.key  # an object folded into another's passage does not end it
        decision = self._maybe_decide(p, now, ended=ended)
        if decision is not None:
            out.append(decision)
        elif ended and p.key in self._active:  # ended without reaching a gate zone
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

    def _camera_of(self, msg: ObjectMessage) -> str | None:
        """The configured Frigate camera a message belongs to (None: not one of ours). A
        message naming no camera belongs to the only camera, when there is exactly one."""
        if msg.camera is None:
            return next(iter(self._cameras)) if len(self._cameras) == 1 else None
        return msg.camera if msg.camera in self._cameras else None

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

    def _absorb(self, target: _Passage, p: _Passage) -> None:
        """Fold passage ``p`` (an object without reads of its own) into ``target``."""
        del self._active[p.key]
        for i in p.ids:
            target.ids.add(i)
            self._alias[i] = target.key
        if target.eligible_at is None:
            target.eligible_at = p.eligible_at

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
            self._close(p, now, decision="deny")
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
        self._close(p, now, decision=decision)
        return d

    def _close(self, p: _Passage, now: float, *, remember: bool = True, decision: Decision | None = None) -> None:
        """End passage ``p``. ``remember``: keep its ids (later messages for them are
        ignored); ``decision``: what it was decided, kept for its plates' window. A passage
        closed without a decision (dropped, or ended outside the gate zones) leaves no
        window behind: another object with its plate is a passage of its own."""
        self._active.pop(p.key, None)
        for i in p.ids:
            self._alias.pop(i, None)
            if remember:
                self._remember(i, now, decision)
        for plate_key in p.plates:
            r = self._recent.get(plate_key)
            if r is None or r.key != p.key:
                continue
            if remember and decision is not None:
                r.decision = decision
            else:
                del self._recent[plate_key]

    def _remember(self, oid: str, now: float, decision: Decision | None = None) -> None:
        self._closed[oid] = (now, decision)
        self._closed.move_to_end(oid)
        while len(self._closed) > self.max_remembered:
            self._closed.popitem(last=False)

    def _forget(self, now: float) -> None:
        while self._closed:
            _, (at, _) = next(iter(self._closed.items()))
            if now - at < self.remember_for:
                break
            self._closed.popitem(last=False)
        for k, r in list(self._recent.items()):
            if now - r.last > self.passage_window:
                del self._recent[k]


def _conf(score: float | None) -> float:
    return -1.0 if score is None else score


def synthetic_id(camera: str, msg: ObjectMessage, now: float) -> str:
    """An id for a message that had none (the guide's example): ``<now, 6 decimals>-noid`` and
    6 hex digits of SHA-256 over camera and plate text. A safe tracked-object id
    (:func:`pod.frigate.is_event_id`); a redelivery in the same microsecond gets the same one."""
    plate = msg.read.plate_raw if msg.read is not None else ""
    digest = hashlib.sha256(f"{camera}\0{plate}".encode()).hexdigest()[:6]
    return f"{now:.6f}-noid{digest}"
