"""protocol/legacy_tokens.py: the guide's stream token (base64(json) "." sha256(json + secret)),
verified in constant time with exp, lifetime and claim checks; same claims as a JWT."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path

import pytest

from protocol.errors import TokenExpired, TokenInvalid
from protocol.legacy_tokens import is_legacy_token, mint_legacy_token, verify_legacy_token
from protocol.redact import redact
from protocol.tokens import Keyring, mint_user_token, verify_user_token

SECRET = "shared-secret-" + "s" * 40
RING = Keyring.single(SECRET)
NOW = 1_780_000_000.0  # the pure checks take now= explicitly
IDS = {"user_id": "u-42", "camera_id": "gate-camera-1", "pod_id": "main-gate-pod"}
GUIDE = (Path(__file__).resolve().parents[1] / "data" / "seed" / "stream_token_claims.txt").read_text()


def guide_token(claims: dict, secret: str = SECRET, *, encode=base64.b64encode, sig=None) -> str:
    """The guide's algorithm, written out: base64(json(token)) + "." + sha256(json(token) + secret)."""
    text = json.dumps(claims).encode()  # Python's default separators: not what the mint helper uses
    return encode(text).decode() + "." + (sig or hashlib.sha256(text + secret.encode()).hexdigest())


def test_guide_shaped_token_verifies_to_the_jwt_claims():
    """The claim names come from tests/data/seed/stream_token_claims.txt, verbatim from the guide."""
    names = re.findall(r'"(\w+)":', GUIDE)
    assert names == ["user_id", "camera_id", "pod_id", "exp"]
    now = float(int(time.time()))  # pyjwt checks exp against the real clock: not the module's NOW
    tok = guide_token({**IDS, "exp": int(now) + 600})
    assert is_legacy_token(tok)
    legacy = verify_legacy_token(tok, RING, max_ttl=900, now=now)
    jwt_claims = verify_user_token(mint_user_token(RING, **IDS, ttl=600, now=now), RING, max_ttl=900, now=now)
    assert (legacy.user_id, legacy.camera_id, legacy.pod_id, legacy.exp) == (
        jwt_claims.user_id, jwt_claims.camera_id, jwt_claims.pod_id, jwt_claims.exp)
    assert legacy.iat is None  # the format has no issue time


@pytest.mark.parametrize("variant", ["compact", "urlsafe", "unpadded", "milliseconds", "space_for_plus",
                                     "upper_hex", "rotated_secret"])
def test_accepted_spellings(variant):
    exp = int(NOW) + 300
    ring = RING
    if variant == "compact":
        tok = mint_legacy_token(SECRET, **IDS, ttl=300, now=NOW)
    elif variant == "urlsafe":
        tok = mint_legacy_token(SECRET, **{**IDS, "user_id": "ü>>>?"}, ttl=300, now=NOW, urlsafe=True)
    elif variant == "unpadded":
        tok = guide_token({**IDS, "exp": exp, "x": "a"})
        body, sig = tok.split(".")
        tok = body.rstrip("=") + "." + sig
    elif variant == "milliseconds":  # JavaScript: Date.now() + 10 * 60 * 1000
        tok = mint_legacy_token(SECRET, **IDS, ttl=300, now=NOW, milliseconds=True)
    elif variant == "space_for_plus":  # a query-string decoder turned "+" into " "
        tok = guide_token({**IDS, "user_id": "ü>>>?", "exp": exp})
        assert "+" in tok
        tok = tok.replace("+", " ")
    elif variant == "upper_hex":
        body, sig = guide_token({**IDS, "exp": exp}).split(".")
        tok = body + "." + sig.upper()
    else:  # signed with a second secret of the ring (rotation)
        ring = Keyring({"old": "o" * 40, "new": SECRET}, "old")
        tok = guide_token({**IDS, "exp": exp})
    c = verify_legacy_token(tok, ring, max_ttl=900, now=NOW)
    assert c.camera_id == "gate-camera-1" and c.exp == pytest.approx(exp, abs=1)


def _flip_payload(tok: str) -> str:
    body, sig = tok.split(".")
    claims = json.loads(base64.b64decode(body))
    claims["camera_id"] = "other-camera"
    return base64.b64encode(json.dumps(claims).encode()).decode() + "." + sig


BAD = {
    "forged_wrong_secret": (lambda: guide_token({**IDS, "exp": int(NOW) + 300}, "not-the-secret"), TokenInvalid),
    "payload_tampered": (lambda: _flip_payload(guide_token({**IDS, "exp": int(NOW) + 300})), TokenInvalid),
    "signature_zeroed": (lambda: guide_token({**IDS, "exp": int(NOW) + 300}, sig="0" * 64), TokenInvalid),
    "signature_short": (lambda: guide_token({**IDS, "exp": int(NOW) + 300})[:-2], TokenInvalid),
    "sha256_of_json_only": (lambda: guide_token({**IDS, "exp": int(NOW) + 300}, ""), TokenInvalid),
    "expired": (lambda: guide_token({**IDS, "exp": int(NOW) - 60}), TokenExpired),
    "expired_ms": (lambda: guide_token({**IDS, "exp": int(NOW - 60) * 1000}), TokenExpired),
    "lifetime_over_max": (lambda: guide_token({**IDS, "exp": int(NOW) + 7 * 86400}), TokenInvalid),
    "no_exp": (lambda: guide_token(IDS), TokenInvalid),
    "exp_string": (lambda: guide_token({**IDS, "exp": str(int(NOW) + 300)}), TokenInvalid),
    "exp_bool": (lambda: guide_token({**IDS, "exp": True}), TokenInvalid),
    "exp_nan": (lambda: guide_token({**IDS, "exp": float("nan")}), TokenInvalid),
    "exp_infinite": (lambda: guide_token({**IDS, "exp": float("inf")}), TokenInvalid),
    "exp_10e400": (lambda: guide_token({**IDS, "exp": 10**400}), TokenInvalid),  # float() overflowed: a 500
    "exp_negative": (lambda: guide_token({**IDS, "exp": -(10**400)}), TokenInvalid),
    "no_user": (lambda: guide_token({**IDS, "user_id": "", "exp": int(NOW) + 300}), TokenInvalid),
    "camera_traversal": (lambda: guide_token({**IDS, "camera_id": "../etc", "exp": int(NOW) + 300}), TokenInvalid),
    "pod_not_dns_label": (lambda: guide_token({**IDS, "pod_id": "Evil.Pod", "exp": int(NOW) + 300}), TokenInvalid),
    "claims_not_object": (lambda: base64.b64encode(b"[1]").decode() + "."
                          + hashlib.sha256(b"[1]" + SECRET.encode()).hexdigest(), TokenInvalid),
    "not_base64": (lambda: "!!!." + "a" * 64, TokenInvalid),
    "a_jwt": (lambda: mint_user_token(RING, **IDS, ttl=300, now=NOW), TokenInvalid),
    "empty": (lambda: "", TokenInvalid),
    "oversized": (lambda: "A" * 5000 + "." + "a" * 64, TokenInvalid),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_rejections(name):
    build, exc = BAD[name]
    with pytest.raises(exc) as ei:
        verify_legacy_token(build(), RING, max_ttl=900, now=NOW)
    assert SECRET not in str(ei.value)


def test_signature_is_checked_before_the_claims_are_read():
    """A forged token with junk claims is refused as a bad signature, not as bad claims."""
    junk = base64.b64encode(b"{not json").decode() + "." + "f" * 64
    with pytest.raises(TokenInvalid, match="bad signature"):
        verify_legacy_token(junk, RING, max_ttl=900, now=NOW)


def test_leeway_is_capped_at_five_seconds():
    tok = guide_token({**IDS, "exp": int(NOW) - 4})
    assert verify_legacy_token(tok, RING, max_ttl=900, now=NOW).exp == int(NOW) - 4
    with pytest.raises(TokenExpired):
        verify_legacy_token(guide_token({**IDS, "exp": int(NOW) - 6}), RING, max_ttl=900, now=NOW, leeway=60)


def test_legacy_tokens_are_redacted_in_logs():
    tok = mint_legacy_token(SECRET, **IDS, ttl=300, now=time.time())
    assert tok not in redact(f"GET /streams/x/index.m3u8 saw {tok} from a player")
    assert redact(f"token {tok} end") == "token *** end"
