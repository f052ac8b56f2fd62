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

import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from protocol.tokens import mint_pod_token
from tests.e2e.conftest import free_port, make_stack, pod_requests_total, started, wait_until

__all__ = ["GatewayCounters", "RawResponse", "Sentinels", "free_port", "gateway_counters", "make_stack",
           "play_like_a_player", "pod_requests_total", "pod_token", "raw_request", "session_grant", "wait_until"]


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
    """Files planted outside the camera's HLS directory, and two inside it. Their names
    have extensions the pod serves (``.m3u8``, ``.ts``), so only the traversal defences
    stand between a request and their bytes. ``marker`` is in every one of them and
    nowhere else. ``served``: the plain file inside the camera directory that the pod
    DOES serve (the control that a served sentinel is seen); every other file must
    never be served."""

    marker: bytes
    files: dict[str, Path]  # label → path
    served: Path

    def leaked_in(self, data: bytes) -> bool:
        """True if ``data`` holds the marker (the content of a sentinel file)."""
        return self.marker in data


def plant_sentinels(workdir: Path, hls_dir: Path, camera_id: str) -> Sentinels:
    """Plant the sentinel files: in the HLS root next to the camera directory, in the stack's
    work directory above it, in another camera's directory, a hidden file and a symlink
    pointing out of it inside the camera directory, and a plain file inside it."""
    marker = b"PB-SENTINEL-" + secrets.token_hex(16).encode()
    body = b"#EXTM3U\n#" + marker + b"\n" + marker * 4 + b"\n"
    files = {
        "hls root": hls_dir / "sentinel.m3u8",
        "hls root ts": hls_dir / "sentinel.ts",
        "work dir": workdir / "sentinel.ts",
        "other camera": hls_dir / "other-cam" / "index.m3u8",
        "hidden in camera dir": hls_dir / camera_id / ".sentinel.m3u8",
        "hidden ts in camera dir": hls_dir / camera_id / ".sentinel.ts",
        "plain in camera dir (served)": hls_dir / camera_id / "sentinel-inside.ts",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    link = hls_dir / camera_id / "sentinel-link.m3u8"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(files["hls root"])
    files["symlink in camera dir"] = link
    return Sentinels(marker, files, files["plain in camera dir (served)"])


@dataclass(frozen=True)
class GatewayCounters:
    """The gateway's own counters (its ``/metrics``, :mod:`gateway.metrics`), summed over labels.

    ``upstream``: fetches from pods (playlist, segment, init); ``segment_lookups``: segment
    cache lookups, hits and misses; ``bytes_out``: body bytes sent to viewers (a playlist
    served from the shared playlist cache moves it, although no pod is asked); ``served``:
    proxy answers with status 200, 206 or 302 (anything that hands out bytes or a grant)."""

    upstream: float
    segment_lookups: float
    bytes_out: float
    served: float

    def __sub__(self, other: GatewayCounters) -> GatewayCounters:
        return GatewayCounters(self.upstream - other.upstream, self.segment_lookups - other.segment_lookups,
                               self.bytes_out - other.bytes_out, self.served - other.served)

    def all_zero(self) -> bool:
        return self.upstream == self.segment_lookups == self.bytes_out == self.served == 0


def _series(text: str, name: str) -> list[tuple[str, float]]:
    """``[(labels, value)]`` of every sample of metric ``name`` (exact name, ``_created`` excluded)."""
    return [(labels or "", float(v)) for labels, v in
            re.findall(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? ([0-9.e+-]+)$", text, re.MULTILINE)]


def gateway_counters(stack) -> GatewayCounters:
    """Read :class:`GatewayCounters` from the gateway's ``/metrics``."""
    text = httpx.get(stack.gateway_metrics_url, timeout=5).text
    assert "platebridge_gateway_requests_total" in text, text[:300]
    served = sum(v for labels, v in _series(text, "platebridge_gateway_requests_total")
                 if re.search(r'status="(200|206|302)"', labels))
    return GatewayCounters(
        upstream=sum(v for _, v in _series(text, "platebridge_gateway_upstream_fetches_total")),
        segment_lookups=sum(v for _, v in _series(text, "platebridge_gateway_cache_total")),
        bytes_out=sum(v for _, v in _series(text, "platebridge_gateway_bytes_out_total")),
        served=served,
    )


def play_like_a_player(first: httpx.Response, max_media: int = 2) -> list[httpx.Response]:
    """What a player does with the gateway's answer ``first``: follow a redirect's
    ``Location``, then fetch the variant or media playlist and the last ``max_media`` URIs
    of a media playlist (URI lines and ``URI="…"`` attributes but the preload hint's), each resolved against the
    URL it came from. A refusal (no ``Location``, not 200) ends it. Returns every response
    after ``first``."""
    out: list[httpx.Response] = []
    r = first
    for _ in range(3):  # redirect → playlist (→ variant playlist)
        if r.is_redirect and "location" in r.headers:
            r = httpx.get(urljoin(str(r.request.url), r.headers["location"]), timeout=10)
            out.append(r)
            continue
        if r.status_code != 200 or "#EXTM3U" not in r.text:
            return out
        uris = [u.strip() for u in r.text.splitlines() if u.strip() and not u.startswith("#")]
        # not the EXT-X-PRELOAD-HINT: a hinted part its segment ends before never exists, and
        # the pod rightly answers 404 for it (RFC 8216bis §4.4.5.3); a player does not fail on it
        uris += re.findall(r'^#EXT-X-(?!PRELOAD-HINT)[^\n]*URI="([^"]+)"', r.text, re.MULTILINE)
        base = str(r.request.url)
        if "#EXT-X-STREAM-INF" in r.text and uris:
            r = httpx.get(urljoin(base, uris[0]), timeout=10)
            out.append(r)
            continue
        out += [httpx.get(urljoin(base, u), timeout=10) for u in uris[-max_media:]]
        return out
    return out


def session_grant(stack) -> str:
    """A session grant for the stack's camera: the ``pb_grant`` of the gateway's 302 answer
    to a valid user token (no pod request is needed for it)."""
    r = httpx.get(f"{stack.gateway_url}/streams/{stack.camera_id}/index.m3u8?token={stack.user_token()}", timeout=10)
    assert r.status_code == 302, r.text
    return r.headers["location"].split("pb_grant=", 1)[1]


def pod_token(stack, camera_id: str | None = None) -> str:
    """A valid gateway→pod token for the stack's pod (30 s), signed with the gateway's key."""
    return mint_pod_token(stack.pod_signer(), camera_id=camera_id or stack.camera_id, pod_id=stack.pod_id)


@pytest.fixture(scope="session")
def sec_stack(tmp_path_factory):
    """One started stack (camera, pod, gateway) for the token matrix and the traversal
    tests, with :class:`Sentinels` planted (``stack.sentinels``)."""
    with started(make_stack(tmp_path_factory.mktemp("security"), pod_overrides={"heartbeat_interval": 300})) as s:
        s.sentinels = plant_sentinels(s.workdir, s.hls_dir, s.camera_id)
        # the playlist exists and the pod serves it: the stack is really live before any test measures
        wait_until(lambda: httpx.get(f"{s.pod_url}/cameras/{s.camera_id}/index.m3u8", timeout=5,
                                     headers={"Authorization": f"Bearer {pod_token(s)}"}).status_code == 200,
                   20, what="the pod serving its playlist")
        yield s

