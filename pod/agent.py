"""The pod agent: wires config, streamers and the HTTP server, and supervises them.

Lifecycle: resolve the bind address (tailnet IPv4 when ``stream_bind: auto``),
start one :class:`~pod.streamer.CameraStreamer` per camera, serve HLS on
``<tailnet IP>:stream_port`` and health on ``127.0.0.1:stream_port``, and run
until SIGTERM/SIGINT; then stop every ffmpeg before returning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from pod.config import PodConfig, check_bind_address
from pod.hls_server import create_hls_app
from pod.server import listen_socket, make_server
from pod.streamer import CameraStreamer
from pod.tailnet import wait_for_tailnet_ipv4
from protocol.tokens import Keyring

log = logging.getLogger("platebridge.pod")


class PodAgent:
    """Runs the pod. ``await run()`` returns after a clean shutdown.

    ``ready`` is set once the listeners are up; ``bind_host`` then holds the
    tailnet address in use.
    """

    def __init__(self, cfg: PodConfig) -> None:
        self.cfg = cfg
        secrets = cfg.secrets()
        self.keyring = Keyring(secrets, cfg.stream_secret_primary or next(iter(secrets)))
        self.streamers = {c.camera_id: CameraStreamer(cfg, c) for c in cfg.camera_list()}
        self.ready = asyncio.Event()
        self.bind_host: str | None = None
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        """Ask the agent to shut down (signal-handler safe)."""
        self._stop.set()

    async def _resolve_bind(self) -> str:
        if self.cfg.stream_bind != "auto":
            return check_bind_address(self.cfg.stream_bind)
        ip = await wait_for_tailnet_ipv4(self.cfg.tailscale_socket, self.cfg.tailnet_wait_seconds)
        return check_bind_address(ip)

    async def run(self) -> None:
        """Run until :meth:`request_stop` (or SIGTERM/SIGINT when installed)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        tasks: list[asyncio.Task] = []
        server = None
        try:
            if not self.cfg.enable_streaming:
                log.info("enable_streaming is false: no live view on this pod")
                await self._stop.wait()
                return
            resolver = asyncio.create_task(self._resolve_bind())
            stopper = asyncio.create_task(self._stop.wait())
            await asyncio.wait({resolver, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not resolver.done():
                resolver.cancel()
                return
            stopper.cancel()
            self.bind_host = resolver.result()
            socks = [listen_socket(self.bind_host, self.cfg.stream_port)]
            if self.bind_host != "127.0.0.1":
                socks.append(listen_socket("127.0.0.1", self.cfg.stream_port))
            app = create_hls_app(
                pod_id=self.cfg.pod_id, keyring=self.keyring, streamers=self.streamers, tailnet_host=self.bind_host
            )
            server = make_server(app)
            tasks = [asyncio.create_task(s.run(), name=f"streamer-{cid}") for cid, s in self.streamers.items()]
            serve = asyncio.create_task(server.serve(sockets=socks), name="http")
            tasks.append(serve)
            await asyncio.sleep(0)
            while not server.started and not serve.done():
                await asyncio.sleep(0.02)
            if serve.done():
                serve.result()
            log.info(
                "pod %s serving HLS on http://%s:%d (health on 127.0.0.1:%d) for %s",
                self.cfg.pod_id, self.bind_host, self.cfg.stream_port, self.cfg.stream_port, ", ".join(self.streamers),
            )
            self.ready.set()
            await self._stop.wait()
        finally:
            log.info("shutting down: stopping ffmpeg")
            await asyncio.gather(*(s.stop() for s in self.streamers.values()), return_exceptions=True)
            if server is not None:
                server.should_exit = True
            if tasks:
                await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                t.cancel()
            log.info("pod stopped")
