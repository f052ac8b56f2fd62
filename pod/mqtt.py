"""Frigate MQTT listener: a thin async shell over aiomqtt (aiomqtt 2.x docs,
"Reconnecting": a loop around ``async with Client(...)``).

Subscribes to ``<prefix>/events`` and ``<prefix>/tracked_object_update`` (Frigate
MQTT docs v0.12–v0.18) after **every** connect, so a broker restart that drops
the session never leaves the pod deaf (Frigate issue #814). Deliveries with the
retain flag set are ignored: a retained event is history, not a car at the gate.
The handler is called for each message; an exception in it is logged and the
listener goes on.

Size: the pod connects with MQTT 5 and tells the broker its Maximum Packet Size
(MQTT 5.0 §3.1.2.11.4, :data:`MAX_PACKET_BYTES`: a 1 MiB payload plus its topic), so
the broker never sends a bigger PUBLISH (mosquitto drops it for this client) and
paho never buffers one: with MQTT 3.1.1 paho reads any packet up to 256 MB before
the 1 MiB skip of :func:`pod.frigate.parse_message` could apply. ``mqtt_protocol:
"3.1.1"`` is for brokers without MQTT 5 (then only that later skip applies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pod.backoff import Backoff
from pod.frigate import MAX_PAYLOAD_BYTES

log = logging.getLogger("platebridge.pod.mqtt")

Handler = Callable[[str, bytes], None]
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 4096
"""Maximum Packet Size the pod announces (bytes): a 1 MiB payload, its topic and headers."""


def client_options(protocol: str = "5") -> dict[str, Any]:
    """``aiomqtt.Client`` keyword arguments for a clean session that refuses packets over
    :data:`MAX_PACKET_BYTES` at the broker (MQTT 5), or a plain 3.1.1 clean session."""
    if protocol == "3.1.1":
        return {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": True}
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = MAX_PACKET_BYTES
    props.SessionExpiryInterval = 0  # like a 3.1.1 clean session: nothing kept after disconnect
    return {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": True, "properties": props}


class FrigateListener:
    """Connects to the broker and feeds ``handler(topic_suffix, payload)``.

    ``topic_suffix`` is ``"events"`` or ``"tracked_object_update"``. State for
    ``/health``: ``connected`` (bool), ``subscribed_at`` (Unix s of the last
    successful subscribe), ``messages`` and ``skipped_retained`` counters.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        prefix: str,
        client_id: str,
        handler: Handler,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        backoff: Backoff | None = None,
        protocol: str = "5",
    ) -> None:
        self.host, self.port, self.prefix, self.client_id = host, port, prefix.strip("/"), client_id
        self.username, self.password, self.keepalive = username, password, keepalive
        self.handler = handler
        self.protocol = protocol
        # capped at 3 s: a restarted broker must see the pod resubscribed within 5 s (Frigate events
        # published while it is away are lost: clean session); a 15 s cap left it deaf up to 15 s
        self.backoff = backoff or Backoff(0.5, 3.0)
        self.connected = False
        self.subscribed_at: float | None = None
        self.messages = 0
        self.skipped_retained = 0
        self.connects = 0

    @property
    def topics(self) -> list[str]:
        """The subscribed topics."""
        return [f"{self.prefix}/events", f"{self.prefix}/tracked_object_update"]

    def status(self) -> dict:
        """Health snapshot (no credentials)."""
        return {"connected": self.connected, "subscribed_at": self.subscribed_at, "messages": self.messages,
                "connects": self.connects}

    def _dispatch(self, message: aiomqtt.Message) -> None:
        if message.retain:
            self.skipped_retained += 1
            return
        self.messages += 1
        topic = message.topic.value
        suffix = topic[len(self.prefix) + 1:] if topic.startswith(self.prefix + "/") else topic
        raw = message.payload
        payload = raw if isinstance(raw, (bytes, bytearray)) else str(raw or "").encode()
        try:
            self.handler(suffix, bytes(payload))
        except Exception:
            log.exception("handler failed for a message on %s; skipped", topic)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and dispatch until ``stop`` is set; reconnect with backoff."""
        while not stop.is_set():
            try:
                async with aiomqtt.Client(
                    self.host, self.port, username=self.username, password=self.password,
                    identifier=self.client_id, keepalive=self.keepalive, timeout=10, **client_options(self.protocol),
                ) as client:
                    await client.subscribe([(t, 1) for t in self.topics])
                    self.connected, self.subscribed_at = True, time.time()
                    self.connects += 1
                    self.backoff.reset()
                    log.info("MQTT connected to %s:%d as %s; subscribed to %s", self.host, self.port, self.client_id,
                             ", ".join(self.topics))
                    reader = asyncio.create_task(self._read(client))
                    stopper = asyncio.create_task(stop.wait())
                    done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    stopper.cancel()
                    if reader in done:
                        reader.result()  # re-raise MqttError to reconnect
                    else:
                        reader.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await reader
            except aiomqtt.MqttError as exc:
                self.connected = False
                delay = self.backoff.next_delay()
                log.warning("MQTT connection to %s:%d lost or refused (%s); reconnecting in %.1fs",
                            self.host, self.port, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
            finally:
                self.connected = False

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._dispatch(message)
