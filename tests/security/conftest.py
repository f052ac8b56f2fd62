"""Security suite fixtures and helpers.

``sec_stack``: one real dev stack for the whole suite (GStreamer camera → pod process
on 127.0.0.2 → gateway process on 127.0.0.1, see ``deploy/dev/stack.py``), with
sentinel files planted next to (outside) the pod's camera directory. Tests that
need other parts (mosquitto, the portal stand-in) start their own stack.

``raw_request``: HTTP/1.1 over a plain socket with the request target sent byte for
byte, so ``..``, ``%2e``, backslashes, NUL and overlong names reach the server as
written (httpx and requests normalise or refuse some of them).
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from protocol.tokens import Keyring, mint_pod_token
from tests.e2e.conftest import make_stack, pod_requests_total, wait_until

from stack import free_port  # noqa: E402 - deploy/dev is on sys.path via tests.e2e.conftest

__all__ = ["RawResponse", "Sentinels", "free_port", "make_stack", "pod_requests_total", "pod_token", "raw_request",
           "session_grant", "wait_until"]


@dataclass
class RawResponse:
    """Status code and the complete raw bytes (status line, headers and body) of one response."""

    status: int
    raw: bytes

    @property
    def body(self) -> bytes:
        """Everything after the header block (not de-chunked: only searched, never parsed)."""
        return self.raw.partition(b"\r\n\r\n")[2]


def raw_request(host: str, port: int, target: bytes, headers: dict[str, str] | None = None,
                method: bytes = b"GET", timeout: float = 10.0) -> RawResponse:
    """Send one request with ``target`` exactly as given and read the response to EOF
    (``Connection: close``). Returns status 0 if the server closed without a status line."""
    lines = [method + b" " + target + b" HTTP/1.1", f"Host: {host}:{port}".encode(), b"Connection: close"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in (headers or {}).items()]
    data = b"\r\n".join(lines) + b"\r\n\r\n"
    chunks = []
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    status = 0
    if raw.startswith(b"HTTP/"):
        status = int(raw.split(b" ", 2)[1])
    return RawResponse(status, raw)


@dataclass
class Sentinels:
    """Files planted outside the camera's HLS directory. Their names have extensions the
    pod serves (``.m3u8``, ``.ts``), so only the traversal defences stand between a
    request and their bytes. ``marker`` is in every one of them and nowhere else."""

    marker: bytes
    files: dict[str, Path]  # label → path

    def leaked_in(self, data: bytes) -> bool:
        """True if ``data`` holds the marker (the content of a sentinel file)."""
        return self.marker in data


def plant_sentinels(workdir: Path, hls_dir: Path, camera_id: str) -> Sentinels:
    """Plant the sentinel files: in the HLS root next to the camera directory, in the stack's
    work directory above it, in another camera's directory, and a symlink inside the camera
    directory that points out of it."""
    marker = b"PB-SENTINEL-" + secrets.token_hex(16).encode()
    body = b"#EXTM3U\n#" + marker + b"\n" + marker * 4 + b"\n"
    files = {
        "hls root": hls_dir / "sentinel.m3u8",
        "hls root ts": hls_dir / "sentinel.ts",
        "work dir": workdir / "sentinel.ts",
        "other camera": hls_dir / "other-cam" / "index.m3u8",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    link = hls_dir / camera_id / "sentinel-link.m3u8"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(files["hls root"])
    files["symlink in camera dir"] = link
    return Sentinels(marker, files)


def session_grant(stack) -> str:
    """A session grant for the stack's camera: the ``pb_grant`` of the gateway's 302 answer
    to a valid user token (no pod request is needed for it)."""
    r = httpx.get(f"{stack.gateway_url}/streams/{stack.camera_id}/index.m3u8?token={stack.user_token()}", timeout=10)
    assert r.status_code == 302, r.text
    return r.headers["location"].split("pb_grant=", 1)[1]


def pod_token(stack, camera_id: str | None = None) -> str:
    """A valid gateway→pod token for the stack's pod (30 s)."""
    return mint_pod_token(Keyring.single(stack.secret), camera_id=camera_id or stack.camera_id, pod_id=stack.pod_id)


@pytest.fixture(scope="session")
def sec_stack(tmp_path_factory):
    """One started stack (camera, pod, gateway) for the token matrix and the traversal
    tests, with :class:`Sentinels` planted (``stack.sentinels``)."""
    s = make_stack(tmp_path_factory.mktemp("security"), pod_overrides={"heartbeat_interval": 300})
    try:
        s.start_camera()
        s.start_pod(timeout=60)
        s.start_gateway()
        s.sentinels = plant_sentinels(s.workdir, s.hls_dir, s.camera_id)
        # the playlist exists and the pod serves it: the stack is really live before any test measures
        wait_until(lambda: httpx.get(f"{s.pod_url}/cameras/{s.camera_id}/index.m3u8", timeout=5,
                                     headers={"Authorization": f"Bearer {pod_token(s)}"}).status_code == 200,
                   20, what="the pod serving its playlist")
        yield s
    finally:
        s.stop()

