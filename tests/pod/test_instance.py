"""Several cameras, one agent (issue 11, point 6): the guide's "Multiple Cameras" tip runs one
agent per camera config; a second agent that collides with a running one — on stream_port,
state_dir or MQTT client id — must fail at once, naming the clash and the ``cameras:`` list,
and leave the running one alone. pod/instance.py's claims alone, then real agent processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from pod.instance import AgentCollision, claim_mqtt_client_id, claim_port, lock_state_dir, release

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "tests" / "data" / "seed"
POD_BIN = ROOT / ".venv" / "bin" / "platebridge-pod"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_claim_is_exclusive_and_released_with_its_handle(tmp_path):
    port = free_port()
    held = claim_port(port)
    with pytest.raises(AgentCollision, match=rf"stream_port {port}.*`cameras:`"):
        claim_port(port)
    release(held)
    release(claim_port(port))  # free again once closed

    lock = lock_state_dir(tmp_path)
    assert (tmp_path / "agent.lock").read_text().strip() == str(os.getpid())
    with pytest.raises(AgentCollision, match=rf"state_dir: {tmp_path} is in use by platebridge-pod pid {os.getpid()}"):
        lock_state_dir(tmp_path)
    release(lock)
    release(lock_state_dir(tmp_path))

    mq = claim_mqtt_client_id("localhost", 1883, "platebridge-main-gate-pod")
    with pytest.raises(AgentCollision, match=r"mqtt_client_id: 'platebridge-main-gate-pod'.*`cameras:`"):
        claim_mqtt_client_id("localhost", 1883, "platebridge-main-gate-pod")
    other = claim_mqtt_client_id("localhost", 1884, "platebridge-main-gate-pod")  # another broker: no clash
    release(mq, other)
    release(claim_mqtt_client_id("localhost", 1883, "platebridge-main-gate-pod"))


def guide_config(tmp_path: Path, name: str, **over) -> Path:
    """The guide's config.yaml (tests/data/seed/guide_config.yaml) with this machine's paths, as a
    guide user would write config_camera1.yaml / config_camera2.yaml for its multi-camera tip."""
    d = yaml.safe_load((SEED / "guide_config.yaml").read_text())
    d.update({"portal_url": "http://127.0.0.1:9", "stream_secret": "s" * 40, "stream_bind": "127.0.0.2",
              "state_dir": str(tmp_path / "state"), "hls_dir": str(tmp_path / "hls"),
              "recordings_dir": str(tmp_path / "rec"), "record_on_detection": False,
              "camera_rtsp_url": "rtsp://127.0.0.1:9/none", "rtsp_timeout_seconds": 1})
    d.update(over)
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def start(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen([str(POD_BIN), "run", "--config", str(config)], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=config.parent)


def wait_health(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


@pytest.fixture
def first_agent(tmp_path):
    """Agent 1 from config_camera1.yaml, running (its health answers)."""
    port = free_port()
    cfg = guide_config(tmp_path / "one", "config_camera1", stream_port=port, camera_id="camera-1")
    log = tmp_path / "one.log"
    proc = start(cfg, log)
    try:
        wait_health(port, proc, log)
        yield port, cfg
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize(("clash", "needle"), [
    ("port", "stream_port"),
    ("state_dir", "$.state_dir"),
    ("client_id", "$.mqtt_client_id"),
    ("guide_tip", "stream_port"),  # the guide's two configs differ only in the camera: the port clashes first
])
def test_a_second_colliding_agent_fails_at_once_naming_the_cameras_list(tmp_path, first_agent, clash, needle):
    port, cfg1 = first_agent
    first = yaml.safe_load(cfg1.read_text())
    over = {"camera_id": "camera-2", "stream_port": free_port(), "state_dir": str(tmp_path / "two" / "state"),
            "mqtt_client_id": "platebridge-second"}
    if clash == "port":
        over["stream_port"] = port
    elif clash == "state_dir":
        over["state_dir"] = first["state_dir"]
    elif clash == "client_id":
        del over["mqtt_client_id"]  # both default to platebridge-<pod_id>, and pod_id is the guide's for both
    else:
        over = {"camera_id": "camera-2", "stream_port": port}
    cfg2 = guide_config(tmp_path / "two", "config_camera2", **over)
    if clash == "guide_tip":
        cfg2.write_text(cfg1.read_text().replace("camera-1", "camera-2"))
    log = tmp_path / "two.log"
    t0 = time.monotonic()
    proc = start(cfg2, log)
    try:
        rc = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - t0
    out = log.read_text()
    assert rc == 1, out
    assert needle in out and "`cameras:`" in out and "Traceback" not in out, out
    assert elapsed < 15, elapsed  # at once: no retries, no waiting for the tailnet or the broker
    # the running agent is untouched, and its state directory is still its own
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    lock = Path(first["state_dir"]) / "agent.lock"
    assert lock.read_text().strip() != str(proc.pid)


def test_a_separate_agent_with_its_own_port_dir_and_client_id_runs(tmp_path, first_agent):
    """The control: nothing shared, nothing refused (the refusals above are about collisions)."""
    port2 = free_port()
    cfg2 = guide_config(tmp_path / "two", "config_camera2", camera_id="camera-2", stream_port=port2,
                        mqtt_client_id="platebridge-second", pod_id="second-gate-pod")
    log = tmp_path / "two.log"
    proc = start(cfg2, log)
    try:
        wait_health(port2, proc, log)
    finally:
        proc.terminate()
        proc.wait(20)
    assert sys.platform.startswith("linux")
