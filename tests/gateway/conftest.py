"""Gateway test fixtures: the real gateway app, with pods programmed at the
upstream transport seam (``httpx.MockTransport``), which counts every request
the gateway sends towards a pod.

Keys by role (:func:`keys`): ``SECRET`` is the user-token secret (portal + gateway),
``SIGNER`` the gateway's Ed25519 key for gateway→pod tokens (its PEM written once per
test process to a private temp directory), ``GRANT_SECRET`` the gateway-only grant key."""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.discovery import StaticDiscovery
from protocol.tokens import Keyring, SigningKey, mint_user_token

SECRET = "t" * 64
GRANT_SECRET = "g" * 48
SIGNER = SigningKey.generate("test-1")
_KEY_DIR: list[str] = []


def signing_key_file() -> str:
    """Path of ``SIGNER``'s PEM (mode 0600), written on first use."""
    if not _KEY_DIR:
        _KEY_DIR.append(tempfile.mkdtemp(prefix="pb-test-keys-"))
        atexit.register(shutil.rmtree, _KEY_DIR[0], True)
        path = f"{_KEY_DIR[0]}/gateway-pod-signing.pem"
        with open(path, "wb") as fh:
            fh.write(SIGNER.private_pem())
    return f"{_KEY_DIR[0]}/gateway-pod-signing.pem"


def keys() -> dict:
    """The gateway config keys of the new layout (user-token secret, signing key, grant secret)."""
    return {"user_token_secret": SECRET, "grant_secret": GRANT_SECRET, "pod_signing_key_file": signing_key_file(),
            "pod_signing_key_id": SIGNER.kid}
POD_URL = "http://127.0.0.2:8000"
CAM = "gate-camera-1"
POD = "main-gate-pod"
ORIGIN = "https://portal.example"

LIVE = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:100
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI="init.mp4"
#EXTINF:2.000000,
seg_100.m4s
#EXTINF:2.000000,
seg_101.m4s
"""


def ll_playlist(next_msn: int, next_part: int, *, segments: int = 3, parts: int = 6, part_target: float = 0.33334,
                target: int = 2, hint: bool = True, extra: str = "") -> str:
    """A consistent LL-HLS media playlist (RFC 8216bis §4.4): ``segments`` complete segments before
    ``next_msn`` (the last two with their ``parts`` parts), ``next_part`` parts of ``next_msn`` so
    far and (``hint``) the preload hint for the next one; URIs as the pod names them."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:9", f"#EXT-X-TARGETDURATION:{target}",
             f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * part_target:.3f}",
             f"#EXT-X-PART-INF:PART-TARGET={part_target}", f"#EXT-X-MEDIA-SEQUENCE:{next_msn - segments}",
             '#EXT-X-MAP:URI="init.mp4"']
    for msn in range(next_msn - segments, next_msn):
        if msn >= next_msn - 2:
            lines += [f'#EXT-X-PART:DURATION={part_target},URI="part_{msn}_{i}.m4s"' for i in range(parts)]
        lines += [f"#EXTINF:{parts * part_target:.5f},", f"seg_{msn}.m4s"]
    lines += [f'#EXT-X-PART:DURATION={part_target},URI="part_{next_msn}_{i}.m4s"' for i in range(next_part)]
    if hint:
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part_{next_msn}_{next_part}.m4s"')
    return "\n".join(lines) + "\n" + extra


@dataclass
class FakePod:
    """A programmable pod. ``routes`` maps raw path (with query) to a response or a
    callable(request) -> response; unknown paths answer 404. ``requests`` records
    every request the gateway sent (any host)."""

    routes: dict[str, httpx.Response | Callable] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    delay: float = 0.0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.url.host != "127.0.0.2":
            return httpx.Response(200, content=b"FOREIGN HOST CONTENT")
        r = self.routes.get(request.url.raw_path.decode())
        if r is None:
            return httpx.Response(404, text="not found")
        return r(request) if callable(r) else r

    def paths(self) -> list[str]:
        return [r.url.raw_path.decode() for r in self.requests]

    def count(self, path: str) -> int:
        return sum(1 for p in self.paths() if p == path)


def make_token(ttl=300, camera_id=CAM, pod_id=POD, user="u1", now=None, secret=SECRET):
    return mint_user_token(Keyring.single(secret), user_id=user, camera_id=camera_id, pod_id=pod_id, ttl=ttl, now=now)


@pytest.fixture
def pod():
    p = FakePod()
    p.routes[f"/cameras/{CAM}/index.m3u8"] = lambda r: httpx.Response(200, text=LIVE, headers={"etag": '"pl"'})
    p.routes[f"/cameras/{CAM}/init.mp4"] = httpx.Response(200, content=b"INIT" * 100, headers={"etag": '"i1"'})
    for n in (100, 101):
        p.routes[f"/cameras/{CAM}/seg_{n}.m4s"] = httpx.Response(200, content=bytes([n % 256]) * 5000)
    return p


@pytest.fixture(params=["memory", "host-store"])
def gw_config(request, tmp_path):
    """The gateway config; every proxy test runs twice: with the in-process cache of one worker,
    and with the host store several workers share (gateway/hoststore.py, files in ``tmp_path``)."""
    store = {"host_cache_dir": str(tmp_path / "host-store")} if request.param == "host-store" else {}
    return parse_config({**keys(), "pods": {POD: POD_URL}, "allowed_origins": [ORIGIN], **store}, env={})


@pytest.fixture
async def client(pod, gw_config):
    app = create_app(gw_config, discovery=StaticDiscovery(gw_config.pods), transport=httpx.MockTransport(pod.handler))
    async with AsyncTestClient(app=app, base_url="http://gw.test") as c:
        c.follow_redirects = False  # the JWT → grant redirect is asserted explicitly
        yield c


async def start_session(client, token=None, **kw) -> str:
    """Follow the JWT → grant redirect; return the granted playlist URL."""
    token = token or make_token()
    r = await client.get(f"/streams/{CAM}/index.m3u8?token={token}", **kw)
    assert r.status_code == 302, r.text
    return f"/streams/{CAM}/" + r.headers["location"]


def uris(playlist: str) -> list[str]:
    import re

    out = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    out += re.findall(r'URI="([^"]*)"', playlist)
    return out


@pytest.fixture
def clock(monkeypatch):
    """Shift the gateway's wall clock: ``clock.shift(seconds)``."""

    class Clock:
        offset = 0.0

        def shift(self, s):
            self.offset += s

    c = Clock()
    real = time.time
    import gateway.grants
    import gateway.proxy

    monkeypatch.setattr(gateway.proxy.time, "time", lambda: real() + c.offset)
    return c
