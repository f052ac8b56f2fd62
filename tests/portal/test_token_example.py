"""The portal's stream-token example (docs/examples/stream-token.{mjs,ts}) against our verifier.

The example is run under node exactly as shipped; ``jose`` and ``typescript`` come
from the test toolchain in ``tests/node`` (installed by ``deploy/setup.sh``). Node's
ESM resolver looks for ``node_modules`` next to the importing file only, so node
is started with a resolve hook (a ``data:`` URL, nothing written to the tree)
that retries an unresolvable bare specifier from ``tests/node``.

Also checks that docs/portal-integration.md names every claim, endpoint and
setting the portal has to get right.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import jwt
import pytest

from protocol.errors import TokenExpired, TokenInvalid
from protocol.tokens import USER_STREAM_AUDIENCE, Keyring, verify_user_token

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_MJS = ROOT / "docs" / "examples" / "stream-token.mjs"
EXAMPLE_TS = ROOT / "docs" / "examples" / "stream-token.ts"
DOC = ROOT / "docs" / "portal-integration.md"
NODE_TOOLS = ROOT / "tests" / "node"
TSC = NODE_TOOLS / "node_modules" / "typescript" / "bin" / "tsc"
SETUP_HINT = "run `bash deploy/setup.sh` (it runs `npm ci --prefix tests/node`)"

SECRET = "portal-test-secret-0123456789-abcdefghijklmnop"  # >= 32 bytes, as in production
OTHER_SECRET = "another-secret-9876543210-zyxwvutsrqponmlkjihg"


def _data_url(js: str) -> str:
    return "data:text/javascript;base64," + base64.b64encode(js.encode()).decode()


# Resolve hook: default resolution first; an unresolvable bare specifier ("jose")
# is retried as if imported from tests/node/package.json.
_HOOKS = _data_url(
    "export async function resolve(specifier, context, next) {\n"
    "  try { return await next(specifier, context); } catch (err) {\n"
    "    if (err && err.code === 'ERR_MODULE_NOT_FOUND' && !/^[./]|^[a-z][a-z0-9+.-]*:/i.test(specifier)) {\n"
    "      return next(specifier, { ...context, parentURL: "
    f"{json.dumps((NODE_TOOLS / 'package.json').as_uri())} }});\n"
    "    }\n"
    "    throw err;\n"
    "  }\n"
    "}\n"
)
_REGISTER = _data_url(f"import {{ register }} from 'node:module';\nregister({json.dumps(_HOOKS)});\n")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed; {SETUP_HINT}")
    if not (NODE_TOOLS / "node_modules" / "jose" / "package.json").is_file():
        pytest.fail(f"jose is missing from tests/node/node_modules; {SETUP_HINT}")
    return node


def run_node(script: Path, args: dict, *, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``node <script> '<json args>'`` (cwd: the repo root, POD_STREAM_SECRET unset unless given)."""
    full_env = {k: v for k, v in os.environ.items() if k != "POD_STREAM_SECRET"}
    full_env.update(env or {})
    return subprocess.run(
        [_node(), "--import", _REGISTER, str(script), json.dumps(args)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60,
    )


def mint(args: dict, *, env: dict | None = None, script: Path = EXAMPLE_MJS) -> str:
    proc = run_node(script, args, env=env)
    assert proc.returncode == 0, f"example failed (rc {proc.returncode}): {proc.stderr}"
    token = proc.stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token), proc.stdout
    return token


BASE = {"secret": SECRET, "userId": "user-42", "cameraId": "gate-camera-1", "podId": "main-gate-pod"}


# ------------------------------------------------------------------ node example vs verifier


def test_single_secret_token_verifies_with_exact_claims():
    before = int(time.time())
    token = mint({**BASE, "ttlSeconds": 600})
    claims = verify_user_token(token, Keyring.single(SECRET))
    assert (claims.user_id, claims.camera_id, claims.pod_id) == ("user-42", "gate-camera-1", "main-gate-pod")
    assert claims.iat is not None and before - 1 <= claims.iat <= time.time() + 1
    assert claims.exp - claims.iat == 600

    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256"}  # no kid while a single secret is in use
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw["aud"] == USER_STREAM_AUDIENCE == "platebridge-stream"
    assert raw["sub"] == raw["user_id"] == "user-42"
    assert isinstance(raw["iat"], int) and isinstance(raw["exp"], int)


def test_default_ttl_is_within_the_gateway_maximum():
    raw = jwt.decode(mint(BASE), options={"verify_signature": False})
    assert 0 < raw["exp"] - raw["iat"] <= 900


def test_secret_may_come_from_the_environment():
    """``PLATEBRIDGE_USER_TOKEN_SECRET`` (the user-token key, portal + gateway only), or the guide's
    legacy ``POD_STREAM_SECRET`` when that is unset; the new one wins."""
    args = {k: v for k, v in BASE.items() if k != "secret"}
    token = mint(args, env={"PLATEBRIDGE_USER_TOKEN_SECRET": SECRET})
    assert verify_user_token(token, Keyring.single(SECRET)).user_id == "user-42"
    token = mint(args, env={"POD_STREAM_SECRET": SECRET})
    assert verify_user_token(token, Keyring.single(SECRET)).user_id == "user-42"
    token = mint(args, env={"PLATEBRIDGE_USER_TOKEN_SECRET": SECRET, "POD_STREAM_SECRET": OTHER_SECRET})
    assert verify_user_token(token, Keyring.single(SECRET)).user_id == "user-42"


def test_the_gateway_accepts_the_examples_token_with_the_new_key_layout(tmp_path):
    """The gateway configured with keys by role (user_token_secret, an Ed25519 signing key) verifies
    what the portal example mints with PLATEBRIDGE_USER_TOKEN_SECRET and PLATEBRIDGE_USER_TOKEN_KID."""
    from gateway.config import parse_config
    from protocol.tokens import SigningKey

    key = tmp_path / "k.pem"
    key.write_bytes(SigningKey.generate("gw-1").private_pem())
    cfg = parse_config({"user_token_secrets": {"2025-06": SECRET}, "pod_signing_key_file": str(key)}, env={})
    args = {k: v for k, v in BASE.items() if k != "secret"} | {"kid": "2025-06"}
    token = mint(args, env={"PLATEBRIDGE_USER_TOKEN_SECRET": SECRET})
    assert verify_user_token(token, cfg.user_keyring()).pod_id == "main-gate-pod"
    assert cfg.legacy_warnings() == []


def test_kid_rotation_keyring():
    # Mid-rotation: gateways/pods know both secrets, the old one still primary.
    ring = Keyring({"2024-old": OTHER_SECRET, "2025-new": SECRET}, primary="2024-old")
    token = mint({**BASE, "kid": "2025-new"})
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": "2025-new"}
    assert verify_user_token(token, ring).camera_id == "gate-camera-1"

    # A kid selects exactly one secret: the right secret under the wrong kid is refused …
    with pytest.raises(TokenInvalid, match="bad signature"):
        verify_user_token(mint({**BASE, "kid": "2024-old"}), ring)
    # … and a kid the gateway does not know yet (portal switched too early) is refused.
    with pytest.raises(TokenInvalid, match="unknown key id"):
        verify_user_token(token, Keyring({"2024-old": OTHER_SECRET}))
    # Tokens minted before kid was introduced (no header kid) are tried against every secret.
    assert verify_user_token(mint(BASE), ring).user_id == "user-42"
    # After the old secret is retired, new-kid tokens keep working.
    assert verify_user_token(token, Keyring({"2025-new": SECRET})).pod_id == "main-gate-pod"


def test_wrong_secret_is_rejected():
    token = mint({**BASE, "secret": OTHER_SECRET})
    with pytest.raises(TokenInvalid):
        verify_user_token(token, Keyring.single(SECRET))


def test_overlong_ttl_refused_by_example_and_by_verifier():
    proc = run_node(EXAMPLE_MJS, {**BASE, "ttlSeconds": 1800})
    assert proc.returncode != 0 and "ttlSeconds must be in (0, 900]" in proc.stderr, proc.stderr

    # Forced past the example's guard: the verifier (gateway max_token_ttl 900) still refuses.
    token = mint({**BASE, "ttlSeconds": 1800, "maxTtlSeconds": 3600})
    with pytest.raises(TokenInvalid, match="lifetime exceeds the maximum"):
        verify_user_token(token, Keyring.single(SECRET), max_ttl=900)
    # … and only because of the lifetime: a gateway configured for 1800 s accepts it.
    assert verify_user_token(token, Keyring.single(SECRET), max_ttl=1800).user_id == "user-42"


def test_expired_token_is_rejected():
    token = mint({**BASE, "ttlSeconds": 60, "now": time.time() - 120})
    with pytest.raises(TokenExpired):
        verify_user_token(token, Keyring.single(SECRET))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"podId": "Main_Gate"}, "not a lower-case DNS label"),
        ({"cameraId": "../etc"}, "not a valid camera id"),
        ({"secret": "short"}, "at least 32 bytes"),
        ({"userId": ""}, "userId must be a non-empty string"),
    ],
)
def test_example_refuses_bad_input(override, message):
    proc = run_node(EXAMPLE_MJS, {**BASE, **override})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""


# ------------------------------------------------------------------ TypeScript twin


def _tsc(tmp_path: Path, files: list[Path], *, check_js: bool = False, emit_to: Path | None = None):
    if not TSC.is_file():
        pytest.fail(f"typescript is missing from tests/node/node_modules; {SETUP_HINT}")
    options = {
        "strict": True,
        "target": "ES2022",
        "module": "ESNext",
        "moduleResolution": "Bundler",  # what a Next.js app uses
        "isolatedModules": True,
        "noUnusedLocals": True,
        "noImplicitReturns": True,
        "skipLibCheck": True,  # as in a Next.js app; our file is still checked strictly
        "types": ["node"],
        "typeRoots": [str(NODE_TOOLS / "node_modules" / "@types")],
        # The example lives outside tests/node: map its imports onto the toolchain.
        "paths": {"*": [str(NODE_TOOLS / "node_modules" / "*")]},
    }
    if check_js:
        options.update(allowJs=True, checkJs=True)
    if emit_to is None:
        options["noEmit"] = True
    else:
        options.update(outDir=str(emit_to), rootDir=str(files[0].parent))
    config = tmp_path / f"tsconfig.{len(list(tmp_path.glob('tsconfig.*')))}.json"
    config.write_text(json.dumps({"compilerOptions": options, "files": [str(f) for f in files]}))
    return subprocess.run([_node(), str(TSC), "-p", str(config)], cwd=NODE_TOOLS,
                          capture_output=True, text=True, timeout=120)


def test_typescript_example_type_checks(tmp_path):
    proc = _tsc(tmp_path, [EXAMPLE_TS])
    assert proc.returncode == 0, f"tsc --noEmit failed:\n{proc.stdout}{proc.stderr}"


def test_mjs_jsdoc_types_check(tmp_path):
    proc = _tsc(tmp_path, [EXAMPLE_MJS], check_js=True)
    assert proc.returncode == 0, f"tsc --checkJs failed:\n{proc.stdout}{proc.stderr}"


def test_type_check_is_not_vacuous(tmp_path):
    broken = tmp_path / "broken.ts"
    broken.write_text(
        EXAMPLE_TS.read_text()
        + '\nvoid mintStreamToken({ secret: "s", userId: "u", cameraId: "c", podId: "p", ttlSeconds: "300" });\n'
        + 'import { SignJWTX } from "jose";\nvoid SignJWTX;\n'
    )
    proc = _tsc(tmp_path, [broken])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "TS2322" in out  # ttlSeconds: string is not a number
    assert "SignJWTX" in out  # jose's real type declarations were used


def test_typescript_example_mints_the_same_token(tmp_path):
    out = tmp_path / "dist"
    proc = _tsc(tmp_path, [EXAMPLE_TS], emit_to=out)
    assert proc.returncode == 0, f"tsc failed:\n{proc.stdout}{proc.stderr}"
    (out / "package.json").write_text('{"type": "module"}')
    now = int(time.time())
    args = {**BASE, "kid": "2025-new", "ttlSeconds": 120, "now": now}
    from_ts = mint(args, script=out / "stream-token.js")
    assert from_ts == mint(args)  # HS256 is deterministic: same header, claims and signature
    assert verify_user_token(from_ts, Keyring({"2025-new": SECRET})).exp == now + 120


# ------------------------------------------------------------------ the guide


@pytest.fixture(scope="module")
def doc() -> str:
    assert DOC.is_file(), "docs/portal-integration.md is missing"
    return DOC.read_text()


def test_doc_names_every_claim_and_the_header(doc):
    for needle in ('"platebridge-stream"', "`exp`", "`iat`", "`camera_id`", "`pod_id`", "`user_id`", "`sub`",
                   "HS256", "`kid`", "max_token_ttl", "900", "DNS label"):
        assert needle in doc, needle
    assert re.search(r"\bnone\b.*(RS256|HS512)|(RS256|HS512).*\bnone\b", doc), "refused algorithms not named"


def test_doc_embeds_the_example_verbatim(doc):
    assert "docs/examples/stream-token.ts" in doc and "docs/examples/stream-token.mjs" in doc
    body = EXAMPLE_TS.read_text()
    fn = body[body.index("export async function mintStreamToken"):body.index("/** Whether this file")].strip()
    assert fn in doc, "the inline TypeScript in the guide drifted from docs/examples/stream-token.ts"
    assert "SignJWT" in doc and "from \"jose\"" in doc


def test_doc_stream_token_endpoint_and_gateway_urls(doc):
    for needle in ("/api/pod/stream-token", "<public_base_url>/streams/<camera_id>/index.m3u8?token=",
                   "/watch/<camera_id>?token=", "302", "pb_grant", "max_session_seconds", "3600",
                   "watch_url", "expires_at", "expires_in"):
        assert needle in doc, needle


def test_doc_heartbeat_nudge_detect_upload_env_rotation(doc):
    # heartbeat stream_url: the pod's tailnet URL, not for browsers
    assert "/api/pod/heartbeat" in doc and "stream_url" in doc and "tailnet" in doc
    assert re.search(r"never (give|hand|send)[^.]*browser", doc, re.IGNORECASE)
    # nudge relay
    for needle in ("POST <gateway>/pods/{pod_id}/nudge", "Authorization: Bearer <admin_token>",
                   "admin_token", "202", "config_version"):
        assert needle in doc, needle
    # detect idempotency
    for needle in ("/api/pod/detect", "event_id", "Idempotency-Key", "tracked-object id", "408", "429", "upsert"):
        assert needle in doc, needle
    # signed upload URLs
    for needle in ("/api/pod/recordings/upload-url", "upload_url", "signedUrl", "signed_url", "file_path",
                   "`path`", "expires_in", "409", "upsert", "/api/pod/recordings/confirm"):
        assert needle in doc, needle
    # env vars and the key layout
    for needle in ("PLATEBRIDGE_USER_TOKEN_SECRET", "PLATEBRIDGE_USER_TOKEN_KID", "PLATEBRIDGE_GATEWAY_",
                   "PLATEBRIDGE_GATEWAY_ADMIN_TOKEN", "PLATEBRIDGE_GATEWAY_PUBLIC_BASE_URL",
                   "PLATEBRIDGE_GATEWAY_USER_TOKEN_SECRET", "user_token_secrets", "pod_signing_key_file",
                   "gateway_public_keys", "grant_secret", "POD_STREAM_SECRET", "EdDSA", "Ed25519",
                   "no secret on the pod's SD card"):
        assert needle in doc, needle
    # rotation, per key: whoever verifies learns the new key before whoever signs uses it
    rotation = doc[doc.index("## Key rotation"):]
    for section, order in (("### Rotating the user-token secret", ("user_token_secrets", "PLATEBRIDGE_USER_TOKEN_KID",
                                                                   "Retire")),
                           ("### Rotating the gateway signing key", ("gateway_public_keys", "pod_signing_key_id",
                                                                     "Retire")),
                           ("### Rotating the grant key", ("grant_secret_primary", "Retire"))):
        part = rotation[rotation.index(section):]
        part = part[:part.index("\n### ", 5)] if "\n### " in part[5:] else part
        steps = [part.index(s) for s in order]
        assert steps == sorted(steps), f"{section}: steps out of order"
