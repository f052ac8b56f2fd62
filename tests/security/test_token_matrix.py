"""Token matrix against the real stack: every bad credential is refused by the gateway
with 401/403, hands out no grant, and neither the pod nor the gateway serves anything
for it.

What can move for a bad credential, and what is measured:

* **User tokens** (``?token=`` and ``Authorization: Bearer``, the two ways a player
  sends them) are only ever checked at the session start, ``index.m3u8``. That step
  never reaches the pod, even for a VALID token: the gateway answers ``302`` with a
  session grant before any fetch (``gateway/proxy.py``). So a pod count taken around
  that one request could not fail. Each row therefore goes on like a player
  (:func:`~tests.security.conftest.play_like_a_player`: follow the ``Location``, load
  the playlist, fetch its newest media). A bad token yields no ``Location``, so there is
  nothing to follow: the zero pod requests and the zero deltas of the gateway's own
  counters (upstream fetches, segment cache lookups, bytes sent, 200/206/302 answers)
  prove that **no grant was issued and nothing was served**. The control row runs the
  same player with a valid token and shows every one of those counters move (the pod
  count within a few reloads: the playlist cache may answer the first). The watch page
  (``/watch/{camera}?token=``), the other place a user token is accepted, must refuse
  the same tokens with the same status and serve no player page.
* **Grants** (``pb_grant``) are what lead to fetches. A grant accepted by mistake could
  be answered from the gateway's shared playlist cache without a pod request, so the
  gateway's counters (bytes sent, 200/206 answers, segment cache lookups, upstream
  fetches) must not move either; a control shows a cache-served playlist does move them.

Bad tokens are built here with pyjwt, the RS256 one with an RSA key generated at runtime
(nothing key-shaped is committed).
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
from protocol.tokens import SigningKey, mint_pod_token
from tests.security.conftest import (
    gateway_counters,
    play_like_a_player,
    pod_requests_total,
    session_grant,
    wait_until,
)

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
    "pod_token_replayed": (lambda s, k: mint_pod_token(s.pod_signer(), camera_id=s.camera_id,
                                                      pod_id=s.pod_id), 401),
    "hs256_pod_audience_with_user_secret": (lambda s, k: hs256(s, aud="platebridge-pod"), 401),
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
def test_bad_user_token_refused_and_no_grant_issued(sec_stack, rsa_key, figure, name, channel):
    build, expected = BAD_USER_TOKENS[name]
    token = build(sec_stack, rsa_key)
    pod_before, gw_before = pod_requests_total(sec_stack), gateway_counters(sec_stack)
    r = _send_user_token(sec_stack, token, channel)
    followed = play_like_a_player(r)  # a refusal has no Location: nothing to follow
    caused = pod_requests_total(sec_stack) - pod_before
    gw = gateway_counters(sec_stack) - gw_before
    figure(f"pod requests after a player follows bad token {name} ({channel})", caused, "requests", "== 0",
           caused == 0 and gw.all_zero())
    assert r.status_code == expected, (r.status_code, r.text)
    assert "location" not in r.headers and "pb_grant" not in r.text
    assert followed == []
    assert caused == 0
    assert gw.all_zero(), gw  # no fetch, no cache lookup, no byte and no 200/206/302 from the gateway


@pytest.mark.parametrize("name", list(BAD_USER_TOKENS))
def test_bad_user_token_refused_by_the_watch_page(sec_stack, rsa_key, figure, name):
    """The watch page is the other place a user token is accepted; it must give the same verdict."""
    build, expected = BAD_USER_TOKENS[name]
    gw_before = gateway_counters(sec_stack)
    r = httpx.get(f"{sec_stack.gateway_url}/watch/{sec_stack.camera_id}", params={"token": build(sec_stack, rsa_key)},
                  timeout=10)
    gw = gateway_counters(sec_stack) - gw_before
    page = int("watch.js" in r.text)
    figure(f"player pages served for bad token {name}", page, "pages", "== 0", page == 0 and r.status_code == expected)
    assert r.status_code == expected, (r.status_code, r.text)
    assert page == 0 and "pb_grant" not in r.text
    assert gw.all_zero(), gw


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _tamper(grant: str, part: int, stack) -> str:
    """Change one part of a grant (unpadded base64url of body || 16-byte MAC): 1 = flip a byte of
    the expiry in the body, 2 = flip a MAC byte, 3 = turn a playlist grant into a media grant keeping
    the MAC, 4 = re-sign with another key, 5 = swap in another pod_id keeping the MAC."""
    raw = bytearray(base64.urlsafe_b64decode(grant + "=" * (-len(grant) % 4)))
    if part == 1:
        raw[3] ^= 0x01  # exp
    elif part == 2:
        raw[-3] ^= 0x01
    elif part == 3:
        raw[1] = 1  # kind: media
    elif part == 5:
        body, mac = bytes(raw[:-16]), bytes(raw[-16:])
        head = body[:18] + bytes([len(b"other-pod")]) + b"other-pod"
        return _b64(head + mac)
    else:
        g = GrantSigner([b"not-the-grant-key-" * 2])
        return g.mint(Grant("playlist", stack.pod_id, _now() + 100, _now() + 100, b"\0" * 8),
                      camera_id=stack.camera_id, path="index.m3u8")
    return _b64(bytes(raw))


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
    "grant_kind_swapped_same_mac": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/init.mp4?pb_grant={_tamper(g, 3, s)}", 403),
    "grant_pod_swapped_same_mac": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant={_tamper(g, 5, s)}", 403),
    "grant_signed_with_other_secret": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant={_tamper(g, 4, s)}", 403),
    "grant_signed_with_the_user_token_secret": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant="
                     + GrantSigner([s.secret.encode()]).mint(
                         Grant("playlist", s.pod_id, _now() + 100, _now() + 100, b"\0" * 8),
                         camera_id=s.camera_id, path="index.m3u8"), 403),
    "grant_expired_real_key": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?pb_grant="
                     + GrantSigner([s.grant_secret.encode()]).mint(
                         Grant("playlist", s.pod_id, _now() - 10, _now() - 10, b"\0" * 8),
                         camera_id=s.camera_id, path="index.m3u8"), 403),
    "session_grant_on_a_segment": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/init.mp4?pb_grant={g}", 403),
    "session_grant_with_an_extra_query": (
        lambda s, g: f"{s.gateway_url}/streams/{s.camera_id}/index.m3u8?x=1&pb_grant={g}", 403),
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
    pod_before, gw_before = pod_requests_total(sec_stack), gateway_counters(sec_stack)
    r = httpx.get(url, timeout=10)
    caused = pod_requests_total(sec_stack) - pod_before
    gw = gateway_counters(sec_stack) - gw_before
    figure(f"pod requests caused by {name}", caused, "requests", "== 0", caused == 0 and gw.all_zero())
    assert r.status_code == expected, (r.status_code, r.text)
    assert "#EXTM3U" not in r.text and "location" not in r.headers
    assert caused == 0
    # not served from the gateway's playlist or segment cache either (no pod request needed for that)
    assert gw.all_zero(), gw


@pytest.mark.parametrize("target", ["index.m3u8", "other.m3u8", "same-path"])
def test_media_grant_on_a_playlist_is_refused_with_zero_pod_requests(sec_stack, figure, target):
    """Issue 12 point 2: a leaked segment URL (its grant has seconds left) must not be worth the
    session. Its grant is refused on any playlist: the root one, another one and even the
    segment's own path spelled as a playlist (``seg.m4s`` → ``seg.m3u8``)."""
    base = f"{sec_stack.gateway_url}/streams/{sec_stack.camera_id}/"
    playlist = httpx.get(base + "index.m3u8?pb_grant=" + session_grant(sec_stack), timeout=10)
    assert playlist.status_code == 200
    segment = [line for line in playlist.text.splitlines() if line and not line.startswith("#")][-1]
    path, _, grant = segment.partition("?pb_grant=")
    assert httpx.get(base + segment, timeout=10).status_code == 200  # control: the grant works where it belongs
    name = path.rsplit(".", 1)[0] + ".m3u8" if target == "same-path" else target
    pod_before, gw_before = pod_requests_total(sec_stack), gateway_counters(sec_stack)
    r = httpx.get(f"{base}{name}?pb_grant={grant}", timeout=10)
    caused = pod_requests_total(sec_stack) - pod_before
    gw = gateway_counters(sec_stack) - gw_before
    figure(f"pod requests caused by a media grant on a playlist ({target})", caused, "requests", "== 0",
           caused == 0 and gw.all_zero())
    assert r.status_code == 403 and "a media grant cannot open a playlist" in r.text, (r.status_code, r.text)
    assert "#EXTM3U" not in r.text and "pb_grant" not in r.text
    assert caused == 0 and gw.all_zero(), gw


def test_segment_grant_reused_on_another_camera(sec_stack, figure):
    """A segment grant taken from a real rewritten playlist does not open another camera's files."""
    base = f"{sec_stack.gateway_url}/streams/{sec_stack.camera_id}/"
    playlist = httpx.get(base + "index.m3u8?pb_grant=" + session_grant(sec_stack), timeout=10)
    assert playlist.status_code == 200
    segment = [line for line in playlist.text.splitlines() if line and not line.startswith("#")][-1]
    assert "pb_grant=" in segment
    pod_before, gw_before = pod_requests_total(sec_stack), gateway_counters(sec_stack)
    r = httpx.get(f"{sec_stack.gateway_url}/streams/other-cam/{segment}", timeout=10)
    caused = pod_requests_total(sec_stack) - pod_before
    gw = gateway_counters(sec_stack) - gw_before
    figure("pod requests caused by a segment grant reused on another camera", caused, "requests", "== 0",
           caused == 0 and gw.all_zero())
    assert r.status_code == 403 and caused == 0
    assert gw.all_zero(), gw


@pytest.mark.parametrize("channel", ["query", "bearer"])
def test_control_valid_token_reaches_the_pod(sec_stack, figure, channel):
    """The counters are live: the same player as in the bad-token rows, with a valid token,
    gets a grant, a playlist and media, and the pod and the gateway count it."""
    pod_before, gw_before = pod_requests_total(sec_stack), gateway_counters(sec_stack)
    r = _send_user_token(sec_stack, sec_stack.user_token(), channel)
    assert r.status_code == 302 and "pb_grant=" in r.headers["location"]
    followed = play_like_a_player(r)
    assert [x.status_code for x in followed] == [200] * len(followed) and len(followed) >= 2, followed
    assert "#EXTM3U" in followed[0].text
    gw = gateway_counters(sec_stack) - gw_before
    # the playlist may come from the shared cache and the media from the segment cache: reload
    # like a player until the pod has been asked (it is, once the cached playlist is stale)
    url = str(followed[0].request.url)

    def fetched():
        assert httpx.get(url, timeout=10).status_code == 200
        return pod_requests_total(sec_stack) > pod_before

    wait_until(fetched, 10, interval=0.3, what="a playlist fetch counted at the pod")
    caused = pod_requests_total(sec_stack) - pod_before
    figure(f"pod requests caused by a valid session ({channel})", caused, "requests", ">= 1", caused >= 1)
    assert caused >= 1
    # a media segment the gateway already keeps may be answered by the nginx data plane in front
    # of it (by default), which the gateway's counters do not see: nginx's file answers carry
    # Last-Modified, the gateway's never do
    by_nginx = [x for x in followed if "last-modified" in x.headers]
    assert all(str(x.request.url).split("?")[0].endswith((".m4s", ".ts")) for x in by_nginx), by_nginx
    assert gw.served >= 1 + len(followed) - len(by_nginx) and gw.bytes_out > 0, gw
    assert gw.segment_lookups >= 1 or by_nginx, gw


def test_control_the_watch_page_serves_the_player_for_a_valid_token(sec_stack, figure):
    """The watch-page rows above can fail: a valid token does get the player page."""
    r = httpx.get(f"{sec_stack.gateway_url}/watch/{sec_stack.camera_id}", params={"token": sec_stack.user_token()},
                  timeout=10)
    page = int(r.status_code == 200 and "watch.js" in r.text)
    figure("player pages served for a valid token", page, "pages", "== 1", page == 1)
    assert page == 1, (r.status_code, r.text[:300])


def test_control_a_cache_served_playlist_moves_the_gateway_counters(sec_stack, figure):
    """A playlist answered from the gateway's shared playlist cache (no pod request) is still
    seen by the gateway counters the bad-grant rows read (bytes sent, 200 answers)."""
    url = f"{sec_stack.gateway_url}/streams/{sec_stack.camera_id}/index.m3u8?pb_grant={session_grant(sec_stack)}"
    for _ in range(5):  # the cache holds a playlist for half a target duration: try for a pair inside it
        assert httpx.get(url, timeout=10).status_code == 200  # fills the cache
        gw_before = gateway_counters(sec_stack)
        r = httpx.get(url, timeout=10)
        gw = gateway_counters(sec_stack) - gw_before
        if gw.upstream == 0:
            break
    figure("gateway bytes counted for a cache-served playlist", gw.bytes_out, "bytes", "> 0",
           gw.upstream == 0 and gw.bytes_out > 0)
    assert r.status_code == 200 and gw.upstream == 0, gw  # from the cache
    assert gw.bytes_out >= len(r.content) > 0 and gw.served == 1, gw


# gateway→pod tokens straight at the pod (what a host on the tailnet could try)
def eddsa(stack, **over) -> str:
    """EdDSA with the gateway's real key (so only the claim under test is wrong)."""
    kid, key = stack.pod_signer().signing_key()
    fields = {"aud": "platebridge-pod", "exp": _now() + 30, **over}
    return jwt.encode(claims(stack, **fields), key, algorithm="EdDSA", headers={"kid": kid})


def _hs256_with_public_key(stack) -> str:
    """Algorithm confusion: HS256 keyed with the public key PEM the pod holds."""
    import hashlib
    import hmac as hmac_

    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT","kid":"%s"}' % stack.signing_kid.encode())
    body = jwt.utils.base64url_encode(jwt.api_jws.json.dumps(claims(stack, aud="platebridge-pod")).encode())
    sig = hmac_.new(stack.public_key_file.read_bytes(), header + b"." + body, hashlib.sha256).digest()
    return (header + b"." + body + b"." + jwt.utils.base64url_encode(sig)).decode()


BAD_POD_TOKENS: dict[str, Callable] = {
    "forged_signature": lambda s, k: jwt.encode(claims(s, aud="platebridge-pod"), "x" * 64, algorithm="HS256"),
    "alg_none": lambda s, k: jwt.encode(claims(s, aud="platebridge-pod"), None, algorithm="none"),
    "alg_RS256": lambda s, k: jwt.encode(claims(s, aud="platebridge-pod"), k, algorithm="RS256"),
    "alg_HS512": lambda s, k: jwt.encode(claims(s, aud="platebridge-pod"), s.secret, algorithm="HS512"),
    "hs256_with_the_user_token_secret": lambda s, k: hs256(s, aud="platebridge-pod"),
    "hs256_keyed_with_the_public_key": lambda s, k: _hs256_with_public_key(s),
    "eddsa_other_key_same_kid": lambda s, k: mint_pod_token(SigningKey.generate(s.signing_kid),
                                                            camera_id=s.camera_id, pod_id=s.pod_id),
    "user_token": lambda s, k: s.user_token(),
    "expired": lambda s, k: eddsa(s, iat=_now() - 300, exp=_now() - 60),
    "lifetime_over_60s": lambda s, k: eddsa(s, exp=_now() + 600),
    "iat_beyond_clock_skew": lambda s, k: eddsa(s, iat=_now() + 120, exp=_now() + 150),
    "no_aud": lambda s, k: eddsa(s, aud=None),
    "other_camera": lambda s, k: mint_pod_token(s.pod_signer(), camera_id="other-cam", pod_id=s.pod_id),
    "other_pod": lambda s, k: mint_pod_token(s.pod_signer(), camera_id=s.camera_id, pod_id="other-pod"),
    "any_camera_star": lambda s, k: mint_pod_token(s.pod_signer(), camera_id="*", pod_id=s.pod_id),
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
