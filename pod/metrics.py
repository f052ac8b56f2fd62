"""Prometheus metrics of the pod agent (one registry per process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge

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
