"""Read what is left of a damaged SQLite database file (pure: bytes in, records out).

Used when the pod's state file (outbox, upload queue, clip jobs) cannot be opened or is
reported malformed: :class:`pod.db.StateDB` moves it aside and salvages the rows it can
still read into a fresh file. Debian's ``sqlite3`` shell is built without the
``sqlite_dbpage`` virtual table, so its ``.recover`` command cannot run there; this module
does the part we need ourselves, from the file format (https://www.sqlite.org/fileformat2.html):

* **Pages.** The page size comes from the database header (offset 16, big-endian; 1 means
  65536), else from the WAL header, else the likeliest of the valid sizes is guessed (the
  one that yields the most records). Reserved bytes per page: header offset 20.
* **WAL overlay** (§4): a write-ahead log holds newer copies of pages. Frames (24-byte
  header + page) whose salts match the WAL header belong to the current log; the last
  copy of each page up to the last commit frame (non-zero "database size" field) wins,
  as SQLite itself would read it. Frames after the last commit are ignored. Checksums are
  not required (a damaged frame must not hide the commits after it), and a damaged WAL
  header is worked around: page size and salt are then read off the frames themselves.
* **Free pages** (§1.5): pages on the freelist (trunk list from header offset 32) still
  hold old cells; they are skipped when the header is readable, so deleted rows do not
  come back from the dead.
* **Table b-tree leaf pages** (§1.6, page type ``0x0D``; page 1 after its 100-byte
  header): every cell the cell-pointer array names is read — payload size and rowid
  varints, the local part of the payload (local size per §1.6) and the overflow chain.
* **Records** (§2.1): header size, serial types, values (NULL, big-endian integers of
  1–8 bytes, IEEE 754 doubles, 0, 1, BLOBs, UTF-8 TEXT).

Which table a record belonged to is not stored in the cell; callers match records to
their tables by shape (:func:`matches`). Every function here is defensive: damaged cells,
pages and frames are skipped, never raised.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Column", "Record", "matches", "parse_record", "read_varint", "scan", "wal_damaged"]

HEADER_MAGIC = b"SQLite format 3\x00"
WAL_MAGICS = (0x377F0682, 0x377F0683)
LEAF_TABLE = 0x0D
_PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)
Value = None | int | float | str | bytes


@dataclass(frozen=True)
class Record:
    """One row read from a table b-tree leaf: its ``page`` number, ``rowid`` and ``values``
    in column order (an ``INTEGER PRIMARY KEY`` column is stored as NULL: use ``rowid``)."""

    page: int
    rowid: int
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Column:
    """What a salvaged value must look like for one column: its ``name``, declared type
    affinity (``TEXT``, ``INTEGER``, ``REAL``, ``BLOB``), whether it is ``NOT NULL`` and
    whether it is the rowid alias (``INTEGER PRIMARY KEY``, stored as NULL)."""

    name: str
    affinity: str
    notnull: bool
    rowid_alias: bool = False


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """SQLite's big-endian variable-length integer at ``pos`` (1–9 bytes; the ninth byte
    contributes all 8 bits). Returns ``(value, next position)``. Raises ``IndexError``
    when ``buf`` ends inside it."""
    value = 0
    for i in range(8):
        b = buf[pos + i]
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos + i + 1
    value = (value << 8) | buf[pos + 8]
    return value, pos + 9


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def parse_record(payload: bytes) -> tuple[Value, ...] | None:
    """The values of one record (file format §2.1), or None when it is not a well-formed
    record (bad header, reserved serial types 10/11, values running past the payload,
    TEXT that is not UTF-8)."""
    try:
        hdr_size, pos = read_varint(payload, 0)
        if hdr_size < 1 or hdr_size > len(payload):
            return None
        types: list[int] = []
        while pos < hdr_size:
            t, pos = read_varint(payload, pos)
            types.append(t)
        if pos != hdr_size:
            return None
        out: list[Value] = []
        p = hdr_size
        for t in types:
            if t == 0:
                out.append(None)
            elif 1 <= t <= 6:
                n = (1, 2, 3, 4, 6, 8)[t - 1]
                if p + n > len(payload):
                    return None
                out.append(_signed(int.from_bytes(payload[p:p + n], "big"), 8 * n))
                p += n
            elif t == 7:
                if p + 8 > len(payload):
                    return None
                out.append(struct.unpack(">d", payload[p:p + 8])[0])
                p += 8
            elif t in (8, 9):
                out.append(t - 8)
            elif t in (10, 11):
                return None
            else:
                n = (t - 12) // 2 if t % 2 == 0 else (t - 13) // 2
                if p + n > len(payload):
                    return None
                raw = bytes(payload[p:p + n])
                p += n
                if t % 2 == 0:
                    out.append(raw)
                else:
                    out.append(raw.decode("utf-8"))
        if p != len(payload):
            return None  # trailing bytes: not one record
        return tuple(out)
    except (IndexError, UnicodeDecodeError, struct.error):
        return None


def _u16(b: bytes, p: int) -> int:
    return int.from_bytes(b[p:p + 2], "big")


def _u32(b: bytes, p: int) -> int:
    return int.from_bytes(b[p:p + 4], "big")


def _header_page_size(page1: bytes) -> tuple[int, int] | None:
    """(page size, reserved bytes) from a readable database header, else None."""
    if len(page1) < 100 or page1[:16] != HEADER_MAGIC:
        return None
    size = _u16(page1, 16)
    size = 65536 if size == 1 else size
    if size not in _PAGE_SIZES:
        return None
    reserved = page1[20]
    if reserved >= size - 480:
        return None
    return size, reserved


def _wal_checksum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    """SQLite's WAL checksum (file format §4.1) of ``data`` (a multiple of 8 bytes),
    continuing from ``(s0, s1)``; words in big- or little-endian order as the magic says."""
    n = len(data) // 4
    words = struct.unpack((">" if big else "<") + f"{n}I", data[:4 * n])
    mask = 0xFFFFFFFF
    for i in range(0, n - 1, 2):
        s0 = (s0 + words[i] + s1) & mask
        s1 = (s1 + words[i + 1] + s0) & mask
    return s0, s1


def wal_damaged(wal: bytes) -> bool:
    """True when a write-ahead log holds committed-looking frames (salts of the current
    log) *after* a frame whose checksum is wrong: SQLite stops reading at the first bad
    frame (§4.3), so those later transactions would be dropped silently. A bad or torn
    frame at the very end (a write cut short by a crash) is normal and not damage."""
    if len(wal) < 32:
        return False
    size = _u32(wal, 8)
    if _u32(wal, 0) not in WAL_MAGICS or size not in _PAGE_SIZES:
        return len(wal) >= 32 + 24 + 512  # a header SQLite cannot read (it drops the log), with frames after it
    big = _u32(wal, 0) == 0x377F0683
    s0, s1 = _wal_checksum(wal[:24], 0, 0, big)
    if (s0, s1) != (_u32(wal, 24), _u32(wal, 28)):
        return len(wal) >= 32 + 24 + size
    salt = wal[16:24]
    frame = 24 + size
    pos = 32
    broken = False
    while pos + frame <= len(wal):
        if wal[pos + 8:pos + 16] == salt:
            if broken:
                return True
            c0, c1 = _wal_checksum(wal[pos:pos + 8] + wal[pos + 24:pos + frame], s0, s1, big)
            if (c0, c1) == (_u32(wal, pos + 16), _u32(wal, pos + 20)):
                s0, s1 = c0, c1
            else:
                broken = True
        elif not broken:
            broken = True  # a frame of the current log with a damaged header, or stale frames follow
        pos += frame
    return False


def _wal_layout(wal: bytes, hint: int | None) -> tuple[int, bytes] | None:
    """(page size, salt) of a WAL: from its header, or — when the header is damaged —
    found from the frames themselves: the page size (``hint`` first) and byte order under
    which frames carry the checksum chained from the frame before them (§4.1); the salt
    is then the one those frames share."""
    if len(wal) >= 32 and _u32(wal, 0) in WAL_MAGICS and _u32(wal, 8) in _PAGE_SIZES:
        return _u32(wal, 8), wal[16:24]
    best: tuple[int, int, bytes] | None = None
    for size in ([hint] if hint else []) + [x for x in _PAGE_SIZES if x != hint]:
        frame = 24 + size
        for big in (False, True):
            salts: Counter[bytes] = Counter()
            pos = 32 + frame
            while pos + frame <= len(wal) and sum(salts.values()) < 8:
                prev = pos - frame
                chk = _wal_checksum(wal[pos:pos + 8] + wal[pos + 24:pos + frame], _u32(wal, prev + 16),
                                    _u32(wal, prev + 20), big)
                if chk == (_u32(wal, pos + 16), _u32(wal, pos + 20)) and wal[pos + 8:pos + 16] == \
                        wal[prev + 8:prev + 16]:
                    salts[wal[pos + 8:pos + 16]] += 1
                pos += frame
            if salts:
                salt, n = salts.most_common(1)[0]
                if best is None or n > best[0]:
                    best = (n, size, salt)
    return None if best is None else (best[1], best[2])


def _wal_frames(wal: bytes, hint: int | None = None) -> tuple[int, dict[int, bytes]] | None:
    """(page size, {page number: newest committed copy}) of a WAL, or None when no frame
    layout can be found. ``hint``: the database's page size, when known."""
    layout = _wal_layout(wal, hint)
    if layout is None:
        return None
    size, salt = layout
    frame = 24 + size
    pending: list[tuple[int, bytes]] = []
    committed: dict[int, bytes] = {}
    pos = 32
    while pos + frame <= len(wal):
        pgno, db_size = _u32(wal, pos), _u32(wal, pos + 4)
        if wal[pos + 8:pos + 16] == salt and pgno >= 1:
            pending.append((pgno, wal[pos + 24:pos + frame]))
            if db_size:  # a commit frame: everything up to here is committed
                for n, data in pending:
                    committed[n] = data
                pending = []
        pos += frame
    return size, committed


def _pages(db: bytes, size: int, wal_pages: dict[int, bytes]) -> dict[int, bytes]:
    pages = {n + 1: db[n * size:(n + 1) * size] for n in range(len(db) // size)}
    pages.update(wal_pages)
    return pages


def _free_pages(pages: dict[int, bytes], usable: int) -> set[int]:
    """Pages on the freelist (trunks and leaves), from header offset 32 of page 1."""
    page1 = pages.get(1, b"")
    if _header_page_size(page1) is None:
        return set()
    free: set[int] = set()
    trunk = _u32(page1, 32)
    while trunk and trunk in pages and trunk not in free:
        data = pages[trunk]
        free.add(trunk)
        count = _u32(data, 4)
        if count > usable // 4 - 2:
            break
        free.update(_u32(data, 8 + 4 * i) for i in range(count))
        trunk = _u32(data, 0)
    return free


def _local_size(payload: int, usable: int) -> int:
    """Bytes of a table-leaf cell's payload stored on the page itself (§1.6)."""
    x = usable - 35
    if payload <= x:
        return payload
    m = ((usable - 12) * 32 // 255) - 23
    k = m + (payload - m) % (usable - 4)
    return k if k <= x else m


def _leaf_records(n: int, page: bytes, pages: dict[int, bytes], usable: int) -> Iterable[Record]:
    off = 100 if n == 1 else 0
    if len(page) < off + 8 or page[off] != LEAF_TABLE:
        return
    cells = _u16(page, off + 3)
    if cells > (usable - off - 8) // 2:
        return
    for i in range(cells):
        ptr = _u16(page, off + 8 + 2 * i)
        if ptr < off + 8 or ptr >= usable:
            continue
        try:
            size, q = read_varint(page, ptr)
            rowid, q = read_varint(page, q)
            rowid = _signed(rowid, 64)
            if size > 64 * 1024 * 1024:
                continue
            local = _local_size(size, usable)
            data = bytearray(page[q:q + local])
            if len(data) != local:
                continue
            if local < size:  # overflow chain (§1.6): 4-byte next page, then content
                nxt = _u32(page, q + local)
                seen: set[int] = set()
                while len(data) < size and nxt and nxt in pages and nxt not in seen:
                    seen.add(nxt)
                    ov = pages[nxt]
                    data += ov[4:usable][:size - len(data)]
                    nxt = _u32(ov, 0)
                if len(data) != size:
                    continue
            values = parse_record(bytes(data))
        except IndexError:
            continue
        if values is not None:
            yield Record(n, rowid, values)


def scan(db: bytes, wal: bytes | None = None) -> list[Record]:
    """Every record found on the table b-tree leaf pages of a database image ``db`` (the
    file's bytes) overlaid with the committed frames of its write-ahead log ``wal`` (the
    ``-wal`` file's bytes, or None). Free pages are skipped when the header says which
    they are. Never raises; returns [] when nothing is readable."""
    hdr = _header_page_size(db[:100])
    wal_info = _wal_frames(wal, hdr[0] if hdr else None) if wal else None
    if hdr is None and wal_info is not None and 1 in wal_info[1]:
        hdr = _header_page_size(wal_info[1][1])
    if hdr is not None:
        candidates = [hdr]
    elif wal_info is not None:
        candidates = [(wal_info[0], 0)]
    else:
        candidates = [(s, 0) for s in _PAGE_SIZES]
    best: list[Record] = []
    for size, reserved in candidates:
        wal_pages = wal_info[1] if wal_info is not None and wal_info[0] == size else {}
        pages = _pages(db, size, wal_pages)
        usable = size - reserved
        free = _free_pages(pages, usable)
        found = [r for n in sorted(pages) if n not in free for r in _leaf_records(n, pages[n], pages, usable)]
        if len(found) > len(best):
            best = found
    return best


def matches(values: tuple[Value, ...], columns: list[Column], *, min_columns: int) -> bool:
    """Whether a record's ``values`` fit a table with ``columns``: between ``min_columns``
    and ``len(columns)`` values (columns added later by ``ALTER TABLE ADD COLUMN`` are
    missing from older rows), each of the type its affinity stores (REAL also as an
    integer, SQLite's on-disk optimisation), no NULL in a ``NOT NULL`` column, and the
    rowid alias stored as NULL."""
    if not min_columns <= len(values) <= len(columns):
        return False
    for value, col in zip(values, columns, strict=False):
        if col.rowid_alias:
            if value is not None:
                return False
            continue
        if value is None:
            if col.notnull:
                return False
            continue
        ok = {
            "TEXT": isinstance(value, str),
            "INTEGER": isinstance(value, int),
            "REAL": isinstance(value, (int, float)),
            "BLOB": isinstance(value, (bytes, str)),
        }.get(col.affinity, True)
        if not ok:
            return False
    return True
