"""STAND-IN pods for the bounded-upstream tests (tests only): tiny HTTP/1.1 servers, one per
loopback address, each with one behaviour. Run as a process so their work does not share the
test's event loop::

    python -m tests.security.hostile_pods '[{"host": "127.0.0.10", "port": 8000, "behaviour": "good"}]'

It prints ``READY`` once every server listens. ``python -m tests.security.hostile_pods hold
'<json>'`` (``{"host", "port", "targets", "count"}``) is the other side: a viewer process that
keeps ``count`` GET requests for ``targets`` (cycled) open on the gateway, sending a new one on a
new connection whenever one is answered, and prints ``READY`` once all are sent.

Every pod serves
``/cameras/<camera>/index.m3u8`` as a valid live playlist listing ``segments`` segments
``seg_<n>.m4s`` (so the gateway hands out grants for them); what a segment request gets
depends on ``behaviour``:

* ``good`` — ``segment_bytes`` bytes with ``Content-Length``, at once (keep-alive);
* ``hang`` — nothing, ever (the connection stays open);
* ``endless`` — ``200`` without a length, then bytes as fast as the socket takes them, forever;
* ``trickle`` — ``200`` with a 1 MiB ``Content-Length``, then one byte a second;
* ``range-stall`` — ``200`` with a 1 MiB ``Content-Length``, the first 64 KiB, then nothing;
* ``huge-playlist`` — the playlist itself is 64 MiB with ``Content-Length`` (sent lazily);
* ``endless-playlist`` — the playlist is ``#EXTM3U`` followed by comment lines, forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

PLAYLIST_HEAD = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"


def playlist(segments: int) -> bytes:
    """A live media playlist listing ``seg_0.m4s`` … ``seg_<segments-1>.m4s``."""
    return (PLAYLIST_HEAD + "".join(f"#EXTINF:2.0,\nseg_{n}.m4s\n" for n in range(segments))).encode()


async def _read_request(reader: asyncio.StreamReader) -> str | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    return head.split(b" ", 2)[1].decode("latin-1")


async def _forever(writer: asyncio.StreamWriter, chunk: bytes, delay: float) -> None:
    while True:
        writer.write(chunk)
        await writer.drain()
        if delay:
            await asyncio.sleep(delay)


def handler(spec: dict):
    behaviour = spec.get("behaviour", "good")
    body = b"\x47" * int(spec.get("segment_bytes", 16384))
    listing = playlist(int(spec.get("segments", 50)))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (target := await _read_request(reader)) is not None:
                path = target.split("?", 1)[0]
                if path.endswith(".m3u8"):
                    if behaviour == "huge-playlist":
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\n"
                                     b"Content-Length: 67108864\r\n\r\n#EXTM3U\n")
                        await _forever(writer, b"#" * 65535 + b"\n", 0.0)
                    if behaviour == "endless-playlist":
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\n"
                                     b"Connection: close\r\n\r\n#EXTM3U\n")
                        await _forever(writer, b"# filler\n" * 4096, 0.0)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(listing) + listing)
                    await writer.drain()
                    continue
                if behaviour == "hang":
                    await asyncio.Event().wait()
                if behaviour == "endless":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n\r\n")
                    await _forever(writer, b"\x47" * 65536, 0.0)
                if behaviour == "trickle":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 1048576\r\n\r\n")
                    await _forever(writer, b"\x47", 1.0)
                if behaviour == "range-stall":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 1048576\r\n\r\n"
                                 + b"\x47" * 65536)
                    await writer.drain()
                    await asyncio.Event().wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: %d\r\n\r\n" % len(body)
                             + body)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    return handle


async def hold(spec: dict) -> None:
    """Keep ``count`` requests open on ``host:port`` (see the module docs)."""
    targets: list[str] = spec["targets"]
    sent = 0

    async def one(i: int, ready: asyncio.Event) -> None:
        nonlocal sent
        first = True
        while True:
            try:
                reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
                target = targets[i % len(targets)]
                writer.write(f"GET {target} HTTP/1.1\r\nHost: {spec['host']}\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                if first:
                    first, sent = False, sent + 1
                    if sent == spec["count"]:
                        ready.set()
                await reader.read()  # until the gateway answers and closes (its deadline)
                writer.close()
            except OSError:
                await asyncio.sleep(0.1)
            i += spec["count"]

    ready = asyncio.Event()
    tasks = [asyncio.create_task(one(i, ready)) for i in range(spec["count"])]
    await ready.wait()
    print("READY", flush=True)
    await asyncio.gather(*tasks)


async def main(specs: list[dict]) -> None:
    servers = [await asyncio.start_server(handler(s), s["host"], s["port"], backlog=1024) for s in specs]
    print("READY", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        if sys.argv[1] == "hold":
            asyncio.run(hold(json.loads(sys.argv[2])))
        else:
            asyncio.run(main(json.loads(sys.argv[1])))
