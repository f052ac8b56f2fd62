"""Gateway↔pod clock skew (issue 12 point 6).

A Pi without an RTC may run seconds behind the gateway until NTP syncs. The real pod of the
security stack must accept gateway→pod tokens whose ``iat`` lies up to ``max_clock_skew``
(30 s) in its future, still refuse expired ones, and refuse beyond the bound with a reason
that says "clock skew" (in its 401 and its log). The gateway, talking to that real pod with
its own clock shifted, must say "clock skew" in its log when the pod refuses it for that.
``pod check`` reports the pod's skew against the portal's ``Date`` header, and the unit waits
for ``time-sync.target``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
import types
from pathlib import Path

import httpx
import jwt
import pytest
from litestar.testing import AsyncTestClient

import gateway.proxy
import gateway.upstream
from gateway.app import create_app
from gateway.config import parse_config
from gateway.discovery import StaticDiscovery
from pod.check import check_clock, check_portal
from pod.config import parse_config as parse_pod_config
from protocol.tokens import mint_pod_token
from tests.security.conftest import pod_requests_total

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _at_pod(stack, token: str) -> httpx.Response:
    return httpx.get(f"{stack.pod_url}/cameras/{stack.camera_id}/index.m3u8",
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)


@pytest.mark.parametrize("ahead", [7, 25])
def test_the_pod_accepts_a_gateway_clock_ahead_within_the_bound(sec_stack, figure, ahead):
    """The gateway's clock ``ahead`` s ahead = the pod's ``ahead`` s behind: iat is in the pod's future."""
    token = mint_pod_token(sec_stack.pod_signer(), camera_id=sec_stack.camera_id, pod_id=sec_stack.pod_id,
                           now=time.time() + ahead)
    r = _at_pod(sec_stack, token)
    figure(f"pod answer to a token minted {ahead} s ahead of its clock", r.status_code, "HTTP", "== 200",
           r.status_code == 200)
    assert r.status_code == 200 and "#EXTM3U" in r.text, (r.status_code, r.text)


def test_beyond_the_bound_the_pod_refuses_and_says_clock_skew(sec_stack, figure):
    token = mint_pod_token(sec_stack.pod_signer(), camera_id=sec_stack.camera_id, pod_id=sec_stack.pod_id,
                           now=time.time() + 45)
    r = _at_pod(sec_stack, token)
    figure("pod answer to a token minted 45 s ahead of its clock (bound 30 s)", r.status_code, "HTTP", "== 401",
           r.status_code == 401)
    assert r.status_code == 401
    assert "clock skew" in r.headers["www-authenticate"] and "iat is 4" in r.headers["www-authenticate"]
    # the pod's log names the cause too (once a minute per cause)
    assert "refused a gateway token: clock skew" in (sec_stack.workdir / "pod.log").read_text()


def test_skew_never_extends_exp(sec_stack):
    """Tolerance applies to iat/nbf only: a token that expired 20 s ago is refused, 30 s of skew or not."""
    kid, key = sec_stack.pod_signer().signing_key()
    now = int(time.time())
    claims = {"aud": "platebridge-pod", "iat": now - 50, "exp": now - 20, "camera_id": sec_stack.camera_id,
              "pod_id": sec_stack.pod_id}
    r = _at_pod(sec_stack, jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid}))
    assert r.status_code == 401 and "expired" in r.headers["www-authenticate"]


@pytest.mark.parametrize("ahead,expected", [(7, 200), (45, 502)])
async def test_the_gateway_log_says_clock_skew_when_that_is_why_the_pod_refused(
        sec_stack, figure, caplog, monkeypatch, ahead, expected):
    """The real pod, a gateway in process whose clock runs ``ahead`` s fast."""
    s = sec_stack
    cfg = parse_config({"user_token_secret": s.secret, "grant_secret": s.grant_secret,
                        "pod_signing_key_file": str(s.signing_key_file), "pod_signing_key_id": s.signing_kid,
                        "pods": {s.pod_id: s.pod_url}, "access_log": False}, env={})
    fast = types.SimpleNamespace(time=lambda: time.time() + ahead, monotonic=time.monotonic,
                                 perf_counter=time.perf_counter)
    monkeypatch.setattr(gateway.upstream, "time", fast)  # the gateway's wall clock runs fast
    monkeypatch.setattr(gateway.proxy, "time", fast)
    caplog.set_level(logging.ERROR, logger="platebridge.gateway")
    app = create_app(cfg, discovery=StaticDiscovery(cfg.pods))
    async with AsyncTestClient(app=app, base_url="http://gw.test") as client:
        client.follow_redirects = False
        r = await client.get(f"/streams/{s.camera_id}/index.m3u8?token={s.user_token()}")
        r = await client.get(f"/streams/{s.camera_id}/" + r.headers["location"])
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    figure(f"viewer status through a gateway whose clock is {ahead} s fast", r.status_code, "HTTP",
           f"== {expected}", r.status_code == expected)
    assert r.status_code == expected, r.text
    if expected == 502:
        assert "clock skew" in logged and re.search(r"the pod's clock is -4\d s off the gateway's", logged), logged
        assert "stream_secret" not in logged  # the old, misleading advice
        assert r.text.strip() == "pod refused the gateway"  # never a 401 for the viewer
    else:
        assert "clock skew" not in logged


async def test_pod_check_reports_the_skew_against_the_portals_date_header(tmp_path, figure):
    """A portal whose Date header is 40 s behind this host: ``pod check``'s clock line FAILs and
    says clock skew (the gateway's tokens would be refused); 3 s passes."""

    async def portal(offset: float) -> tuple[asyncio.Server, int]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = b'{"config_version": "1", "entries": []}'
            date = email.utils.formatdate(time.time() + offset, usegmt=True)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: " + date.encode()
                         + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]

    lines = {}
    for offset in (-40.0, -3.0):
        server, port = await portal(offset)
        async with server:
            cfg, _ = parse_pod_config({"portal_url": f"http://127.0.0.1:{port}", "pod_api_key": "k", "site_id": "s1",
                                       "pod_id": "main-gate-pod", "camera_id": "cam", "stream_secret": "s" * 40,
                                       "camera_rtsp_url": "rtsp://127.0.0.1:9/x"})
            offsets: list[float] = []
            assert (await check_portal(cfg, offsets)).status == "PASS"
            lines[offset] = check_clock(cfg, offsets)
    figure("pod check clock line for a pod 40 s ahead of the portal", lines[-40.0].status == "FAIL", "FAIL",
           "== FAIL", lines[-40.0].status == "FAIL")
    assert lines[-40.0].status == "FAIL" and re.search(r"(39|40|41) s ahead", lines[-40.0].line())
    assert "clock skew" in lines[-40.0].line() and "ahead of the portal's clock" in lines[-40.0].line()
    assert lines[-3.0].status == "PASS", lines[-3.0].line()


def test_the_pod_unit_waits_for_time_sync():
    unit = (ROOT / "deploy" / "pod" / "platebridge-pod.service").read_text()
    after = [line for line in unit.splitlines() if line.startswith("After=")]
    assert after and "time-sync.target" in after[0].split("=", 1)[1].split()


def test_skew_requests_never_reach_the_pods_files(sec_stack):
    """Control for the matrix: a refused skewed token served nothing (counted at the pod)."""
    before = pod_requests_total(sec_stack)
    token = mint_pod_token(sec_stack.pod_signer(), camera_id=sec_stack.camera_id, pod_id=sec_stack.pod_id,
                           now=time.time() + 120)
    assert _at_pod(sec_stack, token).status_code == 401
    assert pod_requests_total(sec_stack) == before + 1  # counted as a refusal, nothing served
