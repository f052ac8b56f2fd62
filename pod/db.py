"""The pod's durable SQLite state file (outbox, upload queue, clip jobs) and its self-healing.

Created with mode 0600 in a 0700 directory (it holds plates and signed URLs), in WAL mode
with ``synchronous=FULL`` so a committed row survives a power cut.

:class:`StateDB` is one connection to that file, shared by every store in the agent (so
one transaction can write a detection and its clip job together), used from the event-loop
thread only: every transaction is short and never spans an ``await``. Other processes
(``platebridge-pod outbox …``) may open the same file meanwhile: WAL lets them read while
the agent writes, and ``busy_timeout`` makes a writer wait for the other's short
transaction instead of failing.

**Self-healing.** SD cards corrupt. When the file cannot be read as a database (``file is
not a database``, ``database disk image is malformed``, ``PRAGMA quick_check`` failing, or a
write-ahead log whose checksum chain breaks before later committed frames —
:func:`pod.salvage.wal_damaged`), :meth:`StateDB.heal`:

1. closes the connection and moves the file, its ``-wal`` and ``-shm`` aside as
   ``<name>.corrupt-<UTC timestamp>[-wal|-shm]`` (kept for diagnosis, never deleted here);
2. salvages every row it can still read: first through SQLite itself (table by table,
   on a scratch copy so the kept files stay as they were), and when that fails, from the
   raw pages (:func:`pod.salvage.scan`, WAL frames overlaid), matching records to the
   known tables by shape; rows are deduplicated by each table's key;
3. creates a fresh file with the salvaged rows, logs what happened (warning), counts it
   (``platebridge_pod_state_recovered_total``) and keeps a :class:`Recovery` for
   ``/health`` (also stored in the fresh file's ``meta`` table, so it is still visible
   after a restart).

The agent keeps running through all of this: no restart loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from pod import salvage

log = logging.getLogger("platebridge.pod.db")

SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
_CORRUPT_CODES = frozenset({SQLITE_CORRUPT, SQLITE_NOTADB})
_SUFFIXES = ("", "-wal", "-shm")


def is_corruption(exc: BaseException) -> bool:
    """True for SQLite errors that mean the file's content is damaged (``SQLITE_CORRUPT``,
    ``SQLITE_NOTADB``), as opposed to a busy, full or unwritable database."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _CORRUPT_CODES:
        return True
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or isinstance(exc, (_QuickCheckFailed, _WalDamaged))


class _QuickCheckFailed(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage."""


class _WalDamaged(sqlite3.DatabaseError):
    """The write-ahead log's checksum chain breaks before later committed frames."""


def open_sqlite(path: str | os.PathLike[str], schema: str) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` and apply ``schema`` (idempotent SQL).

    Autocommit connection usable from the event-loop thread. Raises
    ``sqlite3.OperationalError`` when WAL cannot be enabled, ``sqlite3.DatabaseError``
    when the file is not a database, ``OSError`` when the file cannot be created.
    """
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(p, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(p, 0o600)
    db = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"could not switch {p} to WAL (got {mode!r})")
        db.execute("PRAGMA synchronous=FULL")
        if schema:
            db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception) on an autocommit
    connection. Re-entrant: inside a transaction already open on ``db`` it only runs the
    body, so the outer transaction commits (or rolls back) everything at once."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@dataclass(frozen=True)
class Table:
    """One table of the state file: its ``name``, ``schema`` (idempotent ``CREATE TABLE``
    and ``CREATE INDEX`` SQL), ``key`` (the unique column salvaged rows are deduplicated
    by), ``min_columns`` (columns of its first version: older rows may have only those),
    ``added`` (``{column: declaration}`` added later with ``ALTER TABLE ADD COLUMN``, in
    order; the declaration needs a default or must allow NULL) and ``indexes``
    (idempotent ``CREATE INDEX`` SQL run after those columns exist)."""

    name: str
    schema: str
    key: str
    min_columns: int
    added: dict[str, str] = field(default_factory=dict)
    indexes: str = ""


META = Table("meta", "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);", "k", 2)
"""Counters and notes that must outlive a restart (e.g. rows dropped, the last recovery)."""


class Recovery(msgspec.Struct, frozen=True):
    """One self-healing of a state file: which ``store`` (e.g. ``"state"``, ``"whitelist"``),
    the damaged file's ``path`` and where it was moved (``moved_to``), the error that
    triggered it (``reason``), when (``at``, Unix s), and rows salvaged per table
    (``salvaged``) with the method used (``method``: ``"sqlite"``, ``"pages"`` or ``"none"``)."""

    store: str
    path: str
    moved_to: str
    reason: str
    at: float
    salvaged: dict[str, int]
    method: str


def move_aside(path: Path, *, suffixes: Sequence[str] = _SUFFIXES, now: float | None = None) -> Path:
    """Rename ``path`` (and ``path`` + each of ``suffixes`` that exists) to
    ``<name>.corrupt-<YYYYmmddTHHMMSSZ>`` (+ a counter when taken). Returns the new path
    of ``path``. Raises ``OSError`` when a rename fails."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(f"{aside}{s}").exists() for s in suffixes):
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
    for s in suffixes:
        src = Path(f"{path}{s}")
        if src.exists():
            os.replace(src, f"{aside}{s}")
            with contextlib.suppress(OSError):
                os.chmod(f"{aside}{s}", 0o600)
    return aside


def _affinity(decl: str) -> str:
    """SQLite type affinity of a declared column type (https://www.sqlite.org/datatype3.html §3.1)."""
    t = decl.upper()
    if "INT" in t:
        return "INTEGER"
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if not t or "BLOB" in t:
        return "BLOB"
    return "REAL"


class StateDB:
    """The state file at ``path`` holding ``tables`` (plus :data:`META`), self-healing.

    ``name`` labels it in logs, metrics and ``/health``. ``heal`` (default True) enables
    :meth:`heal` on open; with ``heal=False`` (operator tools running next to the agent)
    a damaged file raises ``sqlite3.DatabaseError`` and is left alone.
    ``on_recovery(Recovery)`` is called after every healing (the agent counts it).
    :attr:`recoveries` lists the healings of this object. Use from one thread (the
    event loop). Raises ``sqlite3.Error``/``OSError`` when even a fresh file cannot be made.
    """

    def __init__(self, path: str | os.PathLike[str], tables: Sequence[Table], *, name: str = "state",
                 heal: bool = True, on_recovery: Callable[[Recovery], None] | None = None) -> None:
        self.path = Path(path)
        self.name = name
        self.tables = [META, *[t for t in tables if t.name != META.name]]
        self.on_recovery = on_recovery
        self.recoveries: list[Recovery] = []
        self._conn: sqlite3.Connection | None = None
        self._heal = heal
        self._open()

    # --- connection ---

    @property
    def conn(self) -> sqlite3.Connection:
        """The live connection (replaced by :meth:`heal`; do not keep it)."""
        if self._conn is None:
            raise sqlite3.ProgrammingError(f"{self.name} database is closed")
        return self._conn

    def tx(self) -> contextlib.AbstractContextManager[None]:
        """A re-entrant ``BEGIN IMMEDIATE`` … ``COMMIT`` (see :func:`transaction`)."""
        return transaction(self.conn)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    @property
    def schema(self) -> str:
        """Every table's schema SQL."""
        return "\n".join(t.schema for t in self.tables)

    def _connect(self) -> sqlite3.Connection:
        conn = open_sqlite(self.path, self.schema)
        try:
            for t in self.tables:
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({t.name})")}
                for col, decl in t.added.items():
                    if col not in have:
                        conn.execute(f"ALTER TABLE {t.name} ADD COLUMN {col} {decl}")
                if t.indexes:
                    conn.executescript(t.indexes)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self) -> None:
        try:
            wal = Path(f"{self.path}-wal")
            if self.path.exists() and wal.exists() and wal.stat().st_size and \
                    salvage.wal_damaged(wal.read_bytes()):
                raise _WalDamaged("write-ahead log damaged: its checksum chain breaks before later commits")
            conn = self._connect()
            try:
                row = conn.execute("PRAGMA quick_check(1)").fetchone()
                if row is None or str(row[0]).lower() != "ok":
                    raise _QuickCheckFailed(f"quick_check: {row[0] if row else 'no answer'}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        except sqlite3.DatabaseError as exc:
            if not (self._heal and is_corruption(exc)):
                raise
            self.heal(exc)

    # --- counters and notes (table meta) ---

    def bump(self, counter: str, n: int = 1) -> int:
        """Add ``n`` to the persistent counter ``counter``; returns its new value."""
        with self.tx():
            self.conn.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = CAST(v AS INTEGER) + ?",
                (f"counter:{counter}", str(n), n))
            row = self.conn.execute("SELECT v FROM meta WHERE k = ?", (f"counter:{counter}",)).fetchone()
        return int(row[0])

    def counters(self, prefix: str = "") -> dict[str, int]:
        """Persistent counters whose name starts with ``prefix`` (prefix removed)."""
        rows = self.conn.execute("SELECT k, v FROM meta WHERE k LIKE ?", (f"counter:{prefix}%",)).fetchall()
        out: dict[str, int] = {}
        for k, v in rows:
            with contextlib.suppress(ValueError):
                out[k[len("counter:") + len(prefix):]] = int(v)
        return out

    def note(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-able) under ``key`` in the meta table."""
        with self.tx():
            self.conn.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                              (f"note:{key}", msgspec.json.encode(value).decode()))

    def read_note(self, key: str) -> Any:
        """The value stored by :meth:`note`, or None."""
        row = self.conn.execute("SELECT v FROM meta WHERE k = ?", (f"note:{key}",)).fetchone()
        if row is None:
            return None
        try:
            return msgspec.json.decode(row[0])
        except msgspec.DecodeError:
            return None

    def last_recovery(self) -> Recovery | None:
        """The most recent healing of this file (this process or an earlier one), or None."""
        if self.recoveries:
            return self.recoveries[-1]
        raw = self.read_note("last_recovery")
        try:
            return msgspec.convert(raw, Recovery) if raw else None
        except msgspec.ValidationError:
            return None

    # --- self-healing ---

    def heal(self, error: BaseException) -> Recovery:
        """Move the damaged file aside, salvage what can be read into a fresh one, and go on
        (see the module docs). ``error`` is what showed the damage. Returns the
        :class:`Recovery`. Raises ``OSError``/``sqlite3.Error`` only when the fresh file
        cannot be created (e.g. the disk is unwritable)."""
        self.close()
        reason = f"{type(error).__name__}: {error}"
        now = time.time()
        aside = move_aside(self.path, now=now)
        salvaged, method = self._salvage(aside)
        conn = self._connect()
        counts: dict[str, int] = {}
        with transaction(conn):
            for t in self.tables:
                n = 0
                for row in salvaged.get(t.name, []):
                    cols = list(row)
                    marks = ", ".join("?" * len(cols))
                    cur = conn.execute(f"INSERT OR IGNORE INTO {t.name} ({', '.join(cols)}) VALUES ({marks})",
                                       [row[c] for c in cols])
                    n += max(0, cur.rowcount)
                if t.name != META.name:
                    counts[t.name] = n
        self._conn = conn
        rec = Recovery(self.name, str(self.path), str(aside), reason[:300], now, counts, method)
        self.recoveries.append(rec)
        with contextlib.suppress(sqlite3.Error):
            self.bump("recovered")
            self.note("last_recovery", msgspec.to_builtins(rec))
        log.warning("%s database %s was damaged (%s): moved aside to %s; salvaged %s (%s); running on a fresh file",
                    self.name, self.path, reason[:200], aside.name,
                    ", ".join(f"{k} {v}" for k, v in counts.items()) or "nothing", method)
        if self.on_recovery is not None:
            self.on_recovery(rec)
        return rec

    def _columns(self, conn: sqlite3.Connection, table: Table) -> list[salvage.Column]:
        info = conn.execute(f"PRAGMA table_info({table.name})").fetchall()
        pks = [r for r in info if r[5]]
        return [salvage.Column(r[1], _affinity(r[2]), bool(r[3]),
                               rowid_alias=bool(r[5]) and len(pks) == 1 and r[2].upper() == "INTEGER")
                for r in info]

    def _salvage(self, aside: Path) -> tuple[dict[str, list[dict[str, Any]]], str]:
        """Rows per table read from the damaged file at ``aside`` (a scratch copy is used)."""
        with tempfile.TemporaryDirectory(prefix="pb-salvage-", dir=self.path.parent) as tmp:
            copy = Path(tmp) / "copy.sqlite3"
            for s in ("", "-wal"):
                if Path(f"{aside}{s}").exists():
                    with contextlib.suppress(OSError):
                        shutil.copyfile(f"{aside}{s}", f"{copy}{s}")
            scratch = sqlite3.connect(":memory:")
            try:
                scratch.executescript(self.schema)
                for t in self.tables:
                    for col, decl in t.added.items():
                        with contextlib.suppress(sqlite3.Error):
                            scratch.execute(f"ALTER TABLE {t.name} ADD COLUMN {col} {decl}")
                shapes = {t.name: self._columns(scratch, t) for t in self.tables}
            finally:
                scratch.close()
            rows, complete = self._salvage_sqlite(copy, shapes)
            if complete:
                return rows, "sqlite"
            db_bytes = _read(aside)
            wal_bytes = _read(Path(f"{aside}-wal"))
            found = self._salvage_pages(db_bytes, wal_bytes, shapes)
        method = "pages"
        for t in self.tables:
            have = {r.get(t.key) for r in rows.get(t.name, [])}
            extra = [r for r in found.get(t.name, []) if r.get(t.key) not in have]
            if extra:
                rows.setdefault(t.name, []).extend(extra)
        if not any(rows.values()):
            method = "none"
        return rows, method

    def _salvage_sqlite(self, copy: Path, shapes: dict[str, list[salvage.Column]]
                        ) -> tuple[dict[str, list[dict[str, Any]]], bool]:
        """Rows read through SQLite; ``complete`` is False when any table could not be read
        to its end (or the file not opened, or its WAL is damaged)."""
        out: dict[str, list[dict[str, Any]]] = {}
        wal = Path(f"{copy}-wal")
        if wal.exists() and salvage.wal_damaged(_read(wal)):
            return out, False
        try:
            conn = sqlite3.connect(copy, isolation_level=None)
        except sqlite3.Error:
            return out, False
        complete = True
        try:
            for t in self.tables:
                names = {c.name for c in shapes[t.name]}
                got: list[dict[str, Any]] = []
                try:
                    cur = conn.execute(f"SELECT * FROM {t.name}")
                    cols = [d[0] for d in cur.description]
                    for r in cur:
                        got.append({c: v for c, v in zip(cols, r, strict=True) if c in names})
                except sqlite3.DatabaseError as exc:
                    if "no such table" not in str(exc):
                        complete = False
                out[t.name] = got
        except sqlite3.Error:
            complete = False
        finally:
            conn.close()
        return out, complete

    def _salvage_pages(self, db: bytes, wal: bytes | None, shapes: dict[str, list[salvage.Column]]
                       ) -> dict[str, list[dict[str, Any]]]:
        """Rows read from the raw pages, matched to tables by shape, deduplicated by key
        (the highest rowid wins: the latest insert)."""
        by_table: dict[str, dict[Any, tuple[int, dict[str, Any]]]] = {}
        mins = {t.name: t.min_columns for t in self.tables}
        keys = {t.name: t.key for t in self.tables}
        for rec in salvage.scan(db, wal):
            fits = [name for name, cols in shapes.items()
                    if salvage.matches(rec.values, cols, min_columns=mins[name])]
            if len(fits) != 1:
                continue
            name = fits[0]
            cols = shapes[name]
            row = {c.name: (rec.rowid if c.rowid_alias else v) for c, v in zip(cols, rec.values, strict=False)}
            key = row.get(keys[name])
            if key is None:
                continue
            prev = by_table.setdefault(name, {}).get(key)
            if prev is None or rec.rowid > prev[0]:
                by_table[name][key] = (rec.rowid, row)
        return {name: [r for _, r in sorted(rows.values(), key=lambda x: x[0])] for name, rows in by_table.items()}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
