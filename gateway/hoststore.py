"""The host store: pod bodies shared by the gateway's worker processes, as files on a tmpfs.

With ``--workers N`` each worker process has its own event loop and memory, but pod
uplinks are the scarce resource (issue 15): a new segment must cost **one pod fetch per
host**, however many workers serve its viewers. The workers of one host therefore share
one directory (``host_cache_dir``, by default a fresh one under ``/dev/shm``), and for
every cache key exactly one of them fetches from the pod while the others read what it
writes:

* **single-flight across processes.** The worker that gets ``flock(2)`` on the key's
  lock file fetches; it writes the pod's status and headers to a header file (atomically,
  ``rename(2)``) as soon as they arrive and appends the body to a part file chunk by chunk
  (:class:`~gateway.cache.FlightSink`). Every other worker *follows*: it reads the part
  file as it grows, so its viewers get bytes as they arrive, not after the whole segment.
  An end file written last says how many bytes there are and whether the transfer broke.
  A follower whose writer died (lock free, no end file) reports the transfer broken.
* **complete 200s are kept** as a data file plus a meta file (headers, ETag, when fetched,
  until when fresh: never for media segments, which are immutable; ``revalidate_after``
  for init segments; half a target duration for a playlist). A hit is the file's bytes,
  read and checked against the inode the lookup saw (:meth:`HostStore.read`); each worker
  then keeps the segment in its own memory cache too (:class:`gateway.cache.SegmentCache`,
  its share of ``cache_max_bytes``), so the file is read about once per worker.
* **bounded.** After each new entry the store evicts the least recently used entries
  (data file mtime = last use, refreshed at most once a second per process) until it holds
  at most ``max_bytes`` and ``max_entries``. Entries bigger than a quarter of
  ``max_bytes`` are streamed, never kept. A file evicted between a lookup and its read is
  a miss (the caller fetches again).
* **no room** (a full tmpfs): the fetching worker reserves the body's ``Content-Length``
  (``fallocate``) and the end file's slot before any other worker can see the fetch; when
  that fails it stops sharing and releases the lock, so the other workers fetch for
  themselves rather than follow a body that cannot be written.

Layout of ``root`` (mode 0700, owned by this user; every file 0600; names are the SHA-256
of the cache key (:func:`key_name`), so no key can name a path): ``<h>.lock``, ``<h>.hdr``,
``<h>.part``, ``<h>.end-<gen>`` while fetching; ``<h>.data`` and ``<h>.meta`` when kept;
``evict.lock``. With ``data_plane: nginx`` the directory may be 0750 and bodies are 0640
(nginx's workers read them through the group): nginx serves kept media segments itself, from ``<h>.data``
(:mod:`gateway.nginxconf`). Those hits do not refresh the entry's last use, so the LRU order
of segments nginx serves is the order they were fetched in (live segments are watched
within a minute of being fetched).

No sockets here: the caller passes the function that fetches from the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from gateway.cache import Flight
from gateway.errors import (
    ConfigError,
    GatewayError,
    Overloaded,
    UpstreamError,
    UpstreamRefusedGateway,
    UpstreamTimeout,
    UpstreamTooLarge,
)

log = logging.getLogger("platebridge.gateway.hoststore")

#: share of the store's filesystem the kept bodies may fill (the rest: bodies being fetched)
FS_SHARE = 0.75
#: s: fetch files (lock, header, part, end) of a key nobody fetches are swept after this long
SWEEP_AFTER = 120.0
#: s: a follower waits at most this long for the writer's headers or next bytes
FOLLOW_TIMEOUT = 120.0
_POLL_MIN, _POLL_MAX = 0.001, 0.02
#: s: a process scans the store for eviction at most this often (and after every big entry), so
#: the store may exceed ``max_bytes`` by what the workers keep in that time
EVICT_EVERY = 0.5
_TOUCH_EVERY = 1.0
_MEMO_MAX = 8192
_ERRORS: dict[str, type[GatewayError]] = {c.__name__: c for c in (
    UpstreamError, UpstreamTimeout, UpstreamTooLarge, UpstreamRefusedGateway, Overloaded)}

#: ``fetch(flight, stale)``: fill ``flight`` from the pod (never raises); ``stale`` is a complete
#: earlier answer to revalidate with ``If-None-Match`` (or None)
Fetch = Callable[[Flight, "Flight | None"], Awaitable[None]]
#: ``ttl(flight)``: seconds a complete 200 stays fresh (``math.inf``: immutable), or None: not kept
Ttl = Callable[[Flight], "float | None"]


def key_name(key: Hashable) -> str:
    """The file-name stem of a cache key (64 hex characters).

    A tuple of strings none of which holds a newline (the proxy's keys, ``(pod_id, camera_id,
    path, query)``) is named by SHA-256 of ``"pbk1\n"`` and the strings, each followed by
    ``"\n"``: the nginx data plane computes the same name to serve a kept media segment
    (``gateway/lua/platebridge_grant.lua``). Any other key by SHA-256 of ``"repr\n"`` and its
    ``repr`` (the two forms cannot meet: one starts ``pbk1``, the other ``repr``)."""
    if isinstance(key, tuple) and all(isinstance(k, str) and "\n" not in k for k in key):
        text = "pbk1\n" + "".join(k + "\n" for k in key)
    else:
        text = "repr\n" + repr(key)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Stored:
    """A kept complete 200: ``path`` of its body (``size`` bytes, inode ``ino``), the pod's
    ``headers``, when it was fetched (``fetched_at``, Unix s) and until when it is fresh
    (``fresh_until``, Unix s; ``math.inf`` for immutable media)."""

    path: Path
    size: int
    ino: int
    headers: dict[str, str]
    fetched_at: float
    fresh_until: float

    def fresh(self, now: float) -> bool:
        """Whether it may be served without asking the pod at Unix time ``now`` (not when the
        clock has gone back past its fetch: it would otherwise stay fresh that much longer)."""
        return self.fetched_at - 1.0 <= now < self.fresh_until



def open_store_dir(path: str | os.PathLike[str], *, group_read: bool = False) -> Path:
    """The store directory ``path``, created if missing (mode 0700; 0750 with ``group_read``).

    Raises :class:`ConfigError` (field ``$.host_cache_dir``) when it cannot be created or
    is not a directory owned by this user that only this user can write (another local
    user could otherwise plant bodies the gateway would serve). Only with ``group_read``
    (``data_plane: nginx``: nginx's workers read the kept segments) may its group read it;
    others never."""
    root = Path(path)
    try:
        try:
            root.mkdir(mode=0o700, parents=True)
            if group_read:
                os.chmod(root, 0o750)  # noqa: S103 - nginx reads through the group; whatever the umask
        except FileExistsError:
            pass
        st = root.lstat()  # a symlink is refused: whoever owns it could point it elsewhere later
    except OSError as exc:
        raise ConfigError(f"$.host_cache_dir: cannot use {root}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"$.host_cache_dir: {root} is not a directory (a symlink is not accepted)")
    allowed = 0o750 if group_read else 0o700
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o777 & ~allowed:
        raise ConfigError(f"$.host_cache_dir: {root} must be owned by this user (uid {os.geteuid()}) with mode "
                          f"{allowed:04o} or stricter (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
    return root


class _Lock:
    """An exclusive ``flock`` on a key's lock file (its descriptor), released at most once."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


class _Writer:
    """The :class:`~gateway.cache.FlightSink` of the worker fetching a key: header, part and end
    files. Before anything is visible to other workers it reserves the room it needs (the end
    file's slot; the body's ``Content-Length`` with ``fallocate``); when the store has no room
    it *gives up sharing*: it releases the lock at once, so every other worker fetches for
    itself instead of following a body that could not be written (never a cut-off body)."""

    def __init__(self, store: HostStore, name: str, gen: str, lock: _Lock) -> None:
        self.store, self.name, self.gen, self.lock = store, name, gen, lock
        self.size = 0
        self.failed: str | None = None  # why the body is not shared or kept (e.g. the tmpfs is full)
        self.answered = False
        self.shared = True
        self.end_fd: int | None = None
        self.fd: int | None = None
        self.ino = 0
        try:
            # the end file's slot first: writing the end later can then never fail for room
            self.end_fd = os.open(store._path(name, f"end-{gen}"), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                  0o600)
            os.write(self.end_fd, b" " * _END_SLOT)
            part = store._path(name, "part")
            with contextlib.suppress(FileNotFoundError):  # a new inode: a follower of a dead fetch keeps the old one
                os.unlink(part)
            self.fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, store.body_mode)
            if store.body_mode != 0o600:
                os.fchmod(self.fd, store.body_mode)  # not narrowed by a umask (the systemd unit's is 0077)
            self.ino = os.fstat(self.fd).st_ino
        except OSError as exc:
            self._give_up(f"cannot start: {exc.strerror or exc}")

    def _give_up(self, why: str) -> None:
        """Stop sharing: nothing more is written, and the lock goes now (other workers fetch)."""
        self.failed = self.failed or why
        if self.shared:
            self.shared = False
            self.lock.release()

    def started(self, status: int, headers: dict[str, str]) -> None:
        self.answered = True
        if not self.shared:
            return
        length = headers.get("content-length", "")
        try:
            if length.isdigit() and self.fd is not None:
                _reserve(self.fd, int(length))
            self.store._write_json(self.name, "hdr", {"gen": self.gen, "status": status, "headers": headers})
        except OSError as exc:  # no room: nobody follows this fetch
            self._give_up(f"no room in the store: {exc.strerror or exc}")

    def wrote(self, chunk: bytes) -> None:
        if not self.shared or self.failed is not None or self.fd is None:
            return
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view):]
            self.size += len(chunk)
        except OSError as exc:  # only without a Content-Length to reserve: followers get the end file's error
            self.failed = f"part file: {exc.strerror or exc}"

    def finished(self, flight: Flight) -> None:
        pass  # the store finishes the files once the fetch function returns

    def end(self, error: str | None) -> None:
        """Write the end file in its reserved slot (in place: no new room needed)."""
        if self.end_fd is None:
            return
        doc = json.dumps({"size": self.size, "error": None if error is None else error[:300]}).encode()
        with contextlib.suppress(OSError):
            os.pwrite(self.end_fd, doc.ljust(_END_SLOT), 0)

    def close(self) -> None:
        for fd in (self.fd, self.end_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.end_fd = None


_END_SLOT = 512  # bytes reserved for an end file: {"size": …, "error": up to 300 characters}
_FALLOC_FL_KEEP_SIZE = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def _reserve(fd: int, size: int) -> None:
    """Allocate ``size`` bytes for the file behind ``fd`` without changing its length (readers
    see only what was written). Raises OSError (ENOSPC) when there is no room; a filesystem
    without ``fallocate`` reserves nothing."""
    if size and _LIBC.fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))


class HostStore:
    """Cross-process single-flight store of pod bodies in ``root`` (see the module doc).

    ``max_bytes`` and ``max_entries`` bound the kept entries (bytes of bodies, count).
    ``group_read`` (``data_plane: nginx``): body files are 0640 and the directory may be 0750,
    so nginx's workers, in the directory's group, can serve kept media segments.
    Raises :class:`ConfigError` for an unusable ``root``. Thread-unsafe; one per process.
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int, max_entries: int = 20_000,
                 group_read: bool = False) -> None:
        self.root = open_store_dir(root, group_read=group_read)
        #: mode of body files: 0640 when nginx's workers (the directory's group) serve them
        self.body_mode = 0o640 if group_read else 0o600
        self.max_bytes = max_bytes
        fs = os.statvfs(self.root)
        room = int(fs.f_blocks * fs.f_frsize * FS_SHARE)
        if 0 < room < max_bytes:  # e.g. Docker's 64 MiB /dev/shm: a full tmpfs would keep nothing
            log.warning("host store %s: its filesystem holds %d MiB, so it keeps at most %d MiB of bodies instead "
                        "of cache_max_bytes (%d MiB); give it a bigger tmpfs (docker run --shm-size, or "
                        "host_cache_dir on /run)", self.root, fs.f_blocks * fs.f_frsize >> 20, room >> 20,
                        max_bytes >> 20)
            self.max_bytes = room
        self.max_entries = max_entries
        self._memo: OrderedDict[str, tuple[Stored, float]] = OrderedDict()  # name → (entry, last touch)
        self.hits = self.fetches = self.follows = self.evicted = 0
        self._evicted_at = -math.inf

    # ---- files ---------------------------------------------------------
    def _path(self, name: str, kind: str) -> Path:
        return self.root / f"{name}.{kind}"

    def _write_json(self, name: str, kind: str, doc: dict[str, object]) -> None:
        final = self._path(name, kind)
        tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(doc, separators=(",", ":")).encode())
        finally:
            os.close(fd)
        os.replace(tmp, final)

    def _read_json(self, name: str, kind: str) -> dict[str, object] | None:
        try:
            with open(self._path(name, kind), "rb") as f:
                doc = json.loads(f.read())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    # ---- lookups -------------------------------------------------------
    def lookup(self, name: str) -> Stored | None:
        """The kept entry ``name`` (see :func:`key_name`), fresh or not, or None. Marks it used."""
        now = time.time()
        memo = self._memo.get(name)
        path = self._path(name, "data")
        try:
            st = os.stat(path)
        except OSError:
            if memo is not None:
                del self._memo[name]
            return None
        if memo is None or (memo[0].ino, memo[0].size) != (st.st_ino, st.st_size):
            entry = self._load(name, path, st)
            if entry is None:
                self._memo.pop(name, None)
                return None
            memo = (entry, 0.0)
        entry, touched = memo
        if now - touched >= _TOUCH_EVERY:  # mtime = last use, for the LRU
            with contextlib.suppress(OSError):
                os.utime(path, (now, now))
            touched = now
        self._memo[name] = (entry, touched)
        self._memo.move_to_end(name)
        if len(self._memo) > _MEMO_MAX:
            self._memo.popitem(last=False)
        return entry

    def _load(self, name: str, path: Path, st: os.stat_result) -> Stored | None:
        meta = self._read_json(name, "meta")
        if meta is None or meta.get("ino") != st.st_ino or meta.get("size") != st.st_size:
            return None  # being replaced right now (data renamed before its meta): a miss
        headers = meta.get("headers")
        fetched, fresh = meta.get("fetched_at"), meta.get("fresh_until")
        if not isinstance(headers, dict) or not isinstance(fetched, int | float):
            return None
        if fresh is not None and not isinstance(fresh, int | float):
            return None
        return Stored(path=path, size=st.st_size, ino=st.st_ino,
                      headers={str(k): str(v) for k, v in headers.items()}, fetched_at=float(fetched),
                      fresh_until=math.inf if fresh is None else float(fresh))

    def read(self, entry: Stored) -> bytes | None:
        """The body of ``entry``, or None when it was evicted or replaced since the lookup."""
        try:
            with open(entry.path, "rb") as f:
                if os.fstat(f.fileno()).st_ino != entry.ino:
                    return None
                data = f.read()
        except OSError:
            return None
        return data if len(data) == entry.size else None

    # ---- single-flight ------------------------------------------------------
    async def fill(self, key: Hashable, flight: Flight, fetch: Fetch, *, ttl: Ttl, revalidate: bool = False) -> str:
        """Fill ``flight`` with the answer for ``key``: from a fresh kept entry, from the pod (this
        process holds the key's lock; a stale kept entry is passed to ``fetch`` to revalidate when
        ``revalidate``), or by following the worker that is fetching it. Returns ``"hit"``,
        ``"fetched"`` or ``"followed"``. Never raises for a failed transfer: ``flight`` finishes
        with the error (a follower whose writer died: :class:`UpstreamError`)."""
        name = key_name(key)
        deadline = time.monotonic() + FOLLOW_TIMEOUT
        while True:
            entry = self.lookup(name)
            if entry is not None and entry.fresh(time.time()) and self._copy(entry, flight):
                self.hits += 1
                return "hit"
            fd = self._try_lock(name)
            if fd is not None:
                lock = _Lock(fd)
                try:
                    entry = self.lookup(name)  # kept while we took the lock
                    if entry is not None and entry.fresh(time.time()) and self._copy(entry, flight):
                        self.hits += 1
                        return "hit"
                    stale = self._stale(entry) if revalidate and entry is not None else None
                    self.fetches += 1
                    await self._fetch(name, flight, fetch, stale, ttl, lock)
                    return "fetched"
                finally:
                    lock.release()
            if await self._follow(name, flight):
                self.follows += 1
                return "followed"
            if time.monotonic() > deadline:  # nothing to follow, nothing kept, never our turn
                flight.finish(UpstreamTimeout("no worker of this host delivered it"))
                return "followed"
            await asyncio.sleep(_POLL_MIN)  # the writer is between two steps: look again

    def _try_lock(self, name: str) -> int | None:
        """The descriptor holding the key's lock, or None when another process holds it. A lock
        on a file the sweep unlinked meanwhile is no lock: it is dropped and taken again."""
        path = self._path(name, "lock")
        for _ in range(8):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None
                raise
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
        return None

    def _locked(self, name: str) -> bool:
        """Whether some process holds the key's lock (a fetch is running)."""
        try:
            fd = os.open(self._path(name, "lock"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock, if we got it
        return False

    def _copy(self, entry: Stored, flight: Flight) -> bool:
        data = self.read(entry)
        if data is None:
            return False
        flight.start(200, dict(entry.headers))
        flight.born = time.monotonic() - max(0.0, time.time() - entry.fetched_at)
        flight.append(data)
        flight.finish()
        return True

    def _stale(self, entry: Stored) -> Flight | None:
        data = self.read(entry)
        if data is None:
            return None
        stale = Flight()
        stale.cached = True  # held here: a finished flight nobody holds lets its body go
        stale.start(200, dict(entry.headers))
        stale.append(data)
        stale.finish()
        return stale

    async def _fetch(self, name: str, flight: Flight, fetch: Fetch, stale: Flight | None, ttl: Ttl,
                     lock: _Lock) -> None:
        gen = secrets.token_hex(8)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name, "hdr"))  # a follower must never take an older fetch's headers for ours
        writer = _Writer(self, name, gen, lock)
        flight.sink = writer
        error: str | None = "the fetch was cancelled"
        kept = False
        try:
            await fetch(flight, stale)
            error = None if flight.error is None else type(flight.error).__name__ + ": " + str(flight.error)
        finally:
            flight.sink = None
            if writer.shared:
                if not writer.answered:  # failed before the pod answered: followers share the error
                    with contextlib.suppress(OSError):
                        self._write_json(name, "hdr", {"gen": gen, "status": 0, "headers": {}})
                if error is None and writer.failed is None and flight.done and flight.status == 200 \
                        and writer.size == flight.size:
                    try:
                        kept = self._keep(name, flight, ttl, writer.ino)
                    except OSError as exc:
                        log.warning("host store: cannot keep %s: %s", name[:12], exc.strerror or exc)
                writer.end(error or writer.failed)
            writer.close()
            if not kept:
                with contextlib.suppress(FileNotFoundError):
                    if writer.ino and os.stat(self._path(name, "part")).st_ino == writer.ino:
                        os.unlink(self._path(name, "part"))
        if writer.failed is not None:  # e.g. ENOSPC: make room for the next one at once
            log.warning("host store: %s not shared or kept (%s)", name[:12], writer.failed)
            self.evict()
        elif kept and (time.monotonic() - self._evicted_at >= EVICT_EVERY or flight.size >= self.max_bytes // 64):
            self.evict()

    def _keep(self, name: str, flight: Flight, ttl: Ttl, ino: int) -> bool:
        seconds = ttl(flight)
        if seconds is None or flight.size > self.max_bytes // 4:
            return False
        part, data = self._path(name, "part"), self._path(name, "data")
        st = os.stat(part)
        if st.st_ino != ino or st.st_size != flight.size:  # not the file this fetch wrote: keep nothing
            return False
        fetched = time.time() - max(0.0, time.monotonic() - flight.born)
        os.replace(part, data)
        self._write_json(name, "meta", {"ino": ino, "size": flight.size, "headers": flight.headers,
                                        "fetched_at": fetched,
                                        "fresh_until": None if math.isinf(seconds) else fetched + seconds})
        return True

    async def _follow(self, name: str, flight: Flight) -> bool:
        """Stream the body another worker is fetching into ``flight``. False when there was
        nothing to follow (no fetch running, or it ended before we could read it): the caller
        looks again (the answer may be kept now)."""
        poll = _POLL_MIN
        deadline = time.monotonic() + FOLLOW_TIMEOUT
        hdr = None
        while hdr is None:
            hdr = self._read_json(name, "hdr")
            if hdr is not None:
                break
            if not self._locked(name):
                return False  # finished (kept: a hit now) or died before its headers
            if time.monotonic() > deadline:
                flight.finish(UpstreamTimeout("the worker fetching it sent nothing"))
                return True
            await asyncio.sleep(poll)
            poll = min(_POLL_MAX, poll * 2)
        gen, status, headers = hdr.get("gen"), hdr.get("status"), hdr.get("headers")
        if not isinstance(gen, str) or not isinstance(status, int) or not isinstance(headers, dict):
            return False
        end_kind = f"end-{gen}"
        if status == 0:  # a fetch that failed before the pod answered: its error is ours if it is the latest
            while self._locked(name) and self._read_json(name, "hdr") == hdr and time.monotonic() < deadline:
                await asyncio.sleep(poll)  # its writer is finishing, or a new fetch is replacing the header
                poll = min(_POLL_MAX, poll * 2)
            end = self._read_json(name, end_kind)
            if end is None or self._read_json(name, "hdr") != hdr:
                return False
            flight.finish(_error(str(end.get("error") or "UpstreamError: pod unreachable")))
            return True
        try:
            fd = os.open(self._path(name, "part"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # already kept (renamed) or given up: once it is over, look again
            while self._read_json(name, end_kind) is None and self._locked(name) and time.monotonic() < deadline:
                await asyncio.sleep(poll)
                poll = min(_POLL_MAX, poll * 2)
            return False
        try:
            if self._read_json(name, "hdr") != hdr:
                return False  # a newer fetch's part file (it removes the header first): look again
            flight.start(status, {str(k): str(v) for k, v in headers.items()})
            got = 0
            poll = _POLL_MIN
            deadline = time.monotonic() + FOLLOW_TIMEOUT
            while True:
                chunk = os.read(fd, 256 * 1024)
                if chunk:
                    got += len(chunk)
                    flight.append(chunk)
                    poll = _POLL_MIN
                    deadline = time.monotonic() + FOLLOW_TIMEOUT
                    continue
                end = self._read_json(name, end_kind)
                if end is not None:
                    size = end.get("size")
                    if isinstance(size, int) and got < size:
                        continue  # the last bytes landed after our read
                    err = end.get("error")
                    flight.finish(_error(str(err)) if err else None)
                    return True
                # our writer is gone: another fetch replaced its header, or nobody holds the lock
                gone = self._read_json(name, "hdr") != hdr or not self._locked(name)
                if gone and self._read_json(name, end_kind) is None:  # (it did not just finish)
                    flight.finish(UpstreamError("the worker fetching it stopped mid-transfer"))
                    return True
                if gone:
                    continue  # it finished meanwhile: read the rest, then its end file
                if time.monotonic() > deadline:
                    flight.finish(UpstreamTimeout("the transfer being followed stalled"))
                    return True
                await asyncio.sleep(poll)
                poll = min(_POLL_MAX, poll * 2)
        except Overloaded as exc:  # our own memory budget refused the bytes
            flight.finish(exc)
            return True
        finally:
            os.close(fd)

    # ---- bounds -------------------------------------------------------------
    def evict(self) -> int:
        """Delete least recently used kept entries until the store holds at most ``max_bytes``
        and ``max_entries``, and sweep
        fetch files nobody has used for :data:`SWEEP_AFTER` s. One process at a time (others
        skip). Returns the entries deleted."""
        lock = os.open(self.root / "evict.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0
            return self._evict_locked()
        finally:
            os.close(lock)

    def _evict_locked(self) -> int:
        self._evicted_at = time.monotonic()
        now = time.time()
        kept: list[tuple[float, int, str]] = []  # (last use, bytes, name)
        loose: list[tuple[float, str, str]] = []  # (mtime, name, kind) of fetch files and metas
        with os.scandir(self.root) as it:
            for e in it:
                stem, _, kind = e.name.partition(".")
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if kind == "data":
                    kept.append((st.st_mtime, st.st_size, stem))
                elif kind in ("hdr", "part", "lock", "meta") or kind.startswith("end-") or kind.endswith(".tmp"):
                    loose.append((st.st_mtime, stem, kind))
        total = sum(size for _, size, _ in kept)
        count = len(kept)
        kept.sort()
        deleted = 0
        for _, size, name in kept:
            if total <= self.max_bytes and count <= self.max_entries:
                break
            for kind in ("data", "meta"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(name, kind))
            self._memo.pop(name, None)
            total -= size
            count -= 1
            deleted += 1
        for mtime, name, kind in loose:
            if now - mtime < SWEEP_AFTER:
                continue
            if kind == "meta" and (self._path(name, "data")).exists():
                continue  # a kept entry's meta
            if kind == "lock":
                self._sweep_lock(name)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / f"{name}.{kind}")
        self.evicted += deleted
        return deleted

    def _sweep_lock(self, name: str) -> None:
        """Delete an idle key's lock file while holding its lock, so nobody can hold a lock on a
        file that is gone (:meth:`_try_lock` also checks the inode it locked is still linked)."""
        path = self._path(name, "lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except OSError:
            pass  # in use, or already gone
        finally:
            os.close(fd)

    def size_bytes(self) -> int:
        """Bytes of kept bodies now in the store (a directory scan)."""
        with os.scandir(self.root) as it:
            return sum(e.stat(follow_symlinks=False).st_size for e in it if e.name.endswith(".data"))


def _error(text: str) -> GatewayError:
    """The gateway error a writer's end file names (``"<Class>: <message>"``), as the same class."""
    cls_name, _, message = text.partition(": ")
    return _ERRORS.get(cls_name, UpstreamError)(message or text)
