#!/usr/bin/env python3
"""BASELINE for bench/amplification.py — a naive pass-through HLS proxy, NOT the gateway.

    .venv/bin/python bench/naive_proxy.py --port PORT --pod http://127.0.0.2:P --pod-id ID
        [--source 127.0.0.3]   (secret from env PB_BENCH_SECRET)

What a proxy without the gateway's caches does: the viewer's JWT is checked once
(``?token=`` → 302 to the same playlist), then EVERY request is forwarded to the pod with
httpx (``/streams/<cam>/<file>`` → ``/cameras/<cam>/<file>``, gateway→pod token) and the
pod's answer is returned as is: no segment cache, no shared playlist fetch. It connects
from ``--source`` so the pod's request log can tell it from the gateway.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from protocol.tokens import Keyring, mint_pod_token, verify_user_token


def make_app(pod: str, pod_id: str, keyring: Keyring, source: str):
    """The naive proxy as a plain ASGI app."""
    client = httpx.AsyncClient(  # the gateway's upstream client settings (gateway/upstream.py)
        transport=httpx.AsyncHTTPTransport(local_address=source, limits=httpx.Limits(
            max_connections=256, max_keepalive_connections=64)), trust_env=False, timeout=10)
    tokens: dict[str, tuple[float, str]] = {}

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        cam, _, file = scope["path"].removeprefix("/streams/").partition("/")
        query = scope["query_string"].decode()
        if query.startswith("token="):  # start of a session: check the JWT once, 302 like the gateway
            verify_user_token(query[6:], keyring)
            await send({"type": "http.response.start", "status": 302, "headers": [
                (b"location", f"{file}?session=1".encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        exp, tok = tokens.get(cam, (0.0, ""))
        if exp < time.time():
            tok = mint_pod_token(keyring, camera_id=cam, pod_id=pod_id, ttl=30)
            tokens[cam] = (time.time() + 15, tok)
        r = await client.get(f"{pod}/cameras/{cam}/{file}", headers={"authorization": f"Bearer {tok}"})
        await send({"type": "http.response.start", "status": r.status_code, "headers": [
            (b"content-type", r.headers.get("content-type", "application/octet-stream").encode()),
            (b"content-length", str(len(r.content)).encode())]})
        await send({"type": "http.response.body", "body": r.content})

    return app


def main() -> int:
    """Run the baseline proxy under uvicorn (uvloop + httptools, like the gateway)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pod", required=True)
    ap.add_argument("--pod-id", required=True)
    ap.add_argument("--source", default="127.0.0.3")
    a = ap.parse_args()
    import uvicorn

    app = make_app(a.pod, a.pod_id, Keyring.single(os.environ["PB_BENCH_SECRET"]), a.source)
    uvicorn.run(app, host="127.0.0.1", port=a.port, loop="uvloop", http="httptools", access_log=False,
                log_config=None, log_level="warning", limit_concurrency=4096, timeout_keep_alive=15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
