"""Clip uploads — the steps: recorded clip → signed URL → streamed PUT → confirm → local delete.

:class:`Uploader` is a :class:`pod.worker.Worker` over the :class:`pod.uploads.UploadQueue`
(the rows and the disk quota live there): each step of one clip is one unit of work, and a
failure is handled by the worker's policy by exception class — a clip the portal keeps
refusing moves behind the others and is parked after ``max_attempts``, a 401/403 holds the
queue until the API key works again, an outage pauses it.

The portal contract (seed portal, :mod:`protocol.messages`):

1. ``POST /api/pod/recordings/upload-url {camera_id, filename}`` →
   ``{upload_url, file_path, expires_in}`` (Supabase's ``signedUrl``/``signed_url``/``path``
   accepted); ``url_expires_at`` = receipt time + ``expires_in`` (absent: unknown).
2. ``PUT`` the raw bytes (``Content-Type: video/mp4``), streamed from disk
   (:meth:`pod.portal.PortalClient.upload_file`). "The resource already exists"
   (:class:`pod.errors.StorageConflict`: HTTP 409, or Supabase Storage's HTTP 400 with
   ``"statusCode": "409"`` in the body) means an earlier PUT of this clip landed but the
   pod did not record it (crash, lost answer, or a portal whose paths follow the file
   name, so a fresh URL names the same object): it counts as uploaded, the clip is
   confirmed and deleted, and no new URL is asked for. Any other 4xx from storage (an
   expired or bad signature) means a fresh URL; after ``max_put_refusals`` of them the
   clip is parked ``storage_refused``.
3. ``POST /api/pod/recordings/confirm {camera_id, file_path, duration_seconds,
   event_type: "plate_detection", plate_number, event_id, file_size_bytes}``.
4. Delete the local file, only after the confirm answered 2xx.

Transient failures (connect errors, timeouts, 5xx, 408, 429) are retried (see
:mod:`pod.worker`); the signed URL is reused until it expires. Known limit: when a PUT's
outcome is unknown (crash or timeout) *and* its URL expires before the retry, the retry
uses a fresh URL — the portal may then hold an orphan object from the first attempt, but
still one recording. Signed URLs are never logged: log lines name the event, camera and
storage path only.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Collection
from typing import Any

from msgspec.structs import replace

from pod.backoff import Backoff
from pod.errors import PortalRejected, StorageConflict
from pod.uploads import Evicted, Quota, Upload, UploadQueue
from pod.worker import RETRYABLE_STATUSES, Worker, WorkerSettings
from protocol.messages import RecordingConfirm, UploadUrlRequest

log = logging.getLogger("platebridge.pod.uploads")


class _Steps:
    """The upload queue as a :class:`pod.worker.Source`; ``process`` is one step."""

    name = "uploads"

    def __init__(self, up: Uploader) -> None:
        self.up = up

    def key(self, row: Upload) -> str:
        return row.event_id

    def describe(self, row: Upload) -> str:
        return f"clip {row.event_id} ({row.state})"

    def due(self, now: float, limit: int, busy: Collection[str]) -> list[Upload]:
        return self.up.queue.due(now, limit, busy)

    def next_wakeup(self, busy: Collection[str]) -> float | None:
        return self.up.queue.next_wakeup(busy)

    async def process(self, row: Upload) -> None:
        await self.up._step(row)

    def retry(self, row: Upload, next_attempt: float, error: str, strike: bool, now: float) -> None:
        self.up.queue.retry_later(row.event_id, next_attempt - now, error, now=now, strike=strike)

    def park(self, row: Upload, reason: str, error: str, now: float) -> None:
        self.up.queue.mark_failed(row.event_id, error, now=now, reason=reason)
        log.error("uploads: %s (camera %s) parked as failed in state %s (%s): %s", row.event_id, row.camera_id,
                  row.state, reason, error)

    def requeue_parked(self, reason: str, now: float) -> int:
        return self.up.queue.requeue(now, reason=reason)

    def make_due(self, now: float) -> int:
        return self.up.queue.make_due(now)


class Uploader(Worker[Upload]):
    """Works the :class:`UploadQueue` through ``portal`` (a :class:`PortalClient`), one
    step of one clip at a time by default (oldest due first; ``settings.concurrency`` more).

    ``backoff`` is the pause schedule after a failure (default from ``settings``; its
    initial delay and cap also give the retry settings when ``settings`` is None). The agent
    passes the config's ``upload_*`` tunables as ``settings``.
    ``clock`` returns Unix seconds. ``idle_poll`` (s) bounds the sleep with nothing due.
    ``quota`` (optional) is enforced before every look at the queue
    (:meth:`enforce_quota`). An expired URL (by the portal's ``expires_in``) is not used:
    a fresh one is requested, at once when the old one had been tried, else after a delay
    (a portal handing out too-short URLs is not hammered). After ``max_put_refusals`` PUTs
    of one clip were refused by storage (4xx) the clip is parked ``storage_refused``.
    ``retain_seconds``: finished rows older than this are pruned (checked hourly).

    Counters (since this object was created): :attr:`uploaded` (PUTs that stored the
    clip, including 409s), :attr:`conflicts` (409s among them), :attr:`confirmed`,
    :attr:`retried` (transient failures and refused or expired URLs), :attr:`failed`
    (clips parked), :attr:`url_requests`, :attr:`evicted` (the queue's). :attr:`busy` is
    the ``event_id`` whose PUT is in flight, if any.
    """

    def __init__(
        self,
        queue: UploadQueue,
        portal: Any,
        backoff: Backoff | None = None,
        *,
        settings: WorkerSettings | None = None,
        clock: Callable[[], float] = time.time,
        idle_poll: float | None = None,
        quota: Quota | None = None,
        max_put_refusals: int = 8,
        retain_seconds: float = 30 * 86400.0,
    ) -> None:
        s = settings or (WorkerSettings(retry_initial=backoff.initial, retry_max=backoff.cap, jitter=backoff.jitter)
                         if backoff is not None else WorkerSettings())
        if idle_poll is not None:
            s = WorkerSettings(s.concurrency, s.retry_initial, s.retry_max, s.max_attempts, idle_poll, s.jitter)
        super().__init__(_Steps(self), s, backoff=backoff, db=queue.state, clock=clock,
                         housekeeping=self._housekeeping)
        self.queue, self.portal, self.quota = queue, portal, quota
        self.max_put_refusals = max(1, int(max_put_refusals))
        self.retain_seconds = retain_seconds
        self.uploaded = self.conflicts = self.confirmed = self.url_requests = 0
        self.busy: str | None = None
        self._next_prune = 0.0

    @property
    def evicted(self) -> int:
        """Clips evicted by the queue's disk quota (since the queue object was created)."""
        return self.queue.evicted

    @property
    def failed(self) -> int:
        """Clips parked (since this object was created)."""
        return self.parked

    def enforce_quota(self) -> list[Evicted]:
        """Apply :attr:`quota` now (no-op without one); the clip being uploaded is evicted last."""
        if self.quota is None:
            return []
        return self.queue.evict_for_quota(self.quota.max_bytes, self.quota.free_floor_bytes, self.quota.disk_free,
                                          busy=(self.busy,) if self.busy else (), now=self.clock(),
                                          directory=self.quota.directory)

    def _housekeeping(self) -> None:
        self.enforce_quota()
        self._maybe_prune()

    async def step(self, row: Upload) -> None:
        """Advance ``row`` by one step (URL, PUT or confirm); failures are recorded on the row
        by the worker's policy (:mod:`pod.worker`)."""
        await self._one(row.event_id, row)

    async def _step(self, row: Upload) -> None:
        if row.state == "recorded":
            await self._get_url(row)
        elif row.state == "url":
            await self._put(row)
        elif row.state == "uploaded":
            await self._confirm(row)

    # --- steps ---

    async def _get_url(self, row: Upload) -> None:
        if not self._file_present(row):
            return
        resp = await self.portal.request_upload_url(UploadUrlRequest(camera_id=row.camera_id, filename=row.filename))
        now = self.clock()
        url, path = resp.url(), resp.path_or_none()
        assert url and path  # request_upload_url guarantees both
        ttl = resp.expires_in
        expires_at = now + float(ttl) if ttl is not None and math.isfinite(ttl) and ttl > 0 else None  # else unknown
        self.queue.set_url(row.event_id, url, path, expires_at, now=now)
        self.url_requests += 1
        log.info("uploads: %s: upload URL #%d for %s (%s)", row.event_id, row.url_requests + 1, path,
                 f"expires in {resp.expires_in:g} s" if resp.expires_in is not None else "expiry unknown")

    async def _put(self, row: Upload) -> None:
        now = self.clock()
        assert row.upload_url is not None
        if row.url_expires_at is not None and row.url_expires_at <= now:
            # Tried and failed until it expired: renew at once. Expired untried: the portal's
            # URLs are too short-lived for this pod — wait instead of spinning.
            delay = 0.0 if row.attempts > 0 else self._delay(row.url_requests - 1)
            self.queue.drop_url(row.event_id, "upload URL expired before the PUT", next_attempt=now + delay, now=now)
            self.retried += 1
            log.info("uploads: %s: upload URL for %s expired; requesting a new one in %.1f s",
                     row.event_id, row.file_path, delay)
            return
        if not self._file_present(row):
            return
        self.busy = row.event_id
        t0 = time.monotonic()
        try:
            size = await self.portal.upload_file(row.upload_url, row.local_path, "video/mp4")
        except StorageConflict as exc:
            self.conflicts += 1
            log.info("uploads: %s: storage already holds %s (HTTP %d, \"The resource already exists\"): an "
                     "earlier PUT landed; counting it as uploaded", row.event_id, row.file_path, exc.status)
            self._uploaded(row)
            return
        except PortalRejected as exc:
            if exc.status in RETRYABLE_STATUSES:
                raise
            self._refused_put(row, exc)
            return
        except FileNotFoundError:
            self.queue.mark_deleted(row.event_id, now=self.clock())
            self._park(row, "missing_file", "local clip vanished before the upload")
            return
        finally:
            self.busy = None
        log.info("uploads: %s: uploaded %d bytes to %s in %.1f s", row.event_id, size, row.file_path,
                 time.monotonic() - t0)
        self._uploaded(row)

    async def _confirm(self, row: Upload) -> None:
        assert row.file_path is not None
        await self.portal.confirm_recording(RecordingConfirm(
            camera_id=row.camera_id, file_path=row.file_path, duration_seconds=round(row.duration_s, 3),
            event_type="plate_detection", plate_number=row.plate, event_id=row.event_id,
            file_size_bytes=row.size_bytes))
        now = self.clock()
        self.queue.mark_confirmed(row.event_id, now=now)
        self.confirmed += 1
        log.info("uploads: %s: recording %s confirmed (%.1f s, %d bytes)", row.event_id, row.file_path,
                 row.duration_s, row.size_bytes)
        if row.on_disk:
            try:
                os.unlink(row.local_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("uploads: %s: cannot delete confirmed clip %s: %s (the quota will retry)",
                          row.event_id, row.local_path, exc.strerror or exc)
                return
            self.queue.mark_deleted(row.event_id, now=now)

    # --- helpers ---

    def _uploaded(self, row: Upload) -> None:
        self.queue.mark_uploaded(row.event_id, now=self.clock())
        self.uploaded += 1

    def _refused_put(self, row: Upload, exc: PortalRejected) -> None:
        now = self.clock()
        refusals = row.put_refusals + 1
        if refusals >= self.max_put_refusals:
            self.queue.drop_url(row.event_id, f"PUT refused: HTTP {exc.status}: {exc}", next_attempt=now,
                                refused=True, now=now)
            self._park(replace(row, state="recorded"), "storage_refused",
                       f"storage refused {refusals} PUTs; last: HTTP {exc.status}: {exc}")
            return
        # The first refusal is usually an expired URL: ask again at once; repeated refusals back off.
        delay = self._delay(refusals - 1)
        self.queue.drop_url(row.event_id, f"PUT refused: HTTP {exc.status}: {exc}", next_attempt=now + delay,
                            refused=True, now=now)
        self.retried += 1
        log.warning("uploads: %s: storage refused the PUT of %s (HTTP %d: expired or invalid signature?); "
                    "requesting a new URL in %.1f s", row.event_id, row.file_path, exc.status, delay)

    def _delay(self, n: int) -> float:
        """0 for ``n <= 0``, else the un-jittered pause of attempt ``n`` (seconds)."""
        if n <= 0:
            return 0.0
        return min(self.settings.retry_max, self.settings.retry_initial * 2 ** min(n - 1, 30))

    def _file_present(self, row: Upload) -> bool:
        if row.on_disk and os.path.isfile(row.local_path):
            return True
        self.queue.mark_deleted(row.event_id, now=self.clock())
        self._park(row, "missing_file", "local clip is missing")
        return False

    def _park(self, row: Upload, reason: str, error: str) -> None:
        self.source.park(row, reason, error, self.clock())
        self.parked += 1

    def _maybe_prune(self) -> None:
        now = self.clock()
        if now >= self._next_prune:
            self._next_prune = now + 3600.0
            n = self.queue.prune(now - self.retain_seconds)
            if n:
                log.info("uploads: pruned %d finished row(s) older than %.0f days", n, self.retain_seconds / 86400)
