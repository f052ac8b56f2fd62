"""One pod agent per set of host resources: its port, its state directory, its MQTT client id.

The PlateBridge POD connection guide's "Multiple Cameras" tip starts one agent per camera
(``complete_pod_agent.py config_camera1.yaml &`` …). Our agent runs every camera of a pod
itself (``cameras:``), and two agents on one machine collide: on ``stream_port`` (the
second cannot listen), on ``state_dir`` (two writers of one whitelist cache and outbox) and
on the MQTT client id (the broker drops one connection whenever the other connects, so each
loses Frigate events in turn). Each claim here fails **at once** with
:class:`AgentCollision`, whose message names the clash and the ``cameras:`` list, before
the second agent touches anything. Claims last as long as the returned handle is open and
vanish with the process (a crash leaves nothing stale behind):

* the port: the pod's own ``127.0.0.1:<stream_port>`` listener, bound first;
* the state directory: an exclusive ``fcntl.flock`` on ``<state_dir>/agent.lock``, which
  holds the owner's pid for the message;
* the MQTT client id: a Linux abstract-namespace Unix socket named after broker and id,
  which only one process on the host can bind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
from pathlib import Path
from typing import IO

from pod.errors import PodError
from pod.server import listen_socket

LOCK_NAME = "agent.lock"
MULTI_CAMERA_HINT = ("one pod agent runs all of a pod's cameras: list them under `cameras:` in one config.yaml "
                     "(camera_id, rtsp_url, frigate_camera per camera) instead of starting one agent per camera")


class AgentCollision(PodError):
    """Another agent (or program) already holds a resource this one needs. ``str(exc)`` names
    the resource, the config key and the ``cameras:`` list."""


def claim_port(port: int, host: str = "127.0.0.1") -> socket.socket:
    """Bind and listen on ``host:port`` (the pod's local listener) and return the socket.
    Raises :class:`AgentCollision` when the address is in use, :class:`PodError` otherwise."""
    try:
        return listen_socket(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AgentCollision(
                f"cannot listen on {host}:{port}: address in use — another platebridge-pod (or program) already "
                f"uses stream_port {port}; {MULTI_CAMERA_HINT}") from None
        raise PodError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def lock_state_dir(state_dir: str | os.PathLike[str]) -> IO[str]:
    """Take the exclusive lock of ``state_dir`` (which must exist) and return the open lock
    file (keep it open: closing it releases the lock). Raises :class:`AgentCollision` when
    another process holds it, :class:`PodError` when the file cannot be opened."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PodError(f"$.state_dir: cannot open {path}: {exc.strerror}") from None
    f = os.fdopen(fd, "r+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = f.read().strip() or "another process"
        f.close()
        raise AgentCollision(
            f"$.state_dir: {state_dir} is in use by platebridge-pod pid {holder} (its whitelist cache and outbox "
            f"would be shared); {MULTI_CAMERA_HINT}") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def claim_mqtt_client_id(host: str, port: int, client_id: str) -> socket.socket:
    """Claim ``client_id`` at the broker ``host:port`` for this host and return the handle.
    Raises :class:`AgentCollision` when another process on this host claimed it."""
    digest = hashlib.sha256(f"{host}:{port}\0{client_id}".encode()).hexdigest()[:32]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(f"\0platebridge-pod/mqtt/{digest}")
    except OSError as exc:
        s.close()
        if exc.errno == errno.EADDRINUSE:
            raise AgentCollision(
                f"$.mqtt_client_id: {client_id!r} is already connected to {host}:{port} by another platebridge-pod "
                f"on this host (the broker would drop one connection whenever the other connects); "
                f"{MULTI_CAMERA_HINT}") from None
        raise PodError(f"cannot claim MQTT client id {client_id!r}: {exc.strerror}") from None
    return s


def release(*handles: object) -> None:
    """Close claim handles (sockets, lock files); None entries are skipped."""
    for h in handles:
        if h is not None:
            with contextlib.suppress(OSError):
                h.close()  # type: ignore[attr-defined]
