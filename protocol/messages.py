"""msgspec types for every message of the pod↔portal contract.

Field names follow the seed's portal API (``/api/plates``, ``/api/pod/detect``,
``/api/pod/heartbeat``, ``/api/pod/recordings/*``, ``/api/pod/stream-token``).
Times are RFC 3339 UTC strings on the wire; durations are seconds; sizes are
bytes. Unknown fields from the portal are ignored (forward compatible).

``config_version`` may come as a JSON number (the PlateBridge POD connection
guide shows ``"config_version": 42``, as a Postgres integer column serialises) or
as a string; it is compared as text, so ``42`` and ``"42"`` are the same version.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Decision = Literal["allow", "deny"]
Reason = Literal[
    "whitelisted",
    "not_whitelisted",
    "disabled",
    "outside_validity",
    "low_confidence",
    "no_plate_read",
]


class DetectRequest(msgspec.Struct, omit_defaults=True):
    """``POST /api/pod/detect``. ``event_id`` is the idempotency key (also sent as
    header ``Idempotency-Key``); ``plate`` is the normalised read (None for
    ``no_plate_read``), ``plate_raw`` the text as the recogniser sent it;
    ``confidence`` is 0..1; ``detected_at`` RFC 3339 UTC."""

    site_id: str
    plate: str | None
    camera: str
    pod_name: str
    camera_id: str
    event_id: str
    decision: Decision
    reason: Reason
    detected_at: str
    confidence: float | None = None
    plate_raw: str | None = None
    near_match: str | None = None


class HeartbeatRequest(msgspec.Struct, omit_defaults=True):
    """``POST /api/pod/heartbeat``, one per camera. ``stream_url`` is the pod's
    tailnet URL of the camera's HLS media playlist; ages in seconds, sizes in bytes.
    ``status`` has no default, so it is always on the wire: the guide's portal sets
    ``cameras.status`` from it. ``outbox_parked`` / ``clips_parked``: detections / clips set
    aside by the pod, per reason (``auth``, ``rejected``, ``attempts``, …); ``clips_lost``:
    clip jobs that ended without a clip because the footage was gone after a restart."""

    pod_id: str
    camera_id: str
    stream_url: str
    status: Literal["online", "degraded", "offline"]
    version: str | None = None
    uptime_s: float | None = None
    last_segment_age_s: float | None = None
    outbox_depth: int | None = None
    whitelist_version: str | None = None
    disk_free_bytes: int | None = None
    outbox_parked: dict[str, int] | None = None
    clips_parked: dict[str, int] | None = None
    clips_lost: int | None = None


def version_text(value: str | int | None) -> str | None:
    """A ``config_version`` as text (``42`` → ``"42"``; a string unchanged; None stays None).
    Versions are compared as text: the guide's portal sends a number, others a string."""
    if value is None or isinstance(value, str):
        return value
    return str(value)


class HeartbeatResponse(msgspec.Struct, omit_defaults=True):
    """Heartbeat answer. A ``config_version`` (string or number, normalised to text on
    decode) differing from the cached whitelist's makes the pod refresh at once."""

    success: bool = True
    config_version: str | int | None = None

    def __post_init__(self) -> None:
        self.config_version = version_text(self.config_version)


class PlateEntry(msgspec.Struct, omit_defaults=True):
    """One whitelist entry. ``starts``/``ends`` are RFC 3339 date-times, plain dates
    (``"2025-01-01"``, as a Postgres ``date`` column returns them: a plain ``starts`` is
    from 00:00 and a plain ``ends`` through the end of that day, in the site's local
    time) or None (open); see :mod:`pod.plates` for the rule."""

    plate: str
    unit: str | None = None
    tenant: str | None = None
    enabled: bool = True
    starts: str | None = None
    ends: str | None = None


class PlatesResponse(msgspec.Struct):
    """``GET /api/plates?site=<site_id>&company_id=<company_id>``. ``config_version`` is a
    string or a number on the wire and text after decoding (:func:`version_text`)."""

    config_version: str | int
    entries: list[PlateEntry] = []

    def __post_init__(self) -> None:
        self.config_version = version_text(self.config_version) or ""

    @property
    def version(self) -> str:
        """``config_version`` as text."""
        return str(self.config_version)


class UploadUrlRequest(msgspec.Struct):
    """``POST /api/pod/recordings/upload-url``."""

    camera_id: str
    filename: str


class UploadUrlResponse(msgspec.Struct, omit_defaults=True):
    """Signed upload URL. Supabase's own names (``signedUrl``/``signed_url``, ``path``)
    are accepted too; use :meth:`url` and :meth:`path_or_none` to read them.
    ``expires_in`` is in seconds."""

    upload_url: str | None = None
    signed_url: str | None = None
    signedUrl: str | None = None
    file_path: str | None = None
    path: str | None = None
    expires_in: float | None = None

    def url(self) -> str | None:
        """The upload URL under whichever field name the portal used."""
        return self.upload_url or self.signed_url or self.signedUrl

    def path_or_none(self) -> str | None:
        """The storage path under whichever field name the portal used."""
        return self.file_path or self.path


class RecordingConfirm(msgspec.Struct, omit_defaults=True):
    """``POST /api/pod/recordings/confirm``; ``duration_seconds`` from ffprobe."""

    camera_id: str
    file_path: str
    duration_seconds: float
    event_type: Literal["plate_detection", "motion", "manual"] = "plate_detection"
    plate_number: str | None = None
    event_id: str | None = None
    file_size_bytes: int | None = None


class StreamTokenRequest(msgspec.Struct):
    """``POST /api/pod/stream-token`` (user session auth)."""

    camera_id: str


class StreamTokenResponse(msgspec.Struct, omit_defaults=True):
    """Stream-token answer: the JWT plus the gateway URL to play (``stream_url``),
    ``expires_at`` in Unix seconds and ``expires_in`` in seconds."""

    token: str
    stream_url: str
    expires_at: int
    expires_in: int
    success: bool = True
    watch_url: str | None = None


class Nudge(msgspec.Struct, omit_defaults=True):
    """Body of ``POST /nudge`` (pod) and ``POST /pods/{pod_id}/nudge`` (gateway):
    ask the pod to refresh its whitelist now. ``reason`` ≤ 64 and
    ``config_version`` ≤ 128 characters (they end up in logs)."""

    reason: Annotated[str, msgspec.Meta(max_length=64)] = "whitelist_changed"
    config_version: Annotated[str, msgspec.Meta(max_length=128)] | None = None


ALL_MESSAGES: tuple[type[msgspec.Struct], ...] = (
    DetectRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    PlateEntry,
    PlatesResponse,
    UploadUrlRequest,
    UploadUrlResponse,
    RecordingConfirm,
    StreamTokenRequest,
    StreamTokenResponse,
    Nudge,
)
