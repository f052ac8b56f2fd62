"""STAND-IN for the Vercel portal and its Supabase Storage (development and tests only;
never shipped).

Implements the portal side of the pod contract (:mod:`protocol.messages`, the PlateBridge
POD connection guide) with an SQLite audit log:

* ``GET /api/plates?site=&company_id=`` → ``{config_version, entries}``. ``config_version``
  keeps the JSON type it was given (the guide's portal sends a number, ``42``); each
  replacement of the whitelist bumps it (a number stays a number).
* ``POST /api/pod/detect`` → ``{"success": true, "duplicate": bool, "decision", "event_id"}``.
  Accepts the guide's minimal body ``{site_id, plate, camera, pod_name}`` (its test
  ``curl`` works against the demo) as well as the pod's full one. Without ``decision`` the
  stand-in decides like the guide's portal, from its own whitelist (normalised exact
  match, enabled, inside ``starts``/``ends``); without ``event_id`` it uses the
  ``Idempotency-Key`` header or a fresh ``portal-<uuid>``. Dedupes by ``event_id`` and by
  the ``Idempotency-Key`` header; 400 on a bad body. On a new **allow** it opens the gate
  through Gatewise (``POST {gatewise_url}/api/v1/gates/{gate_id}/open`` with
  ``Bearer <GATEWISE_API_KEY>``), by default the Gatewise stand-in served by this same
  process under ``/gatewise`` (``deploy/dev/gatewise_standin.py``).
* ``POST /api/pod/heartbeat`` → ``{"success": true, "config_version": …}``
* ``POST /api/nudge`` ``{"property", "reason"}`` (the guide's manual sync trigger) → bumps
  ``config_version`` and, with ``--gateway-admin-token``, relays a nudge to every known pod
  through the gateway (``POST {gateway_url}/pods/{pod_id}/nudge``, option B: pods have no
  inbound port), so they refresh at once; pods also see the new version in their next
  heartbeat answer.
* ``POST /api/pod/stream-token`` ``{camera_id}`` (user session stand-in: any
  non-empty bearer, or exactly ``--user-key`` when given) → a user stream JWT
  (:func:`protocol.tokens.mint_user_token`), ``stream_url`` and ``watch_url`` on
  the gateway
* ``POST /api/pod/recordings/upload-url`` ``{camera_id, filename}`` →
  ``{upload_url, file_path, expires_in}`` for the object ``file_path`` =
  ``recordings/<community>/<camera_id>/<filename>`` (the guide's shape; the same filename
  gives the same path) in the bucket ``camera-recordings``.
* ``POST /api/pod/recordings/confirm`` (400 unless the file was uploaded; idempotent by
  ``file_path``)
* ``GET /api/pod/recordings?camera_id=`` (user auth) → ``{recordings: [...]}``, each with
  the confirm body (``duration_seconds``, ``plate_number``, ``event_id`` …) plus
  ``video_url``, a signed download URL (lifetime ``--download-ttl``).

Supabase Storage, with its real URL shapes (supabase/storage ``src/http/routes/object/``
``getSignedUploadURL.ts``, ``uploadSignedObject.ts``, ``getSignedObject.ts``):

* upload: ``PUT`` (or ``POST``) ``/storage/v1/object/upload/sign/<bucket>/<path>?token=<jwt>``,
  where the token is an HS256 JWT with claims ``url`` = ``<bucket>/<path>`` and ``exp``
  (lifetime ``--upload-ttl``) → ``200 {"Key": "<bucket>/<path>"}``. A bad token is HTTP 400
  ``{"statusCode": "400", "error": "Invalid JWT"|"InvalidSignature"|"ExpiredSignature",
  "message": …}``, as storage-api answers.
* a second upload of an existing object: ``"The resource already exists"``, answered either
  as HTTP 409 ``{"statusCode": "409", "error": "Duplicate", …}`` or, as storage-api's legacy
  error format does (supabase/storage#502, supabase/supabase-js#1246: ``"status": 400``;
  supabase/supabase-py#1254: ``statusCode 409``), HTTP **400** with that same body. Which
  one: ``--storage-duplicate 409|400`` or ``POST /__standin/storage {"duplicate": …}``.
* download: ``GET /storage/v1/object/sign/<bucket>/<path>?token=<jwt>`` served as
  ``video/mp4`` with single-range ``Range`` support (RFC 9110 §14), so a browser
  ``<video>`` can play and seek it.

Signing key: random per process unless ``--signing-key`` (or env
``PORTAL_STANDIN_SIGNING_KEY``) is given, in which case URLs stay valid across
restarts. Upload and download tokens are signed with different keys, so one
cannot stand in for the other.

The ``/api/pod/*`` and ``/api/plates`` endpoints (except stream-token and the
recordings list, which take user auth) need ``Authorization: Bearer <pod api key>``;
401 otherwise. The key itself is never stored or logged. ``/api/nudge`` takes no
credentials here (the guide shows none); a real portal requires a user session.

Admin endpoints (stand-in only, no auth; bind to loopback):
``PUT /__standin/plates`` (list of entries, or ``{"entries": [...]}`` optionally with
``"config_version"``, which is then served as given; otherwise the version is bumped),
``POST /__standin/fault {"mode": "ok"|"error500"|"hang"|"unauthorized"|"commit_hang",
"count": n|null, "scope": "all"|"api"|"storage"}`` (the next ``n`` requests in scope, or all
while null, fail; ``api`` = ``/api/*``, ``storage`` = ``/storage/*``, default ``all``;
``unauthorized`` answers 401 as for a wrong pod API key; ``commit_hang`` lets the request
do its work — the detection recorded, the object stored, the recording confirmed — and
then withholds the answer until the switch changes: the pod can be killed at the worst
moment, after the portal has its data and before the pod knows; ``"after": n`` lets the next
``n`` requests in scope through first), ``GET /__standin/fault``,
``POST /__standin/keys {"api_keys": [...]}`` (the pod API keys accepted from now on: a key
rotation), ``POST /__standin/poison {"keys": [...], "status": 500, "scope": "all"|"detect"|"clips"}``
(requests for those event ids — detect by ``Idempotency-Key``/``event_id``, upload-url by a
file name that contains it, confirm by ``event_id`` — answer that status for ever; ``[]``
clears),
``POST /__standin/latency {"seconds": s}`` (every ``/api/pod/detect`` takes that long),
``GET /__standin/stats`` (``detect_requests``, ``detect_in_flight_max``: most detect requests
the stand-in was handling at once, ``poisoned``: answers given to poisoned keys; ``POST``
resets), ``POST /__standin/storage {"duplicate": "409"|"400"}``,
``GET /__standin/detections``, ``GET /__standin/heartbeats``, ``GET /__standin/nudges``,
``GET /__standin/uploads`` (stored objects), ``GET /__standin/upload-urls`` (every upload
URL issued: camera, filename, path, expiry — never the token),
``GET /gatewise/__standin/openings`` (gate openings).

Prints ``PORTAL: detect <decision> <plate> <reason> event=<id>`` on stdout for
every new detection, and the Gatewise stand-in ``GATE: opened <plate> …`` for every opening.

CLI: ``python deploy/dev/portal_standin.py --host 127.0.0.1 --port N --db path
--api-key K --user-token-secret S --gateway-url URL [--plates-file f.json]
[--pod-id ID] [--user-key K] [--token-ttl S] [--upload-ttl S] [--download-ttl S]
[--signing-key K] [--storage-duplicate 409|400] [--community NAME]
[--gatewise-url URL] [--gatewise-api-key K] [--gate-id ID] [--gateway-admin-token T]``.
``--api-key``/``--user-token-secret``/``--signing-key``/``--gatewise-api-key``/``--gateway-admin-token``
default to ``$PORTAL_STANDIN_API_KEY``/``$PORTAL_STANDIN_USER_TOKEN_SECRET``/
``$PORTAL_STANDIN_SIGNING_KEY``/``$GATEWISE_API_KEY``/``$PLATEBRIDGE_GATEWAY_ADMIN_TOKEN``
(keeps them out of ``ps``). The user-token secret is the HS256 key the portal shares with
the gateway only (the gateway's ``user_token_secret``); ``--stream-secret`` /
``$PORTAL_STANDIN_STREAM_SECRET`` is the legacy name of the same thing (the guide's
``POD_STREAM_SECRET``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
import msgspec
from litestar import Litestar, Request, Response, get, post, put, route
from litestar.params import FromPath, FromQuery

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEV = Path(__file__).resolve().parent
if str(DEV) not in sys.path:
    sys.path.insert(0, str(DEV))

from gatewise_standin import GatewiseStandIn  # noqa: E402
from gatewise_standin import route_handlers as gatewise_routes  # noqa: E402

from pod.plates import Whitelist  # noqa: E402
from protocol.ids import is_camera_id, is_dns_label  # noqa: E402
from protocol.messages import (  # noqa: E402
    HeartbeatRequest,
    PlateEntry,
    RecordingConfirm,
    StreamTokenRequest,
    UploadUrlRequest,
)
from protocol.tokens import Keyring, mint_user_token  # noqa: E402

log = logging.getLogger("platebridge.standin")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS detections (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, idempotency_key TEXT,
    body TEXT NOT NULL, count INTEGER NOT NULL DEFAULT 1, received REAL NOT NULL, last_received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS heartbeats (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, pod_id TEXT NOT NULL, camera_id TEXT NOT NULL,
    body TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (
    path TEXT PRIMARY KEY, data BLOB NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    content_type TEXT, stored REAL NOT NULL);
CREATE TABLE IF NOT EXISTS recordings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, camera_id TEXT NOT NULL, file_path TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS upload_urls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, camera_id TEXT NOT NULL, filename TEXT NOT NULL,
    file_path TEXT NOT NULL, expires INTEGER NOT NULL, issued REAL NOT NULL);
CREATE TABLE IF NOT EXISTS nudges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, config_version TEXT NOT NULL,
    relayed TEXT NOT NULL, received REAL NOT NULL);
"""
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UPLOAD_TTL = 600.0
DOWNLOAD_TTL = 3600.0
FAULT_SCOPES = ("all", "api", "storage")
FAULT_MODES = ("ok", "error500", "hang", "unauthorized", "commit_hang")
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
HANG_SECONDS = 600.0
BUCKET = "camera-recordings"
"""The Supabase Storage bucket the guide creates ("Create bucket: camera-recordings (Private)")."""
STORAGE_OBJECT = "/storage/v1/object"
DuplicateAnswer = Literal["409", "400"]
MAX_FIELD_CHARS = 256


def _err(status: int, message: str) -> Response:
    return Response({"success": False, "error": message}, status_code=status)


def _storage_err(http_status: int, status_code: str, error: str, message: str) -> Response:
    """A storage-api error body (``{"statusCode": "<code as a string>", "error", "message"}``)."""
    return Response({"statusCode": status_code, "error": error, "message": message}, status_code=http_status)


def _printable(value: object) -> str:
    if value is None:
        return "-"
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in str(value))[:80] or "-"


class DetectBody(msgspec.Struct, forbid_unknown_fields=False):
    """What ``POST /api/pod/detect`` accepts: the guide's four fields, the pod's others optional."""

    site_id: str
    plate: str | None
    camera: str
    pod_name: str
    camera_id: str | None = None
    event_id: str | None = None
    decision: Literal["allow", "deny"] | None = None
    reason: str | None = None
    detected_at: str | None = None
    confidence: float | None = None
    plate_raw: str | None = None
    near_match: str | None = None


class PortalStandIn:
    """State of the stand-in: the SQLite audit log at ``db_path`` (mode 0600), the pod
    ``api_key`` (compared in constant time, never stored), the stream keyring,
    the gateway base URL and the fault switch. ``plates`` seeds the whitelist when
    the database has none (``config_version`` given: served as given). ``upload_ttl`` /
    ``download_ttl`` are the signed upload / download URL lifetimes in seconds.
    ``signing_key`` (any non-empty string) makes the storage tokens stable across restarts;
    without it a random key is drawn per process. ``storage_duplicate`` is how storage answers
    a second upload of an object (``"409"``, or ``"400"`` as storage-api's legacy errors do).
    ``community`` is the middle of the storage paths. ``gatewise`` is the Gatewise stand-in
    served with this app, ``gatewise_url`` where allowed detections open ``gate_id``
    (None: this process's own ``/gatewise``), ``gatewise_api_key`` the key sent to it.
    ``gateway_admin_token`` enables the nudge relay through the gateway."""

    def __init__(
        self,
        *,
        db_path: str | os.PathLike[str],
        api_key: str,
        stream_secret: str | None = None,
        gateway_url: str,
        pod_id: str | None = None,
        user_key: str | None = None,
        token_ttl: float = 600.0,
        upload_ttl: float = UPLOAD_TTL,
        download_ttl: float = DOWNLOAD_TTL,
        signing_key: str | None = None,
        plates: list[PlateEntry] | list[dict] | None = None,
        config_version: str | int | None = None,
        storage_duplicate: DuplicateAnswer = "409",
        community: str = "dev-community",
        gatewise_url: str | None = None,
        gatewise_api_key: str | None = None,
        gate_id: str = "main-gate",
        gateway_admin_token: str | None = None,
        out=None,
        user_token_secret: str | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        if storage_duplicate not in ("409", "400"):
            raise ValueError("storage_duplicate must be '409' or '400'")
        if not _NAME.match(community) or not _NAME.match(gate_id):
            raise ValueError("community and gate_id must be 1-64 chars of A-Za-z0-9._-")
        user_token_secret = user_token_secret or stream_secret
        if not user_token_secret:
            raise ValueError("user_token_secret (legacy: stream_secret) must not be empty")
        self._api_keys = [api_key.encode()]
        self._user_key = user_key.encode() if user_key else None
        self.keyring = Keyring.single(user_token_secret)
        self.gateway_url = gateway_url.rstrip("/")
        self.pod_id = pod_id
        self.token_ttl = token_ttl
        self.upload_ttl = upload_ttl
        self.download_ttl = download_ttl
        root = (hashlib.sha256(b"platebridge-standin-signing\0" + signing_key.encode()).digest()
                if signing_key else secrets.token_bytes(32))
        self._upload_key = hmac.new(root, b"storage-upload", hashlib.sha256).digest()
        self._download_key = hmac.new(root, b"storage-download", hashlib.sha256).digest()
        self.storage_duplicate: DuplicateAnswer = storage_duplicate
        self.community = community
        self.gatewise_api_key = gatewise_api_key or secrets.token_urlsafe(24)
        self.gatewise = GatewiseStandIn(self.gatewise_api_key, out=out)
        self.gatewise_url = gatewise_url.rstrip("/") if gatewise_url else None
        self.gate_id = gate_id
        self.gateway_admin_token = gateway_admin_token
        self.out = out  # None: sys.stdout at print time
        self.fault_mode = "ok"
        self.poisoned: dict[str, int] = {}
        self.poison_scope = "all"
        self.poisoned_answers: dict[str, int] = {}
        self.detect_latency = 0.0
        self.detect_in_flight = 0
        self.detect_in_flight_max = 0
        self.detect_requests = 0
        self.fault_scope = "all"
        self.fault_remaining: int | None = None
        self.fault_after = 0  # commit_hang: in-scope requests still answered before it applies
        self.faults_served = 0
        self._fault_changed = asyncio.Event()
        self._background: set[asyncio.Task] = set()
        self._gate_client: httpx.AsyncClient | None = None
        path = Path(db_path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        if self._kv("config_version") is None or plates is not None or config_version is not None:
            self.set_plates(plates if plates is not None else self.plates(), version=config_version)

    # --- state ---

    def _kv(self, key: str) -> str | None:
        row = self.db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_kv(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v", (key, value))

    @property
    def config_version(self) -> str | int:
        """The whitelist version as served: a number or a string, as it was set (default: a
        counter starting at ``"1"``)."""
        raw = self._kv("config_version")
        return "0" if raw is None else json.loads(raw)

    def set_plates(self, entries: list[PlateEntry] | list[dict], version: str | int | None = None) -> str | int:
        """Replace the whitelist; ``version`` is served as given, else ``config_version`` is
        bumped (a number stays a number, a numeric string a numeric string). Returns it."""
        if version is None:
            prev = self.config_version if self._kv("config_version") is not None else None
            if isinstance(prev, int):
                version = prev + 1
            elif isinstance(prev, str) and prev.isdigit():
                version = str(int(prev) + 1)
            else:
                version = "1" if prev is None else f"{prev}.1"
        # every column with explicit nulls, like the portal's rows; extra keys kept as given
        raw = [msgspec.structs.asdict(e) if isinstance(e, PlateEntry)
               else {**msgspec.structs.asdict(msgspec.convert(e, PlateEntry)), **e} for e in entries]
        self.db.execute("BEGIN IMMEDIATE")
        self._set_kv("plates", json.dumps(raw))
        self._set_kv("config_version", json.dumps(version))
        self.db.execute("COMMIT")
        return version

    def bump_version(self) -> str | int:
        """Bump ``config_version`` without changing the entries (a nudge); returns it."""
        return self.set_plates(self.plates())

    def plates(self) -> list[dict]:
        """The whitelist entries in wire form."""
        return json.loads(self._kv("plates") or "[]")

    def whitelist(self) -> Whitelist:
        """The whitelist as the portal would judge a plate with it (UTC site time)."""
        entries = msgspec.convert(self.plates(), list[PlateEntry])
        return Whitelist(entries, str(self.config_version))

    def authorized_pod(self, request: Request) -> bool:
        """True when the request carries ``Bearer <pod api key>``."""
        token = _bearer(request)
        if token is None:
            return False
        ok = False
        for key in self._api_keys:  # every key compared (constant time each), no early exit
            ok = hmac.compare_digest(token.encode(), key) or ok
        return ok

    def set_api_keys(self, keys: list[str]) -> None:
        """Accept exactly ``keys`` as pod API keys from now on (a rotation). Raises
        ``ValueError`` for an empty list or key."""
        if not keys or not all(keys):
            raise ValueError("api_keys must be a non-empty list of non-empty keys")
        self._api_keys = [k.encode() for k in keys]

    def poison_status(self, *candidates: str | None, scope: str = "detect") -> int | None:
        """The status a poisoned key among ``candidates`` answers (substring match, so a clip
        file name that contains the event id counts) for a request of ``scope`` (``detect``
        or ``clips``), or None."""
        if self.poison_scope not in ("all", scope):
            return None
        for c in candidates:
            if not c:
                continue
            for key, status in self.poisoned.items():
                if key in c:
                    self.poisoned_answers[key] = self.poisoned_answers.get(key, 0) + 1
                    return status
        return None

    def authorized_user(self, request: Request) -> str | None:
        """A user id for a user-session request (stand-in: any non-empty bearer, or exactly
        ``user_key`` when configured; the pod key also passes), else None."""
        token = _bearer(request)
        if not token:
            return None
        if self.authorized_pod(request):
            return "pod"
        if self._user_key is not None and not hmac.compare_digest(token.encode(), self._user_key):
            return None
        return "user-" + hashlib.sha256(token.encode()).hexdigest()[:12]

    def set_fault(self, mode: str, count: int | None, scope: str = "all", after: int = 0) -> None:
        """Switch fault injection: ``mode`` ok|error500|hang for the next ``count`` requests
        (None: until switched back) within ``scope``: ``api`` (``/api/*``), ``storage``
        (``/storage/*``) or ``all``; ``commit_hang`` only after ``after`` more requests in scope
        were answered normally. Raises ``ValueError`` for an unknown scope."""
        if scope not in FAULT_SCOPES:
            raise ValueError(f"scope must be one of {FAULT_SCOPES}")
        self.fault_mode, self.fault_remaining, self.fault_scope = mode, count, scope
        self.fault_after = after
        self._fault_changed.set()
        self._fault_changed = asyncio.Event()

    async def maybe_fault(self, scope: str = "api") -> Response | None:
        """Apply the fault switch to one request of ``scope`` (``api`` or ``storage``): a 500
        response, a hang (until the fault is switched off, then 503), or None to proceed.
        Requests outside the configured fault scope pass and do not use up ``count``."""
        if self.fault_mode == "ok" or self.fault_scope not in ("all", scope):
            return None
        mode = self.fault_mode
        if mode == "commit_hang":
            return None
        if self.fault_remaining is not None:
            self.fault_remaining -= 1
            if self.fault_remaining <= 0:
                self.fault_mode, self.fault_remaining = "ok", None
        if mode == "commit_hang":
            return None  # applied after the request's work: hold_answer()
        self.faults_served += 1
        if mode == "unauthorized":
            return _err(401, "unauthorized")
        if mode == "hang":
            try:
                await asyncio.wait_for(self._fault_changed.wait(), HANG_SECONDS)
            except TimeoutError:
                pass
            return _err(503, "stand-in hang released")
        return _err(500, "stand-in fault: error500")

    async def hold_answer(self, scope: str = "api") -> Response | None:
        """``commit_hang``: after a request in ``scope`` did its work, withhold the answer
        until the fault switch changes (then 503: the pod, if still there, retries and meets
        the duplicate). None when the switch is off."""
        if self.fault_mode != "commit_hang" or self.fault_scope not in ("all", scope):
            return None
        if self.fault_after > 0:
            self.fault_after -= 1
            return None
        if self.fault_remaining is not None:
            self.fault_remaining -= 1
            if self.fault_remaining <= 0:
                self.fault_mode, self.fault_remaining = "ok", None
        self.faults_served += 1
        try:
            await asyncio.wait_for(self._fault_changed.wait(), HANG_SECONDS)
        except TimeoutError:
            pass
        return _err(503, "stand-in answer withheld (commit_hang)")

    # --- storage (Supabase Storage stand-in) ---

    def storage_token(self, path: str, expires: int, kind: Literal["upload", "download"] = "upload") -> str:
        """The signed-URL token for object ``path`` of the bucket: an HS256 JWT with claims
        ``url`` = ``<bucket>/<path>`` and ``exp`` (Unix s), as storage-api signs them; upload
        and download tokens use different keys. Deterministic for equal arguments."""
        key = self._upload_key if kind == "upload" else self._download_key
        return jwt.encode({"url": f"{BUCKET}/{path}", "exp": int(expires)}, key, algorithm="HS256")

    def check_token(self, bucket: str, path: str, token: str | None,
                    kind: Literal["upload", "download"]) -> Response | None:
        """storage-api's answer refusing ``token`` for ``<bucket>/<path>``, or None when valid."""
        key = self._upload_key if kind == "upload" else self._download_key
        try:
            claims = jwt.decode(token or "", key, algorithms=["HS256"], options={"require": ["exp", "url"]})
        except jwt.ExpiredSignatureError:
            return _storage_err(400, "400", "ExpiredSignature", "The signature has expired")
        except jwt.PyJWTError as exc:
            return _storage_err(400, "400", "Invalid JWT", type(exc).__name__)
        if claims.get("url") != f"{bucket}/{path}":
            return _storage_err(400, "400", "InvalidSignature", "The url do not match the signature")
        return None

    def upload_url(self, base: str, path: str, expires: int) -> str:
        """Signed upload URL (``PUT``) for object ``path`` under ``base`` (the stand-in's own URL)."""
        return f"{base}{STORAGE_OBJECT}/upload/sign/{BUCKET}/{path}?token={self.storage_token(path, expires)}"

    def download_url(self, base: str, path: str, *, now: float | None = None) -> str:
        """Signed ``GET`` URL for stored object ``path`` under ``base`` (the stand-in's own
        URL), valid ``download_ttl`` seconds from ``now``."""
        expires = int((time.time() if now is None else now) + self.download_ttl)
        return f"{base}{STORAGE_OBJECT}/sign/{BUCKET}/{path}?token={self.storage_token(path, expires, 'download')}"

    def upload_urls(self) -> list[dict]:
        """Every upload URL issued, in order: ``camera_id``, ``filename``, ``file_path``,
        ``expires`` (Unix s), ``issued_at`` — never the token."""
        rows = self.db.execute(
            "SELECT camera_id, filename, file_path, expires, issued FROM upload_urls ORDER BY seq").fetchall()
        return [dict(zip(("camera_id", "filename", "file_path", "expires", "issued_at"), r, strict=True)) for r in rows]

    # --- pods ---

    def pod_for_camera(self, camera_id: str) -> str | None:
        """pod_id of the last heartbeat for ``camera_id``, else the configured ``pod_id``."""
        row = self.db.execute(
            "SELECT pod_id FROM heartbeats WHERE camera_id = ? ORDER BY seq DESC LIMIT 1", (camera_id,)
        ).fetchone()
        return row[0] if row else self.pod_id

    def known_pods(self) -> list[str]:
        """Every pod that sent a heartbeat, plus the configured ``pod_id``; sorted."""
        pods = {r[0] for r in self.db.execute("SELECT DISTINCT pod_id FROM heartbeats")}
        if self.pod_id:
            pods.add(self.pod_id)
        return sorted(pods)

    def detections(self) -> list[dict]:
        """Detections in arrival order: every field sent, plus ``count`` (deliveries of
        that event_id), ``idempotency_key`` and ``received_at`` (Unix s)."""
        rows = self.db.execute(
            "SELECT body, count, idempotency_key, received FROM detections ORDER BY seq").fetchall()
        return [{**json.loads(b), "count": c, "idempotency_key": k, "received_at": r} for b, c, k, r in rows]

    def heartbeats(self) -> list[dict]:
        """Heartbeats in arrival order, each with ``received_at`` (Unix s)."""
        rows = self.db.execute("SELECT body, received FROM heartbeats ORDER BY seq").fetchall()
        return [{**json.loads(b), "received_at": r} for b, r in rows]

    def nudges(self) -> list[dict]:
        """``POST /api/nudge`` calls in order: the body, the new ``config_version`` and the
        pods the nudge was relayed to (with the gateway's status)."""
        rows = self.db.execute("SELECT body, config_version, relayed, received FROM nudges ORDER BY seq").fetchall()
        return [{"body": json.loads(b), "config_version": json.loads(v), "relayed": json.loads(r), "received_at": t}
                for b, v, r, t in rows]

    def spawn(self, coro) -> None:
        """Run ``coro`` in the background (kept referenced until done)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def open_gate(self, base: str, body: dict) -> None:
        """Open the gate through Gatewise for an allowed detection (``body``: the stored
        detection). This is where the portal calls Gatewise; a failure is logged, never
        turned into a detect error (the detection is already recorded)."""
        url = f"{self.gatewise_url or base + '/gatewise'}/api/v1/gates/{self.gate_id}/open"
        payload = {k: body.get(k) for k in ("plate", "site_id", "camera", "event_id", "reason")}
        try:
            if self._gate_client is None:  # one client for every opening (a new one per call costs ~20 ms of CPU)
                self._gate_client = httpx.AsyncClient(timeout=5, trust_env=False,
                                                      limits=httpx.Limits(max_connections=4))
            r = await self._gate_client.post(url, json=payload,
                                             headers={"Authorization": f"Bearer {self.gatewise_api_key}"})
            if r.status_code >= 300:
                log.warning("gatewise: open %s for event %s answered HTTP %d", self.gate_id,
                            _printable(body.get("event_id")), r.status_code)
        except httpx.HTTPError as exc:
            log.warning("gatewise: open %s failed: %s", self.gate_id, type(exc).__name__)

    async def relay_nudge(self, reason: str, version: str | int) -> list[dict]:
        """Nudge every known pod through the gateway (``POST /pods/{pod_id}/nudge``); returns
        ``[{pod_id, status}]`` (status 0: unreachable). No-op without an admin token."""
        if not self.gateway_admin_token:
            return []
        out = []
        async with httpx.AsyncClient(timeout=5, trust_env=False) as c:
            for pod in self.known_pods():
                try:
                    r = await c.post(f"{self.gateway_url}/pods/{pod}/nudge",
                                     json={"reason": reason[:64], "config_version": str(version)[:128]},
                                     headers={"Authorization": f"Bearer {self.gateway_admin_token}"})
                    out.append({"pod_id": pod, "status": r.status_code})
                except httpx.HTTPError:
                    out.append({"pod_id": pod, "status": 0})
        return out

    async def aclose(self) -> None:
        """Wait (briefly) for background calls, then close the database."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=5)
        if self._gate_client is not None:
            await self._gate_client.aclose()
        self.close()

    def close(self) -> None:
        """Close the database."""
        self.db.close()


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _decode(request: Request, typ: type) -> Any:
    body = await request.body()
    try:
        return msgspec.json.decode(body, type=typ)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _BadBody(str(exc)) from None


class _BadBody(Exception):
    pass


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _detect_record(s: PortalStandIn, req: DetectBody, idem: str | None) -> dict | str:
    """The detection row to store for a detect body, or why it is refused (400)."""
    missing = [f for f in ("site_id", "camera", "pod_name") if not getattr(req, f).strip()]
    no_read = req.plate is None and req.reason == "no_plate_read"
    if not no_read and not (req.plate or "").strip():
        missing.append("plate")
    if req.decision is not None and not (req.event_id or "").strip():
        missing.append("event_id")  # the pod's own body always carries its idempotency key
    if missing:
        return f"empty {', '.join(missing)}"
    if req.confidence is not None and not 0.0 <= req.confidence <= 1.0:
        return "confidence must be 0..1"
    if any(isinstance(v, str) and len(v) > MAX_FIELD_CHARS for v in msgspec.structs.astuple(req)):
        return "a field is too long"
    body = {k: v for k, v in msgspec.structs.asdict(req).items() if v is not None or k == "plate"}
    body["event_id"] = req.event_id or idem or f"portal-{uuid.uuid4().hex}"
    if req.decision is None:  # the guide's minimal body: decide like the guide's portal would
        verdict = s.whitelist().match(req.plate or "", 1.0, now=datetime.now(UTC), min_confidence=0.0)
        body.update(decision=verdict.decision, reason=verdict.reason, decided_by="portal")
    else:
        body["decided_by"] = "pod"
    body.setdefault("detected_at", _utc_now())
    return body


def create_app(standin: PortalStandIn) -> Litestar:
    """The stand-in's Litestar app around ``standin`` (state and audit log)."""
    s = standin

    async def before(request: Request) -> Response | None:
        if request.url.path.startswith("/api/"):
            return await s.maybe_fault("api")
        if request.url.path.startswith("/storage/"):
            return await s.maybe_fault("storage")
        return None

    @get("/api/plates")
    async def plates(request: Request) -> Response:
        if not s.authorized_pod(request):
            return _err(401, "unauthorized")
        return Response({"config_version": s.config_version, "entries": s.plates()})

    @post("/api/pod/detect", status_code=200)
    async def detect(request: Request) -> Response:
        s.detect_requests += 1
        s.detect_in_flight += 1
        s.detect_in_flight_max = max(s.detect_in_flight_max, s.detect_in_flight)
        try:
            if s.detect_latency > 0:
                await asyncio.sleep(s.detect_latency)
            return await detect_inner(request)
        finally:
            s.detect_in_flight -= 1

    async def detect_inner(request: Request) -> Response:
        if not s.authorized_pod(request):
            return _err(401, "unauthorized")
        try:
            req: DetectBody = await _decode(request, DetectBody)
        except _BadBody as exc:
            return _err(400, f"invalid body: {exc}")
        idem = request.headers.get("idempotency-key") or None
        poison = s.poison_status(idem, req.event_id)
        if poison is not None:
            return _err(poison, "stand-in poison: this detection always fails")
        record = _detect_record(s, req, idem)
        if isinstance(record, str):
            return _err(400, f"invalid body: {record}")
        event_id = record["event_id"]
        now = time.time()
        s.db.execute("BEGIN IMMEDIATE")
        try:
            row = s.db.execute(
                "SELECT seq, body FROM detections WHERE event_id = ? OR (? IS NOT NULL AND idempotency_key = ?)",
                (event_id, idem, idem),
            ).fetchone()
            if row:
                s.db.execute("UPDATE detections SET count = count + 1, last_received = ? WHERE seq = ?", (now, row[0]))
            else:
                s.db.execute(
                    "INSERT INTO detections (event_id, idempotency_key, body, received, last_received) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (event_id, idem, json.dumps(record), now, now),
                )
            s.db.execute("COMMIT")
        except BaseException:
            s.db.execute("ROLLBACK")
            raise
        if row:
            stored = json.loads(row[1])
            return Response({"success": True, "duplicate": True, "event_id": stored["event_id"],
                             "decision": stored["decision"]})
        print(f"PORTAL: detect {record['decision']} {_printable(record.get('plate'))} {record['reason']} "
              f"event={_printable(event_id)}", file=s.out or sys.stdout, flush=True)
        if record["decision"] == "allow":  # step 6 of the guide: "Opens gate via Gatewise if allowed"
            s.spawn(s.open_gate(str(request.base_url).rstrip("/"), record))
        held = await s.hold_answer("api")
        if held is not None:
            return held
        return Response({"success": True, "duplicate": False, "event_id": event_id, "decision": record["decision"]})

    @post("/api/pod/heartbeat", status_code=200)
    async def heartbeat(request: Request) -> Response:
        if not s.authorized_pod(request):
            return _err(401, "unauthorized")
        try:
            req: HeartbeatRequest = await _decode(request, HeartbeatRequest)
        except _BadBody as exc:
            return _err(400, f"invalid body: {exc}")
        if not is_dns_label(req.pod_id) or not is_camera_id(req.camera_id):
            return _err(400, "invalid body: pod_id must be a DNS label and camera_id a safe id")
        s.db.execute("INSERT INTO heartbeats (pod_id, camera_id, body, received) VALUES (?, ?, ?, ?)",
                     (req.pod_id, req.camera_id, msgspec.json.encode(req).decode(), time.time()))
        return Response({"success": True, "config_version": s.config_version})

    @post("/api/nudge", status_code=200)
    async def nudge(request: Request) -> Response:
        try:
            raw = msgspec.json.decode(await request.body() or b"{}")
        except msgspec.DecodeError as exc:
            return _err(400, f"invalid body: {exc}")
        if not isinstance(raw, dict) or any(not isinstance(raw.get(k, ""), str) or len(raw.get(k, "")) > 256
                                            for k in ("property", "reason")):
            return _err(400, "invalid body: property and reason are optional strings (<= 256 chars)")
        version = s.bump_version()
        relayed = await s.relay_nudge(raw.get("reason") or "whitelist_changed", version)
        s.db.execute("INSERT INTO nudges (body, config_version, relayed, received) VALUES (?, ?, ?, ?)",
                     (json.dumps(raw), json.dumps(version), json.dumps(relayed), time.time()))
        return Response({"success": True, "config_version": version, "relayed": relayed})

    @post("/api/pod/stream-token", status_code=200)
    async def stream_token(request: Request) -> Response:
        user = s.authorized_user(request)
        if user is None:
            return _err(401, "unauthorized")
        try:
            req: StreamTokenRequest = await _decode(request, StreamTokenRequest)
        except _BadBody as exc:
            return _err(400, f"invalid body: {exc}")
        if not is_camera_id(req.camera_id):
            return _err(400, "invalid camera_id")
        pod_id = s.pod_for_camera(req.camera_id)
        if pod_id is None:
            return _err(404, "unknown camera (no heartbeat yet and no --pod-id)")
        now = time.time()
        token = mint_user_token(s.keyring, user_id=user, camera_id=req.camera_id, pod_id=pod_id,
                                ttl=s.token_ttl, now=now)
        return Response({
            "success": True,
            "token": token,
            "stream_url": f"{s.gateway_url}/streams/{req.camera_id}/index.m3u8?token={token}",
            "watch_url": f"{s.gateway_url}/watch/{req.camera_id}?token={token}",
            "expires_at": int(now + s.token_ttl),
            "expires_in": int(s.token_ttl),
        })

    @post("/api/pod/recordings/upload-url", status_code=200)
    async def upload_url(request: Request) -> Response:
        if not s.authorized_pod(request):
            return _err(401, "unauthorized")
        try:
            req: UploadUrlRequest = await _decode(request, UploadUrlRequest)
        except _BadBody as exc:
            return _err(400, f"invalid body: {exc}")
        if not is_camera_id(req.camera_id) or not _FILENAME.match(req.filename) or ".." in req.filename:
            return _err(400, "invalid camera_id or filename")
        poison = s.poison_status(req.filename, scope="clips")
        if poison is not None:
            return _err(poison, "stand-in poison: this clip always fails")
        path = f"recordings/{s.community}/{req.camera_id}/{req.filename}"
        now = time.time()
        expires = int(now + s.upload_ttl)
        base = str(request.base_url).rstrip("/")
        s.db.execute("INSERT INTO upload_urls (camera_id, filename, file_path, expires, issued) VALUES (?, ?, ?, ?, ?)",
                     (req.camera_id, req.filename, path, expires, now))
        return Response({"upload_url": s.upload_url(base, path, expires), "file_path": path,
                         "expires_in": s.upload_ttl})

    @route(f"{STORAGE_OBJECT}/upload/sign/{{bucket:str}}/{{path:path}}", http_method=["PUT", "POST"],
           status_code=200, request_max_body_size=MAX_UPLOAD_BYTES)
    async def storage_put(request: Request, bucket: FromPath[str], path: FromPath[str],
                          token: FromQuery[str | None] = None) -> Response:
        path = path.lstrip("/")
        refused = s.check_token(bucket, path, token, "upload")
        if refused is not None:
            return refused
        if bucket != BUCKET:
            return _storage_err(404, "404", "Bucket not found", "Bucket not found")
        data = await request.body()
        if s.db.execute("SELECT 1 FROM uploads WHERE path = ?", (path,)).fetchone():
            status = 409 if s.storage_duplicate == "409" else 400
            return _storage_err(status, "409", "Duplicate", "The resource already exists")
        s.db.execute(
            "INSERT INTO uploads (path, data, size, sha256, content_type, stored) VALUES (?, ?, ?, ?, ?, ?)",
            (path, data, len(data), hashlib.sha256(data).hexdigest(), request.headers.get("content-type"), time.time()),
        )
        held = await s.hold_answer("storage")
        if held is not None:
            return held
        return Response({"Key": f"{bucket}/{path}"})

    @get(f"{STORAGE_OBJECT}/sign/{{bucket:str}}/{{path:path}}")
    async def storage_get(request: Request, bucket: FromPath[str], path: FromPath[str],
                          token: FromQuery[str | None] = None) -> Response:
        path = path.lstrip("/")
        refused = s.check_token(bucket, path, token, "download")
        if refused is not None:
            return refused
        row = s.db.execute("SELECT size FROM uploads WHERE path = ?", (path,)).fetchone()
        if row is None or bucket != BUCKET:
            return _storage_err(404, "404", "not_found", "Object not found")
        size = row[0]
        headers = {"Accept-Ranges": "bytes", "X-Content-Type-Options": "nosniff", "Cache-Control": "private"}
        media = "video/mp4" if path.lower().endswith(".mp4") else "application/octet-stream"
        span = _byte_range(request.headers.get("range"), size)
        if span == "unsatisfiable":
            return Response(b"", status_code=416, media_type=media,
                            headers=headers | {"Content-Range": f"bytes */{size}"})
        first, last = span if span is not None else (0, size - 1)
        data = s.db.execute("SELECT substr(data, ?, ?) FROM uploads WHERE path = ?",
                            (first + 1, last - first + 1, path)).fetchone()[0] if size else b""
        if span is None:
            return Response(bytes(data or b""), status_code=200, media_type=media, headers=headers)
        return Response(bytes(data), status_code=206, media_type=media,
                        headers=headers | {"Content-Range": f"bytes {first}-{last}/{size}"})

    @post("/api/pod/recordings/confirm", status_code=200)
    async def confirm(request: Request) -> Response:
        if not s.authorized_pod(request):
            return _err(401, "unauthorized")
        try:
            req: RecordingConfirm = await _decode(request, RecordingConfirm)
        except _BadBody as exc:
            return _err(400, f"invalid body: {exc}")
        if not is_camera_id(req.camera_id) or req.duration_seconds < 0:
            return _err(400, "invalid camera_id or duration_seconds")
        poison = s.poison_status(req.event_id, req.file_path, scope="clips")
        if poison is not None:
            return _err(poison, "stand-in poison: this clip always fails")
        if not s.db.execute("SELECT 1 FROM uploads WHERE path = ?", (req.file_path,)).fetchone():
            return _err(400, "file_path was not uploaded")
        row = s.db.execute("SELECT id FROM recordings WHERE file_path = ?", (req.file_path,)).fetchone()
        if row is None:
            body = json.dumps(msgspec.structs.asdict(req))  # every field, explicit nulls, like the portal's row
            cur = s.db.execute("INSERT INTO recordings (camera_id, file_path, body, created) VALUES (?, ?, ?, ?)",
                               (req.camera_id, req.file_path, body, time.time()))
            rec_id = cur.lastrowid
        else:
            rec_id = row[0]
        held = await s.hold_answer("api")
        if held is not None:
            return held
        return Response({"success": True, "recording_id": rec_id})

    @get("/api/pod/recordings")
    async def recordings(request: Request, camera_id: FromQuery[str | None] = None) -> Response:
        if s.authorized_user(request) is None:
            return _err(401, "unauthorized")
        sql = "SELECT r.id, r.body, r.created, u.size FROM recordings r LEFT JOIN uploads u ON u.path = r.file_path"
        args: tuple = ()
        if camera_id:
            sql += " WHERE r.camera_id = ?"
            args = (camera_id,)
        rows = s.db.execute(sql + " ORDER BY r.id", args).fetchall()
        base, now = str(request.base_url).rstrip("/"), time.time()
        out = []
        for i, b, c, z in rows:
            body = json.loads(b)
            out.append({"id": i, **body, "created_at": c, "stored_bytes": z,
                        "video_url": s.download_url(base, body["file_path"], now=now) if z is not None else None})
        return Response({"success": True, "recordings": out})

    # --- admin (stand-in only) ---

    @put("/__standin/plates", status_code=200)
    async def admin_plates(request: Request) -> Response:
        try:
            raw = msgspec.json.decode(await request.body())
            entries = raw["entries"] if isinstance(raw, dict) else raw
            msgspec.convert(entries, list[PlateEntry])  # validate; stored as given
            version = raw.get("config_version") if isinstance(raw, dict) else None
            if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int))):
                raise TypeError("config_version must be a string or an integer")
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError) as exc:
            return _err(400, f"invalid plates: {exc}")
        version = s.set_plates(entries, version=version)
        return Response({"config_version": version, "count": len(entries)})

    @post("/__standin/fault", status_code=200)
    async def admin_fault(request: Request) -> Response:
        try:
            raw = msgspec.json.decode(await request.body())
            mode, count, scope = raw.get("mode"), raw.get("count"), raw.get("scope", "all")
            after = raw.get("after", 0)
        except (msgspec.DecodeError, AttributeError) as exc:
            return _err(400, f"invalid body: {exc}")
        if mode not in FAULT_MODES or not (count is None or (isinstance(count, int) and count > 0)):
            return _err(400, f"mode must be {'|'.join(FAULT_MODES)} and count a positive integer or null")
        if scope not in FAULT_SCOPES:
            return _err(400, "scope must be all|api|storage")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            return _err(400, "after must be a non-negative integer")
        s.set_fault(mode, count, scope, after)
        return Response(fault_state())

    @post("/__standin/storage", status_code=200)
    async def admin_storage(request: Request) -> Response:
        try:
            raw = msgspec.json.decode(await request.body())
            duplicate = raw.get("duplicate")
        except (msgspec.DecodeError, AttributeError) as exc:
            return _err(400, f"invalid body: {exc}")
        if duplicate not in ("409", "400"):
            return _err(400, 'duplicate must be "409" or "400"')
        s.storage_duplicate = duplicate
        return Response({"duplicate": s.storage_duplicate})

    def fault_state() -> dict:
        return {"mode": s.fault_mode, "count": s.fault_remaining, "scope": s.fault_scope,
                "after": s.fault_after, "faults_served": s.faults_served}

    @get("/__standin/fault", sync_to_thread=False)
    def admin_fault_get() -> dict:
        return fault_state()

    @post("/__standin/keys", status_code=200)
    async def admin_keys(request: Request) -> Response:
        try:
            raw = msgspec.json.decode(await request.body())
            keys = raw.get("api_keys")
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise TypeError("api_keys must be a list of strings")
            s.set_api_keys(keys)
        except (msgspec.DecodeError, AttributeError, TypeError, ValueError) as exc:
            return _err(400, f"invalid body: {exc}")
        return Response({"keys": len(keys)})  # never echo a key

    @post("/__standin/poison", status_code=200)
    async def admin_poison(request: Request) -> Response:
        try:
            raw = msgspec.json.decode(await request.body())
            keys, status, scope = raw.get("keys"), raw.get("status", 500), raw.get("scope", "all")
            if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                raise TypeError("keys must be a list of non-empty strings")
            if not isinstance(status, int) or not 400 <= status <= 599:
                raise TypeError("status must be 400-599")
            if scope not in ("all", "detect", "clips"):
                raise TypeError("scope must be all, detect or clips")
        except (msgspec.DecodeError, AttributeError, TypeError) as exc:
            return _err(400, f"invalid body: {exc}")
        s.poisoned, s.poison_scope = dict.fromkeys(keys, status), scope
        return Response({"poisoned": s.poisoned, "scope": scope})

    @post("/__standin/latency", status_code=200)
    async def admin_latency(request: Request) -> Response:
        try:
            seconds = float(msgspec.json.decode(await request.body()).get("seconds", 0.0))
            if not 0 <= seconds <= 10:
                raise ValueError("seconds must be 0-10")
        except (msgspec.DecodeError, AttributeError, TypeError, ValueError) as exc:
            return _err(400, f"invalid body: {exc}")
        s.detect_latency = seconds
        return Response({"seconds": seconds})

    def stats() -> dict:
        return {"detect_requests": s.detect_requests, "detect_in_flight_max": s.detect_in_flight_max,
                "poisoned": s.poisoned_answers}

    @get("/__standin/stats", sync_to_thread=False)
    def admin_stats() -> dict:
        return stats()

    @post("/__standin/stats", status_code=200)
    async def admin_stats_reset() -> Response:
        s.detect_requests = s.detect_in_flight_max = 0
        s.poisoned_answers = {}
        return Response(stats())

    @get("/__standin/detections", sync_to_thread=False)
    def admin_detections() -> dict:
        return {"detections": s.detections()}

    @get("/__standin/heartbeats", sync_to_thread=False)
    def admin_heartbeats() -> dict:
        return {"heartbeats": s.heartbeats()}

    @get("/__standin/nudges", sync_to_thread=False)
    def admin_nudges() -> dict:
        return {"nudges": s.nudges()}

    @get("/__standin/uploads", sync_to_thread=False)
    def admin_uploads() -> dict:
        rows = s.db.execute("SELECT path, size, sha256, content_type, stored FROM uploads ORDER BY stored").fetchall()
        return {"uploads": [dict(zip(("path", "size", "sha256", "content_type", "stored_at"), r, strict=True))
                            for r in rows]}

    @get("/__standin/upload-urls", sync_to_thread=False)
    def admin_upload_urls() -> dict:
        return {"upload_urls": s.upload_urls()}

    return Litestar(
        [plates, detect, heartbeat, nudge, stream_token, upload_url, storage_put, storage_get, confirm, recordings,
         admin_plates, admin_fault, admin_fault_get, admin_keys, admin_poison, admin_latency, admin_stats,
         admin_stats_reset, admin_storage, admin_detections, admin_heartbeats,
         admin_nudges, admin_uploads, admin_upload_urls, *gatewise_routes(s.gatewise)],
        before_request=before,
        openapi_config=None,
    )


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The inclusive byte span a ``Range`` header asks of a ``size``-byte object (RFC 9110
    §14.1.2: ``bytes=first-last``, ``bytes=first-``, ``bytes=-suffix``), ``"unsatisfiable"``
    (→ 416), or None to serve the whole object (no header, a multi-range or unparsable
    request — RFC 9110 §14.2 lets a server ignore Range)."""
    if not header:
        return None
    m = _RANGE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first_s, last_s = m.groups()
    if not first_s:  # suffix: the last N bytes
        n = int(last_s)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)


def load_plates_file(path: str | os.PathLike[str]) -> tuple[list[dict], str | int | None]:
    """Read a plates file: a JSON list of entries, ``{"entries": [...]}``, or a whole
    ``/api/plates`` answer with ``config_version`` (e.g. the guide's example, served as
    given). Returns ``(entries as given, config_version or None)``. Raises ``ValueError`` on
    unreadable content."""
    try:
        raw = msgspec.json.decode(Path(path).read_bytes())
        entries = raw["entries"] if isinstance(raw, dict) else raw
        msgspec.convert(entries, list[PlateEntry])
        version = raw.get("config_version") if isinstance(raw, dict) else None
        if version is not None and (isinstance(version, bool) or not isinstance(version, (str, int))):
            raise TypeError("config_version must be a string or an integer")
        return entries, version
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; serves until SIGINT/SIGTERM. Exit code 2 on bad arguments."""
    import uvicorn

    ap = argparse.ArgumentParser(description="PlateBridge portal stand-in (dev/test only)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3000)
    ap.add_argument("--db", required=True, help="SQLite audit log path")
    ap.add_argument("--api-key", default=os.environ.get("PORTAL_STANDIN_API_KEY"), help="pod API key")
    ap.add_argument("--user-token-secret", default=os.environ.get("PORTAL_STANDIN_USER_TOKEN_SECRET"),
                    help="HS256 secret of user stream tokens, shared with the gateway only")
    ap.add_argument("--stream-secret", default=os.environ.get("PORTAL_STANDIN_STREAM_SECRET"),
                    help="legacy name of --user-token-secret (the guide's POD_STREAM_SECRET)")
    ap.add_argument("--gateway-url", required=True, help="base URL of the gateway for stream_url/watch_url")
    ap.add_argument("--plates-file", help="initial whitelist (JSON list, {entries: [...]} or a whole "
                                          "/api/plates answer with config_version)")
    ap.add_argument("--pod-id", help="pod_id for stream tokens of cameras without a heartbeat")
    ap.add_argument("--user-key", help="accept only this bearer as a user session (default: any)")
    ap.add_argument("--token-ttl", type=float, default=600.0, help="stream token lifetime, seconds")
    ap.add_argument("--upload-ttl", type=float, default=UPLOAD_TTL, help="signed upload URL lifetime, seconds")
    ap.add_argument("--download-ttl", type=float, default=DOWNLOAD_TTL, help="signed download URL lifetime, seconds")
    ap.add_argument("--signing-key", default=os.environ.get("PORTAL_STANDIN_SIGNING_KEY"),
                    help="storage URL signing key (stable URLs across restarts; default: random per run)")
    ap.add_argument("--storage-duplicate", choices=("409", "400"), default="409",
                    help="storage's answer to a second upload of an object: HTTP 409, or HTTP 400 with "
                         'statusCode "409" in the body (storage-api\'s legacy errors)')
    ap.add_argument("--community", default="dev-community", help="middle of the storage paths")
    ap.add_argument("--gatewise-url", help="Gatewise API base URL (default: this process's /gatewise stand-in)")
    ap.add_argument("--gatewise-api-key", default=os.environ.get("GATEWISE_API_KEY"),
                    help="GATEWISE_API_KEY (default: random, shared with the built-in stand-in)")
    ap.add_argument("--gate-id", default="main-gate", help="the Gatewise gate opened on allow")
    ap.add_argument("--gateway-admin-token", default=os.environ.get("PLATEBRIDGE_GATEWAY_ADMIN_TOKEN"),
                    help="the gateway's admin_token: /api/nudge relays to pods through the gateway")
    args = ap.parse_args(argv)
    if args.upload_ttl <= 0 or args.download_ttl <= 0:
        ap.error("--upload-ttl and --download-ttl must be > 0 seconds")
    user_secret = args.user_token_secret or args.stream_secret
    if not args.api_key or not user_secret:
        ap.error("--api-key and --user-token-secret (or their PORTAL_STANDIN_* env vars) are required")
    from protocol.logfmt import setup_logging

    setup_logging("INFO")
    plates, version = None, None
    try:
        if args.plates_file:
            plates, version = load_plates_file(args.plates_file)
        standin = PortalStandIn(db_path=args.db, api_key=args.api_key, user_token_secret=user_secret,
                                gateway_url=args.gateway_url, pod_id=args.pod_id, user_key=args.user_key,
                                token_ttl=args.token_ttl, upload_ttl=args.upload_ttl,
                                download_ttl=args.download_ttl, signing_key=args.signing_key, plates=plates,
                                config_version=version, storage_duplicate=args.storage_duplicate,
                                community=args.community, gatewise_url=args.gatewise_url,
                                gatewise_api_key=args.gatewise_api_key, gate_id=args.gate_id,
                                gateway_admin_token=args.gateway_admin_token)
    except ValueError as exc:
        ap.error(str(exc))
    print(f"PORTAL: stand-in listening on http://{args.host}:{args.port} config_version={standin.config_version}",
          flush=True)
    # access_log off: signed storage URLs carry their token in the query string
    uvicorn.run(create_app(standin), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=2)
    standin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
