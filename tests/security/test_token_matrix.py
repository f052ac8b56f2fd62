"""Token matrix against the real stack: every bad credential is refused by the gateway
with 401/403 and causes ZERO requests at the pod, counted by the pod itself
(``platebridge_pod_hls_requests_total`` on its own ``/metrics``).

User tokens go in both ways a player can send them (``?token=`` and
``Authorization: Bearer``); grants go in ``pb_grant``. Bad tokens are built here with
pyjwt, the RS256 one with an RSA key generated at runtime (nothing key-shaped is
committed). A control row shows the counter does count gateway fetches.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.grants import Grant, GrantSigner
from protocol.tokens import Keyring, mint_pod_token
from tests.security.conftest import pod_requests_total, session_grant, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")]


@pytest.fixture(scope="module")
def rsa_key():
    """A throwaway RSA key, generated for this run only."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(stack, **over) -> dict:
    """Claims of a valid user token for the stack's camera, with ``over`` applied (None removes)."""
    now = int(time.time())
    c = {"aud": "platebridge-stream", "iat": now, "exp": now + 300, "user_id": "mallory",
         "camera_id": stack.camera_id, "pod_id": stack.pod_id}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def hs256(stack, **over) -> str:
    """HS256 with the stack's real secret (so only the claim under test is wrong)."""
    return jwt.encode(claims(stack, **over), stack.secret, algorithm="HS256")


def _now() -> int:
    return int(time.time())


# name → (token builder(stack, rsa_key), expected status)
BAD_USER_TOKENS: dict[str, tuple[Callable, int]] = {
    "forged_signature": (lambda s, k: jwt.encode(claims(s), "not-the-secret-" * 4, algorithm="HS256"), 401),
    "signature_stripped": (lambda s, k: hs256(s).rsplit(".", 1)[0] + ".", 401),
    "alg_none": (lambda s, k: jwt.encode(claims(s), None, algorithm="none"), 401),
    "alg_RS256": (lambda s, k: jwt.encode(claims(s), k, algorithm="RS256"), 401),
    "alg_HS512_right_secret": (lambda s, k: jwt.encode(claims(s), s.secret, algorithm="HS512"), 401),
    "alg_HS384_right_secret": (lambda s, k: jwt.encode(claims(s), s.secret, algorithm="HS384"), 401),
    "unknown_kid": (lambda s, k: jwt.encode(claims(s), s.secret, algorithm="HS256",
                                            headers={"kid": "../../etc/passwd"}), 401),
    "expired": (lambda s, k: hs256(s, iat=_now() - 900, exp=_now() - 60), 401),
    "nbf_in_future": (lambda s, k: hs256(s, nbf=_now() + 120), 401),
    "iat_in_future": (lambda s, k: hs256(s, iat=_now() + 120, exp=_now() + 400), 401),
    "lifetime_over_max": (lambda s, k: hs256(s, exp=_now() + 7 * 86400), 401),
    "no_exp": (lambda s, k: hs256(s, exp=None), 401),
    "wrong_aud": (lambda s, k: hs256(s, aud="some-other-service"), 401),
    "no_aud": (lambda s, k: hs256(s, aud=None), 401),
    "pod_token_replayed": (lambda s, k: mint_pod_token(Keyring.single(s.secret), camera_id=s.camera_id,
                                                      pod_id=s.pod_id), 401),
    "camera_id_other": (lambda s, k: hs256(s, camera_id="other-cam"), 403),
    "camera_id_trailing_newline": (lambda s, k: hs256(s, camera_id=s.camera_id + "\n"), 401),
    "pod_id_not_dns_label": (lambda s, k: hs256(s, pod_id="Evil_Pod.example.com"), 401),
    "pod_id_trailing_newline": (lambda s, k: hs256(s, pod_id=s.pod_id + "\n"), 401),
    "pod_id_url": (lambda s, k: hs256(s, pod_id="http://127.0.0.9:1/"), 401),
    "no_user": (lambda s, k: hs256(s, user_id=None), 401),
    "garbage": (lambda s, k: "eyJhbGciOiJIUzI1NiJ9.e30.AAAA", 401),
}


def _send_user_token(stack, token: str, channel: str) -> httpx.Response:
    url = f"{stack.gateway_url}/streams/{stack.camera_id}/index.m3u8"
    if channel == "query":
        return httpx.get(url, params={"token": token}, timeout=10)
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


@pytest.mark.parametrize("channel", ["query", "bearer"])
@pytest.mark.parametrize("name", list(BAD_USER_TOKENS))
def test_bad_user_token_refused_with_zero_pod_requests(sec_stack, rsa_key, figure, name, channel):
    build, expected = BAD_USER_TOKENS[name]
    token = build(sec_stack, rsa_key)
    before = pod_requests_total(sec_stack)
    r = _send_user_token(sec_stack, token, channel)
    caused = pod_requests_total(sec_stack) - before
    figure(f"pod requests caused by bad token {name} ({channel})", caused, "requests", "== 0", caused == 0)
    assert r.status_code == expected, (r.status_code, r.text)
    assert "location" not in r.headers and "pb_grant" not in r.text
    assert caused == 0


def _tamper(grant: str, part: int, stack) -> str:
    """Change one part of a grant: 1 = flip a payload character, 2 = flip a MAC character,
    3 = swap in another camera keeping the MAC, 4 = re-sign with another secret."""
    prefix, payload, mac = grant.split(".")
    if part == 1:
        i = len(payload) // 2
        return f"{prefix}.{payload[:i]}{'A' if payload[i] != 'A' else 'B'}{payload[i + 1:]}.{mac}"
    if part == 2:
        return f"{prefix}.{payload}.{mac[:-2]}{'A' if mac[-2] != 'A' else 'B'}{mac[-1]}"
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    if part == 3:
        swapped = raw.replace(stack.camera_id.encode(), b"other-cam")
        return f"{prefix}.{base64.urlsafe_b64encode(swapped).rstrip(b'=').decode()}.{mac}"
    g = GrantSigner(Keyring.single("not-the-secret-" * 4))
    return g.mint(Grant("mallory", stack.camera_id, stack.pod_id, _now() + 100, _now() + 100))


# name → (url builder(stack, grant) → url, expected status)
BAD_GRANTS: dict[str, tuple[Callable, int]] = {
    "grant_on_other_camera_playlist": (
        lambda s, g: f"{s.gateway_url}/streams/other-cam/index.m3u8?pb_grant={g}", 403),
    "grant_on_other_camera_segment": (
        lambda s, g: f"{s.gateway_url}/streams/other-cam/init.mp4?pb_grant={g}", 403),
    "tampered_grant_payload": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant={_tamper(g, 1, s)}", 403),
    "tampered_grant_mac": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant={_tamper(g, 2, s)}", 403),
    "grant_camera_swapped_same_mac": (
        lambda s, g: f"{s.gateway_url}/streams/other-cam/index.m3u8?pb_grant={_tamper(g, 3, s)}", 403),
    "grant_signed_with_other_secret": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant={_tamper(g, 4, s)}", 403),
    "grant_expired_real_key": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant="
                     + GrantSigner(Keyring.single(s.secret)).mint(
                         Grant("mallory", s.camera_id, s.pod_id, _now() - 10, _now() - 10)), 403),
    "grant_padded": (lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant={g}%3D%3D", 403),
    "grant_trailing_newline": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant={g}%0A", 403),
    "two_grants": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant={g}&pb_grant={g}", 400),
    "user_token_as_grant": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant={s.user_token()}", 403),
    "segment_without_grant_but_token": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/init.mp4?token={s.user_token()}", 401),
}


@pytest.mark.parametrize("name", list(BAD_GRANTS))
def test_bad_grant_refused_with_zero_pod_requests(sec_stack, figure, name):
    build, expected = BAD_GRANTS[name]
    url = build(sec_stack, session_grant(sec_stack))
    before = pod_requests_total(sec_stack)
    r = httpx.get(url, timeout=10)
    caused = pod_requests_total(sec_stack) - before
    figure(f"pod requests caused by {name}", caused, "requests", "== 0", caused == 0)
    assert r.status_code == expected, (r.status_code, r.text)
    assert "#EXTM3U" not in r.text
    assert caused == 0


def test_segment_grant_reused_on_another_camera(sec_stack, figure):
    """A segment grant taken from a real rewritten playlist does not open another camera's files."""
    base = f"{sec_stack.gateway_url}/streams/{sec_stack.camera_id}/"
    playlist = httpx.get(base + "index.m3u8?pb_grant=" + session_grant(sec_stack), timeout=10)
    assert playlist.status_code == 200
    segment = [line for line in playlist.text.splitlines() if line and not line.startswith("#")][-1]
    before = pod_requests_total(sec_stack)
    r = httpx.get(f"{sec_stack.gateway_url}/streams/other-cam/{segment}", timeout=10)
    caused = pod_requests_total(sec_stack) - before
    figure("pod requests caused by a segment grant reused on another camera", caused, "requests", "== 0",
           caused == 0)
    assert r.status_code == 403 and caused == 0


@pytest.mark.parametrize("channel", ["query", "bearer"])
def test_control_valid_token_reaches_the_pod(sec_stack, figure, channel):
    """The counter is live: a valid token's session does cause pod requests."""
    r = _send_user_token(sec_stack, sec_stack.user_token(), channel)
    assert r.status_code == 302
    url = f"{sec_stack.gateway_url}/streams/{sec_stack.camera_id}/{r.headers['location']}"
    before = pod_requests_total(sec_stack)

    def fetched():
        assert httpx.get(url, timeout=10).status_code == 200
        return pod_requests_total(sec_stack) > before

    wait_until(fetched, 10, interval=0.3, what="a playlist fetch counted at the pod")
    caused = pod_requests_total(sec_stack) - before
    figure(f"pod requests caused by a valid session ({channel})", caused, "requests", ">= 1", caused >= 1)
    assert caused >= 1


# gateway→pod tokens straight at the pod (what a host on the tailnet could try)
BAD_POD_TOKENS: dict[str, Callable] = {
    "forged_signature": lambda s, k: jwt.encode(claims(s, aud="platebridge-pod"), "x" * 64, algorithm="HS256"),
    "alg_none": lambda s, k: jwt.encode(claims(s, aud="platebridge-pod"), None, algorithm="none"),
    "alg_RS256": lambda s, k: jwt.encode(claims(s, aud="platebridge-pod"), k, algorithm="RS256"),
    "alg_HS512": lambda s, k: jwt.encode(claims(s, aud="platebridge-pod"), s.secret, algorithm="HS512"),
    "user_token": lambda s, k: s.user_token(),
    "expired": lambda s, k: hs256(s, aud="platebridge-pod", iat=_now() - 300, exp=_now() - 60),
    "lifetime_over_60s": lambda s, k: hs256(s, aud="platebridge-pod", exp=_now() + 600),
    "other_camera": lambda s, k: mint_pod_token(Keyring.single(s.secret), camera_id="other-cam", pod_id=s.pod_id),
    "other_pod": lambda s, k: mint_pod_token(Keyring.single(s.secret), camera_id=s.camera_id, pod_id="other-pod"),
    "any_camera_star": lambda s, k: mint_pod_token(Keyring.single(s.secret), camera_id="*", pod_id=s.pod_id),
}


@pytest.mark.parametrize("name", list(BAD_POD_TOKENS))
def test_pod_refuses_bad_gateway_tokens(sec_stack, rsa_key, figure, name):
    token = BAD_POD_TOKENS[name](sec_stack, rsa_key)
    r = httpx.get(f"{sec_stack.pod_url}/cameras/{sec_stack.camera_id}/index.m3u8",
                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
    served = int(r.status_code == 200 or "#EXTM3U" in r.text)
    figure(f"playlists served by the pod for bad gateway token {name}", served, "responses", "== 0", served == 0)
    assert r.status_code in (401, 403), (r.status_code, r.text)
    assert served == 0
