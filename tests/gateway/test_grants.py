"""Grants: mint/verify, binding to camera + path + query + kind, tamper, expiry, session cap,
rotation, canonical spelling, size; raw query handling."""

import base64
import time

import pytest

from gateway.errors import GrantError
from gateway.grants import Grant, GrantSigner, new_session_id, take_param

KEY = b"g" * 32
SID = b"\x01" * 8


def grant(**over):
    now = int(time.time())
    d = dict(kind="media", pod_id="pod-1", exp=now + 60, session_exp=now + 3600, sid=SID)
    d.update(over)
    return Grant(**d)


def verify(s, tok, *, camera_id="cam1", path="seg_1.m4s", query="", kind="media", now=None):
    now = time.time() if now is None else now
    return s.verify(tok, camera_id=camera_id, path=path, query=query, kind=kind, now=now)


def test_roundtrip():
    s = GrantSigner([KEY])
    g = grant()
    assert verify(s, s.mint(g, camera_id="cam1", path="seg_1.m4s")) == g
    pl = grant(kind="playlist", exp=int(time.time()) + 3600)
    assert verify(s, s.mint(pl, camera_id="cam1", path="index.m3u8", query="a=1"), path="index.m3u8", query="a=1",
                  kind="playlist") == pl


def test_grant_is_url_safe_and_short():
    s = GrantSigner([KEY])
    tok = s.mint(grant(pod_id="a" * 63), camera_id="cam1", path="é/x y.ts")
    assert all(c.isalnum() or c in "-_" for c in tok)
    assert len(s.mint(grant(), camera_id="cam1", path="seg_1.m4s")) <= 70  # pod_id "pod-1": 62 characters


@pytest.mark.parametrize("field,value", [("camera_id", "cam2"), ("path", "seg_2.m4s"), ("path", "index.m3u8"),
                                         ("query", "x=1")])
def test_a_grant_opens_only_its_own_uri(field, value):
    """Bound to camera, path and query: the same grant on anything else is refused."""
    s = GrantSigner([KEY])
    tok = s.mint(grant(), camera_id="cam1", path="seg_1.m4s")
    with pytest.raises(GrantError, match="not valid for this URI"):
        verify(s, tok, **{field: value})


def test_trailing_ampersand_of_the_query_does_not_matter():
    """The rewriter appends ``&pb_grant=`` to a query that may end in ``&``; the request side strips it."""
    s = GrantSigner([KEY])
    tok = s.mint(grant(), camera_id="cam1", path="seg_1.m4s", query="a=1&&")
    assert verify(s, tok, query="a=1&").pod_id == "pod-1"


def test_kind_is_enforced_a_media_grant_never_opens_a_playlist():
    s = GrantSigner([KEY])
    media = s.mint(grant(), camera_id="cam1", path="index.m3u8")  # even minted for the playlist's very path
    with pytest.raises(GrantError, match="a media grant cannot open a playlist"):
        verify(s, media, path="index.m3u8", kind="playlist")
    playlist = s.mint(grant(kind="playlist"), camera_id="cam1", path="seg_1.m4s")
    with pytest.raises(GrantError, match="a playlist grant cannot open a media"):
        verify(s, playlist)


def test_tampered_bytes_are_rejected():
    s = GrantSigner([KEY])
    tok = s.mint(grant(), camera_id="cam1", path="seg_1.m4s")
    raw = bytearray(base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4)))
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        spelled = base64.urlsafe_b64encode(bytes(bad)).rstrip(b"=").decode()
        with pytest.raises(GrantError):
            verify(s, spelled)
    for bad in (tok + "x", tok[:-1], "", "v1.abc", "!" * 60, tok.replace(tok[5], "!" if tok[5] != "!" else "?")):
        with pytest.raises(GrantError):
            verify(s, bad)


def test_expired_and_session_over_rejected():
    s = GrantSigner([KEY])
    now = time.time()
    with pytest.raises(GrantError, match="expired"):
        verify(s, s.mint(grant(exp=int(now) - 1), camera_id="cam1", path="seg_1.m4s"))
    with pytest.raises(GrantError, match="expired"):
        verify(s, s.mint(grant(exp=int(now) + 60, session_exp=int(now) - 1), camera_id="cam1", path="seg_1.m4s"))


def test_other_key_rejected_and_rotation_accepted():
    old = GrantSigner([b"a" * 32])
    rotated = GrantSigner([b"b" * 32, b"a" * 32])
    stranger = GrantSigner([b"c" * 32])
    tok = old.mint(grant(), camera_id="cam1", path="seg_1.m4s")
    assert verify(rotated, tok).pod_id == "pod-1"
    with pytest.raises(GrantError):
        verify(stranger, tok)
    assert verify(rotated, rotated.mint(grant(), camera_id="cam1", path="seg_1.m4s")).sid == SID
    with pytest.raises(GrantError):  # the new key signs: a gateway that dropped it refuses its grants
        verify(old, rotated.mint(grant(), camera_id="cam1", path="seg_1.m4s"))


def test_keys_must_be_long_enough():
    with pytest.raises(ValueError):
        GrantSigner([])
    with pytest.raises(ValueError):
        GrantSigner([b"short"])


def test_session_ids_are_random():
    assert len({new_session_id() for _ in range(100)}) == 100


def test_take_param_keeps_rest_byte_for_byte():
    q = "b=%20x&pb_grant=G1&a=1&&z=%2F;c=d"
    values, rest = take_param(q, "pb_grant")
    assert values == ["G1"] and rest == "b=%20x&a=1&&z=%2F;c=d"
    assert take_param("pb_grant=1&pb_grant=2", "pb_grant")[0] == ["1", "2"]
    assert take_param("", "pb_grant") == ([], "")
    assert take_param("pb_granted=1", "pb_grant") == ([], "pb_granted=1")


def test_only_the_canonical_spelling_is_accepted():
    """Lenient base64 would give one grant many spellings (cache churn, no string revocation)."""
    s = GrantSigner([KEY])
    tok = s.mint(grant(), camera_id="cam1", path="seg_1.m4s")
    variants = [tok + "==", tok + "=", tok.replace("-", "+").replace("_", "/"), tok[:-1] + chr(ord(tok[-1]) ^ 1)]
    for v in variants:
        if v != tok:
            with pytest.raises(GrantError):
                verify(s, v)
    assert verify(s, tok).pod_id == "pod-1"


@pytest.mark.parametrize("pod_id", ["p", "pod-1", "pod-12", "main-gate-pod", "a" * 63])  # every body length mod 3
@pytest.mark.parametrize("kind", ["media", "playlist"])
def test_minter_gives_the_very_strings_mint_gives(pod_id, kind):
    """The per-response minter (MAC state and base64 prefix reused) is only a faster mint:
    same bytes for every path and query, verifiable as usual."""
    s = GrantSigner([KEY, b"o" * 32])
    g = grant(pod_id=pod_id, kind=kind)
    mint = s.minter(g, camera_id="cam1")
    for path, query in (("seg_1.m4s", ""), ("part_1796406579_12.m4s", ""), ("é/x y.ts", "a=1&&"),
                        ("lo/index.m3u8", "x=%20y"), ("k.key", "")):
        tok = mint(path, query)
        assert tok == s.mint(g, camera_id="cam1", path=path, query=query)
        assert verify(s, tok, path=path, query=query, kind=kind) == g
    with pytest.raises(GrantError):
        verify(s, mint("seg_1.m4s"), camera_id="cam2")
