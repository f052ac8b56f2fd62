"""The pod's durable SQLite file (shared by the outbox and the upload queue).

Created with mode 0600 in a 0700 directory (it holds plates and signed URLs),
in WAL mode with ``synchronous=FULL`` so a committed row survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path


def open_sqlite(path: str | os.PathLike[str], schema: str) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` and apply ``schema`` (idempotent SQL).

    Autocommit connection usable from the event-loop thread. Raises
    ``sqlite3.OperationalError`` when WAL cannot be enabled, ``OSError`` when
    the file cannot be created.
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
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception) on an autocommit connection."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
