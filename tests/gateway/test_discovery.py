"""Discovery: pure parsers for LocalAPI and Tailscale API answers, the LocalAPI
backend against a tailscaled stand-in on a unix socket, caching and 503s."""

from __future__ import annotations

import asyncio

import pytest
from tailscale.models import Device

from gateway.discovery import (
    Discovery,
    LocalAPIDiscovery,
    PodInfo,
    StaticDiscovery,
    TailscaleAPIDiscovery,
    pods_from_devices,
    pods_from_localapi_status,
)
from gateway.errors import DiscoveryError, PodOffline, PodUnknown
from tests.standins.tailscaled import LocalAPIStandIn, status_body

PEERS = [
    {"HostName": "gate-1", "TailscaleIPs": ["100.101.1.1", "fd7a:115c:a1e0::1"], "Tags": ["tag:pod"], "Online": True},
    {"HostName": "gate-2", "TailscaleIPs": ["100.101.1.2"], "Tags": ["tag:pod"], "Online": False},
    {"HostName": "laptop", "TailscaleIPs": ["100.101.1.3"], "Tags": [], "Online": True},
    {"HostName": "evil", "TailscaleIPs": ["192.168.1.10"], "Tags": ["tag:pod"], "Online": True},
    {"HostName": "Not A Label!", "DNSName": "gate-3.tail0000.ts.net.", "TailscaleIPs": ["100.101.1.4"],
     "Tags": ["tag:pod"], "Online": True},
]


def test_localapi_parser_filters_tag_uses_tailnet_ipv4_and_online():
    pods = pods_from_localapi_status(status_body(["100.100.0.1"], PEERS), "tag:pod", 8000)
    assert pods["gate-1"] == PodInfo("gate-1", "http://100.101.1.1:8000", True, "gate-1.tail0000.ts.net")
    assert pods["gate-2"].online is False
    assert "laptop" not in pods and "evil" not in pods  # untagged; non-tailnet address
    assert pods["gate-3"].base_url == "http://100.101.1.4:8000"  # identified by its MagicDNS name


def test_localapi_parser_survives_junk():
    for junk in ({}, {"Peer": None}, {"Peer": []}, {"Peer": {"k": None}}, {"Peer": {"k": {"Tags": "tag:pod"}}}):
        assert pods_from_localapi_status(junk, "tag:pod", 8000) == {}


def test_tailscale_api_parser_with_real_device_models():
    devices = [
        Device.from_dict({"id": "1", "hostname": "gate-1", "name": "gate-1.tail0000.ts.net", "nodeId": "n1",
                          "addresses": ["100.101.1.1", "fd7a:115c:a1e0::1"], "tags": ["tag:pod"],
                          "connectedToControl": True}),
        Device.from_dict({"id": "2", "hostname": "gate-2", "name": "gate-2.tail0000.ts.net", "nodeId": "n2",
                          "addresses": ["100.101.1.2"], "tags": ["tag:pod"], "connectedToControl": False}),
        Device.from_dict({"id": "3", "hostname": "laptop", "name": "laptop.tail0000.ts.net", "nodeId": "n3",
                          "addresses": ["100.101.1.3"], "tags": []}),
    ]
    pods = pods_from_devices(devices, "tag:pod", 8000)
    assert set(pods) == {"gate-1", "gate-2"}
    assert pods["gate-1"].online and not pods["gate-2"].online


async def test_tailscale_api_backend_caches_and_maps_errors():
    calls = 0

    async def devices():
        nonlocal calls
        calls += 1
        return {"1": Device.from_dict({"id": "1", "hostname": "gate-1", "name": "gate-1.x", "nodeId": "n",
                                       "addresses": ["100.101.1.1"], "tags": ["tag:pod"],
                                       "connectedToControl": True})}

    d = TailscaleAPIDiscovery("tag:pod", 8000, refresh=60, devices=devices)
    assert await asyncio.gather(*(d.resolve("gate-1") for _ in range(20))) == ["http://100.101.1.1:8000"] * 20
    assert calls == 1  # single-flight and cached
    with pytest.raises(PodUnknown):
        await d.resolve("gate-9")
    with pytest.raises(PodUnknown):
        await d.resolve("Bad_Label")


async def test_localapi_backend_over_unix_socket(tmp_path):
    sock = tmp_path / "tailscaled.sock"
    async with LocalAPIStandIn(sock, status_body(["100.100.0.1"], PEERS)) as standin:
        d = LocalAPIDiscovery(str(sock), "tag:pod", 8000, refresh=0.2)
        try:
            assert await d.resolve("gate-1") == "http://100.101.1.1:8000"
            with pytest.raises(PodOffline):
                await d.resolve("gate-2")
            with pytest.raises(PodUnknown):
                await d.resolve("laptop")
            standin.body = status_body(["100.100.0.1"], [{**PEERS[1], "Online": True}])
            await asyncio.sleep(0.3)
            assert await d.resolve("gate-2") == "http://100.101.1.2:8000"  # refreshed
            assert standin.requests >= 2
        finally:
            await d.aclose()


async def test_failed_refresh_keeps_last_good_map():
    class Flaky(Discovery):
        fail = False

        async def fetch(self):
            if self.fail:
                raise DiscoveryError("down")
            return {"gate-1": PodInfo("gate-1", "http://100.101.1.1:8000")}

    d = Flaky(refresh=0.05)
    assert await d.resolve("gate-1")
    d.fail = True
    await asyncio.sleep(0.1)
    assert await d.resolve("gate-1") == "http://100.101.1.1:8000"


async def test_static_discovery():
    d = StaticDiscovery({"gate-1": "http://127.0.0.2:8000/"})
    assert await d.resolve("gate-1") == "http://127.0.0.2:8000"
    with pytest.raises(PodUnknown):
        await d.resolve("gate-2")
