"""A stolen pod is worth one camera, not all of them (issue 12 point 1).

Everything pod A holds — every value of its ``config.yaml`` and every key file it names — is
tried as key material for everything the rest of the system accepts: user stream tokens
(HS256, as the portal signs them) and grants at the gateway, gateway→pod tokens (HS256, the
only algorithm with a shared secret, including HS256 keyed with the public key PEM) at pod B,
grants keyed with each value and with the HKDF derivation the gateway uses. With keys by
role, nothing is accepted and no pod request happens. The control runs the very same attack
against the connection guide's legacy layout (one stream_secret on portal, gateway and every
pod) and it succeeds: the test can fail.

Rotation with ``kid`` of each key (user-token secret, gateway signing key, grant key) follows
the steps of docs/portal-integration.md and is checked at every step.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path

import httpx
import jwt
import pytest
import yaml
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.config import GRANT_KEY_INFO, parse_config
from gateway.discovery import StaticDiscovery
from gateway.grants import Grant, GrantSigner
from pod.config import parse_config as parse_pod_config
from pod.hls_server import create_hls_app
from protocol.tokens import Keyring, SigningKey, mint_pod_token, mint_user_token

CAM_A, CAM_B, POD_A, POD_B = "cam-a", "cam-b", "pod-a", "pod-b"
PLAYLIST = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg_1.m4s\n"


class Streamer:
    """What the pod's HLS app needs of a camera: its directory and a status (a camera whose
    files ffmpeg writes, as with ``hls_segment_type: mpegts``: not packaged by the pod)."""

    packaged = False

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "index.m3u8").write_text(PLAYLIST)

    def status(self) -> dict:
        return {"state": "running"}


def pod_config(tmp: Path, pod_id: str, camera_id: str, *, public_pem: str | None, stream_secret: str | None) -> dict:
    """A pod's config.yaml as the installer writes it (the public key as a file it names)."""
    cfg = {"portal_url": "https://portal.example.com", "pod_api_key": "pbk_" + secrets.token_hex(12),
           "pod_id": pod_id, "site_id": "site-1", "company_id": "company-1", "camera_id": camera_id,
           "camera_rtsp_url": f"rtsp://admin:{secrets.token_hex(6)}@192.168.1.100:554/stream",
           "state_dir": str(tmp / pod_id), "hls_dir": str(tmp / pod_id / "hls")}
    if public_pem:
        key_file = tmp / f"{pod_id}-gateway.pub"
        key_file.write_text(public_pem)
        cfg["gateway_public_keys"] = {"gw-1": str(key_file)}
    if stream_secret:
        cfg["stream_secret"] = stream_secret
    return cfg


def material(cfg: dict) -> list[bytes]:
    """Everything a thief of this config (and the files it names) can use as key material."""
    out: list[bytes] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            out.append(value.encode())
            if Path(value).is_file():
                out.append(Path(value).read_bytes())

    walk(cfg)
    out.append(yaml.safe_dump(cfg).encode())  # the whole file, too
    return out


def hs256(claims: dict, key: bytes) -> str:
    """An HS256 JWT keyed with any bytes (pyjwt itself refuses PEM keys as HMAC secrets; an attacker
    does not ask it)."""
    signing = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}') + b"." + jwt.utils.base64url_encode(
        jwt.api_jws.json.dumps(claims).encode())
    return (signing + b"." + jwt.utils.base64url_encode(hmac.new(key, signing, hashlib.sha256).digest())).decode()


def forged_user_tokens(keys: list[bytes]) -> list[str]:
    now = int(time.time())
    claims = {"aud": "platebridge-stream", "iat": now, "exp": now + 300, "user_id": "thief", "camera_id": CAM_B,
              "pod_id": POD_B}
    return [hs256(claims, k) for k in keys]


def forged_grants(keys: list[bytes]) -> list[str]:
    grant = Grant("playlist", POD_B, int(time.time()) + 3000, int(time.time()) + 3000, b"\0" * 8)
    signers = []
    for k in keys:
        signers += [[hashlib.sha256(k).digest()], [k.ljust(16, b"\0")]]
        # the gateway derives its grant key with HKDF from its *private* key; try it on what the pod has
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        signers.append([HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=GRANT_KEY_INFO).derive(k)])
    return [GrantSigner(s).mint(grant, camera_id=CAM_B, path="index.m3u8") for s in signers]


def forged_pod_tokens(keys: list[bytes]) -> list[str]:
    now = int(time.time())
    claims = {"aud": "platebridge-pod", "iat": now, "exp": now + 30, "camera_id": CAM_B, "pod_id": POD_B}
    return [hs256(claims, k) for k in keys]


async def _attack(tmp: Path, *, legacy: bool) -> dict[str, int]:
    """Build gateway + pod A's config + pod B; forge with pod A's material; count what was accepted."""
    shared = secrets.token_urlsafe(32)
    signer = SigningKey.generate("gw-1")
    key_file = tmp / "gateway.pem"
    key_file.write_bytes(signer.private_pem())
    if legacy:
        gw_keys = {"stream_secret": shared}
    else:
        gw_keys = {"user_token_secret": secrets.token_urlsafe(32), "pod_signing_key_file": str(key_file),
                   "pod_signing_key_id": "gw-1"}
    pod_requests: list[str] = []

    def pod_transport(request: httpx.Request) -> httpx.Response:
        pod_requests.append(str(request.url))
        return httpx.Response(200, text=PLAYLIST)

    gw_cfg = parse_config({**gw_keys, "pods": {POD_A: "http://127.0.0.2:8000", POD_B: "http://127.0.0.3:8000"},
                           "access_log": False}, env={})
    gateway = create_app(gw_cfg, discovery=StaticDiscovery(gw_cfg.pods), transport=httpx.MockTransport(pod_transport))
    public = None if legacy else signer.public_pem()
    stolen = pod_config(tmp, POD_A, CAM_A, public_pem=public, stream_secret=shared if legacy else None)
    b_cfg, _ = parse_pod_config(pod_config(tmp, POD_B, CAM_B, public_pem=public,
                                           stream_secret=shared if legacy else None))
    pod_b = create_hls_app(pod_id=POD_B, token_keys=b_cfg.pod_token_keys(),
                           streamers={CAM_B: Streamer(tmp / "b-hls" / CAM_B)}, tailnet_host="pod-b.test")
    keys = material(stolen)
    accepted = {"user tokens accepted by the gateway": 0, "grants accepted by the gateway": 0,
                "tokens accepted by pod B": 0}
    async with AsyncTestClient(app=gateway, base_url="http://gw.test") as gw, \
            AsyncTestClient(app=pod_b, base_url="http://pod-b.test") as pod:
        gw.follow_redirects = False
        for token in forged_user_tokens(keys):
            r = await gw.get(f"/streams/{CAM_B}/index.m3u8", params={"token": token})
            accepted["user tokens accepted by the gateway"] += r.status_code == 302
        for grant in forged_grants(keys):
            r = await gw.get(f"/streams/{CAM_B}/index.m3u8?pb_grant={grant}")
            accepted["grants accepted by the gateway"] += r.status_code == 200
        for token in forged_pod_tokens(keys):
            r = await pod.get(f"/cameras/{CAM_B}/index.m3u8", headers={"Authorization": f"Bearer {token}"})
            accepted["tokens accepted by pod B"] += r.status_code == 200
    accepted["pod requests made by the gateway"] = len(pod_requests)
    accepted["candidate keys tried"] = len(keys)
    return accepted


async def test_pod_a_config_cannot_produce_anything_the_gateway_or_pod_b_accepts(tmp_path, figure):
    result = await _attack(tmp_path, legacy=False)
    for name, n in result.items():
        if name != "candidate keys tried":
            figure(f"{name}, forged from pod A's config ({result['candidate keys tried']} candidate keys)", n,
                   "requests" if "requests" in name else "accepted", "== 0", n == 0)
    assert result["candidate keys tried"] >= 10, result
    assert {k: v for k, v in result.items() if k != "candidate keys tried"} == {
        "user tokens accepted by the gateway": 0, "grants accepted by the gateway": 0,
        "tokens accepted by pod B": 0, "pod requests made by the gateway": 0}


async def test_control_the_same_attack_succeeds_on_the_legacy_layout(tmp_path, figure):
    result = await _attack(tmp_path, legacy=True)
    forged = result["user tokens accepted by the gateway"]
    figure("user tokens forged from a legacy pod's config accepted by a legacy gateway", forged, "accepted", ">= 1",
           forged >= 1)
    assert result["user tokens accepted by the gateway"] >= 1, result
    assert result["tokens accepted by pod B"] >= 1, result


# ---- rotation of each key with kid ------------------------------------------------------------------
def _gateway(**keys):
    cfg = parse_config({**keys, "pods": {POD_B: "http://127.0.0.3:8000"}, "access_log": False}, env={})
    return create_app(cfg, discovery=StaticDiscovery(cfg.pods),
                      transport=httpx.MockTransport(lambda r: httpx.Response(200, text=PLAYLIST)))


async def _session(keys: dict, token: str) -> tuple[int, str]:
    """A session start on a gateway (a fresh process, as after a restart) configured with ``keys``."""
    async with AsyncTestClient(app=_gateway(**keys), base_url="http://gw.test") as c:
        c.follow_redirects = False
        r = await c.get(f"/streams/{CAM_B}/index.m3u8", params={"token": token})
        return r.status_code, r.headers.get("location", "")


async def _reload(keys: dict, location: str) -> int:
    async with AsyncTestClient(app=_gateway(**keys), base_url="http://gw.test") as c:
        return (await c.get(f"/streams/{CAM_B}/{location}")).status_code


def _user_token(secret: str, kid: str) -> str:
    return mint_user_token(Keyring({kid: secret}, kid), user_id="u", camera_id=CAM_B, pod_id=POD_B)


async def test_rotating_the_user_token_secret(tmp_path, figure):
    """1. gateway learns the new kid 2. the portal signs with it 3. the old kid is retired."""
    signing = SigningKey.generate("gw-1")
    (tmp_path / "k.pem").write_bytes(signing.private_pem())
    base = {"pod_signing_key_file": str(tmp_path / "k.pem"), "pod_signing_key_id": "gw-1", "grant_secret": "g" * 32}
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    before = {**base, "user_token_secrets": {"2025-01": old}}
    during = {**base, "user_token_secrets": {"2025-01": old, "2025-06": new}}
    after = {**base, "user_token_secrets": {"2025-06": new}}
    steps = [(await _session(before, _user_token(old, "2025-01")))[0],
             (await _session(before, _user_token(new, "2025-06")))[0],  # portal too early: refused
             (await _session(during, _user_token(old, "2025-01")))[0],
             (await _session(during, _user_token(new, "2025-06")))[0],
             (await _session(after, _user_token(new, "2025-06")))[0],
             (await _session(after, _user_token(old, "2025-01")))[0]]
    assert steps == [302, 401, 302, 302, 302, 401], steps


async def test_rotating_the_gateway_signing_key(tmp_path):
    """1. pods learn the new public key 2. the gateway signs with the new key 3. pods drop the old one."""
    k1, k2 = SigningKey.generate("gw-1"), SigningKey.generate("gw-2")

    async def pod_answer(pod_keys: dict[str, str], signer: SigningKey) -> int:
        cfg, _ = parse_pod_config(pod_config(tmp_path, POD_B, CAM_B, public_pem=None, stream_secret=None)
                                  | {"gateway_public_keys": pod_keys})
        app = create_hls_app(pod_id=POD_B, token_keys=cfg.pod_token_keys(),
                             streamers={CAM_B: Streamer(tmp_path / "hls" / CAM_B)}, tailnet_host="pod-b.test")
        token = mint_pod_token(signer, camera_id=CAM_B, pod_id=POD_B)
        async with AsyncTestClient(app=app, base_url="http://pod-b.test") as c:
            r = await c.get(f"/cameras/{CAM_B}/index.m3u8", headers={"Authorization": f"Bearer {token}"})
            return r.status_code

    both = {"gw-1": k1.public_pem(), "gw-2": k2.public_pem()}
    steps = [await pod_answer({"gw-1": k1.public_pem()}, k1),
             await pod_answer({"gw-1": k1.public_pem()}, k2),  # gateway switched before the pod learnt gw-2
             await pod_answer(both, k1), await pod_answer(both, k2),
             await pod_answer({"gw-2": k2.public_pem()}, k2), await pod_answer({"gw-2": k2.public_pem()}, k1)]
    assert steps == [200, 401, 200, 200, 200, 401], steps


async def test_rotating_the_grant_key(tmp_path):
    """1. the new key signs, the old one still verifies 2. after the longest session the old one goes."""
    signing = SigningKey.generate("gw-1")
    (tmp_path / "k.pem").write_bytes(signing.private_pem())
    base = {"pod_signing_key_file": str(tmp_path / "k.pem"), "pod_signing_key_id": "gw-1",
            "user_token_secret": "u" * 40}
    token = _user_token("u" * 40, "default")
    old_gw = {**base, "grant_secrets": {"g1": "a" * 32}}
    status, old_session = await _session(old_gw, token)
    assert status == 302
    during = {**base, "grant_secrets": {"g2": "b" * 32, "g1": "a" * 32}, "grant_secret_primary": "g2"}
    _, new_session = await _session(during, token)
    after = {**base, "grant_secrets": {"g2": "b" * 32}}
    steps = [await _reload(during, old_session), await _reload(during, new_session),
             await _reload(after, new_session), await _reload(after, old_session),
             await _reload(old_gw, new_session)]
    assert steps == [200, 200, 200, 403, 403], steps
    # without grant_secret the key is derived from the signing key: sessions survive a restart
    status, session = await _session(base, token)
    assert status == 302 and await _reload(base, session) == 200


@pytest.mark.parametrize("layout", ["new", "legacy"])
def test_pod_check_names_the_layout(tmp_path, layout):
    """What an operator sees: the legacy pod config WARNs that a stolen pod can mint tokens and names
    gateway_public_keys; the new one PASSes."""
    from pod.check import check_secret

    signer = SigningKey.generate("gw-1")
    cfg, _ = parse_pod_config(pod_config(tmp_path, POD_A, CAM_A,
                                         public_pem=signer.public_pem() if layout == "new" else None,
                                         stream_secret="s" * 40 if layout == "legacy" else None))
    lines = [r.line() for r in check_secret(cfg)]
    if layout == "legacy":
        assert any(x.startswith("WARN keys:") and "stolen pod can mint" in x and "gateway_public_keys" in x
                   for x in lines), lines
    else:
        assert lines[0].startswith("PASS keys:") and not any(x.startswith("WARN") for x in lines), lines


@pytest.mark.e2e
def test_the_guides_single_secret_still_plays_end_to_end_and_warns(tmp_path, figure):
    """Legacy: portal, gateway and pod on one stream_secret (the connection guide's config.yaml)
    still play, and pod and gateway both say what that costs (the pod once, at start)."""
    from tests.security.conftest import make_stack, started

    with started(make_stack(tmp_path, legacy=True, pod_overrides={"heartbeat_interval": 300})) as s:
        assert "stream_secret" in s.pod_config() and "gateway_public_keys" not in s.pod_config()
        r = httpx.get(f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8", params={"token": s.user_token()},
                      timeout=10)
        assert r.status_code == 302
        base = f"{s.gateway_url}/streams/{s.camera_id}/"
        playlist = httpx.get(base + r.headers["location"], timeout=10)
        assert playlist.status_code == 200, playlist.text
        segment = [u for u in playlist.text.splitlines() if u and not u.startswith("#")][-1]
        assert httpx.get(base + segment, timeout=10).status_code == 200
        pod_log, gw_log = (s.workdir / "pod.log").read_text(), (s.workdir / "gateway.log").read_text()
    warned = pod_log.count("legacy key layout: this pod verifies gateway tokens with the shared stream_secret")
    figure("legacy warnings in the pod's log after start", warned, "lines", "== 1", warned == 1)
    assert warned == 1 and "gateway_public_keys" in pod_log
    assert "legacy key layout" in gw_log and "pod_signing_key_file" in gw_log
