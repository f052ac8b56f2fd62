"""Heartbeats: the seed's "POD sends heartbeat every 60 seconds", one per camera.

``POST /api/pod/heartbeat`` (PlateBridge POD connection guide, "5. Heartbeat System")
carries ``pod_id, camera_id, stream_url, status`` plus our health fields; the portal
marks a camera inactive after 5 minutes without one. The answer's ``config_version``
(text or number, compared as text) tells the pod its whitelist is out of date.

:func:`heartbeat_body` builds one body (pure); :class:`HeartbeatLoop` sends them every
``heartbeat_interval`` seconds. A camera the portal refuses (a 4xx for that one
``camera_id``) never keeps the other cameras from their heartbeats; a portal that cannot be
reached ends the round (the next one comes ``heartbeat_interval`` later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Literal, Protocol

from pod.errors import PortalRejected, PortalUnavailable
from pod.metrics import HEARTBEATS
from pod.streamer import PLAYLIST
from protocol.messages import HeartbeatRequest, HeartbeatResponse

log = logging.getLogger("platebridge.pod.heartbeat")

Status = Literal["online", "degraded", "offline"]


class StreamState(Protocol):
    """What a heartbeat needs of a camera's streamer (:class:`pod.streamer.CameraStreamer`)."""

    @property
    def state(self) -> str: ...

    def last_segment_age(self) -> float | None: ...


class HeartbeatPortal(Protocol):
    """The one portal call a heartbeat makes (:class:`pod.portal.PortalClient`)."""

    async def post_heartbeat(self, req: HeartbeatRequest) -> HeartbeatResponse: ...


def stream_url(bind_host: str | None, port: int, camera_id: str) -> str:
    """The camera's HLS media playlist URL on the pod's tailnet address (``""`` while the pod
    has none). Only the gateway can use it (gateway→pod token); never give it to a browser."""
    if not bind_host:
        return ""
    host = f"[{bind_host}]" if ":" in bind_host else bind_host
    return f"http://{host}:{port}/cameras/{camera_id}/{PLAYLIST}"


def camera_status(streaming: bool, streamer: StreamState | None) -> Status:
    """``online`` when the camera's ffmpeg runs (or streaming is off: decisions still work),
    ``degraded`` while it is starting, restarting or backing off."""
    if streaming and (streamer is None or streamer.state != "running"):
        return "degraded"
    return "online"


def heartbeat_body(
    *,
    pod_id: str,
    camera_id: str,
    streaming: bool,
    streamer: StreamState | None,
    bind_host: str | None,
    stream_port: int,
    version: str,
    uptime_s: float,
    outbox_depth: int | None,
    whitelist_version: str | None,
    disk_free_bytes: int | None,
    outbox_parked: dict[str, int] | None = None,
    clips_parked: dict[str, int] | None = None,
    clips_lost: int | None = None,
) -> HeartbeatRequest:
    """One camera's ``POST /api/pod/heartbeat`` body (pure). ``uptime_s`` in seconds,
    ``disk_free_bytes`` in bytes; ``last_segment_age_s`` comes from ``streamer`` (seconds
    since ffmpeg last finished a segment, None before the first); ``outbox_parked`` /
    ``clips_parked``: parked rows per reason (left out when empty); ``clips_lost``: clip
    jobs lost to a restart."""
    age = streamer.last_segment_age() if streamer is not None else None
    return HeartbeatRequest(
        pod_id=pod_id, camera_id=camera_id,
        stream_url=stream_url(bind_host, stream_port, camera_id) if streaming else "",
        status=camera_status(streaming, streamer), version=version, uptime_s=round(uptime_s, 1),
        last_segment_age_s=None if age is None else round(age, 2),
        outbox_depth=outbox_depth, whitelist_version=whitelist_version or None, disk_free_bytes=disk_free_bytes,
        outbox_parked=outbox_parked or None, clips_parked=clips_parked or None, clips_lost=clips_lost or None,
    )


class HeartbeatLoop:
    """Sends every camera's heartbeat each ``interval`` seconds until stopped.

    ``camera_ids`` are the pod's cameras, ``body(camera_id)`` builds a body
    (:func:`heartbeat_body`), ``portal`` sends it. ``on_answer(response)`` sees every 2xx
    answer (the agent compares ``config_version`` with its whitelist and drains the outbox).
    Counters: :attr:`sent` and :attr:`failed` (also the ``platebridge_pod_heartbeats_total``
    metric by result).
    """

    def __init__(
        self,
        camera_ids: list[str],
        body: Callable[[str], HeartbeatRequest],
        portal: HeartbeatPortal,
        *,
        interval: float,
        on_answer: Callable[[HeartbeatResponse], None] = lambda r: None,
    ) -> None:
        self.camera_ids, self.body, self.portal = list(camera_ids), body, portal
        self.interval, self.on_answer = interval, on_answer
        self.sent = 0
        self.failed = 0

    async def beat(self) -> None:
        """One round: a heartbeat per camera, in order. A refused camera is logged and the
        next one goes on; an unreachable portal ends the round."""
        for camera_id in self.camera_ids:
            try:
                resp = await self.portal.post_heartbeat(self.body(camera_id))
            except PortalRejected as exc:
                self._failed(camera_id, exc)
                continue  # the portal refuses this camera; the others still report
            except PortalUnavailable as exc:
                self._failed(camera_id, exc)
                break  # the portal is away: the next round tries again
            self.sent += 1
            HEARTBEATS.labels("ok").inc()
            self.on_answer(resp)

    def _failed(self, camera_id: str, exc: Exception) -> None:
        self.failed += 1
        HEARTBEATS.labels("failed").inc()
        log.warning("heartbeat for %s failed: %s", camera_id, exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Beat at once, then every ``interval`` seconds, until ``stop`` is set."""
        while not stop.is_set():
            await self.beat()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
