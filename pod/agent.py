"""The pod agent: wires config, streamers, plate decisions and the HTTP server.

Lifecycle:

* at once: ``/health`` on ``127.0.0.1:stream_port``; the whitelist from its cache
  (offline start), then from the portal; the outbox sender; the Frigate MQTT
  listener and the decision timer; heartbeats;
* when the tailnet address is known (``stream_bind: auto`` waits for tailscaled):
  one supervised ffmpeg per camera and HLS + ``POST /nudge`` on
  ``<tailnet IP>:stream_port``;
* on SIGTERM/SIGINT: stop ffmpeg first, then everything else, and return.

Decisions never wait for the network: each is written to the durable outbox
and delivered in order when the portal answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import msgspec

from pod.backoff import Backoff
from pod.config import PodConfig, check_bind_address
from pod.decisions import DecisionEngine
from pod.errors import PodError
from pod.heartbeat import HeartbeatLoop, heartbeat_body
from pod.hls_server import VERSION, create_hls_app
from pod.instance import claim_mqtt_client_id, claim_port, lock_state_dir, release
from pod.metrics import (
    CLIPS_EVICTED,
    OUTBOX_AGE,
    OUTBOX_DEPTH,
    PASSAGES_ACTIVE,
    UPLOADS_CONFIRMED,
    UPLOADS_PENDING,
)
from pod.mqtt import FrigateListener
from pod.outbox import Item, Outbox, OutboxSender
from pod.portal import PortalClient
from pod.recorder import ClipJobResult, Recorder
from pod.segments import SegmentIndex
from pod.server import listen_socket, make_server
from pod.streamer import CameraStreamer
from pod.tailnet import wait_for_tailnet_ipv4
from pod.uploads import Quota, Uploader, UploadQueue, disk_free_for
from pod.whitelist import WhitelistRefresher, WhitelistStore
from protocol.messages import DetectRequest, HeartbeatRequest, HeartbeatResponse, Nudge

log = logging.getLogger("platebridge.pod")


class PodAgent:
    """Runs the pod. ``await run()`` returns after a clean shutdown.

    ``ready`` is set once the local listener is up and decisions are running;
    ``streaming_ready`` once HLS is served on ``bind_host``. ``portal_transport``
    replaces the portal client's network transport (tests).
    """

    def __init__(self, cfg: PodConfig, *, portal_transport=None) -> None:
        self.cfg = cfg
        self.token_keys = cfg.pod_token_keys() if cfg.enable_streaming else []
        self.streamers = (
            {c.camera_id: CameraStreamer(cfg, c) for c in cfg.camera_list()} if cfg.enable_streaming else {}
        )
        self.ready = asyncio.Event()
        self.streaming_ready = asyncio.Event()
        self.bind_host: str | None = None
        self.started = time.time()
        self._stop = asyncio.Event()
        self._spare_indexes: dict[str, SegmentIndex] = {}
        self.failure: BaseException | None = None
        self.store = WhitelistStore(cfg.whitelist_cache, tz=cfg.site_tz())
        self.portal = PortalClient(cfg.portal_url, cfg.pod_api_key, timeout=cfg.portal_timeout,
                                   transport=portal_transport)
        self.refresher = WhitelistRefresher(
            self.store, lambda: self.portal.get_plates(cfg.site_id, cfg.company_id),
            interval=cfg.whitelist_refresh_interval)
        self.heartbeats = HeartbeatLoop([c.camera_id for c in cfg.camera_list()], self.heartbeat, self.portal,
                                        interval=cfg.heartbeat_interval, on_answer=self._on_heartbeat_answer)
        self.outbox: Outbox | None = None
        self.sender: OutboxSender | None = None
        self.engine: DecisionEngine | None = None
        self.listener: FrigateListener | None = None
        self.uploads: UploadQueue | None = None
        self.uploader: Uploader | None = None
        self.recorder: Recorder | None = None

    def request_stop(self) -> None:
        """Ask the agent to shut down (signal-handler safe)."""
        self._stop.set()

    def request_whitelist_refresh(self) -> None:
        """Refresh the whitelist from the portal now (nudge, changed config_version)."""
        self.refresher.request()

    # ---- health -------------------------------------------------------------------------
    def status(self) -> dict:
        """Extra ``/health`` keys: decisions, outbox, whitelist, MQTT (no secrets)."""
        now = time.time()
        out: dict = {"whitelist": {"version": self.store.version, "entries": len(self.store.current)}}
        if self.outbox is not None:
            depth = self.outbox.depth()
            out["outbox"] = {"depth": depth, "failed": self.outbox.failed(),
                             "oldest_age_s": self.outbox.oldest_age(now),
                             "evicted": getattr(self.outbox, "evicted", 0)}
        if self.listener is not None:
            out["mqtt"] = self.listener.status()
        if self.engine is not None:
            out["passages_active"] = self.engine.tracker.active()
        if self.uploads is not None and self.recorder is not None:
            out["clips"] = {"pending": self.recorder.pending(), "built": self.recorder.built,
                            "failed": self.recorder.failed, "uploads": self.uploads.counts(),
                            "evicted": self.uploads.evicted}
        return out

    def _index_for(self, camera_id: str) -> SegmentIndex:
        streamer = self.streamers.get(camera_id)
        return streamer.index if streamer is not None else self._spare_indexes.setdefault(camera_id, SegmentIndex())

    def _on_clip(self, result: ClipJobResult) -> None:
        assert self.uploads is not None and self.uploader is not None
        try:
            fresh = self.uploads.add(result.event_id, result.camera_id, result.path, result.plate, result.duration_s,
                                     result.metadata)
        except FileNotFoundError:
            log.warning("clip %s vanished before it could be queued for upload", result.filename)
            return
        if not fresh:  # the same event was recorded before (e.g. a restart): keep the first clip only
            Path(result.path).unlink(missing_ok=True)
            return
        log.info("clip %s recorded (%.1f s, %d bytes); queued for upload", result.filename, result.duration_s,
                 result.size_bytes)
        self.uploader.enforce_quota()
        self.uploader.wake()

    # ---- loops --------------------------------------------------------------------------
    async def _send_detect(self, item: Item) -> None:
        await self.portal.post_detect(msgspec.json.decode(item.body, type=DetectRequest))

    def heartbeat(self, camera_id: str) -> HeartbeatRequest:
        """The heartbeat body for one camera (:func:`pod.heartbeat.heartbeat_body`)."""
        try:
            free: int | None = shutil.disk_usage(self.cfg.state_dir).free
        except OSError:
            free = None
        return heartbeat_body(
            pod_id=self.cfg.pod_id, camera_id=camera_id, streaming=self.cfg.enable_streaming,
            streamer=self.streamers.get(camera_id), bind_host=self.bind_host, stream_port=self.cfg.stream_port,
            version=VERSION, uptime_s=time.time() - self.started,
            outbox_depth=self.outbox.depth() if self.outbox else None,
            whitelist_version=self.store.version, disk_free_bytes=free,
        )

    def _on_heartbeat_answer(self, resp: HeartbeatResponse) -> None:
        if self.sender is not None and self.outbox is not None and self.outbox.depth():
            self.sender.retry_now()  # the portal answers again: drain the backlog now
        if resp.config_version and resp.config_version != self.store.version:
            log.info("portal has whitelist %s (we have %r): refreshing", resp.config_version, self.store.version)
            self.request_whitelist_refresh()

    async def _on_nudge(self, nudge: Nudge) -> None:
        log.info("nudged by the gateway (%s): refreshing the whitelist", nudge.reason)
        self.request_whitelist_refresh()

    async def _resolve_bind(self) -> str:
        if self.cfg.stream_bind != "auto":
            return check_bind_address(self.cfg.stream_bind)
        ip = await wait_for_tailnet_ipv4(self.cfg.tailscale_socket, self.cfg.tailnet_wait_seconds)
        return check_bind_address(ip)

    async def _serve(self, app, addresses: list[tuple[str, int]], bound: list | None = None) -> asyncio.Task:
        sockets = list(bound or [])  # already bound (the local listener: claimed first, pod.instance)
        for host, port in addresses:
            try:
                sockets.append(listen_socket(host, port))
            except OSError as exc:
                for s in sockets:
                    s.close()
                raise PodError(f"cannot listen on {host}:{port}: {exc.strerror} (is another pod or program using "
                               f"stream_port {port}?)") from None
        server = make_server(app)
        task = asyncio.create_task(server.serve(sockets=sockets))
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.02)
        if task.done():
            task.result()
        self._servers.append(server)
        return task

    async def _streaming(self, app, tasks: list[asyncio.Task]) -> None:
        self.bind_host = await self._resolve_bind()
        tasks += [asyncio.create_task(s.run(), name=f"streamer-{cid}") for cid, s in self.streamers.items()]
        if self.bind_host != "127.0.0.1":
            tasks.append(await self._serve(app, [(self.bind_host, self.cfg.stream_port)]))
        log.info("pod %s serving HLS on http://%s:%d for %s", self.cfg.pod_id, self.bind_host, self.cfg.stream_port,
                 ", ".join(self.streamers))
        self.streaming_ready.set()

    def _check_dirs(self) -> None:
        """Create the state (and HLS) directories; raise PodError naming a path that is unusable."""
        dirs = [("state_dir", self.cfg.state_dir), ("recordings_dir", self.cfg.recordings_dir)]
        if self.cfg.enable_streaming:
            dirs.append(("hls_dir", self.cfg.hls_dir))
        for key, path in dirs:
            try:
                Path(path).mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise PodError(f"$.{key}: cannot create {path}: {exc.strerror}") from None
            if not Path(path).is_dir() or not os.access(path, os.W_OK | os.X_OK):
                raise PodError(f"$.{key}: {path} is not a writable directory")

    def _setup_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.failure = task.exception()
            self.request_stop()

    async def run(self) -> None:
        """Run until :meth:`request_stop` (or SIGTERM/SIGINT when installed)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        tasks: list[asyncio.Task] = []
        self._servers: list = []
        claims: list = []
        try:
            # one agent per port, state dir and MQTT client id: a second one fails here, at once,
            # naming the cameras: list (pod/instance.py); the port before anything else
            local = claim_port(self.cfg.stream_port)
            claims.append(local)
            self._check_dirs()
            claims.append(lock_state_dir(self.cfg.state_dir))
            if self.cfg.enable_mqtt:
                claims.append(claim_mqtt_client_id(self.cfg.mqtt_host, self.cfg.mqtt_port,
                                                   self.cfg.mqtt_client_id or f"platebridge-{self.cfg.pod_id}"))
            assert self.cfg.outbox_path is not None  # normalised by load_config
            self.outbox = Outbox(self.cfg.outbox_path, self.cfg.outbox_max_items)
            # capped at 10 s: after an outage the backlog starts draining within 10 s even before
            # the next heartbeat proves the portal is back (which drains it at once: retry_now)
            self.sender = OutboxSender(self.outbox, self._send_detect, Backoff(1.0, 10.0))
            self.uploads = UploadQueue(self.cfg.outbox_path)
            quota = Quota(self.cfg.recordings_max_bytes, self.cfg.recordings_min_free_bytes,
                          disk_free_for(self.cfg.recordings_dir))
            self.uploader = Uploader(self.uploads, self.portal, Backoff(2.0, 120.0), quota=quota)
            self.recorder = Recorder(self.cfg, self._index_for, self._on_clip,
                                     hls_dir_for=lambda cid: Path(self.cfg.hls_dir) / cid)
            outbox, uploads = self.outbox, self.uploads
            OUTBOX_DEPTH.set_function(outbox.depth)
            OUTBOX_AGE.set_function(lambda: outbox.oldest_age(time.time()) or 0.0)
            UPLOADS_CONFIRMED.set_function(lambda: uploads.counts().get("confirmed", 0))
            UPLOADS_PENDING.set_function(lambda: sum(v for k, v in uploads.counts().items()
                                                     if k in ("recorded", "url", "uploaded")))
            CLIPS_EVICTED.set_function(lambda: uploads.evicted)
            self.engine = DecisionEngine(
                self.cfg, self.store, self.outbox, on_enqueued=self.sender.wake,
                on_decision=self.recorder.request if self.cfg.record_on_detection else None,
            )
            PASSAGES_ACTIVE.set_function(self.engine.tracker.active)
            self.store.load_from_cache()
            legacy = self.cfg.legacy_warning()
            if legacy:
                log.warning("%s", legacy)  # once per start
            app = create_hls_app(
                pod_id=self.cfg.pod_id, token_keys=self.token_keys, streamers=self.streamers,
                tailnet_host=lambda: self.bind_host, extra_status=self.status, on_nudge=self._on_nudge,
                max_clock_skew=self.cfg.max_clock_skew,
            )
            tasks.append(await self._serve(app, [], bound=[local]))
            tasks += [
                asyncio.create_task(self.refresher.run(self._stop), name="whitelist"),
                asyncio.create_task(self.sender.run(self._stop), name="outbox"),
                asyncio.create_task(self.engine.run_timer(self._stop), name="decision-timer"),
                asyncio.create_task(self.heartbeats.run(self._stop), name="heartbeat"),
                asyncio.create_task(self.uploader.run(self._stop), name="uploads"),
            ]
            if self.cfg.enable_mqtt:
                self.listener = FrigateListener(
                    host=self.cfg.mqtt_host, port=self.cfg.mqtt_port, prefix=self.cfg.mqtt_topic_prefix or "frigate",
                    client_id=self.cfg.mqtt_client_id or f"platebridge-{self.cfg.pod_id}", handler=self.engine.handle,
                    username=self.cfg.mqtt_username, password=self.cfg.mqtt_password, keepalive=self.cfg.mqtt_keepalive,
                    protocol=self.cfg.mqtt_protocol,
                )
                tasks.append(asyncio.create_task(self.listener.run(self._stop), name="mqtt"))
            if self.cfg.enable_streaming:
                setup = asyncio.create_task(self._streaming(app, tasks), name="streaming-setup")
                setup.add_done_callback(self._setup_done)
                tasks.append(setup)
            else:
                log.info("enable_streaming is false: no live view on this pod")
            log.info("pod %s running: health on 127.0.0.1:%d", self.cfg.pod_id, self.cfg.stream_port)
            self.ready.set()
            await self._stop.wait()
        finally:
            log.info("shutting down: stopping ffmpeg")
            if self.recorder is not None:
                await self.recorder.stop()
            await asyncio.gather(*(s.stop() for s in self.streamers.values()), return_exceptions=True)
            self._stop.set()
            for server in self._servers:
                server.should_exit = True
            if tasks:
                await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                t.cancel()
            await self.portal.aclose()
            if self.outbox is not None:
                self.outbox.close()
            release(*claims)
            log.info("pod stopped")
        if self.failure is not None:
            raise self.failure
