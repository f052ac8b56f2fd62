#!/usr/bin/env python3
"""The real pod HLS server with synthetic live cameras, for benchmarks (not production).

    .venv/bin/python bench/synthetic_pod.py --dir DIR --port PORT [--host 127.0.0.2] [--cameras 1]
        [--target 2] [--segment-bytes 128000] [--list-size 6] [--pod-id bench-pod]
    (secret from env PB_BENCH_SECRET)

Serves :func:`pod.hls_server.create_hls_app` — the pod's own app, token checks and all —
under uvicorn (uvloop + httptools) on ``--host`` (its "tailnet" address). Instead of ffmpeg,
a writer thread plays a live camera for each of ``--cameras`` directories
(``bench-cam-00``, ``bench-cam-01``, …): every ``--target`` seconds it writes the next
``seg_<n>.m4s`` (``--segment-bytes`` random bytes) into every camera directory, then
atomically replaces ``index.m3u8`` (fMP4, ``EXT-X-MAP`` ``init.mp4``, the newest
``--list-size`` segments). Deterministic and cheap: no camera, no encoder.

A counting wrapper in front of the app records every ``/cameras/…`` request:
``GET /__bench/log?since=K`` answers ``{"requests": [[t, client_ip, path, status], …],
"next": K', "published": [[seq, t], …]}`` (``t`` = Unix time the request arrived or the
segment was published). Benchmarks tell proxies apart by their source address.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEEP_ON_DISK = 12
POD_HOST, GW_HOST, NAIVE_SOURCE = "127.0.0.2", "127.0.0.1", "127.0.0.3"
POD_ID = "bench-pod"


def camera_ids(n: int) -> list[str]:
    """The synthetic camera ids (``bench-cam-00`` …)."""
    return [f"bench-cam-{i:02d}" for i in range(n)]


class LiveWriter(threading.Thread):
    """Publishes one segment per camera every ``target`` seconds (see module docs)."""

    def __init__(self, dirs: list[Path], target: float, segment_bytes: int, list_size: int) -> None:
        super().__init__(daemon=True, name="live-writer")
        self.dirs, self.target, self.list_size = dirs, target, list_size
        self.block = os.urandom(segment_bytes)
        self.published: list[tuple[int, float]] = []
        self.seq = 0

    def _playlist(self, newest: int) -> str:
        first = max(0, newest - self.list_size + 1)
        lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{self.target:g}",
                 f"#EXT-X-MEDIA-SEQUENCE:{first}", "#EXT-X-INDEPENDENT-SEGMENTS", '#EXT-X-MAP:URI="init.mp4"']
        for n in range(first, newest + 1):
            lines += [f"#EXTINF:{self.target:.3f},", f"seg_{n}.m4s"]
        return "\n".join(lines) + "\n"

    def publish(self) -> None:
        """Write the next segment and playlist into every camera directory."""
        n = self.seq
        data = n.to_bytes(8, "big") + self.block[8:]
        text = self._playlist(n)
        for d in self.dirs:
            (d / f"seg_{n}.m4s.tmp").write_bytes(data)
            os.replace(d / f"seg_{n}.m4s.tmp", d / f"seg_{n}.m4s")
            (d / "index.m3u8.tmp").write_text(text)
            os.replace(d / "index.m3u8.tmp", d / "index.m3u8")
            old = d / f"seg_{n - KEEP_ON_DISK}.m4s"
            if n >= KEEP_ON_DISK:
                old.unlink(missing_ok=True)
        self.published.append((n, time.time()))
        self.seq += 1

    def prefill(self) -> None:
        """A full playlist window before the server starts (older segments, published "now")."""
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
            (d / "init.mp4").write_bytes(os.urandom(1024))
        for _ in range(self.list_size):
            self.publish()

    def run(self) -> None:
        """Publish on the segment clock forever (daemon thread)."""
        t0 = time.monotonic()
        k = 1
        while True:
            delay = t0 + k * self.target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.publish()
            k += 1


class Counting:
    """ASGI wrapper: records ``/cameras/…`` requests, serves ``/__bench/log``."""

    def __init__(self, app, writer: LiveWriter) -> None:
        self.app, self.writer = app, writer
        self.log: list[tuple[float, str, str, int]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/__bench/log":
            qs = parse_qs(scope.get("query_string", b"").decode())
            since = int(qs.get("since", ["0"])[0])
            body = json.dumps({"requests": self.log[since:], "next": len(self.log),
                               "published": self.writer.published}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if not path.startswith("/cameras/"):
            await self.app(scope, receive, send)
            return
        t = time.time()
        client = (scope.get("client") or ("?", 0))[0]
        status = [0]

        async def send_counted(msg) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.log.append((t, client, path, status[0]))


# ---------------------------------------------------------------------------- parent side
def free_port(host: str) -> int:
    """An unused TCP port on ``host``."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SyntheticSetup:
    """Parent side: this synthetic pod on 127.0.0.2, the real gateway (``platebridge-gateway``,
    static discovery, access log off) and optionally ``bench/naive_proxy.py`` (connecting from
    127.0.0.3), each a child process stopped by :meth:`stop`."""

    def __init__(self, workdir: Path, *, cameras: int, target: float, segment_bytes: int, naive: bool = False,
                 gateway_extra: str = "") -> None:
        import secrets

        import httpx

        from bench.common import Procs

        self.workdir, self.target, self.segment_bytes, self.naive = workdir, target, segment_bytes, naive
        self.gateway_extra = gateway_extra
        self.procs = Procs(workdir)
        self.secret = secrets.token_urlsafe(32)
        self.cameras = camera_ids(cameras)
        self.pod_port = free_port(POD_HOST)
        self.gw_port = free_port(GW_HOST)
        self.naive_port = free_port(GW_HOST)
        self.log_next = 0
        self.http = httpx.Client(trust_env=False, timeout=10)

    @property
    def pod_url(self) -> str:
        """The pod's base URL."""
        return f"http://{POD_HOST}:{self.pod_port}"

    @property
    def gateway_url(self) -> str:
        """The gateway's base URL."""
        return f"http://{GW_HOST}:{self.gw_port}"

    def start(self) -> None:
        """Start the pod, the gateway and (if asked) the baseline; wait until each answers."""
        import socket

        from bench.common import VENV_BIN, child_env, wait_for

        env = child_env(PB_BENCH_SECRET=self.secret)
        self.procs.spawn("pod", [sys.executable, str(ROOT / "bench/synthetic_pod.py"), "--dir",
                                 str(self.workdir / "hls"), "--host", POD_HOST, "--port", str(self.pod_port),
                                 "--cameras", str(len(self.cameras)), "--target", f"{self.target:g}",
                                 "--segment-bytes", str(self.segment_bytes), "--pod-id", POD_ID], env=env)
        from protocol.tokens import Keyring, mint_pod_token

        def health() -> int:  # the pod's tailnet listener wants a gateway→pod token for /health
            token = mint_pod_token(Keyring.single(self.secret), camera_id="*", pod_id=POD_ID)
            return self.http.get(f"{self.pod_url}/health", headers={"Authorization": f"Bearer {token}"}).status_code

        wait_for(lambda: self._alive("pod") and health() == 200, 20, what="pod")
        cfg = self.workdir / "gateway.yaml"
        cfg.write_text(f"stream_secret: {self.secret}\ndiscovery: static\npods:\n  {POD_ID}: {self.pod_url}\n"
                       f"host: {GW_HOST}\nport: {self.gw_port}\npublic_base_url: {self.gateway_url}\n"
                       # the gateway's own processes, /metrics on its port: no nginx data plane here
                       "access_log: false\nlog_level: WARNING\ndata_plane: gateway\n" + self.gateway_extra)
        cfg.chmod(0o600)
        self.procs.spawn("gateway", [str(VENV_BIN / "platebridge-gateway"), "--config", str(cfg)], env=env)
        wait_for(lambda: self._alive("gateway") and self.http.get(f"{self.gateway_url}/healthz").status_code == 200,
                 20, what="gateway")
        if self.naive:
            self.procs.spawn("naive", [sys.executable, str(ROOT / "bench/naive_proxy.py"), "--port",
                                       str(self.naive_port), "--pod", self.pod_url, "--pod-id", POD_ID,
                                       "--source", NAIVE_SOURCE], env=env)

            def naive_up() -> bool:
                self._alive("naive")
                with socket.create_connection((GW_HOST, self.naive_port), timeout=1):
                    return True

            wait_for(naive_up, 20, what="naive proxy")
        self.pod_log()  # skip anything before the measurements

    def _alive(self, name: str) -> bool:
        if self.procs.items[name].poll() is not None:
            raise RuntimeError(f"{name} exited:\n" + self.procs.log_tail(name))
        return True

    def pod_log(self) -> dict:
        """The pod's request log since the last call, and every publication time."""
        r = self.http.get(f"{self.pod_url}/__bench/log", params={"since": self.log_next}).json()
        self.log_next = r["next"]
        return r

    def tokens(self, n: int, camera_id: str, first: int = 0) -> list[str]:
        """``n`` user stream tokens for ``camera_id`` (distinct users), as the portal mints them."""
        from protocol.tokens import Keyring, mint_user_token

        kr = Keyring.single(self.secret)
        return [mint_user_token(kr, user_id=f"viewer-{i:04d}", camera_id=camera_id, pod_id=POD_ID, ttl=900)
                for i in range(first, first + n)]

    def stop(self) -> None:
        """Stop every child process."""
        self.http.close()
        self.procs.stop_all()


# ---------------------------------------------------------------------------- child
def main(argv: list[str] | None = None) -> int:
    """Entry point (see module docs)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--host", default="127.0.0.2")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--target", type=float, default=2.0)
    ap.add_argument("--segment-bytes", type=int, default=128_000)
    ap.add_argument("--list-size", type=int, default=6)
    ap.add_argument("--pod-id", default="bench-pod")
    a = ap.parse_args(argv)

    import uvicorn

    from pod.hls_server import create_hls_app
    from protocol.tokens import Keyring

    base = Path(a.dir)
    ids = camera_ids(a.cameras)
    writer = LiveWriter([base / cid for cid in ids], a.target, a.segment_bytes, a.list_size)
    writer.prefill()
    streamers = {cid: SimpleNamespace(dir=base / cid, packaged=False, status=lambda: {"state": "running"}) for cid in ids}
    app = create_hls_app(pod_id=a.pod_id, token_keys=[Keyring.single(os.environ["PB_BENCH_SECRET"])],
                         streamers=streamers, tailnet_host=a.host)
    writer.start()
    uvicorn.run(Counting(app, writer), host=a.host, port=a.port, loop="uvloop", http="httptools", access_log=False,
                log_config=None, log_level="warning", timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
