"""``platebridge-pod check`` against real parts on loopback: mosquitto, the portal
stand-in and the GStreamer RTSP cameras (H.264 via the dev Stack, H.265 started
here), plus broken setups: wrong API key, dead broker, bad RTSP URLs, HEVC source,
short secret, invalid config, unusable directories, tailnet via a LocalAPI stand-in.
Also the per-camera ``transcode: h264`` option (config, ffmpeg args, and a real
ffmpeg re-encode of the H.265 camera that ffprobe reads back as H.264)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import pytest
import yaml

from pod.check import CheckResult, check_tailnet, main
from pod.cli import main as cli_main
from pod.config import ConfigError, parse_config
from pod.streamer import ffmpeg_args
from tests.standins.tailscaled import LocalAPIStandIn, status_body

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))
from stack import SYSTEM_PYTHON, Stack, free_port  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """mosquitto + portal stand-in + H.264 camera (no pod: check runs before the pod does)."""
    if not shutil.which("ffprobe"):
        pytest.fail("ffprobe is missing: run ./run setup")
    s = Stack(workdir=tmp_path_factory.mktemp("check-stack"))
    try:
        s.start_mosquitto()
        s.start_portal([{"plate": "TEST123", "enabled": True}])
        s.start_camera()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def hevc_camera(tmp_path_factory):
    """The dev camera with ``--codec h265``; yields its RTSP URL."""
    log = tmp_path_factory.mktemp("hevc") / "camera.log"
    port = free_port("127.0.0.1")
    with open(log, "wb") as err:
        proc = subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "deploy/dev/camera.py"), "--host", "127.0.0.1",
                                 "--port", str(port), "--path", "/hevc", "--codec", "h265"],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("CAMERA READY"), f"h265 camera did not start: {log.read_text()}"
        yield line.split()[-1]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_config(stack: Stack, tmp_path: Path, **over) -> Path:
    cfg = stack.pod_config()
    cfg.update(state_dir=str(tmp_path / "state"), hls_dir=str(tmp_path / "hls"),
               recordings_dir=str(tmp_path / "recordings"))
    cfg.update(over)
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_check(path: Path, **kw) -> tuple[int, list[str]]:
    out = io.StringIO()
    rc = main(str(path), out=out, **kw)
    return rc, out.getvalue().splitlines()


def line(lines: list[str], name: str) -> str:
    hits = [x for x in lines if x.split(" ", 1)[1].startswith(name + ":")]
    assert hits, f"no {name!r} line in:\n" + "\n".join(lines)
    return hits[0]


def publish_retained(port: int, topic: str, payload: str) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-frigate")
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


# ---- good setup -----------------------------------------------------------------------


def test_good_setup_passes(stack, tmp_path):
    publish_retained(stack.mqtt_port, "frigate/available", "online")  # what Frigate leaves on the broker
    rc, lines = run_check(write_config(stack, tmp_path), mqtt_wait=2)
    text = "\n".join(lines)
    assert rc == 0, text
    assert line(lines, "config").startswith("PASS config:")
    assert line(lines, "portal").startswith("PASS portal:") and "1 plate " in line(lines, "portal")
    assert line(lines, "mqtt").startswith("PASS mqtt: connected to 127.0.0.1:")
    assert f"as platebridge-{stack.pod_id}-check" in line(lines, "mqtt")  # never the running pod's own id
    assert line(lines, "frigate-topics").startswith("PASS") and "frigate/available" in text
    cam = line(lines, f"camera {stack.camera_id}")
    assert cam.startswith("PASS") and "h264" in cam and "640x360" in cam and "15 fps" in cam, cam
    assert "hevc" not in text
    assert line(lines, "tailnet").startswith("WARN tailnet: stream_bind 127.0.0.2 is loopback")
    for key in ("state_dir", "hls_dir", "recordings_dir"):
        assert line(lines, f"dir {key}").startswith(f"PASS dir {key}:") and "free" in line(lines, f"dir {key}")
    # a check changes nothing: missing directories are reported, not created
    assert not (tmp_path / "state").exists() and not (tmp_path / "hls").exists()
    assert "missing (created at start" in line(lines, "dir state_dir")
    assert line(lines, "keys").startswith("PASS keys: gateway_public_keys: Ed25519 key(s) dev-1")
    assert "secret" not in [x.split(" ", 2)[1].rstrip(":") for x in lines]  # no shared secret on this pod
    assert line(lines, "clock").startswith("PASS clock:") and "the portal's clock" in line(lines, "clock")
    assert stack.secret not in text
    assert stack.api_key not in text
    assert lines[-1].startswith("OK: ") and "0 failed" in lines[-1]
    assert all(x.split(" ", 1)[0] in ("PASS", "WARN", "OK:") for x in lines), text


def test_cli_entry_point_and_no_mqtt_wait(stack, tmp_path, capsys):
    rc = cli_main(["check", "--config", str(write_config(stack, tmp_path))])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "frigate-topics" not in out  # only with --mqtt-wait N > 0


def test_frigate_topics_silent_broker_fails(stack, tmp_path):
    rc, lines = run_check(write_config(stack, tmp_path, mqtt_topic="nothing-here/events"), mqtt_wait=1)
    assert rc == 1
    assert line(lines, "frigate-topics").startswith("FAIL frigate-topics: nothing on nothing-here/# within 1 s")
    assert "— fix: " in line(lines, "frigate-topics")


# ---- broken setups --------------------------------------------------------------------


def test_wrong_api_key_fails_portal(stack, tmp_path):
    rc, lines = run_check(write_config(stack, tmp_path, pod_api_key="pbk_wrong_key_123"))
    assert rc == 1
    portal = line(lines, "portal")
    assert portal.startswith("FAIL portal:") and "401" in portal and "fix: check pod_api_key" in portal
    assert "pbk_wrong_key_123" not in "\n".join(lines)
    assert line(lines, f"camera {stack.camera_id}").startswith("PASS")  # the other checks still run


def test_unreachable_portal_fails(stack, tmp_path):
    rc, lines = run_check(write_config(stack, tmp_path, portal_url=f"http://127.0.0.1:{free_port()}"))
    assert rc == 1 and line(lines, "portal").startswith("FAIL portal:") and "fix: check portal_url" in lines[1]


def test_dead_broker_fails_mqtt(stack, tmp_path):
    rc, lines = run_check(write_config(stack, tmp_path, mqtt_port=free_port()), mqtt_wait=1)
    assert rc == 1
    m = line(lines, "mqtt")
    assert m.startswith("FAIL mqtt: cannot connect to 127.0.0.1:") and "fix: check mqtt_host / mqtt_port" in m
    assert not any(" frigate-topics:" in x for x in lines)  # nothing to wait for without a broker


def test_mqtt_disabled_is_not_checked(stack, tmp_path):
    rc, lines = run_check(write_config(stack, tmp_path, enable_mqtt=False))
    assert rc == 0 and line(lines, "mqtt").startswith("PASS mqtt: enable_mqtt is false")


def test_bad_rtsp_urls_fail_camera_with_credentials_redacted(stack, tmp_path):
    dead = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/stream"
    wrong_path = stack.rtsp_url.replace("/gate", "/no-such-path")
    rc, lines = run_check(write_config(stack, tmp_path, camera_id=None, camera_rtsp_url=None, frigate_camera=None,
                                       rtsp_timeout_seconds=3,
                                       cameras=[{"camera_id": "dead", "rtsp_url": dead},
                                                {"camera_id": "wrong-path", "rtsp_url": wrong_path},
                                                {"camera_id": "good", "rtsp_url": stack.rtsp_url}]))
    text = "\n".join(lines)
    assert rc == 1, text
    assert "hunter2" not in text and "admin" not in text
    d = line(lines, "camera dead")
    assert d.startswith("FAIL camera dead: rtsp://***@127.0.0.1:") and "fix: check cameras[0].rtsp_url" in d, d
    assert d.count("rtsp://") == 1, f"the URL is said once, not repeated from ffprobe's message: {d}"
    w = line(lines, "camera wrong-path")
    assert w.startswith("FAIL camera wrong-path:") and "cameras[1].rtsp_url" in w, w
    assert line(lines, "camera good").startswith("PASS camera good:")
    # the seed's single-camera form is named as written (a newcomer was told to check cameras[0])
    _, seed = run_check(write_config(stack, tmp_path, camera_rtsp_url=dead, rtsp_timeout_seconds=3))
    assert "fix: check camera_rtsp_url (host, port" in line(seed, f"camera {stack.camera_id}"), seed
    # the dev camera: 15 fps, a keyframe every second (read from the stream itself)
    assert line(lines, "latency good").startswith("PASS latency good: parts 0.200 s (3 frames at 15 fps), segments "
                                                  "1.0 s (a keyframe every 1.00 s)"), line(lines, "latency good")


def test_hevc_source_warns_and_transcode_h264_clears_it(stack, hevc_camera, tmp_path):
    cams = [{"camera_id": "hevc-cam", "rtsp_url": hevc_camera}]
    rc, lines = run_check(write_config(stack, tmp_path, camera_id=None, camera_rtsp_url=None, frigate_camera=None,
                                       cameras=cams))
    assert rc == 0, lines  # a warning, not a failure
    assert "hevc" in line(lines, "camera hevc-cam") and line(lines, "camera hevc-cam").startswith("PASS")
    warn = line(lines, "hevc hevc-cam")
    assert warn.startswith("WARN hevc hevc-cam:")
    assert ("most browsers cannot play HEVC through hls.js; set transcode: h264 for this camera "
            "(CPU-heavy on a Pi)") in warn
    cams[0]["transcode"] = "h264"
    rc, lines = run_check(write_config(stack, tmp_path, camera_id=None, camera_rtsp_url=None, frigate_camera=None,
                                       cameras=cams))
    assert rc == 0 and line(lines, "hevc hevc-cam").startswith("PASS hevc hevc-cam:")


def test_short_secret_fails(stack, tmp_path, monkeypatch):
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    rc, lines = run_check(write_config(stack, tmp_path, stream_secret="too-short-secret"))
    assert rc == 1
    s = line(lines, "secret")
    assert s.startswith("FAIL secret: stream_secret (kid 'default') is 16 bytes") and "openssl rand" in s
    assert "too-short-secret" not in "\n".join(lines)


def test_legacy_stream_secret_warns_that_a_stolen_pod_can_mint_tokens(stack, tmp_path, monkeypatch):
    """The guide's config (one shared stream_secret, no gateway public key) passes with a WARN that
    names the risk and the key to set instead."""
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)
    rc, lines = run_check(write_config(stack, tmp_path, gateway_public_keys=None, stream_secret="s" * 40))
    assert rc == 0, lines
    k = line(lines, "keys")
    assert k.startswith("WARN keys: legacy key layout") and "stolen pod can mint" in k
    assert "fix: set gateway_public_keys" in k
    # while migrating (both set) it still warns: the secret on disk is what matters
    rc, lines = run_check(write_config(stack, tmp_path, stream_secret="s" * 40))
    assert rc == 0 and line(lines, "keys").startswith("PASS keys: gateway_public_keys")
    assert [x for x in lines if x.startswith("WARN keys:")][0].count("stream_secret is still set") == 1


@pytest.mark.parametrize("offset,status", [(0.4, "PASS"), (-12.0, "WARN"), (45.0, "FAIL"), (-45.0, "FAIL")])
def test_clock_skew_against_the_portal(stack, tmp_path, offset, status):
    """``clock`` compares this host's clock with the portal's Date header: a pod 45 s off would refuse
    every gateway token (max_clock_skew 30 s), so that is a FAIL that says clock skew."""
    from pod.check import check_clock
    from pod.config import load_config

    cfg, _ = load_config(write_config(stack, tmp_path))
    r = check_clock(cfg, [offset])
    assert r.status == status, r.line()
    if abs(offset) < 1:  # the Date header has whole seconds: no tenths that are not there
        assert "within 1 s of the portal's clock" in r.line() and "0.4" not in r.line()
    else:
        assert f"{abs(offset):.0f} s {'ahead of' if offset > 0 else 'behind'} the portal's clock (±1 s" in r.line()
    if status == "FAIL":
        assert "clock skew" in r.line() and "timedatectl" in r.line()
    assert check_clock(cfg, []).status == "WARN" and "did not answer" in check_clock(cfg, []).detail


async def test_portal_client_measures_the_clock_offset_from_the_date_header():
    import email.utils
    import time

    import httpx

    from pod.portal import PortalClient

    def handler(request):
        skewed = email.utils.formatdate(time.time() - 40, usegmt=True)  # the portal is 40 s behind us
        return httpx.Response(200, json={"config_version": "1", "entries": []}, headers={"date": skewed})

    async with PortalClient("https://portal.example", "k", transport=httpx.MockTransport(handler)) as client:
        assert client.clock_offset is None
        await client.get_plates("s", "c")
        assert client.clock_offset == pytest.approx(40, abs=1.5)


def test_invalid_config_stops_with_key_path(tmp_path):
    p = tmp_path / "pod.yaml"
    p.write_text(yaml.safe_dump({"portal_url": "http://127.0.0.1:9", "pod_api_key": "k", "pod_id": "pod-1",
                                 "site_id": "site-1",
                                 "camera_id": "cam", "camera_rtsp_url": "rtsp://127.0.0.1:9/x",
                                 "stream_secret": "s" * 40, "stream_bind": "192.168.1.20"}))
    rc, lines = run_check(p)
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith("FAIL config: $.stream_bind: 192.168.1.20 is a LAN/public address")
    assert "fix:" in lines[0]


def test_unusable_dir_fails(stack, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, lines = run_check(write_config(stack, tmp_path, recordings_dir=str(blocker / "recordings")))
    assert rc == 1 and line(lines, "dir recordings_dir").startswith("FAIL dir recordings_dir:")


# ---- tailnet --------------------------------------------------------------------------


def _cfg(**over):
    d = {"portal_url": "http://127.0.0.1:9", "pod_api_key": "k", "pod_id": "pod-1", "site_id": "site-1",
         "camera_id": "cam1",
         "camera_rtsp_url": "rtsp://127.0.0.1:9/x", "stream_secret": "s" * 40}
    d.update(over)
    return parse_config(d)[0]


async def test_tailnet_auto_asks_localapi_once(tmp_path, monkeypatch):
    sock = tmp_path / "tailscaled.sock"
    async with LocalAPIStandIn(sock, status_body(["100.88.1.2"], [])) as standin:
        r = await check_tailnet(_cfg(tailscale_socket=str(sock)))
    assert r.status == "PASS" and r.detail.startswith("100.88.1.2 (from tailscaled LocalAPI") and standin.requests == 1
    monkeypatch.setattr("pod.tailnet.shutil.which", lambda _name: None)  # no tailscale CLI either
    started = time.monotonic()
    r = await check_tailnet(_cfg(tailscale_socket=str(tmp_path / "missing.sock")))
    assert time.monotonic() - started < 5  # no waiting
    assert r.status == "FAIL" and "tailscale up --advertise-tags=tag:pod --hostname=pod-1" in r.line()


async def test_tailnet_explicit_address_must_be_local():
    r = await check_tailnet(_cfg(stream_bind="100.100.100.100"))
    assert r.status == "FAIL" and "not an address of this machine" in r.detail
    r = await check_tailnet(_cfg(enable_streaming=False))
    assert r.status == "PASS"


def test_result_line_format():
    assert CheckResult("PASS", "x", "ok", "never shown").line() == "PASS x: ok"
    assert CheckResult("FAIL", "x", "bad", "do this").line() == "FAIL x: bad — fix: do this"
    assert CheckResult("WARN", "x", "meh").line() == "WARN x: meh"


# ---- transcode: h264 (config + streamer) ----------------------------------------------


def test_transcode_is_a_per_camera_option():
    c = _cfg(camera_id=None, camera_rtsp_url=None,
             cameras=[{"camera_id": "a", "rtsp_url": "rtsp://h/a"},
                      {"camera_id": "b", "rtsp_url": "rtsp://h/b", "transcode": "h264"}])
    assert [cam.transcode for cam in c.camera_list()] == ["copy", "h264"]
    assert _cfg().camera_list()[0].transcode == "copy"  # the seed's single camera
    with pytest.raises(ConfigError, match=r"\$\.cameras\[0\]\.transcode"):
        _cfg(camera_id=None, camera_rtsp_url=None, cameras=[{"camera_id": "a", "rtsp_url": "rtsp://h/a",
                                                             "transcode": "h265"}])


def test_ffmpeg_args_transcode_h264(tmp_path):
    c = _cfg(camera_id=None, camera_rtsp_url=None, hls_segment_seconds=2, hls_dir=str(tmp_path),
             cameras=[{"camera_id": "a", "rtsp_url": "rtsp://h/a"},
                      {"camera_id": "b", "rtsp_url": "rtsp://h/b", "transcode": "h264"}])
    cam_a, cam_b = c.camera_list()
    assert (cam_a.transcode, cam_b.transcode) == ("copy", "h264")
    copy = ffmpeg_args(c, cam_a, tmp_path / "a", run=1)
    h264 = ffmpeg_args(c, msgspec.structs.replace(cam_a, transcode="h264"), tmp_path / "a", run=1)
    assert "-c copy" in " ".join(copy) and "libx264" not in copy
    joined = " ".join(h264)
    assert "-c copy" not in joined
    assert "-map 0:v:0 -c:v libx264 -preset veryfast -tune zerolatency" in joined
    assert "-g 50" in joined and "-sc_threshold 0" in joined  # 25 fps × 2 s segments
    assert "-force_key_frames expr:gte(t,n_forced*2)" in joined  # keyframe per segment at any camera fps
    # everything else is the same command line
    assert [a for a in copy if a not in ("-c", "copy")] == [a for a in h264 if a not in (
        "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-g", "50",
        "-sc_threshold", "0", "-force_key_frames", "expr:gte(t,n_forced*2)")]


def test_transcode_h264_turns_the_hevc_camera_into_h264_hls(hevc_camera, tmp_path):
    c = _cfg(camera_id=None, camera_rtsp_url=None, hls_segment_seconds=1, hls_dir=str(tmp_path / "hls"),
             cameras=[{"camera_id": "hevc-cam", "rtsp_url": hevc_camera, "transcode": "h264"}])
    out = tmp_path / "hls" / "hevc-cam"
    out.mkdir(parents=True)
    proc = subprocess.Popen(ffmpeg_args(c, c.camera_list()[0], out, run=1), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list(out.glob("seg_*.m4s"))) < 3 and proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert len(list(out.glob("seg_*.m4s"))) >= 3, err.decode(errors="replace")[-2000:]
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=codec_name",
                        "-of", "json", str(out / "index.m3u8")], capture_output=True, text=True, timeout=30)
    assert json.loads(r.stdout)["streams"][0]["codec_name"] == "h264", r.stderr


def test_config_schema_command(capsys):
    assert cli_main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    pod = schema["$defs"]["PodConfig"]
    assert schema["$ref"] == "#/$defs/PodConfig" and pod["additionalProperties"] is False
    assert set(pod["required"]) == {"portal_url", "pod_api_key", "pod_id", "site_id"}
    assert schema["$defs"]["CameraConfig"]["properties"]["transcode"] == {"enum": ["copy", "h264"], "default": "copy"}
    assert msgspec.json.schema(type(_cfg()))["$defs"]["PodConfig"]["properties"].keys() == pod["properties"].keys()


def test_latency_line_says_what_the_camera_makes_of_the_configured_durations():
    """Issue 14: where the goal cannot be reached (4 s GOPs, classic HLS), `pod check` says so
    with the effective part/segment durations and the expected latency."""
    from pod.check import timing_result

    good = {"avg_frame_rate": "15/1", "keyframes": [0.0, 1.0, 2.0, 3.0, 4.0]}
    r = timing_result(_cfg(hls_segment_seconds=2), "cam", good)
    assert r.status == "PASS" and r.name == "latency cam"
    assert "parts 0.200 s (3 frames at 15 fps)" in r.detail and "segments 2.0 s" in r.detail
    assert "expected latency about 0.7 s (LL-HLS)" in r.detail
    long_gop = {"avg_frame_rate": "15/1", "keyframes": [0.5, 4.5, 8.5]}
    r = timing_result(_cfg(hls_segment_seconds=2), "cam", long_gop)
    assert r.status == "WARN" and "segments 4.0 s (a keyframe every 4.00 s)" in r.detail
    assert "keyframe (I-frame) interval to 2 s or less" in r.fix
    r = timing_result(_cfg(low_latency=False), "cam", good)
    assert r.status == "WARN" and "classic HLS" in r.detail and "parts" not in r.detail
    r = timing_result(_cfg(), "cam", {"avg_frame_rate": "15/1", "keyframes": [0.2]})
    assert r.status == "WARN" and "fewer than 2 keyframes" in r.detail


def test_timezone_line_says_which_zone_and_where_it_came_from(tmp_path):
    """The zone in which plain-date whitelist bounds are read, and where it comes from. WARN for
    a zone that is probably not the site's: TZ that names no zone (ignored), no zone at all,
    TZ of the shell (the systemd unit sets none) and a system left on UTC."""
    from pod.check import check_timezone

    link = tmp_path / "localtime"
    link.symlink_to("/usr/share/zoneinfo/Europe/Berlin")
    utc = tmp_path / "utc"
    utc.symlink_to("/usr/share/zoneinfo/Etc/UTC")
    cfg = _cfg()
    assert check_timezone(cfg, {}, str(link)).line() == (
        "PASS timezone: plain-date whitelist bounds (starts/ends) are days in Europe/Berlin (from "
        f"{link}; set timezone in the pod's config to the site's IANA zone (e.g. America/New_York) to pin it)")
    shell = check_timezone(cfg, {"TZ": ":America/New_York"}, str(link))
    assert shell.status == "WARN" and "days in America/New_York, from TZ in this shell" in shell.detail
    bad = check_timezone(cfg, {"TZ": "Mars/Olympus"}, str(link))
    assert bad.status == "WARN" and "TZ='Mars/Olympus' (environment) is not an IANA time zone name" in bad.detail
    assert f"days in Europe/Berlin ({link}) instead" in bad.detail and "or fix TZ" in bad.fix
    none = check_timezone(cfg, {}, str(tmp_path / "missing"))
    assert none.status == "WARN" and none.detail.endswith("are days in UTC")
    default = check_timezone(cfg, {}, str(utc))
    assert default.status == "WARN" and "Etc/UTC" in default.detail and "system's default" in default.detail
    cfg.timezone = "Asia/Tokyo"
    assert check_timezone(cfg, {"TZ": "Mars/Olympus"}, str(utc)).line() == (
        "PASS timezone: plain-date whitelist bounds (starts/ends) are days in Asia/Tokyo (timezone in the config)")
