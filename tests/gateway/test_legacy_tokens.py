"""The gateway's accept_legacy_tokens option (issue 11, point 4): the PlateBridge POD
connection guide's stream token, base64(json) "." sha256(json + secret), opens a viewing
session like a JWT when the option is on; every forged, expired, over-long or wrong-camera
one — and any legacy token while the option is off — is refused before any pod request.

Each row plays like a player (token → 302 → granted playlist → its first segment), so a
token accepted by mistake would show up as requests at the pod, counted at the upstream
transport seam (tests/gateway/conftest.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.discovery import StaticDiscovery
from protocol.legacy_tokens import mint_legacy_token
from tests.gateway.conftest import CAM, POD, POD_URL, SECRET, make_token, uris


def guide_token(**over) -> str:
    """The guide's algorithm, written out, for the conftest's camera and pod."""
    claims = {"user_id": "u-7", "camera_id": CAM, "pod_id": POD, "exp": int(time.time()) + 600}
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    text = json.dumps(claims).encode()
    return base64.b64encode(text).decode() + "." + hashlib.sha256(text + SECRET.encode()).hexdigest()


def _forged() -> str:
    body, _ = guide_token().split(".")
    return body + "." + hashlib.sha256(b"guess").hexdigest()


def _tampered() -> str:
    body, sig = guide_token().split(".")
    claims = json.loads(base64.b64decode(body))
    claims["exp"] += 3600
    return base64.b64encode(json.dumps(claims).encode()).decode() + "." + sig


BAD = {
    "forged_signature": (_forged, 401),
    "wrong_secret": (lambda: mint_legacy_token("w" * 64, user_id="u", camera_id=CAM, pod_id=POD), 401),
    "payload_tampered": (_tampered, 401),
    "expired": (lambda: guide_token(exp=int(time.time()) - 60), 401),
    "expired_milliseconds": (lambda: guide_token(exp=int(time.time() - 60) * 1000), 401),
    "lifetime_over_max": (lambda: guide_token(exp=int(time.time()) + 86400), 401),
    "no_exp": (lambda: guide_token(exp=None), 401),
    "no_user": (lambda: guide_token(user_id=None), 401),
    "pod_id_not_dns_label": (lambda: guide_token(pod_id="Evil_Pod.example.com"), 401),
    "wrong_camera": (lambda: guide_token(camera_id="other-cam"), 403),
    "garbage": (lambda: "eyJub3QiOiJ2YWxpZCJ9." + "0" * 64, 401),
}


def _client(pod, accept: bool):
    cfg = parse_config({"stream_secret": SECRET, "pods": {POD: POD_URL}, "accept_legacy_tokens": accept}, env={})
    app = create_app(cfg, discovery=StaticDiscovery(cfg.pods), transport=httpx.MockTransport(pod.handler))
    return AsyncTestClient(app=app, base_url="http://gw.test")


async def play(c, token: str) -> list[int]:
    """Like a player: the token, then (only if granted) the playlist and its first segment."""
    r = await c.get(f"/streams/{CAM}/index.m3u8", params={"token": token})
    statuses = [r.status_code]
    if r.status_code == 302:
        pl = await c.get(f"/streams/{CAM}/{r.headers['location']}")
        statuses.append(pl.status_code)
        if pl.status_code == 200:
            first = next(u for u in uris(pl.text) if ".m4s" in u)
            statuses.append((await c.get(f"/streams/{CAM}/{first}")).status_code)
    return statuses


@pytest.mark.parametrize("name", sorted(BAD))
async def test_bad_legacy_token_is_refused_with_zero_pod_requests(pod, name):
    build, status = BAD[name]
    token = build()
    async with _client(pod, accept=True) as c:
        c.follow_redirects = False
        assert await play(c, token) == [status]
        w = await c.get(f"/watch/{CAM}", params={"token": token})
        assert w.status_code == status and "<video" not in w.text
    assert pod.requests == []


async def test_valid_legacy_token_plays_when_the_option_is_on(pod):
    """The control row: the same player with a genuine guide token gets a session and media."""
    token = guide_token()
    async with _client(pod, accept=True) as c:
        c.follow_redirects = False
        assert await play(c, token) == [302, 200, 200]
        assert (await c.get(f"/watch/{CAM}", params={"token": token})).status_code == 200
        ms = mint_legacy_token(SECRET, user_id="u", camera_id=CAM, pod_id=POD, ttl=300, milliseconds=True,
                               urlsafe=True)
        assert (await play(c, ms))[0] == 302
        r = await c.get(f"/streams/{CAM}/index.m3u8", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 302
    assert pod.requests  # media really came from the pod


async def test_legacy_tokens_are_refused_while_the_option_is_off(pod):
    async with _client(pod, accept=False) as c:
        c.follow_redirects = False
        assert await play(c, guide_token()) == [401]
        assert (await c.get(f"/watch/{CAM}", params={"token": guide_token()})).status_code == 401
        assert pod.requests == []
        assert await play(c, make_token()) == [302, 200, 200]  # JWTs work as ever


def test_option_is_off_by_default():
    assert parse_config({"stream_secret": SECRET}, env={}).accept_legacy_tokens is False
    assert parse_config({"stream_secret": SECRET}, env={"PLATEBRIDGE_GATEWAY_ACCEPT_LEGACY_TOKENS": "true"}
                        ).accept_legacy_tokens is True
