"""``platebridge-pod check``: operator checks of a pod's setup, one line each.

    platebridge-pod check --config config.yaml [--mqtt-wait N]

Each check prints ``PASS <name>: <detail>``, ``WARN <name>: <detail>[ — fix: <how>]``
or ``FAIL <name>: <detail> — fix: <how>``. Exit code 0 when nothing failed
(warnings allowed), 1 when a check failed, 2 when the config itself is invalid
(then nothing else is checked: the key-path error is the one line).

Checks, in order:

* ``config`` — the file loads and validates (same rules as ``run``).
* ``portal`` — ``GET /api/plates`` with the pod API key (one attempt, no retries);
  401/403 means the key was refused.
* ``mqtt`` — connect to the broker as ``<mqtt_client_id>-check`` (never the pod's own
  id, so a running pod is not knocked off). ``frigate-topics`` (only with
  ``--mqtt-wait N``, N > 0): subscribe to ``<prefix>/#`` and report what arrives
  within N seconds (Frigate's retained ``<prefix>/available`` counts).
* ``camera <id>`` — ffprobe the RTSP URL over TCP (codec, resolution, fps);
  credentials are redacted in every line (and never in ffprobe's argv). ``hevc <id>``
  warns about H.265/HEVC. ``latency <id>`` reads :data:`TIMING_SAMPLE_SECONDS` of the
  stream and says what the camera's frame rate and keyframe interval make of
  ``part_seconds`` and ``hls_segment_seconds``: the effective part and segment durations
  and the expected live latency; WARN when the keyframes are too far apart for the
  configured segments or the latency goal (1 s with LL-HLS) is out of reach. The running
  pod's ``/health`` shows the same figures as measured on the live stream (a Pi under load
  included).
* ``tailnet`` — ``stream_bind`` explicit: an address of this machine; ``auto``:
  asks tailscaled once (LocalAPI, then ``tailscale ip -4``) without waiting.
* ``dir <key>`` — ``state_dir``, ``hls_dir``, ``recordings_dir``: created if
  missing, writable, free space reported.
* ``clock`` — this pod's clock against the portal's ``Date`` header (taken from the
  ``portal`` request): PASS within 5 s, WARN up to ``max_clock_skew``, FAIL beyond
  (gateway→pod tokens would be refused: ``After=time-sync.target``, NTP).
* ``timezone`` — the site's zone for plain-date whitelist bounds and where it comes from
  (``timezone``, ``$TZ``, ``/etc/localtime``); WARN when it is probably not the site's: ``$TZ``
  names no IANA zone (it is ignored), no zone is found (UTC), it is the shell's ``$TZ`` (the
  service does not see it) or the system is on UTC.
* ``keys`` — the gateway's public key(s) load (``gateway_public_keys``); WARN while the
  pod holds the legacy shared ``stream_secret`` (a stolen pod could mint tokens),
  naming ``gateway_public_keys`` as the key to set instead. ``secret`` — every legacy
  stream secret still configured is at least 32 bytes.

Nothing here prints a secret, an API key or RTSP credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path

from pod import ffmpeg as ff
from pod.config import LOOPBACK_V4, PodConfig, load_config, system_timezone_source
from pod.errors import ConfigError, PortalRejected, PortalUnavailable
from pod.llhls import effective_timing
from protocol.checks import CheckResult, ms, secret_length_result, summary
from protocol.redact import redact

PORTAL_CHECK_TIMEOUT = 10.0
MQTT_CONNECT_TIMEOUT = 5.0
TIMING_SAMPLE_SECONDS = 5.0
LATENCY_GOAL_S = 1.0  # pod ingest to screen with LL-HLS (issue 14)
HEVC_ADVICE = ("most browsers cannot play HEVC through hls.js; set transcode: h264 for this camera "
               "(CPU-heavy on a Pi)")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# ---- portal ---------------------------------------------------------------------------


async def check_portal(cfg: PodConfig, clock: list[float] | None = None) -> CheckResult:
    """``GET /api/plates`` once with the pod API key. ``clock`` receives this host's clock minus
    the portal's (seconds, from its ``Date`` header) when the portal answered at all."""
    from pod.portal import PortalClient

    started = time.monotonic()
    client = PortalClient(cfg.portal_url, cfg.pod_api_key, timeout=min(cfg.portal_timeout, PORTAL_CHECK_TIMEOUT),
                          retries=0)
    try:
        async with client:
            plates = await client.get_plates(cfg.site_id, cfg.company_id)
    except PortalRejected as exc:
        if exc.status in (401, 403):
            return CheckResult("FAIL", "portal", f"{cfg.portal_url} refused the pod API key (HTTP {exc.status})",
                               "check pod_api_key (copy it again from the portal's pod page)")
        return CheckResult("FAIL", "portal", f"{cfg.portal_url}: GET /api/plates answered HTTP {exc.status}",
                           "check portal_url (it should be the portal's base URL, e.g. https://portal.example.com)")
    except PortalUnavailable as exc:
        return CheckResult("FAIL", "portal", f"{cfg.portal_url} not reachable: {exc}",
                           "check portal_url, DNS and this pod's internet access (is the portal up?)")
    finally:
        if clock is not None and client.clock_offset is not None:
            clock.append(client.clock_offset)
    n = len(plates.entries)
    return CheckResult("PASS", "portal", f"{cfg.portal_url} accepted the key: GET /api/plates → {n} "
                       f"plate{'' if n == 1 else 's'} (config_version {plates.config_version}) in "
                       f"{ms(time.monotonic() - started)}")


# ---- MQTT -----------------------------------------------------------------------------


async def check_mqtt(cfg: PodConfig, wait: float = 0.0) -> list[CheckResult]:
    """Connect to the broker (client id ``<mqtt_client_id>-check``); with ``wait`` > 0,
    subscribe to ``<prefix>/#`` and report what arrives within ``wait`` seconds."""
    if not cfg.enable_mqtt:
        return [CheckResult("PASS", "mqtt", "enable_mqtt is false: no plate decisions on this pod; not checked")]
    import aiomqtt

    from pod.mqtt import client_options

    where = f"{cfg.mqtt_host}:{cfg.mqtt_port}"
    client_id = f"{cfg.mqtt_client_id or 'platebridge-' + cfg.pod_id}-check"
    prefix = cfg.mqtt_topic_prefix or "frigate"
    results: list[CheckResult] = []
    started = time.monotonic()
    try:
        async with aiomqtt.Client(cfg.mqtt_host, cfg.mqtt_port, username=cfg.mqtt_username,
                                  password=cfg.mqtt_password, identifier=client_id, timeout=MQTT_CONNECT_TIMEOUT,
                                  **client_options(cfg.mqtt_protocol)) as client:
            results.append(CheckResult("PASS", "mqtt", f"connected to {where} as {client_id} in "
                                       f"{ms(time.monotonic() - started)}"))
            if wait > 0:
                results.append(await _watch_topics(client, prefix, wait))
    except aiomqtt.MqttCodeError as exc:
        if results:  # connected, failed later (subscribe refused)
            results.append(CheckResult("FAIL", "frigate-topics", f"subscribe to {prefix}/# refused: {exc}",
                                       "let this MQTT user read the Frigate topics (broker ACL)"))
        else:
            results.append(CheckResult("FAIL", "mqtt", f"{where} refused the connection: {exc}",
                                       "check mqtt_username / mqtt_password (the broker's users and ACLs)"))
    except aiomqtt.MqttError as exc:
        if results:
            results.append(CheckResult("FAIL", "frigate-topics", f"connection to {where} lost: {exc}",
                                       "check the broker's log"))
        else:
            results.append(CheckResult(
                "FAIL", "mqtt", f"cannot connect to {where}: {exc}",
                "check mqtt_host / mqtt_port: the broker Frigate publishes to (is it running? "
                "`systemctl status mosquitto`; a broker in Docker must publish its port)"))
    return results


async def _watch_topics(client, prefix: str, wait: float) -> CheckResult:
    await client.subscribe(f"{prefix}/#", qos=0)
    topics: dict[str, int] = {}
    live = 0

    async def collect() -> None:
        nonlocal live
        async for message in client.messages:
            topics[message.topic.value] = topics.get(message.topic.value, 0) + 1
            live += 0 if message.retain else 1

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), timeout=wait)
    if not topics:
        return CheckResult("FAIL", "frigate-topics", f"nothing on {prefix}/# within {wait:g} s",
                           f"is Frigate running and publishing to this broker? Frigate's mqtt.topic_prefix must be "
                           f"{prefix!r} (set mqtt_topic / mqtt_topic_prefix here to match)")
    names = ", ".join(sorted(topics)[:5]) + (", …" if len(topics) > 5 else "")
    total = sum(topics.values())
    kind = f"{live} live" if live else "retained only"
    return CheckResult("PASS", "frigate-topics", f"{total} messages on {prefix}/# within {wait:g} s ({kind}): {names}")


# ---- cameras --------------------------------------------------------------------------


def ffprobe_path(cfg: PodConfig) -> str:
    """ffprobe next to the configured ffmpeg binary (:func:`pod.ffmpeg.ffprobe_path`)."""
    return ff.ffprobe_path(cfg.ffmpeg_path)


def _fps(stream: dict) -> str | None:
    for key in ("avg_frame_rate", "r_frame_rate"):
        value = stream.get(key) or ""
        try:
            f = Fraction(value)
        except (ValueError, ZeroDivisionError):
            continue
        if f > 0:
            return f"{round(float(f), 2):g}"
    return None


def describe_stream(stream: dict) -> str:
    """``h264 (High) 1920x1080 @ 15 fps`` from one ffprobe stream object."""
    codec = stream.get("codec_name") or "unknown codec"
    profile = stream.get("profile")
    text = codec + (f" ({profile})" if profile and profile != "unknown" else "")
    if stream.get("width") and stream.get("height"):
        text += f" {stream['width']}x{stream['height']}"
    fps = _fps(stream)
    return text + (f" @ {fps} fps" if fps else "")


probe_rtsp = ff.probe_rtsp  # moved to pod/ffmpeg.py; kept here for callers of the old name


def timing_result(cfg: PodConfig, camera_id: str, stream: dict) -> CheckResult:
    """The ``latency <id>`` line from a probed stream with ``keyframes`` (see the module doc)."""
    name = f"latency {camera_id}"
    fps = _fps(stream)
    keys = sorted(stream.get("keyframes") or [])
    low_latency = cfg.low_latency and cfg.hls_segment_type == "fmp4"
    if not fps:
        return CheckResult("WARN", name, "the camera reports no frame rate: part durations cannot be predicted")
    frame = 1 / float(fps)
    if len(keys) < 2:
        gop = max(TIMING_SAMPLE_SECONDS, cfg.hls_segment_seconds)
        return CheckResult("WARN", name, f"fewer than 2 keyframes in {TIMING_SAMPLE_SECONDS:g} s: segments will be at "
                           f"least {gop:g} s and players start late", "set the camera's keyframe (I-frame) interval "
                           f"to {cfg.hls_segment_seconds:g} s or less")
    gaps = [b - a for a, b in itertools.pairwise(keys)]
    gop = sorted(gaps)[len(gaps) // 2]
    t = effective_timing(part_seconds=cfg.part_seconds, segment_seconds=cfg.hls_segment_seconds,
                         frame_interval=frame, keyframe_interval=gop, low_latency=low_latency)
    mode = "LL-HLS" if low_latency else "classic HLS"
    parts = (f"parts {t.part_target:.3f} s ({round(t.part_target / frame)} frames at {fps} fps), "
             if low_latency else "")
    detail = (f"{parts}segments {t.segment:.1f} s (a keyframe every {gop:.2f} s), target duration "
              f"{t.target_duration} s: expected latency about {t.expected_latency:.1f} s ({mode})")
    problems = []
    if t.segment > cfg.hls_segment_seconds * 1.25:
        problems.append(f"set the camera's keyframe (I-frame) interval to {cfg.hls_segment_seconds:g} s or less")
    if low_latency and t.expected_latency > LATENCY_GOAL_S:
        problems.append(f"lower part_seconds (now {cfg.part_seconds:g}) or raise the camera's frame rate")
    if not low_latency:
        problems.append("use hls_segment_type: fmp4 with low_latency: true for live view within a second")
    if problems:
        return CheckResult("WARN", name, detail, "; ".join(problems))
    return CheckResult("PASS", name, detail)


def _camera_fix(reason: str, key: str) -> str:
    """The fix for an RTSP probe failure of the camera whose URL is config key ``key``."""
    low = reason.lower()
    if "401" in low or "unauthorized" in low:
        return f"check the user and password in {key}"
    if "404" in low or "not found" in low:
        return f"check the path in {key} (the camera's RTSP stream path)"
    return (f"check {key} (host, port, path, user/password) and that the camera is on and "
            f"reachable from this pod: ffprobe -rtsp_transport tcp '<url>'")


async def check_camera(cfg: PodConfig, index: int) -> list[CheckResult]:
    """Probe one camera; adds an ``hevc <id>`` line for H.265/HEVC sources."""
    cam = cfg.camera_list()[index]
    name = f"camera {cam.camera_id}"
    url = redact(cam.rtsp_url)
    try:
        stream = await probe_rtsp(ffprobe_path(cfg), cam.rtsp_url, cfg.rtsp_timeout_seconds,
                                  sample_seconds=TIMING_SAMPLE_SECONDS if cfg.enable_streaming else 0.0)
    except FileNotFoundError as exc:
        return [CheckResult("FAIL", name, str(exc), "install ffmpeg (apt install ffmpeg), or set ffmpeg_path")]
    except RuntimeError as exc:
        reason = str(exc).removeprefix(f"{url}: ")  # ffprobe's own message starts with the URL
        # the key as the operator wrote it: the seed's single camera, or an entry of cameras:
        key = "camera_rtsp_url" if cfg.camera_rtsp_url else f"cameras[{index}].rtsp_url"
        return [CheckResult("FAIL", name, f"{url}: {reason}", _camera_fix(reason, key))]
    results = [CheckResult("PASS", name, f"{url}: {describe_stream(stream)}")]
    if cfg.enable_streaming:
        results.append(timing_result(cfg, cam.camera_id, stream))
    codec = (stream.get("codec_name") or "").lower()
    if codec in ("hevc", "h265"):
        if cam.transcode == "h264":
            results.append(CheckResult("PASS", f"hevc {cam.camera_id}",
                                       "H.265/HEVC source re-encoded to H.264 (transcode: h264)"))
        else:
            results.append(CheckResult("WARN", f"hevc {cam.camera_id}", f"camera sends H.265/HEVC: {HEVC_ADVICE}",
                                       f"add `transcode: h264` to camera {cam.camera_id} under cameras:, or switch "
                                       "the camera's stream to H.264"))
    elif codec and codec != "h264":
        results.append(CheckResult("WARN", f"codec {cam.camera_id}", f"camera sends {codec}; browsers play H.264",
                                   f"switch the camera's stream to H.264 or set transcode: h264 for {cam.camera_id}"))
    return results


# ---- tailnet --------------------------------------------------------------------------


def _bindable(host: str) -> str | None:
    """None when ``host`` is an address of this machine, else the reason it is not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            return "not an address of this machine" if exc.errno == errno.EADDRNOTAVAIL else exc.strerror
    return None


async def check_tailnet(cfg: PodConfig) -> CheckResult:
    """The address HLS will be served on: explicit ``stream_bind`` or tailscaled, asked once."""
    if not cfg.enable_streaming:
        return CheckResult("PASS", "tailnet", "enable_streaming is false: no live view, no tailnet listener")
    join = f"join the tailnet: sudo tailscale up --advertise-tags=tag:pod --hostname={cfg.pod_id}"
    if cfg.stream_bind != "auto":
        host = cfg.stream_bind
        problem = _bindable(host)
        if problem:
            return CheckResult("FAIL", "tailnet", f"stream_bind {host}: {problem}",
                               f"use stream_bind: auto, or the address `tailscale ip -4` prints; {join}")
        if ipaddress.ip_address(host) in LOOPBACK_V4:
            return CheckResult("WARN", "tailnet", f"stream_bind {host} is loopback: development only, gateways on "
                               "the tailnet cannot reach this pod", "use stream_bind: auto on a real pod")
        return CheckResult("PASS", "tailnet", f"stream_bind {host} is a tailnet address of this machine")
    from pod.tailnet import cli_ipv4, localapi_ipv4

    ip = await localapi_ipv4(cfg.tailscale_socket)
    source = f"tailscaled LocalAPI at {cfg.tailscale_socket}"
    if ip is None:
        ip, source = await cli_ipv4(), "`tailscale ip -4`"
    if ip is None:
        return CheckResult("FAIL", "tailnet", f"no tailnet IPv4 (tailscaled at {cfg.tailscale_socket} and the "
                           "tailscale CLI report none)", f"install tailscale and {join}")
    return CheckResult("PASS", "tailnet", f"{ip} (from {source}); HLS will be served on {ip}:{cfg.stream_port}")


# ---- directories ----------------------------------------------------------------------


def check_dirs(cfg: PodConfig) -> list[CheckResult]:
    """Write-test each data directory and report free space. A check changes nothing:
    a missing directory is reported (the pod creates it at start) when its nearest
    existing parent is writable, else it fails."""
    dirs = [("state_dir", cfg.state_dir)]
    if cfg.enable_streaming:
        dirs.append(("hls_dir", cfg.hls_dir))
    dirs.append(("recordings_dir", cfg.recordings_dir))
    results = []
    for key, path in dirs:
        name = f"dir {key}"
        fix = f"create {path} writable by the user the pod runs as, or point {key} elsewhere"
        target = Path(path)
        probe = target
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            if probe != target:
                if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
                    raise OSError(errno.EACCES, f"missing, and {probe} is not writable to create it")
            else:
                with tempfile.NamedTemporaryFile(dir=path, prefix=".platebridge-check-"):
                    pass
            usage = shutil.disk_usage(probe)
        except OSError as exc:
            results.append(CheckResult("FAIL", name, f"{path}: {exc.strerror or exc}", fix))
            continue
        state = "writable" if probe == target else f"missing (created at start; {probe} is writable)"
        detail = f"{path} {state}, {_size(usage.free)} free of {_size(usage.total)}"
        if key == "recordings_dir" and usage.free < cfg.recordings_min_free_bytes:
            results.append(CheckResult("WARN", name, detail + f" (below recordings_min_free_bytes "
                                       f"{_size(cfg.recordings_min_free_bytes)}: no clips will be kept)",
                                       "free disk space or move recordings_dir to a bigger disk"))
        elif usage.free < 256 * 1024**2:
            results.append(CheckResult("WARN", name, detail + " (less than 256 MiB)", "free disk space"))
        else:
            results.append(CheckResult("PASS", name, detail))
    return results


# ---- clock ----------------------------------------------------------------------------


CLOCK_OK_SECONDS = 5.0


def check_clock(cfg: PodConfig, offsets: list[float]) -> CheckResult:
    """This pod's clock against the portal's ``Date`` (``offsets``: what :func:`check_portal` measured)."""
    if not offsets:
        return CheckResult("WARN", "clock", "not compared: no Date header from the portal (it did not answer, or "
                           "sent none)", "fix the portal check above; check time sync with `timedatectl`")
    off = offsets[-1]
    # the Date header has whole seconds (RFC 9110 §5.6.7): the estimate is good to about ±0.5 s
    where = ("within 1 s of the portal's clock (its Date header has whole seconds)" if abs(off) < 1.0 else
             f"{abs(off):.0f} s {'ahead of' if off > 0 else 'behind'} the portal's clock (±1 s: its Date header "
             "has whole seconds)")
    fix = ("sync this pod's clock: `timedatectl set-ntp true` (systemd-timesyncd); the unit waits for "
           "time-sync.target, but a Pi without RTC starts with a stale clock")
    if abs(off) <= CLOCK_OK_SECONDS:
        return CheckResult("PASS", "clock", where)
    if abs(off) <= cfg.max_clock_skew:
        return CheckResult("WARN", "clock", f"{where}; gateway tokens are still accepted (max_clock_skew "
                           f"{cfg.max_clock_skew:g} s)", fix)
    return CheckResult("FAIL", "clock", f"{where}: clock skew beyond max_clock_skew ({cfg.max_clock_skew:g} s); "
                       "the gateway's tokens will be refused", fix)


def check_timezone(cfg: PodConfig, environ: Mapping[str, str] | None = None,
                   localtime: str = "/etc/localtime") -> CheckResult:
    """The site's time zone, in which plain-date whitelist bounds (``starts``/``ends``) are read,
    and where it comes from: ``timezone``, ``$TZ`` or ``localtime`` (a path; ``environ``
    defaults to this process's). PASS for the config's zone or a non-UTC system zone; WARN
    when it is probably not the site's: ``$TZ`` that names no IANA zone (ignored), no zone at
    all (UTC), ``$TZ`` of this shell (the systemd unit sets none), or a system on UTC."""
    what = "plain-date whitelist bounds (starts/ends) are days in"
    if cfg.timezone:
        return CheckResult("PASS", "timezone", f"{what} {cfg.timezone} (timezone in the config)")
    zone, where, problem = system_timezone_source(environ, localtime)
    name = getattr(zone, "key", None) or str(zone)
    if name == "localtime":  # a link into the zoneinfo tree names the zone
        _, found, tail = os.path.realpath(localtime).partition("/zoneinfo/")
        name = tail if found else name
    fix = "set timezone in the pod's config to the site's IANA zone (e.g. America/New_York)"
    if problem:
        return CheckResult("WARN", "timezone", f"{problem}; {what} {name} ({where}) instead", fix + " or fix TZ")
    if where.startswith("UTC"):
        return CheckResult("WARN", "timezone",
                           f"no timezone in the config, no TZ and no usable {localtime}: {what} UTC", fix)
    if where == "$TZ":
        # this shell's TZ: the systemd unit sets none, so the service may read another zone
        return CheckResult("WARN", "timezone", f"{what} {name}, from TZ in this shell; the service sees TZ only "
                           f"if its unit sets it, else {localtime}", fix)
    if name in ("UTC", "Etc/UTC", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu", "GMT", "Etc/GMT"):
        # a system left on UTC is usually a default (Raspberry Pi OS, cloud images), not the site's zone
        return CheckResult("WARN", "timezone", f"{what} {name}, from {localtime}: the system's default, unless "
                           "the site really is on UTC", fix + "; UTC if it is")
    return CheckResult("PASS", "timezone", f"{what} {name} (from {localtime}; {fix} to pin it)")


# ---- keys -----------------------------------------------------------------------------


def check_secret(cfg: PodConfig) -> list[CheckResult]:
    """The gateway's public keys load; WARN for the legacy shared stream secret (naming the key to set
    instead); every legacy secret must be ≥ 32 bytes. Nothing secret is ever printed."""
    if not cfg.enable_streaming:
        return [CheckResult("PASS", "keys", "enable_streaming is false: no gateway key needed")]
    results = []
    kids = sorted(cfg.public_key_sources())
    if kids:
        results.append(CheckResult("PASS", "keys", f"gateway_public_keys: Ed25519 key(s) {', '.join(kids)}; "
                                   "this pod can verify gateway tokens but mint none"))
    legacy = cfg.legacy_warning()
    if legacy:
        results.append(CheckResult("WARN", "keys", legacy.split("; set ")[0].split("; remove ")[0],
                                   "set gateway_public_keys to the gateway's Ed25519 public key (`openssl pkey -in "
                                   "<pod_signing_key_file> -pubout` on the gateway) and remove stream_secret"))
    source = "env POD_STREAM_SECRET" if os.environ.get("POD_STREAM_SECRET") else "stream_secret"
    for kid, secret in sorted(cfg.secrets().items()):
        where = source if kid == "default" and not (cfg.stream_secrets or {}).get(kid) else f"stream_secrets.{kid}"
        results.append(secret_length_result(f"{where} (kid {kid!r})", secret))
    return results


# ---- driver ---------------------------------------------------------------------------


async def run_checks(cfg: PodConfig, *, mqtt_wait: float = 0.0,
                     emit: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Run every check after ``config``, calling ``emit`` as each result is known."""
    results: list[CheckResult] = []

    def add(items: CheckResult | list[CheckResult]) -> None:
        for r in items if isinstance(items, list) else [items]:
            results.append(r)
            if emit:
                emit(r)

    offsets: list[float] = []
    add(await check_portal(cfg, offsets))
    add(await check_mqtt(cfg, mqtt_wait))
    for cam_results in await asyncio.gather(*(check_camera(cfg, i) for i in range(len(cfg.camera_list())))):
        add(cam_results)
    add(await check_tailnet(cfg))
    add(check_dirs(cfg))
    add(check_clock(cfg, offsets))
    add(check_timezone(cfg))
    add(check_secret(cfg))
    return results


def config_fix(error: str, config: str) -> str:
    """The fix hint for a config ``error`` of file ``config``: a file that cannot be read, a
    YAML error (its line is in the error) or a key path."""
    if ": cannot read config: " in error:
        return f"check the path {config} (platebridge-pod config-schema shows every key)"
    if ": YAML error" in error:
        return f"edit {config} at the line and column above"
    return f"edit {config} (key path above; see the README's config table)"


def main(config: str, *, mqtt_wait: float = 0.0, out=None) -> int:
    """``platebridge-pod check``: print one line per check; returns the exit code
    (0 all passed, 1 a check failed, 2 invalid config)."""
    out = out or sys.stdout

    def emit(r: CheckResult) -> None:
        print(r.line(), file=out, flush=True)

    try:
        cfg, _warnings = load_config(config)
    except ConfigError as exc:
        emit(CheckResult("FAIL", "config", str(exc), config_fix(str(exc), config)))
        return 2
    emit(CheckResult("PASS", "config", f"{config}: pod {cfg.pod_id}, {len(cfg.camera_list())} camera(s), "
                     f"portal {cfg.portal_url}"))
    import uvloop

    results = uvloop.run(run_checks(cfg, mqtt_wait=mqtt_wait, emit=emit))
    line, code = summary(results, extra_passed=1)
    print(line, file=out, flush=True)
    return code
