"""The pod agent: wires config, streamers, plate decisions and the HTTP server.

Lifecycle:

* at once: ``/health`` on ``127.0.0.1:stream_port``; the state file (outbox, upload
  queue, clip jobs; healed if damaged, :mod:`pod.db`) and the whitelist from its cache
  (offline start, healed if damaged), then from the portal; rows parked for auth
  re-queued; ``recordings_dir`` swept and waiting clip jobs resumed
  (:mod:`pod.clipjobs`); the outbox sender and the uploader (:mod:`pod.worker`); the
  Frigate MQTT listener and the decision timer; heartbeats;
* when the tailnet address is known (``stream_bind: auto`` waits for tailscaled):
  one supervised ffmpeg per camera and HLS + ``POST /nudge`` on
  ``<tailnet IP>:stream_port``;
* on SIGHUP: reload the config file; a new ``pod_api_key`` is used at once and the rows
  parked for auth are re-queued (other changed keys are logged: they need a restart);
* on SIGTERM/SIGINT: stop ffmpeg first, then everything else, and return.

Decisions never wait for the network: each is written to the durable outbox (with its
clip job, in one transaction) and delivered when the portal answers. Any authenticated
call that succeeds (a heartbeat, a delivery, a whitelist fetch) ends an ``auth`` hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import msgspec

from pod import clipjobs
from pod.clipjobs import ClipJobs, Sweep
from pod.config import PodConfig, check_bind_address, load_config
from pod.db import Recovery, StateDB
from pod.decisions import DecisionEngine
from pod.errors import ConfigError, PodError, QueueItemInvalid, RecorderError
from pod.heartbeat import HeartbeatLoop, heartbeat_body
from pod.hls_server import VERSION, create_hls_app
from pod.instance import claim_mqtt_client_id, claim_port, lock_state_dir, release
from pod.metrics import (
    CLIPS_EVICTED,
    OUTBOX_AGE,
    OUTBOX_DEPTH,
    PASSAGES_ACTIVE,
    STATE,
    UPLOADS_CONFIRMED,
    UPLOADS_PENDING,
)
from pod.mqtt import FrigateListener
from pod.outbox import TABLE as OUTBOX_TABLE
from pod.outbox import Item, Outbox, OutboxSender
from pod.portal import PortalClient
from pod.recorder import ClipJobResult, Recorder
from pod.segments import SegmentIndex
from pod.server import listen_socket, make_server
from pod.streamer import CameraStreamer
from pod.tailnet import wait_for_tailnet_ipv4
from pod.uploader import Uploader
from pod.uploads import TABLE as UPLOADS_TABLE
from pod.uploads import Quota, UploadQueue, dir_bytes, disk_free_for
from pod.whitelist import WhitelistRefresher, WhitelistStore
from pod.worker import WorkerSettings
from protocol.messages import DetectRequest, HeartbeatRequest, HeartbeatResponse, Nudge

log = logging.getLogger("platebridge.pod")


class PodAgent:
    """Runs the pod. ``await run()`` returns after a clean shutdown.

    ``ready`` is set once the local listener is up and decisions are running;
    ``streaming_ready`` once HLS is served on ``bind_host``. ``portal_transport``
    replaces the portal client's network transport (tests). ``config_path``: the file
    SIGHUP reloads (None: SIGHUP only logs).
    """

    def __init__(self, cfg: PodConfig, *, portal_transport=None, config_path: str | os.PathLike[str] | None = None
                 ) -> None:
        self.cfg = cfg
        self.config_path = config_path
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
        self.recoveries: list[Recovery] = []
        self.store = WhitelistStore(cfg.whitelist_cache, tz=cfg.site_tz(), on_recovery=self._on_recovery)
        self.portal = PortalClient(cfg.portal_url, cfg.pod_api_key, timeout=cfg.portal_timeout,
                                   transport=portal_transport, on_authenticated=self._on_authenticated)
        self.refresher = WhitelistRefresher(
            self.store, lambda: self.portal.get_plates(cfg.site_id, cfg.company_id),
            interval=cfg.whitelist_refresh_interval)
        self.heartbeats = HeartbeatLoop([c.camera_id for c in cfg.camera_list()], self.heartbeat, self.portal,
                                        interval=cfg.heartbeat_interval, on_answer=self._on_heartbeat_answer)
        self.state: StateDB | None = None
        self.outbox: Outbox | None = None
        self.sender: OutboxSender | None = None
        self.engine: DecisionEngine | None = None
        self.listener: FrigateListener | None = None
        self.uploads: UploadQueue | None = None
        self.uploader: Uploader | None = None
        self.jobs: ClipJobs | None = None
        self.recorder: Recorder | None = None
        self.sweep: Sweep | None = None
        self.reloads = 0

    def request_stop(self) -> None:
        """Ask the agent to shut down (signal-handler safe)."""
        self._stop.set()

    def request_whitelist_refresh(self) -> None:
        """Refresh the whitelist from the portal now (nudge, changed config_version)."""
        self.refresher.request()

    # ---- health -------------------------------------------------------------------------
    def status(self) -> dict:
        """Extra ``/health`` keys: decisions, outbox, clips, state files, whitelist, MQTT (no secrets)."""
        now = time.time()
        out: dict = {"whitelist": {"version": self.store.version, "entries": len(self.store.current)}}
        if self.store.recovery is not None:
            out["whitelist"]["recovered"] = msgspec.to_builtins(self.store.recovery)
        if self.outbox is not None and self.sender is not None:
            parked = self.outbox.parked_by_reason()
            out["outbox"] = {"depth": self.outbox.depth(), "parked": parked, "failed": sum(parked.values()),
                             "oldest_age_s": self.outbox.oldest_age(now), "evicted": self.outbox.evicted,
                             "dropped": self.outbox.dropped(), "in_flight": len(self.sender.in_flight),
                             "held": self.sender.held, "delivered": self.sender.delivered,
                             "failures_in_a_row": self.sender.streak,
                             "paused_s": round(max(0.0, self.sender.paused_until - now), 3)}
        if self.listener is not None:
            out["mqtt"] = self.listener.status()
        if self.engine is not None:
            out["passages_active"] = self.engine.tracker.active()
        if self.uploads is not None and self.recorder is not None and self.uploader is not None:
            jobs = self.jobs.counts() if self.jobs is not None else {}
            recent = ([{"event_id": j.event_id, "state": j.state, "reason": j.reason}
                       for j in self.jobs.rows(("lost", "failed"), limit=5)] if self.jobs is not None else [])
            out["clips"] = {"pending": self.recorder.pending(), "built": self.recorder.built,
                            "failed": self.recorder.failed, "lost": self.recorder.lost,
                            "adopted": self.recorder.adopted, "jobs": jobs, "recent_lost": recent,
                            "uploads": self.uploads.counts(), "parked": self.uploads.parked_by_reason(),
                            "held": self.uploader.held, "evicted": self.uploads.evicted}
            out["recordings"] = {"bytes": dir_bytes(self.cfg.recordings_dir),
                                 "max_bytes": self.cfg.recordings_max_bytes,
                                 "sweep": self.sweep.summary() if self.sweep is not None else None}
        if self.state is not None:
            last = self.state.last_recovery()
            out["state"] = {"recoveries": [msgspec.to_builtins(r) for r in self.recoveries],
                            "recovered_total": self.state.counters("recovered").get("", 0),
                            "last_recovery": msgspec.to_builtins(last) if last is not None else None}
        return out

    def _state_snapshot(self) -> dict:
        """What :data:`pod.metrics.STATE` exports at a scrape."""
        snap: dict = {"parked": {}, "dropped": {}, "recovered": {}, "clip_jobs": {}}
        if self.outbox is not None:
            for reason, n in self.outbox.parked_by_reason().items():
                snap["parked"][("detections", reason)] = n
            for key, n in self.outbox.dropped().items():
                kind, _, reason = key.partition(":")
                snap["dropped"][(kind, reason)] = n
        if self.uploads is not None:
            for reason, n in self.uploads.parked_by_reason().items():
                snap["parked"][("clips", reason)] = n
        if self.state is not None:
            for key, n in self.state.counters("recovered").items():
                snap["recovered"][key.lstrip(":") or "state"] = n
        if self.jobs is not None:
            snap["clip_jobs"] = self.jobs.counts()
        return snap

    def _on_recovery(self, rec: Recovery) -> None:
        self.recoveries.append(rec)
        if rec.store != "state" and self.state is not None:
            with contextlib.suppress(Exception):
                self.state.bump(f"recovered:{rec.store}")

    def _on_authenticated(self) -> None:
        for worker in (self.sender, self.uploader):
            if worker is not None:
                worker.authenticated()

    def reload_config(self) -> bool:
        """SIGHUP: read the config file again. A changed ``pod_api_key`` is used at once
        and the rows parked for auth are re-queued; other changed keys are listed in the
        log (they take effect at the next restart). A bad file is logged (key path and
        reason) and changes nothing. Returns whether the API key changed."""
        self.reloads += 1
        if self.config_path is None:
            log.warning("SIGHUP: this agent was not started from a config file; nothing to reload")
            return False
        try:
            cfg, warnings = load_config(self.config_path)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded, the running one stays: %s", exc)
            return False
        for w in warnings:
            log.warning("config: %s", w)
        changed = [f for f in cfg.__struct_fields__ if getattr(cfg, f) != getattr(self.cfg, f)]
        key_changed = "pod_api_key" in changed
        if key_changed:
            self.portal.set_api_key(cfg.pod_api_key)
            self.cfg.pod_api_key = cfg.pod_api_key
            back = sum(w.requeue_auth() for w in (self.sender, self.uploader) if w is not None)
            log.info("SIGHUP: new pod_api_key in use; %d row(s) parked for auth re-queued", back)
        rest = [f for f in changed if f != "pod_api_key"]
        if rest:
            log.warning("SIGHUP: changed keys that need a restart to take effect: %s", ", ".join(rest))
        if not changed:
            log.info("SIGHUP: config reloaded, nothing changed")
        return key_changed

    def _index_for(self, camera_id: str) -> SegmentIndex:
        streamer = self.streamers.get(camera_id)
        return streamer.index if streamer is not None else self._spare_indexes.setdefault(camera_id, SegmentIndex())

    def _on_clip(self, result: ClipJobResult) -> None:
        assert self.uploads is not None and self.uploader is not None
        try:
            fresh = self.uploads.add(result.event_id, result.camera_id, result.path, result.plate, result.duration_s,
                                     result.metadata)
        except FileNotFoundError:
            raise RecorderError(f"clip {result.filename} vanished before it could be queued for upload") from None
        if not fresh:  # the same event was recorded before (e.g. a restart): keep the first clip only
            Path(result.path).unlink(missing_ok=True)
            return
        log.info("clip %s recorded (%.1f s, %d bytes); queued for upload", result.filename, result.duration_s,
                 result.size_bytes)
        self.uploader.wake()

    # ---- loops --------------------------------------------------------------------------
    async def _send_detect(self, item: Item) -> None:
        try:
            req = msgspec.json.decode(item.body, type=DetectRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise QueueItemInvalid(f"stored body is not a detect request: {exc}") from None
        await self.portal.post_detect(req)

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
            outbox_parked=self.outbox.parked_by_reason() if self.outbox else None,
            clips_parked=self.uploads.parked_by_reason() if self.uploads else None,
            clips_lost=self.jobs.counts()["lost"] if self.jobs else None,
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

    async def _open_state(self) -> None:
        """Open (healing if damaged) the state file and the stores on it, re-queue rows
        parked for auth (a restart may come with a new key), sweep ``recordings_dir`` and
        seed each camera's segment index from the segments still on disk."""
        cfg = self.cfg
        assert cfg.outbox_path is not None
        try:
            self.state = StateDB(cfg.outbox_path, [OUTBOX_TABLE, UPLOADS_TABLE, clipjobs.TABLE], name="state",
                                 on_recovery=self._on_recovery)
        except (OSError, sqlite3.Error) as exc:
            raise PodError(f"$.outbox_path: cannot open or recreate {cfg.outbox_path}: {exc}") from None
        self.outbox = Outbox(self.state, cfg.outbox_max_items, cfg.outbox_max_parked)
        self.sender = OutboxSender(self.outbox, self._send_detect, settings=WorkerSettings(
            concurrency=cfg.outbox_concurrency, retry_initial=cfg.outbox_retry_initial,
            retry_max=cfg.outbox_retry_max, max_attempts=cfg.outbox_max_attempts, idle_poll=cfg.queue_idle_poll))
        self.uploads = UploadQueue(self.state)
        quota = Quota(cfg.recordings_max_bytes, cfg.recordings_min_free_bytes, disk_free_for(cfg.recordings_dir),
                      directory=cfg.recordings_dir)
        self.uploader = Uploader(self.uploads, self.portal, settings=WorkerSettings(
            concurrency=cfg.upload_concurrency, retry_initial=cfg.upload_retry_initial,
            retry_max=cfg.upload_retry_max, max_attempts=cfg.upload_max_attempts, idle_poll=cfg.queue_idle_poll),
            quota=quota, max_put_refusals=cfg.upload_max_put_refusals)
        self.jobs = ClipJobs(self.state)
        self.recorder = Recorder(cfg, self._index_for, self._on_clip, jobs=self.jobs,
                                 max_pending=cfg.clip_max_pending, max_concurrent=cfg.clip_max_concurrent,
                                 hls_dir_for=lambda cid: Path(cfg.hls_dir) / cid)
        for worker in (self.sender, self.uploader):
            worker.requeue_auth()
        self.sweep = clipjobs.sweep_recordings(cfg.recordings_dir, self.uploads.known_paths(), self.jobs)
        if cfg.enable_streaming:
            for cam in cfg.camera_list():
                found = clipjobs.scan_segments(Path(cfg.hls_dir) / cam.camera_id,
                                               segment_seconds=cfg.hls_segment_seconds)
                if found:
                    self._index_for(cam.camera_id).update(found)
                    log.info("camera %s: %d segment(s) from before the start are on disk (%.0f s of footage)",
                             cam.camera_id, len(found), sum(x.duration for x in found))

    async def _resume_clips(self) -> None:
        assert self.recorder is not None
        try:
            await self.recorder.resume(self.sweep.adopt if self.sweep is not None else ())
        except Exception:
            log.exception("recorder: resuming clip jobs failed")

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
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.reload_config)
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
            await self._open_state()
            assert self.outbox is not None and self.sender is not None and self.recorder is not None
            outbox, uploads = self.outbox, self.uploads
            assert uploads is not None
            OUTBOX_DEPTH.set_function(outbox.depth)
            OUTBOX_AGE.set_function(lambda: outbox.oldest_age(time.time()) or 0.0)
            UPLOADS_CONFIRMED.set_function(lambda: uploads.counts().get("confirmed", 0))
            UPLOADS_PENDING.set_function(lambda: sum(v for k, v in uploads.counts().items()
                                                     if k in ("recorded", "url", "uploaded")))
            CLIPS_EVICTED.set_function(lambda: uploads.evicted)
            STATE.source = self._state_snapshot
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
            assert self.uploader is not None
            tasks += [
                asyncio.create_task(self._resume_clips(), name="clip-resume"),
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
            if STATE.source == self._state_snapshot:
                STATE.source = None
            if self.state is not None:
                self.state.close()
            release(*claims)
            log.info("pod stopped")
        if self.failure is not None:
            raise self.failure
