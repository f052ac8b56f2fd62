"""EXT-X-KEY (RFC 8216 §4.3.2.4): the key URI the rewriter grants can be fetched through the
gateway, with its own grant only, and is never stored by browsers or proxies (issue 15: "every
URI kind the rewriter emits can be fetched"); the pod serves ``.key`` files the same way."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from litestar.testing import TestClient

from pod.hls_server import create_hls_app
from protocol.tokens import SigningKey, mint_pod_token
from tests.gateway.conftest import CAM, start_session, uris

KEY = bytes(range(16))  # an AES-128 key: 16 octets (RFC 8216 §5.1)
ENCRYPTED = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:100
#EXT-X-MAP:URI="init.mp4"
#EXT-X-KEY:METHOD=AES-128,URI="keys/k100.key",IV=0x00000000000000000000000000000064
#EXTINF:2.000000,
seg_100.m4s
#EXTINF:2.000000,
seg_101.m4s
"""


def _key_uri(playlist: str) -> str:
    [uri] = [u for u in uris(playlist) if u.startswith("keys/")]
    return uri


async def test_key_uri_is_served_with_its_grant_and_no_store(client, pod):
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(200, text=ENCRYPTED)
    pod.routes[f"/cameras/{CAM}/keys/k100.key"] = httpx.Response(200, content=KEY, headers={"etag": '"k1"'})
    playlist = (await client.get(await start_session(client))).text
    uri = _key_uri(playlist)
    assert re.fullmatch(r"keys/k100\.key\?pb_grant=[^&]+", uri), uri

    r = await client.get(f"/streams/{CAM}/{uri}")
    assert r.status_code == 200, r.text
    assert r.content == KEY
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["cache-control"] == "private, no-store"
    # the media segments next to it keep their long, immutable caching
    seg = [u for u in uris(playlist) if u.startswith("seg_100")][0]
    assert "immutable" in (await client.get(f"/streams/{CAM}/{seg}")).headers["cache-control"]


async def test_key_needs_its_own_grant_and_its_grant_opens_nothing_else(client, pod):
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(200, text=ENCRYPTED)
    pod.routes[f"/cameras/{CAM}/keys/k100.key"] = httpx.Response(200, content=KEY)
    playlist = (await client.get(await start_session(client))).text
    key_grant = _key_uri(playlist).partition("?")[2]
    seg_grant = [u for u in uris(playlist) if u.startswith("seg_100")][0].partition("?")[2]
    before = len(pod.requests)
    assert (await client.get(f"/streams/{CAM}/keys/k100.key")).status_code == 401  # no grant
    assert (await client.get(f"/streams/{CAM}/keys/k100.key?{seg_grant}")).status_code == 403  # a segment's
    assert (await client.get(f"/streams/{CAM}/keys/k101.key?{key_grant}")).status_code == 403  # another key
    assert (await client.get(f"/streams/{CAM}/seg_100.m4s?{key_grant}")).status_code == 403  # a segment
    assert len(pod.requests) == before, pod.paths()[before:]


async def test_pod_refusal_of_a_key_passes_as_the_pod_said(client, pod):
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(200, text=ENCRYPTED)  # no key route: the pod 404s
    uri = _key_uri((await client.get(await start_session(client))).text)
    r = await client.get(f"/streams/{CAM}/{uri}")
    assert r.status_code == 404 and r.content != KEY


def test_pod_serves_key_files_no_store(tmp_path):
    cam = tmp_path / "cam1"
    (cam / "keys").mkdir(parents=True)
    (cam / "keys" / "k100.key").write_bytes(KEY)
    signer = SigningKey.generate("gw-1")
    from protocol.tokens import PublicKeyring

    streamers = {"cam1": SimpleNamespace(dir=cam, packaged=False, status=lambda: {"state": "running"})}
    app = create_hls_app(pod_id="pod-1", token_keys=[PublicKeyring({"gw-1": signer.public_pem()})],
                         streamers=streamers, tailnet_host="pod.test")  # type: ignore[arg-type]
    token = mint_pod_token(signer, camera_id="cam1", pod_id="pod-1")
    with TestClient(app, base_url="http://pod.test") as c:
        r = c.get("/cameras/cam1/keys/k100.key", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.content == KEY
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["cache-control"] == "no-store"
        assert c.get("/cameras/cam1/keys/k100.key").status_code == 401  # still a token-checked route


async def test_a_key_never_lands_in_the_host_store(client, pod, gw_config):
    """Keys are secrets: with the workers' host store, a key is shared while in flight but
    never written to the tmpfs; segments are."""
    if gw_config.host_cache_dir is None:
        pytest.skip("the in-process variant keeps nothing on disk")
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(200, text=ENCRYPTED)
    pod.routes[f"/cameras/{CAM}/keys/k100.key"] = httpx.Response(200, content=KEY)
    playlist = (await client.get(await start_session(client))).text
    for uri in (_key_uri(playlist), next(u for u in uris(playlist) if u.startswith("seg_100"))):
        assert (await client.get(f"/streams/{CAM}/{uri}")).status_code == 200

    stored = [p.read_bytes() for p in Path(gw_config.host_cache_dir).glob("*.data")]
    assert bytes([100]) * 5000 in stored and KEY not in stored
    assert not any(KEY in p.read_bytes() for p in Path(gw_config.host_cache_dir).iterdir() if p.is_file())
