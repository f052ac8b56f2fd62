"""Pod configuration: msgspec-validated YAML.

The seed's single-camera ``config.yaml`` loads unchanged: ``camera_id`` +
``camera_rtsp_url`` (+ optional ``frigate_camera``) become one entry of
``cameras``. New keys: ``stream_bind``, ``hls_dir``, ``hls_segment_seconds``,
``cameras`` and the tunables below. Every error names the key path
(``$.cameras[0].rtsp_url``) and the reason; the CLI exits with code 2.

Keys: a pod holds only the gateway's Ed25519 **public** key(s)
(``gateway_public_keys``), which verify gateway→pod tokens and can mint nothing. The
guide's single shared ``stream_secret`` still loads (legacy: gateway→pod tokens
checked with HS256), with a warning at start and in ``pod check``, because with it a
stolen pod can mint tokens for every camera.

Tunables live here and nowhere else.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from pod.errors import BindRefused, ConfigError
from protocol.ids import TAILNET_V4, TAILNET_V6, is_camera_id, is_dns_label
from protocol.tokens import Keyring, PublicKeyring, VerifyKeys
from protocol.yamlconf import ConfigValueError, check_known_keys, convert_config, http_url_problem, load_yaml

LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")

SegmentType = Literal["fmp4", "mpegts"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
PlateSource = Literal["recognized_license_plate", "sub_label"]
Transcode = Literal["copy", "h264"]
MqttProtocol = Literal["5", "3.1.1"]


class CameraConfig(msgspec.Struct, forbid_unknown_fields=True):
    """One camera: ``camera_id`` (URL/file safe), its RTSP URL and its name in Frigate
    (``frigate_camera``, defaults to ``camera_id``). ``lpr_only`` marks a dedicated
    LPR camera that publishes only ``tracked_object_update`` lpr messages.
    ``transcode``: ``copy`` (default: the camera's video as it is) or ``h264``
    (re-encode with libx264 — for H.265/HEVC cameras, which most browsers cannot
    play through hls.js; CPU-heavy on a Raspberry Pi). With ``h264`` only, the
    guide's low-bandwidth tip (``-b:v 500k``): ``video_bitrate`` caps the video at
    that many bits/s (an integer, or ``"500k"``/``"1.5M"``; normalised to an integer)
    and ``max_height`` scales larger pictures down to that many lines (aspect kept,
    never scaled up)."""

    camera_id: str
    rtsp_url: str
    frigate_camera: str | None = None
    name: str | None = None
    position: str | None = None
    lpr_only: bool = False
    transcode: Transcode = "copy"
    video_bitrate: int | str | None = None  # bits/s; "500k" and "1.5M" accepted
    max_height: int | None = None  # lines


class PodConfig(msgspec.Struct, kw_only=True):
    """The whole pod configuration. Durations are seconds, sizes bytes."""

    # --- seed keys (config.yaml of the original agent) ---
    portal_url: str
    pod_api_key: str
    pod_id: str
    site_id: str  # required: the portal refuses detections without it
    company_id: str = ""
    community_id: str | None = None
    pod_name: str | None = None
    camera_id: str | None = None
    camera_name: str | None = None
    camera_position: str | None = None
    camera_rtsp_url: str | None = None
    frigate_camera: str | None = None
    min_confidence: float = 0.75
    enable_streaming: bool = True
    stream_port: int = 8000
    stream_secret: str | None = None
    public_ip: str = "auto"  # seed key; superseded by stream_bind, accepted and ignored
    record_on_detection: bool = True
    recordings_dir: str = "/var/lib/platebridge/recordings"
    recording_duration: float = 30.0
    enable_mqtt: bool = True
    mqtt_host: str = "localhost"
    mqtt_port: int = 1883
    mqtt_topic: str = "frigate/events"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    frigate_url: str = "http://localhost:5000"
    save_snapshots: bool = True
    whitelist_refresh_interval: float = 300.0
    heartbeat_interval: float = 60.0

    # --- streaming (live-view issue) ---
    stream_bind: str = "auto"
    stream_secrets: dict[str, str] | None = None  # legacy: kid -> secret, for rotation
    stream_secret_primary: str | None = None
    # the gateway's Ed25519 public key(s) that sign gateway→pod tokens: kid -> PEM text or path to a PEM file
    gateway_public_keys: dict[str, str] | None = None
    gateway_public_key: str | None = None  # one key, kid "default"
    max_clock_skew: float = 30.0  # gateway↔pod clock difference tolerated on a token's iat/nbf (s)
    tailscale_socket: str = "/var/run/tailscale/tailscaled.sock"
    tailnet_wait_seconds: float = 0.0  # 0 = wait forever for the tailnet IP
    cameras: list[CameraConfig] | None = None
    state_dir: str = "/var/lib/platebridge"
    hls_dir: str = "/var/lib/platebridge/hls"
    hls_segment_seconds: float = 2.0
    hls_list_size: int = 6
    hls_keep_extra_segments: int | None = None  # kept past the playlist window; default: enough for a clip
    hls_segment_type: SegmentType = "fmp4"
    low_latency: bool = True  # LL-HLS parts, blocking reloads, preload hints (fmp4 only)
    part_seconds: float = 0.2  # LL-HLS part target; rounded down to whole frames, never below one frame
    hls_max_bytes: int = 512 * 1024 * 1024  # bound of each camera's HLS buffer on disk
    ffmpeg_path: str = "ffmpeg"
    rtsp_timeout_seconds: float = 10.0
    restart_backoff_initial: float = 1.0
    restart_backoff_max: float = 5.0  # a returning camera is picked up within this (issue 6: <= 10 s)
    watchdog_factor: float = 3.0  # restart when the playlist is stale for factor x target duration
    log_level: LogLevel = "INFO"
    timezone: str | None = None  # the site's IANA zone for plain-date whitelist bounds; default: the system's

    # --- plate decisions (MQTT, whitelist, outbox, heartbeat) ---
    mqtt_topic_prefix: str | None = None  # default: from mqtt_topic ("frigate/events" -> "frigate")
    mqtt_client_id: str | None = None  # default: platebridge-<pod_id>; never "frigate"
    mqtt_keepalive: int = 30
    mqtt_protocol: MqttProtocol = "5"  # "3.1.1" for brokers without MQTT 5 (no size limit before buffering)
    plate_source: PlateSource = "recognized_license_plate"
    gate_zones: list[str] = []
    passage_window: float = 15.0  # same camera + plate within this many seconds: one passage; 0 = off
    max_decision_wait: float = 5.0
    no_read_timeout: float = 60.0
    match_distance: int = 0
    confusable_folding: bool = False
    whitelist_cache: str | None = None  # default: <state_dir>/whitelist.json
    outbox_path: str | None = None  # default: <state_dir>/outbox.sqlite3
    outbox_max_items: int = 10_000  # pending detections kept; beyond, the oldest are dropped (counted)
    portal_timeout: float = 10.0

    # --- durable queues: outbox (detections), uploads (clips), clip jobs ---
    outbox_max_parked: int = 10_000  # parked detections kept (own cap, apart from outbox_max_items)
    outbox_concurrency: int = 4  # detections in flight to the portal at once
    outbox_max_attempts: int = 10  # failures while others go through before a detection is parked
    outbox_retry_initial: float = 0.25  # s: pause after a failed delivery (one probe per pause), doubling ...
    outbox_retry_max: float = 10.0  # ... up to this (also the longest wait once the portal is back)
    upload_concurrency: int = 1  # clip steps in flight at once (uploads share the pod's uplink)
    upload_max_attempts: int = 10
    upload_retry_initial: float = 2.0
    upload_retry_max: float = 120.0
    upload_max_put_refusals: int = 8  # fresh signed URLs storage may refuse before a clip is parked
    queue_idle_poll: float = 2.0  # s: how soon rows re-queued by `platebridge-pod outbox retry` are seen
    clip_max_pending: int = 16  # clip jobs running at once (waiting for post-roll or building); more wait
    clip_max_concurrent: int = 2  # clip builds (ffmpeg) at once

    # --- clips (recording on detection) ---
    pre_roll: float = 5.0  # seconds before the plate read
    recordings_max_bytes: int = 2 * 1024**3
    recordings_min_free_bytes: int = 500 * 1024**2  # never let clips push free space below this

    def camera_list(self) -> list[CameraConfig]:
        """The cameras, with the seed's single-camera keys folded in."""
        assert self.cameras is not None  # normalised by load_config
        return self.cameras

    def site_tz(self) -> tzinfo:
        """The site's time zone: ``timezone`` (IANA name, validated by :func:`parse_config`),
        else the pod's system zone (:func:`system_timezone`)."""
        return ZoneInfo(self.timezone) if self.timezone else system_timezone()

    def secrets(self) -> dict[str, str]:
        """kid → legacy stream secret (``POD_STREAM_SECRET`` env wins over ``stream_secret``)."""
        out = dict(self.stream_secrets or {})
        single = os.environ.get("POD_STREAM_SECRET") or self.stream_secret
        if single:
            out.setdefault("default", single)
        return out

    def public_key_sources(self) -> dict[str, str]:
        """kid → PEM text or path, from ``gateway_public_keys`` and ``gateway_public_key``."""
        out = dict(self.gateway_public_keys or {})
        if self.gateway_public_key:
            out.setdefault("default", self.gateway_public_key)
        return out

    def pod_token_keys(self) -> list[VerifyKeys]:
        """What verifies gateway→pod tokens: the gateway's public keys (EdDSA) and, legacy, the
        stream-secret keyring (HS256). Raises :class:`ConfigError` (key path and reason)."""
        keys: list[VerifyKeys] = []
        sources = self.public_key_sources()
        if sources:
            keys.append(load_public_keys(sources))
        secrets = self.secrets()
        if secrets:
            keys.append(Keyring(secrets, self.stream_secret_primary or next(iter(secrets))))
        return keys

    def legacy_warning(self) -> str | None:
        """Set while the pod still holds the shared ``stream_secret`` (warned once at start and by ``check``)."""
        if not self.enable_streaming or not self.secrets():
            return None
        # name where the secret comes from: the environment wins over the file (secrets())
        where = "POD_STREAM_SECRET (environment)" if os.environ.get("POD_STREAM_SECRET") else "stream_secret"
        if self.public_key_sources():
            return (f"{where} is still set next to gateway_public_keys: while it is, anyone who reads this "
                    f"pod's disk can mint tokens; remove {where} once the gateway signs with its Ed25519 key")
        return (f"legacy key layout: this pod verifies gateway tokens with the shared {where}, so a stolen "
                "pod can mint user tokens and tokens for every other pod; set gateway_public_keys (the gateway's "
                f"Ed25519 public key) and remove {where}")


def load_public_keys(sources: dict[str, str]) -> PublicKeyring:
    """A :class:`PublicKeyring` from kid → PEM text (``-----BEGIN PUBLIC KEY-----``) or a path to a PEM
    file. Raises :class:`ConfigError` naming ``$.gateway_public_keys.<kid>``."""
    pems: dict[str, str | bytes] = {}
    for kid, value in sources.items():
        where = f"$.gateway_public_keys.{kid}"
        if not value.lstrip().startswith("-----BEGIN"):
            try:
                pems[kid] = Path(value).read_bytes()
            except OSError as exc:
                raise _fail(where, f"cannot read {value}: {exc.strerror}") from None
        else:
            pems[kid] = value
        try:
            PublicKeyring({kid: pems[kid]})
        except ValueError as exc:
            raise _fail(where, str(exc).removeprefix(f"key {kid!r}: ")) from None
    return PublicKeyring(pems)


def system_timezone() -> tzinfo:
    """The pod's system time zone, DST rules included: ``$TZ`` when it names an IANA zone,
    else ``/etc/localtime``, else UTC. (``datetime.now().astimezone().tzinfo`` would be a
    fixed offset, wrong on the other side of a DST change.)"""
    return system_timezone_source()[0]


def system_timezone_source(environ: Mapping[str, str] | None = None,
                           localtime: str = "/etc/localtime") -> tuple[tzinfo, str, str | None]:
    """``(zone, where it came from, problem)`` for :func:`system_timezone`. ``where`` is
    ``"$TZ"``, the ``localtime`` path or ``"UTC (no zone found)"``; ``problem`` says why a set
    ``$TZ`` was not used (not an IANA zone name, e.g. ``Mars/Olympus``), else None."""
    env = os.environ if environ is None else environ
    name = env.get("TZ", "").lstrip(":")
    problem = None
    if name.startswith("/"):  # glibc's form: a zoneinfo file's path (TZ=:/usr/share/zoneinfo/Europe/Paris)
        real = os.path.realpath(name)
        for root in zoneinfo.TZPATH:
            if real.startswith(os.path.realpath(root) + "/"):
                name = real[len(os.path.realpath(root)) + 1:]
                break
    if name:
        try:
            return ZoneInfo(name), "$TZ", None
        except (ZoneInfoNotFoundError, ValueError):
            problem = (f"TZ={name[:64]!r} (environment) is not an IANA time zone name (POSIX rules such as "
                       "EST5EDT,M3.2.0,M11.1.0 and zone files outside the zoneinfo tree are not read)")
    try:
        with open(localtime, "rb") as f:
            return ZoneInfo.from_file(f, key="localtime"), localtime, problem
    except (OSError, ValueError):
        return UTC, "UTC (no zone found)", problem


def check_bind_address(value: str) -> str:
    """Validate an explicit ``stream_bind`` IP.

    Accepts tailnet addresses (100.64.0.0/10, fd7a:115c:a1e0::/48) and loopback
    (127.0.0.0/8, for development only). Raises :class:`BindRefused` for
    0.0.0.0/:: and any LAN or public address, because the pod must never
    expose video outside the tailnet.
    """
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise BindRefused(f"$.stream_bind: {value!r} is neither 'auto' nor an IP address") from None
    if ip.is_unspecified:
        raise BindRefused(f"$.stream_bind: {value} would listen on every interface; use 'auto' or the tailnet IP")
    if ip in TAILNET_V4 or ip in TAILNET_V6 or (ip.version == 4 and ip in LOOPBACK_V4):
        return str(ip)
    raise BindRefused(
        f"$.stream_bind: {value} is a LAN/public address; pods serve video only on their tailnet address "
        "(100.64.0.0/10) — use 'auto'"
    )


MIN_VIDEO_BITRATE = 64_000
MAX_VIDEO_BITRATE = 50_000_000
_BITRATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_bitrate(value: int | str) -> int | None:
    """Bits/s from an integer or ffmpeg-style text (``"500k"`` = 500 000, ``"1.5M"`` =
    1 500 000); None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    m = _BITRATE.match(value) if isinstance(value, str) else None
    if m is None:
        return None
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return round(float(m.group(1)) * scale)


def _fail(path: str, reason: str) -> ConfigError:
    return ConfigError(f"{path}: {reason}")


def parse_config(data: Any, *, source: str = "config") -> tuple[PodConfig, list[str]]:
    """Validate a decoded YAML mapping. Returns ``(config, warnings)``.

    Raises :class:`ConfigError` naming the key path and the reason.
    """
    if not isinstance(data, dict):
        raise _fail("$", f"{source} must be a YAML mapping of keys to values")
    warnings: list[str] = []
    try:
        # unknown keys first: a misspelt required key (site_idd) is named, with its fix,
        # rather than reported as the missing key
        check_known_keys(data, PodConfig)
    except ConfigValueError as exc:
        raise _fail(exc.path, exc.reason) from None
    site = data.get("site_id")
    if site is None or (isinstance(site, str) and not site.strip()):
        raise _fail("$.site_id", "required: the id of this pod's Site in the portal (the portal refuses "
                                 "detections without it, and /api/plates is fetched for it)")
    try:
        cfg = convert_config(data, PodConfig)
    except ConfigValueError as exc:
        raise _fail(exc.path, exc.reason) from None
    if cfg.rtsp_timeout_seconds <= 0:
        raise _fail("$.rtsp_timeout_seconds", "must be > 0 seconds")
    if cfg.tailnet_wait_seconds < 0:
        raise _fail("$.tailnet_wait_seconds", "must be >= 0 seconds (0 = wait forever)")
    for key in ("portal_url", "frigate_url"):
        problem = http_url_problem(getattr(cfg, key))
        if problem:
            raise _fail(f"$.{key}", problem)
    if not cfg.pod_api_key:
        raise _fail("$.pod_api_key", "must not be empty")
    if (cfg.pod_api_key != cfg.pod_api_key.strip()
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in cfg.pod_api_key)):
        # a YAML block scalar (`pod_api_key: |`) leaves a trailing newline: httpx refuses the
        # header locally (RFC 9110 §5.5: no CR/LF/NUL, no edge whitespace) and every detection
        # would be parked
        raise _fail("$.pod_api_key", "must not start or end with whitespace or contain control characters "
                    "(a YAML `|` block adds a newline: write the key on the same line)")
    if cfg.timezone is not None:
        try:
            ZoneInfo(cfg.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise _fail("$.timezone", f"unknown IANA time zone {cfg.timezone!r} (e.g. America/New_York, "
                                      "Europe/Berlin; leave it out for the system's zone)") from None
    if not is_dns_label(cfg.pod_id):
        raise _fail("$.pod_id", "must be a DNS label (a-z, 0-9, '-', 1-63 chars): it is the pod's tailnet host name")
    if not 1 <= cfg.stream_port <= 65535:
        raise _fail("$.stream_port", "must be 1-65535")
    if not 0.5 <= cfg.hls_segment_seconds <= 10:
        raise _fail("$.hls_segment_seconds", "must be between 0.5 and 10 seconds")
    if not 0.05 <= cfg.part_seconds <= 1.0 or cfg.part_seconds > cfg.hls_segment_seconds / 2:
        raise _fail("$.part_seconds", "must be between 0.05 and 1 second, and at most half of hls_segment_seconds")
    if cfg.low_latency and cfg.hls_segment_type != "fmp4" and "low_latency" in data:
        raise _fail("$.low_latency", "LL-HLS needs hls_segment_type: fmp4 (set low_latency: false for mpegts)")
    if not 2 <= cfg.hls_list_size <= 60:
        raise _fail("$.hls_list_size", "must be between 2 and 60")
    # clips are cut when the post-roll exists, from pre_roll + recording_duration seconds ago
    needed = math.ceil((cfg.pre_roll + cfg.recording_duration) / cfg.hls_segment_seconds) + 4
    if cfg.hls_keep_extra_segments is None:
        cfg.hls_keep_extra_segments = max(30, needed)
    elif not 0 <= cfg.hls_keep_extra_segments <= 10_000:
        raise _fail("$.hls_keep_extra_segments", "must be between 0 and 10000")
    elif cfg.enable_streaming and cfg.record_on_detection and cfg.hls_keep_extra_segments < needed:
        raise _fail("$.hls_keep_extra_segments", f"must be >= {needed} to hold pre_roll + recording_duration "
                    f"({cfg.pre_roll:g} + {cfg.recording_duration:g} s) of {cfg.hls_segment_seconds:g} s segments "
                    "for clips (or leave it out)")
    if not 0.0 <= cfg.min_confidence <= 1.0:
        raise _fail("$.min_confidence", "must be between 0.0 and 1.0")
    if cfg.recording_duration <= 0:
        raise _fail("$.recording_duration", "must be > 0 seconds")
    if cfg.watchdog_factor < 2:
        raise _fail("$.watchdog_factor", "must be >= 2")
    for key in ("heartbeat_interval", "whitelist_refresh_interval", "restart_backoff_initial", "restart_backoff_max"):
        if not math.isfinite(getattr(cfg, key)) or getattr(cfg, key) <= 0:
            raise _fail(f"$.{key}", "must be a positive number of seconds")
    if cfg.stream_bind != "auto":
        check_bind_address(cfg.stream_bind)

    cameras = list(cfg.cameras or [])
    if cfg.camera_id or cfg.camera_rtsp_url:
        if cfg.cameras:
            raise _fail("$.camera_id", "use either the seed's camera_id/camera_rtsp_url or 'cameras', not both")
        if not cfg.camera_id:
            raise _fail("$.camera_id", "required with camera_rtsp_url")
        if not cfg.camera_rtsp_url:
            raise _fail("$.camera_rtsp_url", "required with camera_id")
        cameras = [
            CameraConfig(
                camera_id=cfg.camera_id,
                rtsp_url=cfg.camera_rtsp_url,
                frigate_camera=cfg.frigate_camera,
                name=cfg.camera_name,
                position=cfg.camera_position,
            )
        ]
    if not cameras:
        raise _fail("$.cameras", "at least one camera is required (cameras: [...] or camera_id + camera_rtsp_url)")
    seen: set[str] = set()
    for i, cam in enumerate(cameras):
        if not is_camera_id(cam.camera_id):
            raise _fail(f"$.cameras[{i}].camera_id", "must be 1-64 chars of A-Za-z0-9_.- starting with a letter/digit")
        if cam.camera_id in seen:
            raise _fail(f"$.cameras[{i}].camera_id", f"duplicate camera_id {cam.camera_id!r}")
        seen.add(cam.camera_id)
        if not cam.rtsp_url.startswith(("rtsp://", "rtsps://")):
            raise _fail(f"$.cameras[{i}].rtsp_url", "must be an rtsp:// or rtsps:// URL")
        if cam.frigate_camera is None:
            cam.frigate_camera = cam.camera_id
        if cam.video_bitrate is not None:
            path = f"$.cameras[{i}].video_bitrate"
            bps = parse_bitrate(cam.video_bitrate)
            if bps is None or not MIN_VIDEO_BITRATE <= bps <= MAX_VIDEO_BITRATE:
                raise _fail(path, f"must be bits/s between {MIN_VIDEO_BITRATE} and {MAX_VIDEO_BITRATE} "
                                  "(e.g. 500000 or \"500k\")")
            cam.video_bitrate = bps
        if cam.max_height is not None and (isinstance(cam.max_height, bool) or not 120 <= cam.max_height <= 4320
                                           or cam.max_height % 2):
            raise _fail(f"$.cameras[{i}].max_height", "must be an even number of lines between 120 and 4320")
        for key in ("video_bitrate", "max_height"):
            if getattr(cam, key) is not None and cam.transcode != "h264":
                raise _fail(f"$.cameras[{i}].{key}", "needs transcode: h264 (a copied stream keeps the camera's "
                                                   "own bitrate and size; or set them on the camera)")
    cfg.cameras = cameras
    if cfg.pod_name is None:
        cfg.pod_name = cfg.pod_id
    frigate_names = [c.frigate_camera for c in cameras]
    if len(set(frigate_names)) != len(frigate_names):
        raise _fail("$.cameras", "two cameras map to the same frigate_camera")

    if cfg.mqtt_topic_prefix is None:
        topic = cfg.mqtt_topic.strip("/")
        cfg.mqtt_topic_prefix = topic[: -len("/events")] if topic.endswith("/events") else (topic or "frigate")
    if not cfg.mqtt_topic_prefix or any(c in cfg.mqtt_topic_prefix for c in "#+"):
        raise _fail("$.mqtt_topic_prefix", "must be a plain MQTT topic prefix without wildcards")
    if cfg.mqtt_client_id is None:
        cfg.mqtt_client_id = f"platebridge-{cfg.pod_id}"
    if cfg.mqtt_client_id.strip().lower() == "frigate":
        raise _fail("$.mqtt_client_id",
                    "must not be 'frigate': two clients with one id knock each other off the broker")
    if not 1 <= cfg.mqtt_port <= 65535:
        raise _fail("$.mqtt_port", "must be 1-65535")
    if not 0 <= cfg.match_distance <= 2:
        raise _fail("$.match_distance", "must be 0, 1 or 2")
    for key in ("max_decision_wait", "no_read_timeout", "portal_timeout"):
        if not math.isfinite(getattr(cfg, key)) or getattr(cfg, key) <= 0:
            raise _fail(f"$.{key}", "must be a positive number of seconds")
    if not math.isfinite(cfg.passage_window) or cfg.passage_window < 0:
        raise _fail("$.passage_window", "must be >= 0 seconds (0: every tracked object is a passage of its own)")
    if not 0 <= cfg.pre_roll <= 60:
        raise _fail("$.pre_roll", "must be between 0 and 60 seconds")
    if cfg.recording_duration > 600:
        raise _fail("$.recording_duration", "must be at most 600 seconds")
    if cfg.recordings_max_bytes < 10 * 1024**2 or cfg.recordings_min_free_bytes < 0:
        raise _fail("$.recordings_max_bytes", "must be >= 10 MiB (and recordings_min_free_bytes >= 0)")
    if cfg.hls_max_bytes < 10 * 1024**2:
        raise _fail("$.hls_max_bytes", "must be >= 10 MiB")
    if cfg.outbox_max_items < 100:
        raise _fail("$.outbox_max_items", "must be >= 100")
    if cfg.outbox_max_parked < 100:
        raise _fail("$.outbox_max_parked", "must be >= 100")
    for key, hi in (("outbox_concurrency", 32), ("upload_concurrency", 8), ("outbox_max_attempts", 1000),
                    ("upload_max_attempts", 1000), ("upload_max_put_refusals", 100), ("clip_max_pending", 1000),
                    ("clip_max_concurrent", 16)):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not 1 <= value <= hi:
            raise _fail(f"$.{key}", f"must be an integer between 1 and {hi}")
    for prefix in ("outbox", "upload"):
        lo, hi = getattr(cfg, f"{prefix}_retry_initial"), getattr(cfg, f"{prefix}_retry_max")
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi <= 3600):
            raise _fail(f"$.{prefix}_retry_initial", f"need 0 < {prefix}_retry_initial <= {prefix}_retry_max "
                                                     "<= 3600 seconds")
    if not (math.isfinite(cfg.queue_idle_poll) and 0.05 <= cfg.queue_idle_poll <= 60):
        raise _fail("$.queue_idle_poll", "must be between 0.05 and 60 seconds")
    if cfg.whitelist_cache is None:
        cfg.whitelist_cache = str(Path(cfg.state_dir) / "whitelist.json")
    if cfg.outbox_path is None:
        cfg.outbox_path = str(Path(cfg.state_dir) / "outbox.sqlite3")

    if not 0 <= cfg.max_clock_skew <= 300:
        raise _fail("$.max_clock_skew", "must be between 0 and 300 seconds")
    if cfg.enable_streaming:
        secrets = cfg.secrets()
        if not secrets and not cfg.public_key_sources():
            raise _fail("$.gateway_public_keys", "required when enable_streaming is true: the gateway's Ed25519 "
                        "public key (PEM or a path), e.g. {default: /etc/platebridge/gateway.pub} (legacy: "
                        "stream_secret / env POD_STREAM_SECRET)")
        for kid in cfg.public_key_sources():
            if not _KID.match(kid):
                raise _fail(f"$.gateway_public_keys.{kid}", "key ids are 1-64 characters of A-Za-z0-9._-")
        if cfg.stream_secret_primary and cfg.stream_secret_primary not in secrets:
            raise _fail("$.stream_secret_primary", "must name a kid in stream_secrets")
        for kid, secret in secrets.items():
            if not secret:
                raise _fail(f"$.stream_secrets.{kid}", "must not be empty")
            if len(secret.encode()) < 32:
                warnings.append(f"$.stream_secret: secret {kid!r} is shorter than 32 bytes; use a longer random secret")
        cfg.pod_token_keys()  # every public key loads
    if not cfg.timezone:
        _, where, problem = system_timezone_source()
        if problem:
            warnings.append(f"$.timezone: not set, and {problem}; plain-date whitelist bounds are read in {where} "
                            "instead: set timezone (e.g. America/New_York) or fix TZ")
    return cfg, warnings


def load_config(path: str | os.PathLike[str]) -> tuple[PodConfig, list[str]]:
    """Read and validate a YAML config file. Returns ``(config, warnings)``.

    Raises :class:`ConfigError` for unreadable files, YAML syntax errors
    (with line/column) and invalid values (with the key path).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
    try:
        data = load_yaml(raw)
    except ValueError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return parse_config(data, source=str(p))
