"""The pod's HTTP client for the portal — the only module that speaks HTTP to it.

Endpoints (the seed portal's contract, see :mod:`protocol.messages`):
``GET /api/plates``, ``POST /api/pod/detect``, ``POST /api/pod/heartbeat``,
``POST /api/pod/recordings/upload-url``, ``POST /api/pod/recordings/confirm``.
Every call sends ``Authorization: Bearer <pod api key>`` and
``User-Agent: platebridge-pod/<version>``; the key never appears in logs or
exception messages. Clips go to signed storage URLs with ``PUT`` (no key sent;
only the URL's path is ever logged, never its signed query):
:meth:`PortalClient.upload_file` streams a file from disk, :meth:`PortalClient.upload`
sends bytes already in memory.

Failures map onto two exceptions (re-exported here from :mod:`pod.errors`):
:class:`PortalUnavailable` — connect error, timeout, HTTP 5xx, 408, 429 or an
unreadable answer (retry later) — and :class:`PortalRejected` — any other
non-2xx status (``.status``; retrying the same request will not help), with the
subclasses :class:`PortalAuthRejected` (401/403 from a portal endpoint: the API key) and
:class:`PortalNotFound` (404 from a portal endpoint) so callers can tell them apart.
``on_authenticated`` (optional) is called after every 2xx of a call that carried the API
key: proof that the portal accepts the key (the agent re-queues rows parked for auth).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from typing import Any, BinaryIO

import httpx
import msgspec

from pod.backoff import Backoff
from pod.errors import (
    PortalAuthRejected,
    PortalError,
    PortalNotFound,
    PortalRejected,
    PortalUnavailable,
    StorageConflict,
)
from protocol.messages import (
    DetectRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    PlatesResponse,
    RecordingConfirm,
    UploadUrlRequest,
    UploadUrlResponse,
)
from protocol.redact import redact

__all__ = ["USER_AGENT", "PortalAuthRejected", "PortalClient", "PortalError", "PortalNotFound", "PortalRejected",
           "PortalUnavailable", "StorageConflict", "is_storage_duplicate"]

log = logging.getLogger("platebridge.pod.portal")

try:
    _VERSION = metadata.version("platebridge")
except metadata.PackageNotFoundError:  # running from a source tree
    _VERSION = "0.0.0"
USER_AGENT = f"platebridge-pod/{_VERSION}"
TRANSIENT_STATUSES = frozenset({408, 429})
_MAX_REASON_CHARS = 200
UPLOAD_CHUNK_BYTES = 256 * 1024
"""Bytes read from disk and handed to the socket per step of :meth:`PortalClient.upload_file`."""
MIN_UPLOAD_RATE = 32 * 1024
"""Bytes/s the default whole-upload deadline of :meth:`PortalClient.upload_file` assumes (a slow uplink)."""


class PortalClient:
    """Async client for the portal at ``base_url`` (``http(s)://host[:port][/prefix]``).

    ``api_key`` is the pod API key (sent as a bearer token, never logged).
    ``timeout`` (seconds) bounds each whole request, connect to last byte.
    ``transport`` replaces httpx's network transport (tests). ``retries`` is how
    many times :meth:`get_plates` retries a transient failure, waiting
    ``backoff`` delays in between (default: 0.5 s doubling to 8 s, jittered).
    One shared ``httpx.AsyncClient`` is used; call :meth:`aclose` when done
    (or use ``async with``). Raises ``ValueError`` for a non-http(s) URL or an
    empty key.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = 3,
        backoff: Backoff | None = None,
        on_authenticated: Callable[[], None] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("portal base_url must start with http:// or https://")
        if not api_key:
            raise ValueError("pod api key must not be empty")
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self._backoff = backoff or Backoff(initial=0.5, cap=8.0, jitter=0.5)
        self._api_key = api_key
        self.clock_offset: float | None = None  # this host's clock minus the portal's (s), from its Date header
        self.on_authenticated = on_authenticated
        # Authorization is added per portal request, never as a client default, so
        # uploads to signed storage URLs (possibly another host) never carry the key.
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=httpx.Timeout(self.timeout),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:  # never show the key
        return f"PortalClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> PortalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def set_api_key(self, api_key: str) -> bool:
        """Use ``api_key`` from now on (a reloaded config). Returns whether it changed.
        Raises ``ValueError`` for an empty key."""
        if not api_key:
            raise ValueError("pod api key must not be empty")
        changed = api_key != self._api_key
        self._api_key = api_key
        return changed

    async def aclose(self) -> None:
        """Close the shared HTTP client (idempotent)."""
        await self._client.aclose()

    # --- endpoints ---

    async def get_plates(self, site_id: str, company_id: str) -> PlatesResponse:
        """``GET /api/plates?site=<site_id>&company_id=<company_id>`` → the whitelist.

        Retries transient failures up to ``retries`` times with capped, jittered
        backoff. Raises :class:`PortalUnavailable` when every attempt failed,
        :class:`PortalRejected` at once on a permanent refusal (e.g. 401).
        """
        params = {"site": site_id, "company_id": company_id}
        backoff = Backoff(self._backoff.initial, self._backoff.cap, self._backoff.jitter)
        attempt = 0
        while True:
            try:
                resp = await self._request("GET", "/api/plates", params=params)
                return self._decode(resp, PlatesResponse, "GET /api/plates")
            except PortalUnavailable as exc:
                if attempt >= self.retries:
                    raise
                delay = backoff.next_delay()
                attempt += 1
                log.info("portal: GET /api/plates failed (%s); retry %d/%d in %.2f s",
                         self._scrub(str(exc)), attempt, self.retries, delay)
                await asyncio.sleep(delay)

    async def post_detect(self, req: DetectRequest) -> None:
        """``POST /api/pod/detect`` with header ``Idempotency-Key: <event_id>``.

        No retries here: the outbox retries. Raises :class:`PortalUnavailable`
        or :class:`PortalRejected`. A repeat of an event the portal already has
        counts as success.
        """
        resp = await self._request(
            "POST", "/api/pod/detect", content=msgspec.json.encode(req),
            headers={"Idempotency-Key": req.event_id, "Content-Type": "application/json"},
        )
        try:
            duplicate = bool(msgspec.json.decode(resp.content).get("duplicate")) if resp.content else False
        except (msgspec.DecodeError, AttributeError):
            duplicate = False
        log.debug("portal: detect %s delivered%s", req.event_id, " (duplicate)" if duplicate else "")

    async def post_heartbeat(self, req: HeartbeatRequest) -> HeartbeatResponse:
        """``POST /api/pod/heartbeat`` (one camera) → the portal's ``config_version``.

        No retries (heartbeats are periodic). Raises :class:`PortalUnavailable` or
        :class:`PortalRejected`.
        """
        resp = await self._request(
            "POST", "/api/pod/heartbeat", content=msgspec.json.encode(req),
            headers={"Content-Type": "application/json"},
        )
        return self._decode(resp, HeartbeatResponse, "POST /api/pod/heartbeat")

    async def request_upload_url(self, req: UploadUrlRequest) -> UploadUrlResponse:
        """``POST /api/pod/recordings/upload-url`` → a signed upload URL and storage path.

        Raises :class:`PortalUnavailable` or :class:`PortalRejected`; an answer
        without a URL or path counts as unavailable (unreadable answer).
        """
        resp = await self._request(
            "POST", "/api/pod/recordings/upload-url", content=msgspec.json.encode(req),
            headers={"Content-Type": "application/json"},
        )
        out = self._decode(resp, UploadUrlResponse, "POST /api/pod/recordings/upload-url")
        if not out.url() or not out.path_or_none():
            raise PortalUnavailable("POST /api/pod/recordings/upload-url: answer lacks the URL or path")
        return out

    async def upload(self, url: str, data: bytes, *, content_type: str = "video/mp4") -> None:
        """``PUT`` ``data`` (bytes) to a signed upload ``url`` (absolute, or relative to the
        portal). The signature in the URL is the credential: no Authorization header
        is sent. Raises :class:`PortalUnavailable` or :class:`PortalRejected`."""
        await self._request("PUT", url, content=data, headers={"Content-Type": content_type}, auth=False)

    async def upload_file(
        self,
        url: str,
        path: str | os.PathLike[str],
        content_type: str = "video/mp4",
        *,
        timeout: float | None = None,
    ) -> int:
        """``PUT`` the file at ``path`` to a signed upload ``url``, streamed from disk.

        The body is read in :data:`UPLOAD_CHUNK_BYTES` chunks (in a worker thread)
        while it is sent, so memory use does not grow with the file size; the
        request carries ``Content-Length`` (no chunked encoding: object stores
        such as Supabase Storage want the length up front) and ``Content-Type``.
        Like :meth:`upload`, no Authorization header is sent and the URL (whose
        query holds the signature) is never logged — only its path.

        ``timeout`` (seconds) bounds the whole upload; default: the client
        timeout plus the file size at :data:`MIN_UPLOAD_RATE`. Each socket
        operation is still bounded by the client timeout, so a stalled
        connection fails early. Returns the number of bytes sent.

        Raises ``OSError`` (e.g. ``FileNotFoundError``) when the file cannot be
        opened — before any request is made; :class:`PortalUnavailable` for
        transport errors, timeouts, 5xx/408/429, or a file that changed size
        while it was being sent; :class:`PortalRejected` for any other non-2xx
        status (``.status``: e.g. 400/403 for an expired or tampered signature), and its
        subclass :class:`StorageConflict` when storage already holds the object (HTTP 409, or
        Supabase's HTTP 400 whose body says ``"statusCode": "409"``) — the caller decides
        what that means.
        """
        f = open(path, "rb")  # noqa: SIM115, ASYNC230 - closed in the finally below; reads are chunked
        try:
            size = os.fstat(f.fileno()).st_size
            deadline = timeout if timeout is not None else self.timeout + size / MIN_UPLOAD_RATE
            await self._request(
                "PUT", url, content=_file_chunks(f, size),
                headers={"Content-Type": content_type, "Content-Length": str(size)},
                auth=False, timeout=deadline,
            )
        finally:
            f.close()
        return size

    async def confirm_recording(self, req: RecordingConfirm) -> None:
        """``POST /api/pod/recordings/confirm`` after the upload succeeded.

        The body always carries ``event_type`` (``RecordingConfirm`` omits defaults on the
        wire, but the portal's contract lists it); unset optional fields are left out.
        Raises :class:`PortalUnavailable` or :class:`PortalRejected`.
        """
        body = {k: v for k, v in msgspec.structs.asdict(req).items() if v is not None}
        await self._request(
            "POST", "/api/pod/recordings/confirm", content=msgspec.json.encode(body),
            headers={"Content-Type": "application/json"},
        )

    # --- plumbing ---

    def _scrub(self, text: str) -> str:
        return redact(text.replace(self._api_key, "***"))

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        timeout: float | None = None,
    ) -> httpx.Response:
        what = f"{method} {httpx.URL(url).path}"
        hdrs = dict(headers or {})
        if auth:
            hdrs["Authorization"] = f"Bearer {self._api_key}"
        limit = self.timeout if timeout is None else float(timeout)
        sent = time.time()
        try:
            async with asyncio.timeout(limit):
                resp = await self._client.request(method, url, params=params, content=content, headers=hdrs)
        except TimeoutError:
            raise PortalUnavailable(f"{what}: timed out after {limit:g} s") from None
        except httpx.TimeoutException:
            raise PortalUnavailable(f"{what}: timed out after {self.timeout:g} s") from None
        except _FileChanged as exc:
            raise PortalUnavailable(f"{what}: {exc}") from None
        except (httpx.LocalProtocolError, UnicodeEncodeError) as exc:
            # the request itself cannot be built (e.g. an illegal header value): retrying the
            # same bytes can never succeed, so it is permanent, not an outage
            raise PortalRejected(0, f"{what}: request refused locally: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise PortalUnavailable(f"{what}: {type(exc).__name__}: {self._scrub(str(exc))}") from None
        except httpx.HTTPError as exc:
            raise PortalUnavailable(f"{what}: {type(exc).__name__}: {self._scrub(str(exc))}") from None
        status = resp.status_code
        self._note_date(resp, sent)
        log.debug("portal: %s -> %d", what, status)
        if 200 <= status < 300:
            if auth and self.on_authenticated is not None:
                self.on_authenticated()
            return resp
        reason = self._scrub(resp.text[:_MAX_REASON_CHARS].strip()) if resp.content else ""
        msg = f"{what}: HTTP {status}" + (f": {reason}" if reason else "")
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise PortalUnavailable(msg, status=status)
        if not auth and method in ("PUT", "POST") and is_storage_duplicate(status, resp.content):
            raise StorageConflict(status, msg)  # a signed storage upload: the object is already there
        if auth and status in (401, 403):
            raise PortalAuthRejected(status, msg)
        if auth and status == 404:
            raise PortalNotFound(status, msg)
        raise PortalRejected(status, msg)

    def _note_date(self, resp: httpx.Response, sent: float) -> None:
        """Estimate :attr:`clock_offset` from the answer's ``Date`` (RFC 9110 §6.6.1: whole seconds,
        so ±0.5 s plus half the round trip)."""
        try:
            portal = email.utils.parsedate_to_datetime(resp.headers.get("date", "")).timestamp() + 0.5
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        self.clock_offset = (sent + time.time()) / 2 - portal

    def _decode(self, resp: httpx.Response, typ: type[Any], what: str) -> Any:
        try:
            return msgspec.json.decode(resp.content, type=typ)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise PortalUnavailable(f"{what}: unreadable answer ({self._scrub(str(exc))[:_MAX_REASON_CHARS]})",
                                    status=resp.status_code) from None


def is_storage_duplicate(status: int, body: bytes) -> bool:
    """Whether a storage answer to an upload says the object already exists.

    Supabase Storage (storage-api) answers ``{"statusCode": "409", "error": "Duplicate",
    "message": "The resource already exists"}`` — with HTTP 409, or with HTTP 400 in its
    legacy error format (supabase/storage#502, supabase/supabase-js#1246). A plain 409
    (no or another body) counts too. Other 400s (``InvalidSignature``,
    ``ExpiredSignature``, ``Invalid JWT``) do not."""
    if status == 409:
        return True
    if status != 400 or not body:
        return False
    try:
        doc = msgspec.json.decode(body[:4096])
    except msgspec.DecodeError:
        return False
    if not isinstance(doc, dict):
        return False
    code = doc.get("statusCode")
    return str(code) == "409" or doc.get("error") == "Duplicate"


class _FileChanged(Exception):
    """The file being uploaded changed size while it was sent."""


async def _file_chunks(f: BinaryIO, size: int) -> AsyncIterator[bytes]:
    """Yield exactly ``size`` bytes of ``f`` in chunks of at most :data:`UPLOAD_CHUNK_BYTES`,
    reading in a worker thread. Raises :class:`_FileChanged` if the file ends early."""
    left = size
    while left > 0:
        chunk = await asyncio.to_thread(f.read, min(UPLOAD_CHUNK_BYTES, left))
        if not chunk:
            raise _FileChanged(f"file shrank while uploading ({size - left} of {size} bytes sent)")
        left -= len(chunk)
        yield chunk
