"""The pod's surface (issue 12 point 7): what answers on the tailnet, what the installer puts in
argv, what MQTT lets in.

* ``/health`` and ``/metrics`` on the pod's tailnet listener (127.0.0.2 in the stack) need a
  gateway→pod token for this pod; on 127.0.0.1 they stay open for local monitoring.
* The installer never puts a secret in any process's argv: every external command it runs is
  recorded through PATH shims while it installs from a 0600 secrets file, and no secret is in
  any recorded argv; secrets given as flags or environment variables are refused.
* MQTT payloads over 1 MiB are refused before they are buffered: the pod announces an MQTT 5
  Maximum Packet Size, so the real mosquitto never sends it the 2 MiB message (the control,
  an MQTT 3.1.1 client, receives it whole).
* RTSP credentials out of ffmpeg's argv: issue 14's ``pod/ffmpeg.py`` (not covered here).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from pod.mqtt import MAX_PACKET_BYTES, FrigateListener
from protocol.tokens import mint_pod_token
from tests.security.conftest import make_stack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


# ---- /health and /metrics -------------------------------------------------------------------------
@pytest.mark.parametrize("route", ["/health", "/metrics"])
def test_health_and_metrics_need_a_gateway_token_on_the_tailnet_listener(sec_stack, figure, route):
    s = sec_stack
    tailnet, local = f"{s.pod_url}{route}", f"http://127.0.0.1:{s.pod_port}{route}"
    anonymous = httpx.get(tailnet, timeout=10)
    other_pod = httpx.get(tailnet, timeout=10, headers={"Authorization": "Bearer " + mint_pod_token(
        s.pod_signer(), camera_id="*", pod_id="other-pod")})
    user_token = httpx.get(tailnet, timeout=10, headers={"Authorization": f"Bearer {s.user_token()}"})
    gateway = httpx.get(tailnet, timeout=10, headers={"Authorization": "Bearer " + mint_pod_token(
        s.pod_signer(), camera_id="*", pod_id=s.pod_id)})
    loopback = httpx.get(local, timeout=10)
    leaked = sum("camera" in r.text or "platebridge_" in r.text for r in (anonymous, other_pod, user_token))
    figure(f"{route} documents served on the tailnet without the gateway's token", leaked, "responses", "== 0",
           leaked == 0)
    assert (anonymous.status_code, other_pod.status_code, user_token.status_code) == (401, 403, 401)
    assert leaked == 0
    assert gateway.status_code == 200 and loopback.status_code == 200
    marker = "cameras" if route == "/health" else "platebridge_pod_hls_requests_total"
    assert marker in gateway.text and marker in loopback.text


# ---- the installer: no secret in any argv ---------------------------------------------------------
SHIMMED = ("install", "mktemp", "chmod", "chown", "mv", "cp", "cat", "stat", "head", "grep", "wc", "tr", "date",
           "dirname", "basename", "cmp", "sed", "rm", "id", "getent", "dpkg-query", "tailscale", "systemctl",
           "apt-get", "useradd", "curl", "env", "python3.11")


def _shims(tmp: Path, log: Path) -> Path:
    """A directory of PATH shims that record every argv, then run the real command."""
    shim_dir = tmp / "shims"
    shim_dir.mkdir()
    for name in SHIMMED:
        real = shutil.which(name)
        shim = shim_dir / name
        body = f'printf "%s\\0" "$0" "$@" >>{log}; printf "\\n" >>{log}\n'
        body += f'exec {real} "$@"\n' if real else "exit 0\n"
        shim.write_text("#!/bin/bash\n" + body)
        shim.chmod(0o755)
    return shim_dir


def test_the_installer_puts_no_secret_in_any_argv(tmp_path, figure):
    from tests.deploy.test_installer import INSTALLER, SECRETS, _env, _flags

    log = tmp_path / "argv.log"
    log.touch()
    env = _env() | {"PATH": f"{_shims(tmp_path, log)}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(INSTALLER), "--no-system", "--root", str(tmp_path / "root"), *_flags()],
                          capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    argvs = [line.split("\0") for line in log.read_text().splitlines() if line]
    leaks = [a for a in argvs for secret in SECRETS if any(secret in arg for arg in a)]
    figure("installer commands run (recorded through PATH shims)", len(argvs), "commands", ">= 5", len(argvs) >= 5)
    figure("installer commands with a secret in argv", len(leaks), "commands", "== 0", not leaks)
    assert len(argvs) >= 5, argvs  # the shims did record the installer's commands
    assert not leaks, leaks
    config = tmp_path / "root/etc/platebridge/config.yaml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and SECRETS[0] in config.read_text()


def test_control_the_shims_do_see_a_secret_passed_on_a_command_line(tmp_path):
    log = tmp_path / "argv.log"
    log.touch()
    env = {**os.environ, "PATH": f"{_shims(tmp_path, log)}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-c", "head -c0 /dev/null --secret-in-argv"], env=env, capture_output=True, timeout=10)
    assert "--secret-in-argv" in log.read_text()


def test_the_installer_refuses_secrets_on_its_own_command_line_and_environment(tmp_path):
    from tests.deploy.test_installer import _env, _flags, run

    for args, env in ((["--stream-secret", "x" * 40], None), ([], {"POD_STREAM_SECRET": "x" * 40}),
                      (["--pod-api-key", "pbk_x"], None), ([], {"TS_AUTHKEY": "tskey-x"})):
        proc = run("--dry-run", "--root", str(tmp_path), *args, *_flags(), env=_env() | (env or {}))
        assert proc.returncode == 2 and "--secrets-file" in proc.stderr, (args, env, proc.stderr)


# ---- MQTT: over 1 MiB never reaches the pod ---------------------------------------------------
async def _listen(port: int, protocol: str, big: bytes) -> list[int]:
    """Run the pod's listener with ``protocol``; publish ``big`` then a small payload; return the
    sizes the listener's handler got."""
    got: list[int] = []
    stop = asyncio.Event()
    listener = FrigateListener(host="127.0.0.1", port=port, prefix="frigate", client_id=f"size-test-{protocol}",
                               handler=lambda _suffix, payload: got.append(len(payload)), protocol=protocol)
    task = asyncio.create_task(listener.run(stop))
    try:
        await asyncio.wait_for(_until(lambda: listener.subscribed_at is not None), 10)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"frigate-sim-{protocol}")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish("frigate/events", big, qos=1).wait_for_publish(10)
        pub.publish("frigate/events", b'{"type": "end"}', qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        await asyncio.wait_for(_until(lambda: 15 in got), 10)  # the small message arrived: the big one is past
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    return got


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


def test_mqtt_payloads_over_1_mib_are_refused_before_they_reach_the_pod(tmp_path, figure):
    stack = make_stack(tmp_path)
    stack.start_mosquitto()
    try:
        big = b"x" * (2 * 1024 * 1024)
        pod = asyncio.run(_listen(stack.mqtt_port, "5", big))
        legacy = asyncio.run(_listen(stack.mqtt_port, "3.1.1", big))
    finally:
        stack.stop()
    figure("bytes of a 2 MiB MQTT payload that reached the pod", sum(n for n in pod if n > 15), "bytes", "== 0",
           pod == [15])
    assert pod == [15], pod  # only the small message: the broker never sent the 2 MiB one
    assert legacy == [len(big), 15], legacy  # control: an MQTT 3.1.1 client is sent all 2 MiB
    assert len(big) > MAX_PACKET_BYTES


def test_the_pod_still_gets_a_1_mib_payload_it_may_then_skip(tmp_path):
    """The limit is a packet size just above the 1 MiB payload cap: normal Frigate messages (KiB) and
    anything up to 1 MiB still arrive (the parser decides)."""
    stack = make_stack(tmp_path)
    stack.start_mosquitto()
    try:
        got = asyncio.run(_listen(stack.mqtt_port, "5", b"y" * (1024 * 1024)))
    finally:
        stack.stop()
    assert got == [1024 * 1024, 15], got

