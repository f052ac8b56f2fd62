"""Prometheus metrics of the pod agent (one registry per process)."""

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

REGISTRY = CollectorRegistry()
SEGMENTS = Counter("platebridge_pod_segments_total", "HLS segments produced", ["camera_id"], registry=REGISTRY)
FFMPEG_RESTARTS = Counter("platebridge_pod_ffmpeg_restarts_total", "ffmpeg restarts", ["camera_id"], registry=REGISTRY)
WATCHDOG_TRIPS = Counter(
    "platebridge_pod_watchdog_trips_total", "Restarts because the playlist stopped advancing", ["camera_id"],
    registry=REGISTRY,
)
SEGMENT_AGE = Gauge("platebridge_pod_last_segment_age_seconds", "Age of the newest segment", ["camera_id"],
                    registry=REGISTRY)
HLS_REQUESTS = Counter(
    "platebridge_pod_hls_requests_total", "HLS requests by kind (playlist/init/segment/part/key/other) and status",
    ["kind", "status"], registry=REGISTRY,
)
MQTT_MESSAGES = Counter("platebridge_pod_mqtt_messages_total", "Frigate MQTT messages by result", ["result"],
                        registry=REGISTRY)
DECISIONS = Counter("platebridge_pod_decisions_total", "Passage decisions", ["decision", "reason"], registry=REGISTRY)
OUTBOX_DEPTH = Gauge("platebridge_pod_outbox_depth", "Detections waiting for the portal", registry=REGISTRY)
HEARTBEATS = Counter("platebridge_pod_heartbeats_total", "Heartbeats by result", ["result"], registry=REGISTRY)
OUTBOX_AGE = Gauge("platebridge_pod_outbox_oldest_age_seconds", "Age of the oldest undelivered detection",
                   registry=REGISTRY)
UPLOADS_CONFIRMED = Gauge("platebridge_pod_uploads_confirmed", "Clips uploaded and confirmed (kept rows)",
                          registry=REGISTRY)
UPLOADS_PENDING = Gauge("platebridge_pod_uploads_pending", "Clips waiting for upload or confirm", registry=REGISTRY)
CLIPS_EVICTED = Gauge("platebridge_pod_clips_evicted", "Clips evicted by the recordings quota", registry=REGISTRY)
PASSAGES_ACTIVE = Gauge("platebridge_pod_passages_active", "Vehicle passages waiting for a decision", registry=REGISTRY)
CLIP_JOBS_ENDED = Counter("platebridge_pod_clip_jobs_ended_total",
                          "Clip jobs that ended without a clip, by state (failed: could not be built; lost: the "
                          "footage was gone after a restart)", ["state"], registry=REGISTRY)


class StateCollector:
    """Metrics read from the pod's state at scrape time (so changes made by other processes,
    e.g. ``platebridge-pod outbox drop``, show too). ``source()`` returns a dict with
    ``parked`` ``{(queue, reason): n}``, ``dropped`` ``{(kind, reason): n}`` (persistent
    counters), ``recovered`` ``{store: n}`` (persistent) and ``clip_jobs`` ``{state: n}``;
    None (no agent running) yields nothing."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, Any]] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.source is None:
            return
        try:
            snap = self.source()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the state file is being healed
            return
        parked = GaugeMetricFamily("platebridge_pod_parked", "Rows set aside (not retried until re-queued), by "
                                   "queue and reason", labels=["queue", "reason"])
        for (queue, reason), n in sorted(snap.get("parked", {}).items()):
            parked.add_metric([queue, reason], n)
        yield parked
        dropped = CounterMetricFamily("platebridge_pod_dropped", "Queued rows dropped for good (caps, operator), by "
                                      "kind and reason, over the state file's life", labels=["kind", "reason"])
        for (kind, reason), n in sorted(snap.get("dropped", {}).items()):
            dropped.add_metric([kind, reason], n)
        yield dropped
        recovered = CounterMetricFamily("platebridge_pod_state_recovered", "Damaged state files moved aside and "
                                        "replaced, by store, over the state file's life", labels=["store"])
        for store, n in sorted(snap.get("recovered", {}).items()):
            recovered.add_metric([store], n)
        yield recovered
        jobs = GaugeMetricFamily("platebridge_pod_clip_jobs", "Clip jobs by state", labels=["state"])
        for state, n in sorted(snap.get("clip_jobs", {}).items()):
            jobs.add_metric([state], n)
        yield jobs


STATE = StateCollector()
REGISTRY.register(STATE)
