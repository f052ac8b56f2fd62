"""Discovery trusts the tailnet's unique name, not a device's self-reported HostName (issue 12 point 5).

Against the tailscaled LocalAPI stand-in (tests/standins/tailscaled.py, ``ipnstate.Status``
shape): a second ``tag:pod`` device calling itself ``main-gate-pod`` gets ``main-gate-pod-1``
from MagicDNS and takes over nothing, in either peer order (the old "last one wins" handed the
pod's viewers and gateway→pod tokens to whichever came last). Two devices whose MagicDNS names
both map to one pod_id (e.g. a node shared in from another tailnet) are a conflict: the
gateway routes to neither, logs it, counts it in ``platebridge_gateway_discovery_conflicts``
and ``platebridge-gateway check`` FAILs.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.check import run_checks
from gateway.config import parse_config
from gateway.discovery import LocalAPIDiscovery
from gateway.errors import PodConflict
from tests.gateway.conftest import CAM, LIVE, POD, keys, make_token
from tests.standins.tailscaled import LocalAPIStandIn, status_body

LEGIT = {"HostName": POD, "DNSName": f"{POD}.tail0000.ts.net.", "TailscaleIPs": ["100.64.0.7"],
         "Tags": ["tag:pod"], "Online": True}
IMPOSTOR = {"HostName": POD, "DNSName": f"{POD}-1.tail0000.ts.net.", "TailscaleIPs": ["100.64.0.66"],
            "Tags": ["tag:pod"], "Online": True}
SHARED_IN = {"HostName": "anything", "DNSName": f"{POD}.other-tailnet.ts.net.", "TailscaleIPs": ["100.64.0.99"],
             "Tags": ["tag:pod"], "Online": True}


def _app(sock, seen: list[str]):
    cfg = parse_config({**keys(), "discovery": "localapi", "localapi_socket": str(sock), "access_log": False},
                       env={})

    def pod(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.path.endswith(".m3u8"):
            return httpx.Response(200, text=LIVE)
        return httpx.Response(200, content=b"x" * 100)

    discovery = LocalAPIDiscovery(str(sock), "tag:pod", 8000, refresh=0.05)
    return create_app(cfg, discovery=discovery, transport=httpx.MockTransport(pod)), discovery


@pytest.mark.parametrize("order", ["legit_first", "impostor_first"])
async def test_a_device_calling_itself_by_the_pods_hostname_takes_nothing_over(tmp_path, figure, order):
    sock = tmp_path / "tailscaled.sock"
    peers = [LEGIT, IMPOSTOR] if order == "legit_first" else [IMPOSTOR, LEGIT]
    seen: list[str] = []
    async with LocalAPIStandIn(sock, status_body(["100.64.0.1"], peers)):
        app, discovery = _app(sock, seen)
        try:
            assert await discovery.resolve(POD) == "http://100.64.0.7:8000"
            assert await discovery.resolve(f"{POD}-1") == "http://100.64.0.66:8000"  # its own MagicDNS name
            async with AsyncTestClient(app=app, base_url="http://gw.test") as client:
                client.follow_redirects = False
                r = await client.get(f"/streams/{CAM}/index.m3u8?token={make_token()}")
                r = await client.get(f"/streams/{CAM}/" + r.headers["location"])
                assert r.status_code == 200
                seg = [u for u in r.text.splitlines() if u.startswith("seg_")][0]
                assert (await client.get(f"/streams/{CAM}/{seg}")).status_code == 200
        finally:
            await discovery.aclose()
    to_impostor = seen.count("100.64.0.66")
    figure(f"requests (and gateway→pod tokens) sent to the impostor ({order})", to_impostor, "requests", "== 0",
           to_impostor == 0)
    assert to_impostor == 0 and seen.count("100.64.0.7") >= 2, seen


async def test_two_devices_claiming_one_pod_id_get_no_traffic_a_log_line_a_metric_and_a_check_fail(
        tmp_path, figure, caplog):
    sock = tmp_path / "tailscaled.sock"
    seen: list[str] = []
    caplog.set_level(logging.ERROR, logger="platebridge.gateway.discovery")
    async with LocalAPIStandIn(sock, status_body(["100.64.0.1"], [LEGIT, SHARED_IN])):
        app, discovery = _app(sock, seen)
        try:
            with pytest.raises(PodConflict):
                await discovery.resolve(POD)
            async with AsyncTestClient(app=app, base_url="http://gw.test") as client:
                client.follow_redirects = False
                r = await client.get(f"/streams/{CAM}/index.m3u8?token={make_token()}")
                r = await client.get(f"/streams/{CAM}/" + r.headers["location"])
                metrics = (await client.get("/metrics")).text
            cfg = parse_config({**keys(), "discovery": "localapi", "localapi_socket": str(sock)}, env={})
            results = await run_checks(cfg)
        finally:
            await discovery.aclose()
    figure("pod requests while two devices claim one pod_id", len(seen), "requests", "== 0", not seen)
    assert r.status_code == 503 and "claimed by more than one" in r.text and r.headers["retry-after"]
    assert seen == []
    assert "platebridge_gateway_discovery_conflicts 1.0" in metrics
    logged = [rec.getMessage() for rec in caplog.records]
    claimed = f"pod_id {POD} is claimed by 2 tailnet devices"
    assert any(claimed in m and "other-tailnet.ts.net" in m for m in logged), logged
    fails = [x.line() for x in results if x.status == "FAIL" and x.name == "discovery"]
    assert fails and f"pod_id {POD} is claimed by 2 devices" in fails[0], [x.line() for x in results]
