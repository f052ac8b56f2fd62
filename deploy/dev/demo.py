"""The demo: a real RTSP camera → pod (127.0.0.2) → gateway → your browser, plus
simulated Frigate plate events → pod decisions → the portal stand-in.

Run with ``./run demo``. Starts, on loopback: mosquitto, the portal stand-in,
the GStreamer test camera, one pod and the gateway. The watch token is minted
by the portal stand-in's ``POST /api/pod/stream-token``, as the real portal
would. Prints one ``WATCH URL: …`` line, then publishes two simulated Frigate
passages (one whitelisted plate, one unknown) and prints each detection as it
lands at the portal stand-in, ``GATE: opened <plate>`` when the portal opens the
gate through its Gatewise stand-in (allowed plates only), then each clip (5 s
pre-roll + 10 s) once it is uploaded and confirmed, with its playable download
URL. Also prints the guide's test ``curl`` for this portal. Runs until
interrupted (Ctrl-C).

Ports: env ``DEMO_GATEWAY_PORT`` (8080), ``DEMO_POD_PORT`` (8000),
``DEMO_CAMERA_PORT`` (8554). A busy default is replaced by a free port (and said so);
a port set in the environment is used as given, and the demo stops with a one-line
error (exit 2) when it is not a TCP port or is busy. Logs and the generated configs
are in ``var/demo/``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frigate_sim import Publisher
from stack import ROOT, ProcessDied, Stack, free_port
from stack import interrupted as stack_interrupted

ALLOWED = "DEMO123"
PORTS = {"gateway": ("DEMO_GATEWAY_PORT", 8080), "pod": ("DEMO_POD_PORT", 8000), "camera": ("DEMO_CAMERA_PORT", 8554)}


def wanted_ports(env) -> tuple[dict[str, int], set[str]]:
    """The TCP port each part asks for (``gateway``, ``pod``, ``camera``) and the parts
    whose port the environment set. Raises ``ValueError`` naming the variable when its
    value is not a port 1-65535, or is another part's port."""
    ports, explicit = {}, set()
    for part, (name, default) in PORTS.items():
        value = env.get(name, "").strip()
        if not value:
            ports[part] = default
            continue
        if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 65535):
            raise ValueError(f"{name}={value!r} is not a TCP port (1-65535); unset it for the default")
        ports[part], explicit = int(value), explicit | {part}
    # every part listens on 127.0.0.1 (the pod too, for /health), so two parts cannot share a port
    for part in sorted(explicit):
        for other, port in ports.items():
            if other != part and port == ports[part]:
                how = PORTS[other][0] if other in explicit else f"the {other}'s default"
                raise ValueError(f"{PORTS[part][0]}={ports[part]} is also {how}: each part needs its own port")
    return ports, explicit


def main() -> int:
    try:
        wanted, explicit = wanted_ports(os.environ)
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    # one demo per checkout: a second one would rewrite the first one's configs and keys in
    # var/demo and delete its logs before failing on its state directory
    workdir = ROOT / "var" / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    lock = open(workdir.parent / "demo.lock", "a+")  # noqa: SIM115 - held until this process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        print(f"demo: a demo is already running from this checkout (pid {pid}, {workdir}); stop it with Ctrl-C "
              "first: one checkout runs one demo", file=sys.stderr)
        return 2
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    # a port the user chose is used as given, or the demo stops here
    hosts = {"gateway": (Stack.gateway_host,), "pod": (Stack.pod_host, "127.0.0.1"), "camera": (Stack.camera_host,)}
    for name in sorted(explicit):
        if free_port(hosts[name][0], wanted[name], also=hosts[name][1:]) != wanted[name]:
            variable = PORTS[name][0]
            print(f"demo: {variable}={wanted[name]} is busy (another demo or service listens there); stop it, "
                  f"choose another port, or unset {variable} to take a free one", file=sys.stderr)
            return 2
    for old in [*workdir.glob("*.log"), *workdir.glob("portal.sqlite3*")]:
        old.unlink()  # each run starts with fresh logs and a fresh audit log
    stack = Stack(workdir=workdir, gateway_port=wanted["gateway"], pod_port=wanted["pod"],
                  camera_port=wanted["camera"], segment_seconds=2.0,
                  pod_overrides={"gate_zones": ["gate_zone"], "max_decision_wait": 3,
                                 "pre_roll": 5, "recording_duration": 10})
    for name, port in (("gateway", stack.gateway_port), ("pod", stack.pod_port), ("camera", stack.camera_port)):
        if port != wanted[name]:
            print(f"demo: port {wanted[name]} is busy, the {name} uses {port} instead "
                  f"(set {PORTS[name][0]} to a free port to choose a fixed one)", flush=True)
    stopping = started = False

    def on_signal(*_):
        nonlocal stopping
        stopping = True
        if not started:  # Ctrl-C while the stack starts: stop at the next wait, not once it is up
            stack_interrupted.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    publisher = None
    try:
        print(f"demo: mosquitto 127.0.0.1:{stack.mqtt_port}, portal stand-in {stack.portal_url}", flush=True)
        stack.start_mosquitto()
        stack.start_portal([{"plate": ALLOWED, "unit": "4B", "tenant": "Demo Resident", "enabled": True}])
        print(f"demo: camera  {stack.rtsp_url}", flush=True)
        stack.start_camera()
        print(f"demo: pod     {stack.pod_url} (tailnet stand-in address), starting ffmpeg…", flush=True)
        stack.start_pod(timeout=60)
        print(f"demo: gateway {stack.gateway_url}", flush=True)
        stack.start_gateway()
        direct = stack.gateway_direct_url
        if direct != stack.gateway_url:  # data_plane: auto found nginx + its Lua module
            print(f"demo: gateway data plane: nginx on {stack.gateway_url} serves kept segments, the gateway's "
                  f"workers answer behind it on {direct} (metrics: {stack.gateway_metrics_url})", flush=True)
        r = stack.http.post(f"{stack.portal_url}/api/pod/stream-token", json={"camera_id": stack.camera_id},
                       headers={"Authorization": "Bearer demo-user-session"}, timeout=10)
        r.raise_for_status()
        token = r.json()
        print(f"demo: logs in {stack.workdir}; token valid {token['expires_in']} s, session up to 1 h. "
              "Ctrl-C to stop.", flush=True)
        print(f"WATCH URL: {token['watch_url']}", flush=True)

        publisher = Publisher("127.0.0.1", stack.mqtt_port)
        print("demo: simulated Frigate: a car with whitelisted plate 'DEMO 123', then an unknown 'XYZ 999'",
              flush=True)
        publisher.passage("DEMO 123")
        publisher.passage("XYZ 999")
        print(f"demo: more cars: .venv/bin/python deploy/dev/frigate_sim.py --port {stack.mqtt_port} --plate 'ABC 123'",
              flush=True)
        # the key is read from pod.yaml by the shell: the demo never prints it
        print(f"demo: the guide's test detection: curl -X POST {stack.portal_url}/api/pod/detect "
              f"""-H "Authorization: Bearer $(sed -n 's/^pod_api_key: //p' {stack.workdir / 'pod.yaml'})" """
              "-H 'Content-Type: application/json' "
              """-d '{"site_id":"xxx","plate":"TEST123","camera":"camera-1","pod_name":"main-gate-pod"}'""", flush=True)
        print(f"demo: a new WATCH URL when this token has expired: curl -s -X POST {stack.portal_url}"
              "/api/pod/stream-token -H 'Authorization: Bearer demo-user-session' "
              f"""-H 'Content-Type: application/json' -d '{{"camera_id":"{stack.camera_id}"}}'""", flush=True)
        started = True
        if stopping:  # interrupted after the last wait of the start
            raise KeyboardInterrupt
        seen: set[str] = set()
        clips: set[str] = set()
        opened = 0
        while not stopping:
            for name, proc in stack.procs.items():
                if proc.popen.poll() is not None:
                    print(f"demo: {name} exited ({proc.popen.returncode}):\n{proc.tail()}", file=sys.stderr)
                    return 1
            try:
                for d in stack.detections():
                    if d["event_id"] not in seen:
                        seen.add(d["event_id"])
                        print(f"PORTAL: detect {d['decision']} {d.get('plate') or '-'} {d['reason']} "
                              f"event={d['event_id']}", flush=True)
                openings = stack.gate_openings()  # the portal opens the gate through Gatewise on allow
                for o in openings[opened:]:
                    print(f"GATE: opened {o['plate'] or '-'} (gate {o['gate_id']}, event {o['event_id']})", flush=True)
                opened = len(openings)
                recs = stack.http.get(f"{stack.portal_url}/api/pod/recordings", params={"camera_id": stack.camera_id},
                                 headers={"Authorization": "Bearer demo-user-session"}, timeout=5).json()["recordings"]
                for rec in recs:
                    if rec["event_id"] not in clips:
                        clips.add(rec["event_id"])
                        print(f"PORTAL: recording event={rec['event_id']} {rec['duration_seconds']:.1f}s "
                              f"CLIP URL: {rec['video_url']}", flush=True)
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        return 0
    except (ProcessDied, TimeoutError, httpx.HTTPError) as exc:
        print(f"demo: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # interrupted while starting
    finally:
        print("demo: stopping", flush=True)
        if publisher is not None:
            publisher.close()
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
