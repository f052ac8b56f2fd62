"""The demo's ports: a bad DEMO_*_PORT or a busy one the user chose stops the demo with
one line (exit 2) before it starts anything or touches var/demo; a busy default is
replaced, and said so."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))
from demo import wanted_ports  # noqa: E402


def test_defaults_and_chosen_ports():
    assert wanted_ports({}) == ({"gateway": 8080, "pod": 8000, "camera": 8554}, set())
    ports, explicit = wanted_ports({"DEMO_GATEWAY_PORT": " 9090 ", "DEMO_CAMERA_PORT": ""})
    assert ports == {"gateway": 9090, "pod": 8000, "camera": 8554} and explicit == {"gateway"}


@pytest.mark.parametrize("value", ["abc", "0", "65536", "-1", "80.5", "٨٠٨٠", "1_000"])
def test_a_value_that_is_not_a_port_names_the_variable(value):
    with pytest.raises(ValueError, match=r"^DEMO_POD_PORT=.* is not a TCP port \(1-65535\)"):
        wanted_ports({"DEMO_POD_PORT": value})


@pytest.mark.parametrize("env,said", [
    ({"DEMO_GATEWAY_PORT": "18300", "DEMO_CAMERA_PORT": "18300"}, "DEMO_CAMERA_PORT=18300 is also DEMO_GATEWAY_PORT"),
    ({"DEMO_POD_PORT": "18301", "DEMO_GATEWAY_PORT": "18301"}, "DEMO_GATEWAY_PORT=18301 is also DEMO_POD_PORT"),
    ({"DEMO_GATEWAY_PORT": "8554"}, "DEMO_GATEWAY_PORT=8554 is also the camera's default"),
])
def test_two_parts_on_one_port_are_refused(env, said):
    """From an attack run: each was checked alone, and nginx failed to bind 30 s later."""
    with pytest.raises(ValueError, match=f"^{said}: each part needs its own port"):
        wanted_ports(env)


def _demo(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "deploy/dev/demo.py")], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env}, timeout=60)


def test_the_demo_refuses_a_bad_port_in_one_line():
    r = _demo({"DEMO_GATEWAY_PORT": "abc"})
    assert r.returncode == 2, r
    assert r.stderr.strip() == ("demo: DEMO_GATEWAY_PORT='abc' is not a TCP port (1-65535); "
                                "unset it for the default")
    assert "Traceback" not in r.stderr + r.stdout


def test_a_busy_port_the_user_chose_stops_the_demo_before_it_touches_var_demo():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        marker = ROOT / "var" / "demo" / "still-here.log"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("a running demo's log")
        try:
            r = _demo({"DEMO_GATEWAY_PORT": str(port)})
            assert r.returncode == 2, r
            assert r.stderr.strip().startswith(f"demo: DEMO_GATEWAY_PORT={port} is busy"), r.stderr
            assert "unset DEMO_GATEWAY_PORT to take a free one" in r.stderr and "WATCH URL" not in r.stdout
            assert marker.read_text() == "a running demo's log"  # the other demo's logs are left alone
        finally:
            marker.unlink(missing_ok=True)


def test_the_simulator_says_where_mqtt_is_not_in_a_traceback():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        r = subprocess.run([sys.executable, str(ROOT / "deploy/dev/frigate_sim.py"), "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r
    assert r.stderr.startswith(f"frigate_sim: cannot reach MQTT at 127.0.0.1:{port} (Connection refused); use the "
                               "--port the demo printed"), r.stderr
