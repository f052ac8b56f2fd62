"""Stream tokens: every rejection rule of protocol.tokens, and key rotation."""

import time

import jwt
import pytest

from protocol.errors import TokenExpired, TokenInvalid
from protocol.tokens import (
    GATEWAY_TO_POD_AUDIENCE,
    USER_STREAM_AUDIENCE,
    Keyring,
    mint_pod_token,
    mint_user_token,
    verify_pod_token,
    verify_user_token,
)

SECRET = "s" * 64
RING = Keyring.single(SECRET)


def claims(**over):
    now = int(time.time())
    c = {"aud": USER_STREAM_AUDIENCE, "iat": now, "exp": now + 300, "user_id": "u1",
         "camera_id": "gate-camera-1", "pod_id": "main-gate-pod"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def sign(c, key=SECRET, alg="HS256", headers=None):
    return jwt.encode(c, key, algorithm=alg, headers=headers)


def test_valid_user_token_roundtrip():
    tok = mint_user_token(RING, user_id="u1", camera_id="gate-camera-1", pod_id="main-gate-pod", ttl=300)
    c = verify_user_token(tok, RING)
    assert (c.user_id, c.camera_id, c.pod_id) == ("u1", "gate-camera-1", "main-gate-pod")
    assert c.exp - time.time() == pytest.approx(300, abs=2)


def test_sub_accepted_as_user_id():
    c = verify_user_token(sign(claims(user_id=None, sub="user-from-sub")), RING)
    assert c.user_id == "user-from-sub"


def test_alg_none_rejected():
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    body = jwt.utils.base64url_encode(jwt.api_jws.json.dumps(claims()).encode()).decode()
    with pytest.raises(TokenInvalid):
        verify_user_token(f"{header}.{body}.", RING)


@pytest.mark.parametrize("alg", ["HS512", "HS384"])
def test_other_hmac_algs_rejected(alg):
    with pytest.raises(TokenInvalid):
        verify_user_token(sign(claims(), alg=alg), RING)


def test_rs256_rejected():
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenInvalid):
        verify_user_token(sign(claims(), key=key, alg="RS256"), RING)


def test_forged_signature_rejected():
    with pytest.raises(TokenInvalid):
        verify_user_token(sign(claims(), key="another-secret-another-secret-1234"), RING)


@pytest.mark.parametrize("aud", [None, "platebridge-pod", "something-else"])
def test_missing_or_wrong_aud_rejected(aud):
    with pytest.raises(TokenInvalid):
        verify_user_token(sign(claims(aud=aud)), RING)


def test_expired_rejected_beyond_leeway():
    now = int(time.time())
    with pytest.raises(TokenExpired):
        verify_user_token(sign(claims(iat=now - 100, exp=now - 6)), RING)


def test_expired_within_leeway_accepted():
    now = int(time.time())
    assert verify_user_token(sign(claims(iat=now - 100, exp=now - 2)), RING).user_id == "u1"


def test_leeway_is_capped_at_five_seconds():
    now = int(time.time())
    with pytest.raises(TokenExpired):
        verify_user_token(sign(claims(iat=now - 100, exp=now - 8)), RING, leeway=60)


def test_lifetime_over_max_rejected():
    now = int(time.time())
    with pytest.raises(TokenInvalid, match="lifetime"):
        verify_user_token(sign(claims(exp=now + 7 * 86400)), RING)
    with pytest.raises(TokenInvalid, match="lifetime"):
        verify_user_token(sign(claims(exp=now + 1000)), RING, max_ttl=900)
    assert verify_user_token(sign(claims(exp=now + 890)), RING, max_ttl=900)


def test_not_yet_valid_rejected():
    now = int(time.time())
    with pytest.raises(TokenInvalid):
        verify_user_token(sign(claims(nbf=now + 120)), RING)


def test_missing_exp_rejected():
    with pytest.raises(TokenInvalid):
        verify_user_token(sign(claims(exp=None)), RING)


@pytest.mark.parametrize("pod_id", ["Main_Gate", "-bad", "a" * 64, "", "x.y"])
def test_pod_id_must_be_dns_label(pod_id):
    with pytest.raises(TokenInvalid):
        verify_user_token(sign(claims(pod_id=pod_id)), RING)


@pytest.mark.parametrize("camera_id", ["../etc", "a/b", "", ".."])
def test_camera_id_must_be_safe(camera_id):
    with pytest.raises(TokenInvalid):
        verify_user_token(sign(claims(camera_id=camera_id)), RING)


def test_missing_user_rejected():
    with pytest.raises(TokenInvalid):
        verify_user_token(sign(claims(user_id=None)), RING)


def test_garbage_rejected():
    for tok in ["", "abc", "a.b.c", "x" * 10000]:
        with pytest.raises(TokenInvalid):
            verify_user_token(tok, RING)


def test_user_token_is_not_a_pod_token_and_vice_versa():
    user = mint_user_token(RING, user_id="u", camera_id="c1", pod_id="p1")
    pod = mint_pod_token(RING, camera_id="c1", pod_id="p1")
    with pytest.raises(TokenInvalid):
        verify_pod_token(user, RING)
    with pytest.raises(TokenInvalid):
        verify_user_token(pod, RING)


def test_pod_token_exp_at_most_60s():
    tok = mint_pod_token(RING, camera_id="c1", pod_id="p1", ttl=3600)
    assert jwt.decode(tok, SECRET, algorithms=["HS256"], audience=GATEWAY_TO_POD_AUDIENCE)["exp"] <= time.time() + 61
    now = int(time.time())
    long = sign({"aud": GATEWAY_TO_POD_AUDIENCE, "exp": now + 120, "camera_id": "c1", "pod_id": "p1"})
    with pytest.raises(TokenInvalid, match="lifetime"):
        verify_pod_token(long, RING)


def test_rotation_with_kid():
    old, new = "old-secret-" + "o" * 30, "new-secret-" + "n" * 30
    before = Keyring({"k1": old}, "k1")
    during = Keyring({"k1": old, "k2": new}, "k2")
    after = Keyring({"k2": new}, "k2")
    tok_old = mint_user_token(before, user_id="u", camera_id="c1", pod_id="p1")
    tok_new = mint_user_token(during, user_id="u", camera_id="c1", pod_id="p1")
    assert jwt.get_unverified_header(tok_new)["kid"] == "k2"
    assert verify_user_token(tok_old, during).user_id == "u"
    assert verify_user_token(tok_new, during).user_id == "u"
    assert verify_user_token(tok_new, after).user_id == "u"
    with pytest.raises(TokenInvalid):
        verify_user_token(tok_old, after)  # retired key id


def test_unknown_kid_rejected_even_if_signature_matches_another_key():
    tok = sign(claims(), headers={"kid": "nope"})
    with pytest.raises(TokenInvalid, match="key id"):
        verify_user_token(tok, Keyring({"k1": SECRET}))


def test_token_without_kid_tries_every_secret():
    ring = Keyring({"k1": "x" * 40, "k2": SECRET}, "k1")
    assert verify_user_token(sign(claims()), ring).user_id == "u1"


def test_errors_never_contain_the_token():
    tok = sign(claims(aud="wrong"))
    with pytest.raises(TokenInvalid) as ei:
        verify_user_token(tok, RING)
    assert tok not in str(ei.value) and SECRET not in str(ei.value)
    assert SECRET not in repr(RING)


# ---- gateway→pod tokens: EdDSA, one pod each, clock skew ------------------------------------------
from protocol.tokens import PublicKeyring, SigningKey, bearer_token  # noqa: E402

GW = SigningKey.generate("gw-1")
PUB = GW.public_keys()


def pod_claims(**over):
    now = int(time.time())
    c = {"aud": GATEWAY_TO_POD_AUDIENCE, "iat": now, "exp": now + 30, "camera_id": "c1", "pod_id": "pod-a"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def ed(c, key=GW, kid="gw-1"):
    return jwt.encode(c, key.signing_key()[1], algorithm="EdDSA", headers={"kid": kid})


def test_eddsa_pod_token_roundtrip_and_header():
    tok = mint_pod_token(GW, camera_id="c1", pod_id="pod-a")
    assert jwt.get_unverified_header(tok) == {"alg": "EdDSA", "kid": "gw-1", "typ": "JWT"}
    c = verify_pod_token(tok, PUB, pod_id="pod-a")
    assert (c.camera_id, c.pod_id) == ("c1", "pod-a")


def test_a_token_for_pod_a_is_refused_by_pod_b():
    tok = mint_pod_token(GW, camera_id="c1", pod_id="pod-a")
    with pytest.raises(TokenInvalid, match="another pod"):
        verify_pod_token(tok, PUB, pod_id="pod-b")


def test_public_keys_accept_only_eddsa():
    """Algorithm confusion: an HS256 token whose 'secret' is the public key PEM (which pods hold)
    must be refused, as must HS256 with anything, none and other asymmetric algorithms."""
    pem = GW.public_pem().encode()
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","kid":"gw-1"}')
    payload = jwt.utils.base64url_encode(jwt.api_jws.json.dumps(pod_claims()).encode())
    import hashlib
    import hmac as _hmac

    sig = jwt.utils.base64url_encode(_hmac.new(pem, header + b"." + payload, hashlib.sha256).digest())
    for tok in ((header + b"." + payload + b"." + sig).decode(),
                jwt.encode(pod_claims(), SECRET, algorithm="HS256"),
                jwt.encode(pod_claims(), None, algorithm="none")):
        with pytest.raises(TokenInvalid, match="algorithm not allowed"):
            verify_pod_token(tok, PUB)


def test_another_gateway_key_is_refused_and_rotation_by_kid_works():
    stranger = SigningKey.generate("gw-1")  # same kid, other key
    with pytest.raises(TokenInvalid, match="bad signature"):
        verify_pod_token(mint_pod_token(stranger, camera_id="c1", pod_id="pod-a"), PUB)
    new = SigningKey.generate("gw-2")
    during = PublicKeyring({"gw-1": GW.public_pem(), "gw-2": new.public_pem()})
    for signer in (GW, new):
        assert verify_pod_token(mint_pod_token(signer, camera_id="c1", pod_id="pod-a"), during).pod_id == "pod-a"
    with pytest.raises(TokenInvalid, match="unknown key id"):  # a pod that has not learnt gw-2 yet
        verify_pod_token(mint_pod_token(new, camera_id="c1", pod_id="pod-a"), PUB)


def test_legacy_hs256_pod_tokens_only_with_the_legacy_keyring():
    tok = mint_pod_token(RING, camera_id="c1", pod_id="pod-a")
    assert verify_pod_token(tok, [PUB, RING], pod_id="pod-a").pod_id == "pod-a"
    with pytest.raises(TokenInvalid, match="algorithm not allowed"):
        verify_pod_token(tok, PUB)  # a pod with only the gateway's public key


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_clock_skew_within_the_bound_is_tolerated_on_iat_and_nbf(claim):
    """A pod whose clock is 7 s (or 25 s) behind the gateway sees iat/nbf in the future."""
    now = float(int(time.time()))
    for behind in (7, 25):
        tok = ed(pod_claims(**{claim: int(now) + behind, "exp": int(now) + behind + 30}))
        assert verify_pod_token(tok, PUB, now=now).pod_id == "pod-a"
    tok = ed(pod_claims(**{claim: int(now) + 45, "exp": int(now) + 75}))
    with pytest.raises(TokenInvalid, match="clock skew") as ei:
        verify_pod_token(tok, PUB, now=now)
    assert f"{claim} is 45 s ahead" in str(ei.value)
    assert verify_pod_token(tok, PUB, now=now, max_skew=60).pod_id == "pod-a"  # a configured bound


def test_skew_tolerance_never_extends_exp():
    now = time.time()
    with pytest.raises(TokenExpired):
        verify_pod_token(ed(pod_claims(iat=int(now) - 60, exp=int(now) - 10)), PUB, now=now, max_skew=300)


def test_user_tokens_keep_a_5s_skew():
    now = int(time.time())
    assert verify_user_token(sign(claims(iat=now + 4)), RING).user_id == "u1"
    with pytest.raises(TokenInvalid, match="clock skew"):
        verify_user_token(sign(claims(iat=now + 30, exp=now + 300)), RING)


def test_keys_never_show_in_repr_and_wrong_key_types_are_refused():
    assert "PRIVATE" not in repr(GW) and repr(GW) == "SigningKey(kid='gw-1')"
    with pytest.raises(ValueError, match="Ed25519"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        PublicKeyring({"k": pem})
    with pytest.raises(ValueError, match="PEM public key"):
        PublicKeyring({"k": GW.private_pem()})


def test_derived_keys_are_per_label_and_per_key():
    assert GW.derive(b"a") == GW.derive(b"a") != GW.derive(b"b")
    assert SigningKey.generate("x").derive(b"a") != GW.derive(b"a")
    assert SigningKey(GW.private_pem(), "other").derive(b"a") == GW.derive(b"a")


@pytest.mark.parametrize("value,expected", [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None),
                                            ("Bearer", None), ("Bearer ", None), ("", None), (None, None)])
def test_bearer_token(value, expected):
    assert bearer_token(value) == expected


# A NumericDate (RFC 7519 §2) that is NaN, infinite, negative or beyond 2^53 is refused as
# invalid: NaN compares false with everything (an exp of NaN would never expire), and a
# 400-digit integer overflows float() (a 500 instead of a 401 before this was checked).
HOSTILE_DATES = [float("nan"), float("inf"), float("-inf"), 10**400, -10**400, -1, 2**53 + 1, 1e300]


@pytest.mark.parametrize("value", HOSTILE_DATES, ids=repr)
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_user_token_numeric_dates_must_be_finite_and_in_range(claim, value):
    with pytest.raises(TokenInvalid, match=f"{claim} is out of range"):
        verify_user_token(sign(claims(**{claim: value})), RING)


@pytest.mark.parametrize("value", HOSTILE_DATES, ids=repr)
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_pod_token_numeric_dates_must_be_finite_and_in_range(claim, value):
    with pytest.raises(TokenInvalid, match=f"{claim} is out of range"):
        verify_pod_token(ed(pod_claims(**{claim: value})), PUB, pod_id="pod-a")


def test_a_float_iat_is_kept_as_unix_seconds():
    now = time.time()
    c = verify_user_token(sign(claims(iat=now - 1.5)), RING)
    assert c.iat == pytest.approx(now - 1.5)
