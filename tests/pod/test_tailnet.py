"""``stream_bind: auto``: the tailnet IPv4 asked of tailscaled's LocalAPI (stand-in on a unix socket)."""

import asyncio

import pytest

from pod.errors import TailnetUnavailable
from pod.tailnet import localapi_ipv4, pick_tailnet_ipv4, wait_for_tailnet_ipv4
from tests.standins.tailscaled import LocalAPIStandIn, status_body


def test_pick_tailnet_ipv4():
    assert pick_tailnet_ipv4(["fd7a:115c:a1e0::5", "100.88.1.2"]) == "100.88.1.2"
    assert pick_tailnet_ipv4(["192.168.1.2", "10.0.0.1", "junk"]) is None


async def test_localapi_ipv4_and_waiting_until_it_exists(tmp_path):
    sock = tmp_path / "ts.sock"
    assert await localapi_ipv4(str(sock)) is None  # no tailscaled
    async with LocalAPIStandIn(sock, status_body([], [])) as standin:
        waiter = asyncio.create_task(wait_for_tailnet_ipv4(str(sock), max_wait=20))
        await asyncio.sleep(1.5)
        assert not waiter.done()  # still waiting: no tailnet address yet
        standin.body = status_body(["100.88.1.2", "fd7a:115c:a1e0::2"], [])
        assert await asyncio.wait_for(waiter, 20) == "100.88.1.2"


async def test_wait_gives_up_after_max_wait(tmp_path):
    with pytest.raises(TailnetUnavailable):
        await wait_for_tailnet_ipv4(str(tmp_path / "none.sock"), max_wait=1.5)
