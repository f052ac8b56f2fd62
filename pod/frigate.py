"""Parse Frigate MQTT messages into plate reads (pure; never raises).

Spec source: Frigate MQTT docs v0.12–v0.18 (``docs/docs/integrations/mqtt.md``)
plus what Frigate 0.16+ actually publishes (``frigate/track/tracked_object.py``
``to_dict``). Two topics matter, named here by their suffix after the
configured ``topic_prefix``:

``events``
    ``{"type": "new"|"update"|"end", "before": {...}, "after": {...}}``. Only
    ``after`` is read (``before`` may be missing or null). The plate is
    ``after.recognized_license_plate``, which is a ``[plate, score]`` list in
    the live 0.16+ payload and a string with a sibling
    ``recognized_license_plate_score`` in the docs; both are accepted.
    ``after.sub_label`` is ``null``, ``"name"`` (0.12 and ``/api/events``),
    ``[name, score]`` (0.13+), ``[name, null]`` (set through the HTTP API
    without a score) or ``[null, null]``; it is a plate read only when the
    deployment says so (``plate_source="sub_label"``, third-party recognizer
    mode), because Frigate's own LPR writes the *known_plates name* (e.g.
    ``"John's Car"``) there, not the plate.
    ``after.score`` / ``after.top_score`` are the tracked object's detection
    scores (is this a car?) and are not plate confidence — except for an object
    labelled ``license_plate`` (a plate is the object itself; what the PlateBridge
    POD connection guide's example publishes, and Frigate's dedicated LPR
    cameras), whose ``after.score`` is the confidence of a plate read that has
    none of its own. For such an object a plain-string ``sub_label`` (the guide's
    ``"sub_label": "ABC123"``) is the plate when ``recognized_license_plate`` is
    absent; Frigate's own ``[name, score]`` list there stays a known_plates name.
    ``after.id`` and ``after.camera`` may be missing (the guide's example has
    neither): a message without an id counts only when it carries a plate read
    (the passage tracker names it), one without a camera belongs to the pod's
    only camera.

``tracked_object_update``
    ``{"type": "lpr", "id", "camera", "plate", "score", "name", "timestamp"}``
    (v0.16+; ``plate_box`` from v0.18). Other types (``description``,
    ``face``, ``classification``, …) are skipped. ``name`` is the
    known_plates name and is ignored.

Every other topic (``reviews``, ``triggers``, ``available``…) is skipped.
:func:`parse_message` returns ``(message, None)`` or ``(None, reason)``; the
reason is a short human string for a debug log line and never contains the
payload itself.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Literal

import msgspec

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_PLATE_CHARS",
    "ObjectMessage",
    "PlateRead",
    "PlateSource",
    "parse_message",
]

MAX_PAYLOAD_BYTES = 1 << 20
"""Payloads larger than this (1 MiB) are skipped unparsed; real Frigate events are a few KiB."""

MAX_PLATE_CHARS = 32
"""A plate string longer than this (characters) is not a plausible plate and yields no read."""

PlateSource = Literal["recognized_license_plate", "sub_label"]
LICENSE_PLATE_LABEL = "license_plate"
"""Frigate's object label for a plate itself (Frigate+ models, dedicated LPR cameras, the guide)."""
EventType = Literal["new", "update", "end"]

_EVENT_TYPES: frozenset[str] = frozenset({"new", "update", "end"})
_JSON = msgspec.json.Decoder()


class PlateRead(msgspec.Struct, frozen=True):
    """One OCR read of a plate.

    ``plate_raw`` is the text exactly as Frigate sent it (not normalised, never
    blank); ``score`` is the plate's OCR confidence in [0, 1], or ``None`` when
    the producer gave none (or gave something that is not a finite number in
    [0, 1]); ``source`` names the field it came from.
    """

    plate_raw: str
    score: float | None
    source: Literal["recognized_license_plate", "lpr_update", "sub_label"]


class ObjectMessage(msgspec.Struct, frozen=True):
    """What the passage tracker needs from one Frigate message.

    ``kind`` is ``"event"`` (topic ``events``) or ``"lpr"`` (topic
    ``tracked_object_update`` with ``type: "lpr"``); ``event_type`` is the
    event's ``type`` (``None`` for lpr updates); ``id`` is the Frigate
    tracked-object id (``None`` for an event that had none: then ``read`` is
    set); ``camera`` the Frigate camera name (``None`` when the event named
    none); ``label`` the object
    label (``"car"``…; ``None`` for lpr updates); zones are Frigate zone names
    (empty for lpr updates); ``read`` the plate read, if any; ``end`` is true
    for ``type: "end"``; ``timestamp`` is ``after.frame_time`` or the lpr
    update's ``timestamp`` (Unix seconds, Frigate's clock) or ``None``.
    """

    kind: Literal["event", "lpr"]
    event_type: EventType | None
    id: str | None
    camera: str | None
    label: str | None
    entered_zones: tuple[str, ...]
    current_zones: tuple[str, ...]
    read: PlateRead | None
    end: bool
    timestamp: float | None


Result = tuple[ObjectMessage | None, str | None]


def parse_message(
    topic_suffix: str,
    payload: bytes,
    *,
    plate_source: PlateSource = "recognized_license_plate",
) -> Result:
    """Parse one Frigate MQTT message (Frigate MQTT docs v0.12–v0.18).

    ``topic_suffix`` is the topic after ``<topic_prefix>/`` (``"events"`` or
    ``"tracked_object_update"``; a full topic such as ``"frigate/events"`` is
    accepted too, only its last segment counts). ``payload`` is the raw MQTT
    payload (bytes; ``str``/``bytearray``/``memoryview`` are tolerated).
    ``plate_source`` chooses which event field is the plate:
    ``after.recognized_license_plate`` (Frigate's own LPR, default) or
    ``after.sub_label`` (a third-party recognizer writes the plate there).
    lpr ``tracked_object_update`` messages are plate reads in both modes.

    Returns ``(ObjectMessage, None)`` or ``(None, reason)`` for anything that is
    not a usable event/lpr message: other topics, non-JSON, empty or
    oversized (> :data:`MAX_PAYLOAD_BYTES`) payloads, non-object JSON, a
    missing/null ``after``, an unknown ``type``, an event with neither ``id``
    nor a plate read, an unsafe ``id``, an lpr update without ``id``,
    ``camera`` or plate. Never raises.
    """
    try:
        return _parse(topic_suffix, payload, plate_source)
    except Exception as exc:  # noqa: BLE001 - the MQTT callback must never see an exception
        return None, f"unparseable message ({type(exc).__name__})"


def _parse(topic_suffix: Any, payload: Any, plate_source: Any) -> Result:
    if not isinstance(topic_suffix, str):
        return None, "topic is not a string"
    suffix = topic_suffix.rstrip("/").rsplit("/", 1)[-1]
    if suffix not in ("events", "tracked_object_update"):
        return None, f"topic {suffix[:64]!r} not handled"
    if plate_source not in ("recognized_license_plate", "sub_label"):
        return None, "invalid plate_source"
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    elif isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    if not isinstance(payload, bytes):
        return None, "payload is not bytes"
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, f"payload too large ({len(payload)} bytes > {MAX_PAYLOAD_BYTES})"
    if not payload.strip():
        return None, "empty payload"
    try:
        doc = _JSON.decode(payload)
    except (msgspec.DecodeError, RecursionError, ValueError):
        return None, "payload is not JSON"
    if not isinstance(doc, dict):
        return None, f"payload is a JSON {type(doc).__name__}, not an object"
    if suffix == "events":
        return _parse_event(doc, plate_source)
    return _parse_lpr(doc)


def _parse_event(doc: dict[str, Any], plate_source: str) -> Result:
    etype = doc.get("type")
    if not isinstance(etype, str):
        return None, "event without a string 'type'"
    if etype not in _EVENT_TYPES:
        return None, f"event type {etype[:32]!r} ignored"
    after = doc.get("after")
    if after is None:
        return None, "event without 'after'"
    if not isinstance(after, dict):
        return None, "event 'after' is not an object"
    raw_id = after.get("id")
    oid = _nonblank(raw_id)
    if oid is None and raw_id is not None:
        return None, "event 'after.id' is not a non-blank string"
    if oid is not None and not is_event_id(oid):
        return None, "event id is not a safe tracked-object id (A-Za-z0-9._:- only, at most 128 chars)"
    raw_camera = after.get("camera")
    camera = _nonblank(raw_camera)
    if camera is None and raw_camera is not None:
        return None, "event 'after.camera' is not a non-blank string"
    entered = _zones(after.get("entered_zones"))
    current = _zones(after.get("current_zones"))
    if entered is None or current is None:
        return None, "event zones are not lists"
    label = after.get("label")
    label = label if isinstance(label, str) else None
    plate_object = label == LICENSE_PLATE_LABEL
    if plate_source == "sub_label":
        read = _sub_label_read(after.get("sub_label"))
    else:
        read = _recognized_read(after)
        if read is None and plate_object and isinstance(after.get("sub_label"), str):
            read = _sub_label_read(after.get("sub_label"))  # the guide's {"sub_label": "ABC123"}
    if read is not None and read.score is None and plate_object:
        # a plate object's detection score is the plate's confidence (guide's example: score 0.95)
        read = msgspec.structs.replace(read, score=_score(after.get("score")))
    if oid is None and read is None:
        return None, "event without 'after.id' and without a plate read"
    msg = ObjectMessage(
        kind="event",
        event_type=etype,  # type: ignore[arg-type]
        id=oid,
        camera=camera,
        label=label,
        entered_zones=entered,
        current_zones=current,
        read=read,
        end=etype == "end",
        timestamp=_number(after.get("frame_time")),
    )
    return msg, None


def _parse_lpr(doc: dict[str, Any]) -> Result:
    utype = doc.get("type")
    if not isinstance(utype, str):
        return None, "tracked_object_update without a string 'type'"
    if utype != "lpr":
        return None, f"tracked_object_update type {utype[:32]!r} ignored"
    oid = _nonblank(doc.get("id"))
    if oid is None:
        return None, "lpr update without 'id'"
    if not is_event_id(oid):
        return None, "lpr update id is not a safe tracked-object id (A-Za-z0-9._:- only, at most 128 chars)"
    camera = _nonblank(doc.get("camera"))
    if camera is None:
        return None, "lpr update without 'camera'"
    plate = _plate(doc.get("plate"))
    if plate is None:
        return None, "lpr update without a plate"
    msg = ObjectMessage(
        kind="lpr",
        event_type=None,
        id=oid,
        camera=camera,
        label=None,
        entered_zones=(),
        current_zones=(),
        read=PlateRead(plate_raw=plate, score=_score(doc.get("score")), source="lpr_update"),
        end=False,
        timestamp=_number(doc.get("timestamp")),
    )
    return msg, None


def _recognized_read(after: dict[str, Any]) -> PlateRead | None:
    """``recognized_license_plate`` as ``[plate, score]`` (0.16+ live payload) or a
    string with sibling ``recognized_license_plate_score`` (docs). A list with a
    missing/invalid score falls back to the sibling score. Other shapes: no read."""
    value = after.get("recognized_license_plate")
    sibling = _score(after.get("recognized_license_plate_score"))
    if isinstance(value, list):
        if not value:
            return None
        plate = _plate(value[0])
        score = _score(value[1]) if len(value) > 1 else None
        if score is None:
            score = sibling
    else:
        plate = _plate(value)
        score = sibling
    if plate is None:
        return None
    return PlateRead(plate_raw=plate, score=score, source="recognized_license_plate")


def _sub_label_read(value: Any) -> PlateRead | None:
    """``sub_label`` as ``"name"``, ``[name, score]``, ``[name, null]``, ``[null, null]`` or null."""
    if isinstance(value, list):
        if not value:
            return None
        plate = _plate(value[0])
        score = _score(value[1]) if len(value) > 1 else None
    else:
        plate = _plate(value)
        score = None
    if plate is None:
        return None
    return PlateRead(plate_raw=plate, score=score, source="sub_label")


_EVENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")  # \Z: "$" would accept a trailing newline


def is_event_id(value: str) -> bool:
    """A tracked-object id we can use as idempotency key, HTTP header value and file-name
    part: ``A-Za-z0-9._:-``, 1-128 characters, starting with a letter or digit, no ``..``.
    Frigate's ids (``<frame_time>-<6 random [a-z0-9]>``, e.g. ``1767225600.100001-abc123``)
    always qualify; anything else is refused at parse time, so one odd id can never
    block the outbox or collide with another clip's name."""
    return bool(_EVENT_ID.match(value)) and ".." not in value


def _nonblank(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    return None


def _plate(value: Any) -> str | None:
    plate = _nonblank(value)
    if plate is None or len(plate) > MAX_PLATE_CHARS:
        return None
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in plate):
        return None  # control/format characters and line/paragraph separators (U+2028/9 end a line in
        # JavaScript and str.splitlines): not a plate read (and never into the portal's records or a log line)
    return plate


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _score(value: Any) -> float | None:
    f = _number(value)
    if f is None or not 0.0 <= f <= 1.0:
        return None
    return f


def _zones(value: Any) -> tuple[str, ...] | None:
    """A zone list → tuple of its string items; absent/null → (); other types → None."""
    if value is None:
        return ()
    if not isinstance(value, list):
        return None
    return tuple(z for z in value if isinstance(z, str))
