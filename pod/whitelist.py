"""Whitelist cache file, the live whitelist holder (thin I/O around
:class:`pod.plates.Whitelist`) and its periodic refresh (:class:`WhitelistRefresher`).

The cache is the ``GET /api/plates`` answer (:class:`protocol.messages.PlatesResponse`)
in its JSON wire form, so the pod can start and decide offline. It holds tenant
names (personal data): the file is mode 0600 and its directory, when created
here, 0700. Writes are atomic (temp file in the same directory, fsync,
``os.replace``, fsync of the directory), so a power cut leaves either the old or
the new file, never a torn one.

A cache that cannot be read (an SD card corrupts it, random bytes, a truncated file) is
**moved aside** as ``<name>.corrupt-<UTC timestamp>`` (kept for diagnosis), the entries that
can still be read are **salvaged** (:func:`salvage_cache`: every complete, valid entry
object in the damaged text), logged and counted (``platebridge_pod_state_recovered_total``,
``/health``); the salvaged whitelist carries the version ``<version>~salvaged`` so the next
heartbeat answer (or the refresh at start) replaces it from the portal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, tzinfo
from pathlib import Path

import msgspec

from pod.db import Recovery, move_aside
from pod.plates import Whitelist
from protocol.messages import PlateEntry, PlatesResponse
from protocol.redact import redact

log = logging.getLogger("platebridge.pod.whitelist")


def save_cache(path: str | os.PathLike[str], resp: PlatesResponse) -> None:
    """Atomically write ``resp`` as JSON to ``path`` (mode 0600). A missing parent
    directory is created with mode 0700. Raises ``OSError`` on I/O failure (the
    previous cache file, if any, is then left untouched and no temp file remains)."""
    target = Path(path)
    parent = target.parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o700, exist_ok=True)  # leaf 0700 (a umask only removes bits)
    data = msgspec.json.encode(resp)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # mkstemp already uses 0600; be explicit
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(parent)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is done
    finally:
        os.close(dfd)


def load_cache(path: str | os.PathLike[str]) -> PlatesResponse | None:
    """Read the cache written by :func:`save_cache`. Missing file → ``None``;
    unreadable, corrupt or schema-invalid file → a logged warning and ``None``.
    Never raises."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a bad cache must never stop the pod
        log.warning("whitelist cache %s unreadable (%s); ignoring it", path, type(exc).__name__)
        return None
    try:
        return msgspec.json.decode(data, type=PlatesResponse)
    except Exception as exc:  # noqa: BLE001
        log.warning("whitelist cache %s is corrupt (%s); ignoring it", path, redact(str(exc))[:200])
        return None


_VERSION = re.compile(r'"config_version"\s*:\s*("(?:[^"\\\x00-\x1f]|\\.){0,256}"|-?\d{1,30})')
SALVAGED_SUFFIX = "~salvaged"


def salvage_cache(data: bytes) -> PlatesResponse | None:
    """What can still be read of a damaged cache: every complete JSON object starting
    ``{"plate"`` that validates as a :class:`PlateEntry`, in file order (an entry whose bytes
    were damaged no longer parses and is left out), and the ``config_version`` if readable
    (else ``"unknown"``), suffixed ``~salvaged``. None when no entry survives. Never raises."""
    text = data.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    entries: list[PlateEntry] = []
    pos = text.find('{"plate"')
    while pos != -1:
        try:
            obj, end = decoder.raw_decode(text, pos)
            entries.append(msgspec.convert(obj, PlateEntry))
            pos = text.find('{"plate"', end)
        except (ValueError, msgspec.ValidationError, TypeError):
            pos = text.find('{"plate"', pos + 1)
    if not entries:
        return None
    m = _VERSION.search(text)
    version = "unknown"
    if m:
        try:
            version = str(json.loads(m.group(1)))
        except ValueError:
            pass
    return PlatesResponse(config_version=f"{version}{SALVAGED_SUFFIX}", entries=entries)


class WhitelistStore:
    """Holds the current :class:`Whitelist` (initially empty, version ``""``).

    ``cache_path`` (optional) is where :meth:`refresh` saves and
    :meth:`load_from_cache` reads. ``clock`` returns monotonic seconds (for
    :attr:`last_refresh`). ``tz`` is the site's time zone, in which plain-date
    ``starts``/``ends`` are read (:func:`pod.plates.parse_time_bound`). Collisions and
    invalid entries are logged whenever a whitelist is installed."""

    def __init__(
        self,
        cache_path: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        tz: tzinfo = UTC,
        on_recovery: Callable[[Recovery], None] | None = None,
    ):
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._clock = clock
        self.tz = tz
        self._current = Whitelist([], "", tz=tz)
        self._lock = asyncio.Lock()
        self.on_recovery = on_recovery
        self.last_refresh: float | None = None
        """Monotonic seconds of the last successful portal refresh, or None."""
        self.recovery: Recovery | None = None
        """The healing of a damaged cache at :meth:`load_from_cache`, if there was one."""

    @property
    def current(self) -> Whitelist:
        """The whitelist in force (swapped atomically; safe to hold a reference)."""
        return self._current

    @property
    def version(self) -> str:
        """``config_version`` of the whitelist in force (``""`` before any load)."""
        return self._current.version

    def _install(self, resp: PlatesResponse, source: str) -> None:
        wl = Whitelist(resp.entries, resp.version, tz=self.tz)
        for key, raws in wl.collisions:
            log.warning("whitelist %s: %d entries normalise to %s: %s", wl.version, len(raws), key, raws)
        for raw, why in wl.invalid:
            log.warning("whitelist %s: entry %r can never allow: %s", wl.version, raw, why)
        self._current = wl
        log.info("whitelist %s loaded from %s: %d entries", wl.version, source, len(wl))

    def load_from_cache(self) -> bool:
        """Install the cached whitelist (offline start). Returns True when a valid (or
        salvaged) cache was loaded; False (keeping the current whitelist) when there is no
        cache path, no file, or nothing readable in it. A damaged cache is healed (see the
        module docs). Never raises. Does not touch :attr:`last_refresh`."""
        if self.cache_path is None:
            return False
        resp = load_cache(self.cache_path)
        if resp is None:
            resp = self._heal()
        if resp is None:
            return False
        try:
            self._install(resp, "cache")
        except Exception as exc:  # noqa: BLE001
            log.warning("whitelist cache %s unusable: %s", self.cache_path, redact(str(exc)))
            return False
        return True

    def _heal(self) -> PlatesResponse | None:
        """Move a damaged cache aside and salvage its readable entries (None: no file, or
        nothing readable)."""
        assert self.cache_path is not None
        try:
            data = self.cache_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            data, why = b"", f"unreadable: {exc.strerror or exc}"
        else:
            why = "not a valid whitelist cache"
        resp = salvage_cache(data)
        try:
            aside = move_aside(self.cache_path, suffixes=("",))
        except OSError as exc:
            log.error("whitelist cache %s is damaged and cannot be moved aside: %s", self.cache_path, exc)
            return resp
        self.recovery = Recovery("whitelist", str(self.cache_path), str(aside), why, time.time(),
                                 {"entries": len(resp.entries) if resp else 0}, "json" if resp else "none")
        log.warning("whitelist cache %s was damaged (%s): moved aside to %s; salvaged %d entries%s; the portal's "
                    "whitelist replaces it at the next refresh", self.cache_path, why, aside.name,
                    len(resp.entries) if resp else 0, f" (version {resp.version})" if resp else "")
        if self.on_recovery is not None:
            self.on_recovery(self.recovery)
        return resp

    async def refresh(self, fetch: Callable[[], Awaitable[PlatesResponse]]) -> bool:
        """Fetch the whitelist (``await fetch()``), build it, swap it in and save it
        to the cache. On any exception from fetching or building, log it and keep
        the current whitelist; returns False. A cache write failure after a
        successful swap is only logged (the new whitelist stays; returns True).
        Concurrent calls are serialised."""
        async with self._lock:
            try:
                resp = await fetch()
                if not isinstance(resp, PlatesResponse):
                    raise TypeError(f"fetch returned {type(resp).__name__}, not PlatesResponse")
                self._install(resp, "portal")
            except Exception as exc:  # noqa: BLE001 - keep serving the old whitelist
                log.warning(
                    "whitelist refresh failed (%s: %s); keeping version %r",
                    type(exc).__name__, redact(str(exc))[:300], self.version,
                )
                return False
            self.last_refresh = self._clock()
            if self.cache_path is not None:
                try:
                    await asyncio.to_thread(save_cache, self.cache_path, resp)
                except Exception as exc:  # noqa: BLE001
                    log.warning("whitelist cache %s not saved: %s", self.cache_path, redact(str(exc)))
            return True


NUDGE_COALESCE_SECONDS = 1.0
"""Refresh requests arriving within this window (seconds) share one portal fetch."""


class WhitelistRefresher:
    """Keeps the :class:`WhitelistStore` current: the seed's "POD refreshes whitelist every 5
    minutes" (``whitelist_refresh_interval``), plus a refresh soon after :meth:`request` (a
    nudge, or a heartbeat answering another ``config_version``).

    ``fetch()`` returns the portal's :class:`PlatesResponse` (``GET /api/plates``); a failed
    fetch keeps the whitelist in force (see :meth:`WhitelistStore.refresh`). ``interval`` and
    ``coalesce`` are seconds: requests arriving within ``coalesce`` of each other share one
    fetch, so a burst of nudges costs the portal one request. :attr:`fetches` counts the
    fetches started.
    """

    def __init__(
        self,
        store: WhitelistStore,
        fetch: Callable[[], Awaitable[PlatesResponse]],
        *,
        interval: float,
        coalesce: float = NUDGE_COALESCE_SECONDS,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0 seconds")
        self.store, self.fetch, self.interval, self.coalesce = store, fetch, interval, coalesce
        self._now = asyncio.Event()
        self.fetches = 0

    def request(self) -> None:
        """Refresh soon (within ``coalesce`` seconds), not only at the next interval."""
        self._now.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch at once, then at every ``interval`` or :meth:`request`, until ``stop`` is set."""
        first = True
        while not stop.is_set():
            if not first:  # coalesce bursts of nudges/heartbeat hints into one fetch
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.coalesce)
                except TimeoutError:
                    pass
                if stop.is_set():
                    return
            first = False
            self._now.clear()
            self.fetches += 1
            await self.store.refresh(self.fetch)
            waiter = asyncio.ensure_future(self._now.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
