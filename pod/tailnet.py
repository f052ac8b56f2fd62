"""The pod's tailnet address, asked of tailscaled.

First the LocalAPI (``GET /localapi/v0/status`` over tailscaled's unix socket;
``Self.TailscaleIPs``), then the CLI (``tailscale ip -4``). ``stream_bind: auto``
waits, with backoff, until one of them reports an IPv4 in 100.64.0.0/10.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

import httpx

from pod import ffmpeg as ff
from pod.backoff import Backoff
from pod.errors import FfmpegError, TailnetUnavailable
from protocol.ids import pick_tailnet_ipv4

log = logging.getLogger("platebridge.pod.tailnet")


async def localapi_ipv4(socket_path: str, timeout: float = 3.0) -> str | None:
    """Ask tailscaled's LocalAPI for this node's tailnet IPv4; None if unavailable."""
    transport = httpx.AsyncHTTPTransport(uds=socket_path)
    try:
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            r = await client.get("http://local-tailscaled.sock/localapi/v0/status")
            if r.status_code != 200:
                return None
            data = r.json()
    except (httpx.HTTPError, ValueError, OSError):
        return None
    self_node = data.get("Self") if isinstance(data, dict) else None
    ips = (self_node or {}).get("TailscaleIPs") or data.get("TailscaleIPs") or []
    return pick_tailnet_ipv4(ips)


async def cli_ipv4(timeout: float = 5.0) -> str | None:
    """Run ``tailscale ip -4``; None when the CLI is missing or fails."""
    exe = shutil.which("tailscale")
    if not exe:
        return None
    try:
        done = await ff.run([exe, "ip", "-4"], timeout=timeout)  # killed on timeout, dies with the pod
    except FfmpegError:
        return None
    if done.returncode != 0:
        return None
    return pick_tailnet_ipv4(done.stdout.split())


async def wait_for_tailnet_ipv4(socket_path: str, max_wait: float = 0.0) -> str:
    """Poll LocalAPI then CLI until a tailnet IPv4 exists.

    ``max_wait`` in seconds (0 = forever). Raises :class:`TailnetUnavailable`
    when it runs out.
    """
    backoff = Backoff(1.0, 15.0)
    deadline = time.monotonic() + max_wait if max_wait > 0 else None
    while True:
        ip = await localapi_ipv4(socket_path) or await cli_ipv4()
        if ip:
            return ip
        delay = backoff.next_delay()
        if deadline is not None and time.monotonic() + delay > deadline:
            raise TailnetUnavailable("tailscaled reported no tailnet IPv4 address; is the pod joined (tailscale up)?")
        log.warning("no tailnet IPv4 yet (tailscaled at %s); retrying in %.1fs", socket_path, delay)
        await asyncio.sleep(delay)
