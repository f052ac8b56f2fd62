"""The demo: a real RTSP camera → pod (127.0.0.2) → gateway → your browser.

Run with ``./run demo``. Prints one ``WATCH URL: …`` line and runs until
interrupted (Ctrl-C). Ports can be moved with env ``DEMO_GATEWAY_PORT``,
``DEMO_POD_PORT`` and ``DEMO_CAMERA_PORT``; logs go to ``var/demo/``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import ROOT, Stack  # noqa: E402


def main() -> int:
    workdir = ROOT / "var" / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("*.log"):
        old.unlink()  # each run starts with fresh logs
    wanted = {"gateway": int(os.environ.get("DEMO_GATEWAY_PORT", "8080")),
              "pod": int(os.environ.get("DEMO_POD_PORT", "8000")),
              "camera": int(os.environ.get("DEMO_CAMERA_PORT", "8554"))}
    stack = Stack(workdir=workdir, gateway_port=wanted["gateway"], pod_port=wanted["pod"],
                  camera_port=wanted["camera"], segment_seconds=2.0)
    for name, port in (("gateway", stack.gateway_port), ("pod", stack.pod_port), ("camera", stack.camera_port)):
        if port != wanted[name]:
            print(f"demo: port {wanted[name]} is busy, the {name} uses {port} instead "
                  f"(set DEMO_{name.upper()}_PORT to choose)", flush=True)
    stopping = False

    def on_signal(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print(f"demo: camera  {stack.rtsp_url}", flush=True)
        stack.start_camera()
        print(f"demo: pod     {stack.pod_url} (tailnet stand-in address), starting ffmpeg…", flush=True)
        stack.start_pod(timeout=60)
        print(f"demo: gateway {stack.gateway_url}", flush=True)
        stack.start_gateway()
        token = stack.user_token(ttl=900)
        print(f"demo: logs in {stack.workdir}; token valid 15 min, session up to 1 h. Ctrl-C to stop.", flush=True)
        print(f"WATCH URL: {stack.watch_url(token)}", flush=True)
        while not stopping:
            for name, proc in stack.procs.items():
                if proc.popen.poll() is not None:
                    print(f"demo: {name} exited ({proc.popen.returncode}):\n{proc.tail()}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"demo: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("demo: stopping", flush=True)
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
