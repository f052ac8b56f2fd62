"""Plate decisions: Frigate messages in, one outbox entry per vehicle passage out.

The I/O shell around the pure pieces: :func:`pod.frigate.parse_message` turns
an MQTT payload into an :class:`~pod.frigate.ObjectMessage`,
:class:`~pod.passages.PassageTracker` decides once per passage against the
cached whitelist (:class:`~pod.whitelist.WhitelistStore`), and every decision
is logged as one structured line and written to the durable
:class:`~pod.outbox.Outbox` **before** any network call, so a detection is
never lost because the portal is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from pod.config import PodConfig
from pod.db import is_corruption
from pod.frigate import parse_message
from pod.metrics import DECISIONS, MQTT_MESSAGES
from pod.outbox import Outbox
from pod.passages import PassageDecision, PassageTracker
from pod.plates import Verdict
from pod.whitelist import WhitelistStore
from protocol.messages import DetectRequest

log = logging.getLogger("platebridge.pod.decisions")
#: Frigate camera names, not this pod's, that are each logged once (a Frigate may have dozens)
OTHER_CAMERAS_LOGGED = 32
decision_log = logging.getLogger("platebridge.pod.decision")


def rfc3339(ts: float) -> str:
    """Unix seconds → RFC 3339 UTC with milliseconds (``2026-11-30T02:18:33.120Z``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def detect_request(cfg: PodConfig, d: PassageDecision) -> DetectRequest:
    """The portal's ``POST /api/pod/detect`` body for a decision (seed fields + ours)."""
    return DetectRequest(
        site_id=cfg.site_id, plate=d.plate, camera=d.frigate_camera, pod_name=cfg.pod_name or cfg.pod_id,
        camera_id=d.camera_id, event_id=d.event_id, decision=d.decision, reason=d.reason,
        detected_at=rfc3339(d.detected_at), confidence=d.confidence, plate_raw=d.plate_raw, near_match=d.near_match,
    )


class DecisionEngine:
    """Feeds MQTT messages through the tracker and enqueues every decision.

    ``on_enqueued`` is called after each new outbox row (the sender's ``wake``);
    ``on_decision`` (optional) sees every decision (e.g. the recorder, whose clip job row is
    then written in the detection's transaction); its exceptions are logged.
    ``clock`` returns Unix seconds.
    """

    def __init__(
        self,
        cfg: PodConfig,
        store: WhitelistStore,
        outbox: Outbox,
        *,
        on_enqueued: Callable[[], None] = lambda: None,
        on_decision: Callable[[PassageDecision], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.store, self.outbox = cfg, store, outbox
        self.on_enqueued, self.on_decision, self.clock = on_enqueued, on_decision, clock
        cams = cfg.camera_list()
        self._ours = {c.frigate_camera or c.camera_id: c.camera_id for c in cams}
        self._others_logged: set[str] = set()
        self.tracker = PassageTracker(
            cameras=dict(self._ours),
            gate_zones=list(cfg.gate_zones),
            lpr_only_cameras={c.frigate_camera or c.camera_id for c in cams if c.lpr_only},
            judge=self._judge,
            min_confidence=cfg.min_confidence,
            max_decision_wait=cfg.max_decision_wait,
            passage_window=cfg.passage_window,
            no_read_timeout=cfg.no_read_timeout,
        )
        self._wakeup = asyncio.Event()
        self.skipped = 0

    def _judge(self, plate_raw: str, confidence: float | None) -> Verdict:
        return self.store.current.match(
            plate_raw, confidence, now=datetime.now(UTC), min_confidence=self.cfg.min_confidence,
            match_distance=self.cfg.match_distance, confusable_folding=self.cfg.confusable_folding,
        )

    def handle(self, topic_suffix: str, payload: bytes) -> None:
        """MQTT handler: parse, track, enqueue. Malformed messages are logged and skipped."""
        msg, why = parse_message(topic_suffix, payload, plate_source=self.cfg.plate_source)
        if msg is None:
            self.skipped += 1
            MQTT_MESSAGES.labels("skipped").inc()
            log.info("skipped MQTT message on %s: %s", topic_suffix, why)
            return
        MQTT_MESSAGES.labels("parsed").inc()
        if msg.camera is None and len(self.cfg.camera_list()) > 1:
            self.skipped += 1
            log.warning("skipped MQTT message on %s: it names no camera and this pod has %d; a message "
                        "without 'camera' counts only on a one-camera pod", topic_suffix, len(self.cfg.camera_list()))
            return
        if msg.camera is not None and msg.camera not in self._ours:
            self._other_camera(msg.camera)
        self._emit(self.tracker.feed(msg, self.clock()))
        self._wakeup.set()  # a new deadline may be earlier than the one the timer sleeps on

    def _other_camera(self, name: str) -> None:
        """Say once per Frigate camera name (at most :data:`OTHER_CAMERAS_LOGGED` names) that its
        messages are not this pod's: normal for a Frigate with more cameras than the gate's, and
        the only sign of a ``frigate_camera`` that does not match Frigate's name for the camera."""
        MQTT_MESSAGES.labels("other_camera").inc()
        if name in self._others_logged or len(self._others_logged) >= OTHER_CAMERAS_LOGGED:
            return
        self._others_logged.add(name)
        ours = ", ".join(sorted(self._ours))
        log.info("MQTT messages from Frigate camera %r are not for this pod: it decides for Frigate camera(s) %s "
                 "(frigate_camera in the config, or camera_id when that is not set)", name[:64], ours)

    def _enqueue(self, d: PassageDecision, body: bytes) -> bool:
        """Write the detection and (through ``on_decision``, e.g. the recorder's clip job) what
        goes with it in one transaction: durable together. A damaged state file is healed
        and the write tried once more (a detection is never lost to a bad SD card sector)."""
        for attempt in (1, 2):
            try:
                with self.outbox.transaction():
                    fresh = self.outbox.put("detect", d.event_id, body, self.clock())
                    if self.on_decision is not None:
                        try:
                            self.on_decision(d)
                        except Exception:
                            log.exception("decision %s: on_decision failed (the detection is queued)", d.event_id)
                return fresh
            except sqlite3.DatabaseError as exc:
                if attempt == 2 or not is_corruption(exc):
                    raise
                self.outbox.state.heal(exc)
        return False  # not reached

    def _emit(self, decisions: list[PassageDecision]) -> None:
        for d in decisions:
            req = detect_request(self.cfg, d)
            try:
                fresh = self._enqueue(d, msgspec.json.encode(req))
            except sqlite3.Error as exc:
                fresh = False
                log.error("decision %s (%s, %s) could NOT be queued for the portal: %s", d.event_id, d.decision,
                          d.plate, exc)
            DECISIONS.labels(d.decision, d.reason).inc()
            decision_log.info(json.dumps({
                "event": "decision", "event_id": d.event_id, "camera_id": d.camera_id, "decision": d.decision,
                "reason": d.reason, "plate": d.plate, "plate_raw": d.plate_raw, "confidence": d.confidence,
                "near_match": d.near_match, "whitelist_version": self.store.version, "queued": fresh,
            }, ensure_ascii=False))
            if fresh:
                self.on_enqueued()

    async def run_timer(self, stop: asyncio.Event) -> None:
        """Decide passages whose deadline passed (max_decision_wait, no_read_timeout)."""
        while not stop.is_set():
            deadline = self.tracker.next_deadline()
            timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - self.clock()))
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)
            self._emit(self.tracker.tick(self.clock()))
