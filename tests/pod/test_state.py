"""The pod's state file heals itself (pod/db.py) and what is left of a damaged one is read
back (pod/salvage.py): real SQLite files, damaged with random bytes the way an SD card
damages them, and a real killed writer process for the write-ahead log cases."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pod import clipjobs, salvage
from pod.clipjobs import ClipJob, ClipJobs
from pod.db import META, StateDB, is_corruption
from pod.outbox import TABLE as OUTBOX_TABLE
from pod.outbox import Outbox
from pod.uploads import TABLE as UPLOADS_TABLE
from pod.uploads import UploadQueue

ROOT = Path(__file__).resolve().parents[2]
TABLES = [OUTBOX_TABLE, UPLOADS_TABLE, clipjobs.TABLE]
RNG = random.Random(13)


def garbage(n: int) -> bytes:
    return bytes(RNG.getrandbits(8) for _ in range(n))


def fill(path: Path, *, detections: int = 120, clips: int = 6, big: bool = True) -> tuple[list[str], list[str]]:
    """A state file as the agent leaves it: detections (one with a body larger than a page:
    an overflow chain), clips queued for upload, clip jobs. Returns (detection keys, clip ids)."""
    db = StateDB(path, TABLES)
    ob, up, jobs = Outbox(db), UploadQueue(db), ClipJobs(db)
    keys = []
    for i in range(detections):
        body = b'{"plate":"ABC%03d","x":"%s"}' % (i, b"y" * (9000 if big and i == 7 else 200))
        ob.put("detect", f"evt-{i:04d}", body, now=1000.0 + i)
        keys.append(f"evt-{i:04d}")
    for item in ob.items()[:3]:
        ob.park(item.id, "HTTP 401", reason="auth", now=2000.0)
    clip_dir = path.parent / "rec"
    clip_dir.mkdir(exist_ok=True)
    ids = []
    for i in range(clips):
        f = clip_dir / f"c{i}.mp4"
        f.write_bytes(b"m" * 100)
        up.add(f"clip-{i}", "cam1", f, "ABC1", 3.0, {"k": i}, now=1500.0 + i)
        jobs.add(ClipJob(f"clip-{i}", "cam1", "ABC1", 1500.0 + i, 1495.0 + i, 1530.0 + i, f"c{i}.mp4"), now=1500.0)
        ids.append(f"clip-{i}")
    for k in keys[100:]:  # delivered: deleted rows must not come back
        ob.delete(ob.get(k).id)
    db.close()
    return keys[:100], ids


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_a_garbage_header_is_moved_aside_and_every_row_salvaged(tmp_path):
    """``file is not a database`` (the issue's restart loop): the first page — header and
    schema — is random bytes. The file is moved aside with a timestamp, every row that was
    in it comes back in a fresh file (rows on other pages, overflow chains followed, deleted
    rows not resurrected), parked rows keep their reason, and the healing is remembered."""
    path = tmp_path / "state" / "outbox.sqlite3"
    keys, ids = fill(path)
    with open(path, "r+b") as f:
        f.write(garbage(4096))
    with pytest.raises(sqlite3.DatabaseError) as ei:
        sqlite3.connect(path).execute("SELECT 1 FROM outbox").fetchone()
    assert is_corruption(ei.value)

    seen = []
    db = StateDB(path, TABLES, on_recovery=seen.append)
    try:
        ob, up, jobs = Outbox(db), UploadQueue(db), ClipJobs(db)
        [rec] = seen
        assert rec.method == "pages" and rec.salvaged == {"outbox": 100, "uploads": 6, "clip_jobs": 6}
        aside = Path(rec.moved_to)
        assert aside.name.startswith("outbox.sqlite3.corrupt-") and aside.exists() and mode(aside) == 0o600
        assert sorted(i.key for i in ob.items("pending") + ob.items("failed")) == keys
        assert ob.parked_by_reason() == {"auth": 3} and [i.key for i in ob.items("failed")] == keys[:3]
        assert len(ob.get("evt-0007").body) > 9000  # a body on an overflow chain
        assert ob.get("evt-0100") is None  # delivered and deleted before the damage
        assert [u.event_id for u in up.pending()] == ids and up.get("clip-2").metadata == {"k": 2}
        assert [j.event_id for j in jobs.waiting()] == ids
        assert db.counters("recovered") == {"": 1}
        nxt = ob.put("detect", "after", b"{}", now=3000.0)  # the fresh file works
        assert nxt and ob.items()[-1].key == "after"
    finally:
        db.close()
    again = StateDB(path, TABLES)  # still known after a restart
    try:
        last = again.last_recovery()
        assert last is not None and last.moved_to == rec.moved_to and again.recoveries == []
    finally:
        again.close()


def test_random_bytes_inside_the_file_are_caught_at_open_and_nothing_is_invented(tmp_path):
    """Random bytes over two pages in the middle of the file: ``quick_check`` sees the
    damage at open, the file is healed, what the other pages held is salvaged and no row
    that was not there comes back."""
    path = tmp_path / "outbox.sqlite3"
    keys, _ = fill(path, big=False)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(garbage(8192))
    db = StateDB(path, TABLES)
    try:
        [rec] = db.recoveries
        got = {i.key for i in Outbox(db).items("pending") + Outbox(db).items("failed")}
        assert got <= set(keys) and rec.salvaged["outbox"] == len(got)
        assert {u.event_id for u in UploadQueue(db).pending()} <= {f"clip-{i}" for i in range(6)}
        assert 0 < sum(rec.salvaged.values()) < len(keys) + 12  # the damaged pages' rows are gone, the rest is back
    finally:
        db.close()


_KILLED_WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from pod.db import StateDB
    from pod.outbox import Outbox, TABLE
    db = StateDB(sys.argv[1], [TABLE])
    db.conn.execute("PRAGMA wal_autocheckpoint=0")
    ob = Outbox(db)
    for i in range(60):
        ob.put("detect", f"w-{i:03d}", b'{"plate":"W%03d","pad":"%s"}' % (i, b"p" * 300), now=float(i))
    os._exit(0)  # killed: no close, no checkpoint; every row is in the -wal file
""")


def killed_writer(path: Path) -> None:
    script = path.parent / "writer.py"
    script.write_text(_KILLED_WRITER)
    subprocess.run([sys.executable, str(script), str(path), str(ROOT)], check=True, timeout=60)
    assert Path(f"{path}-wal").stat().st_size > 60 * 300


def test_a_damaged_write_ahead_log_is_caught_and_later_commits_are_salvaged(tmp_path):
    """SQLite stops reading a WAL at the first frame whose checksum is wrong and silently
    drops every later commit. The damage is caught before SQLite opens the file, and the
    commits after it are salvaged from their frames."""
    path = tmp_path / "outbox.sqlite3"
    killed_writer(path)
    wal = Path(f"{path}-wal")
    data = bytearray(wal.read_bytes())
    frame = 24 + 4096
    data[32 + 3 * frame + 24 + 3000:32 + 3 * frame + 24 + 3050] = garbage(50)  # inside an early frame's page
    wal.write_bytes(bytes(data))
    assert salvage.wal_damaged(bytes(data))
    probe = tmp_path / "probe"
    probe.mkdir()
    for s in ("", "-wal"):
        (probe / f"o{s}").write_bytes(Path(f"{path}{s}").read_bytes())
    try:
        plain = sqlite3.connect(probe / "o").execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    except sqlite3.OperationalError:  # the table itself was created in a dropped frame
        plain = 0
    assert plain < 60  # what SQLite alone would have kept

    db = StateDB(path, [OUTBOX_TABLE])
    try:
        [rec] = db.recoveries
        got = {i.key for i in Outbox(db).items()}
        assert rec.method == "pages" and len(got) > plain
        assert {f"w-{i:03d}" for i in range(50, 60)} <= got  # the latest commits, after the damage
    finally:
        db.close()


def test_an_intact_killed_wal_is_not_damage(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    killed_writer(path)
    assert not salvage.wal_damaged(Path(f"{path}-wal").read_bytes())
    db = StateDB(path, [OUTBOX_TABLE])
    try:
        assert db.recoveries == [] and Outbox(db).depth() == 60
    finally:
        db.close()


def test_operator_tools_never_heal(tmp_path):
    """``heal=False`` (``platebridge-pod outbox`` next to a running agent): a damaged file
    raises and is left exactly as it is, for the agent to heal."""
    path = tmp_path / "outbox.sqlite3"
    fill(path, detections=5, clips=0)
    with open(path, "r+b") as f:
        f.write(garbage(100))
    before = path.read_bytes()
    with pytest.raises(sqlite3.DatabaseError):
        StateDB(path, TABLES, heal=False)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.corrupt-*"))


def test_counters_and_notes_persist(tmp_path):
    db = StateDB(tmp_path / "s.sqlite3", [])
    try:
        assert db.bump("dropped:detect:operator") == 1 and db.bump("dropped:detect:operator", 2) == 3
        assert db.counters("dropped:") == {"detect:operator": 3}
        db.note("x", {"a": [1, 2]})
        assert db.read_note("x") == {"a": [1, 2]} and db.read_note("missing") is None
        assert [t.name for t in db.tables] == [META.name]
    finally:
        db.close()


def test_old_schema_rows_get_the_new_columns(tmp_path):
    """A state file written before park reasons and strikes existed opens, gains the
    columns, and its parked rows read as ``rejected`` (what every 4xx used to mean)."""
    path = tmp_path / "outbox.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, key TEXT NOT NULL UNIQUE,
            body BLOB NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL, state TEXT NOT NULL DEFAULT 'pending', last_error TEXT);
        INSERT INTO outbox (kind, key, body, created, next_attempt, state, last_error)
            VALUES ('detect', 'old-1', x'7b7d', 1.0, 1.0, 'failed', 'HTTP 400');
        INSERT INTO outbox (kind, key, body, created, next_attempt) VALUES ('detect', 'old-2', x'7b7d', 2.0, 2.0);
    """)
    old.commit()
    old.close()
    ob = Outbox(path)
    try:
        assert ob.parked_by_reason() == {"rejected": 1} and ob.get("old-2").strikes == 0
        assert ob.requeue(now=5.0) == 1 and ob.depth() == 2
    finally:
        ob.close()


def test_record_parsing_and_shape_matching():
    enc = sqlite3.connect(":memory:")
    enc.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT NOT NULL, c REAL, d BLOB)")
    enc.execute("INSERT INTO t (b, c, d) VALUES ('héllo', 2.5, x'00ff'), ('x', 3, NULL)")
    assert salvage.read_varint(bytes([0x81, 0x00]), 0) == (128, 2)
    assert salvage.read_varint(bytes([0xFF] * 8 + [0x01]), 0)[0] == (1 << 64) - 255
    assert salvage.parse_record(bytes([3, 0x01, 0x08, 0x05])) == (5, 0)
    assert salvage.parse_record(bytes([2, 10])) is None  # reserved serial type
    assert salvage.parse_record(bytes([2, 0x13, 0xFF, 0xFE, 0x41])) is None  # TEXT that is not UTF-8
    cols = [salvage.Column("a", "INTEGER", False, rowid_alias=True), salvage.Column("b", "TEXT", True),
            salvage.Column("c", "REAL", False), salvage.Column("d", "BLOB", False)]
    assert salvage.matches((None, "x", 3, None), cols, min_columns=4)
    assert salvage.matches((None, "x"), cols, min_columns=2)  # columns added later are missing in old rows
    assert not salvage.matches((None, None, 1.0, b""), cols, min_columns=4)  # NOT NULL
    assert not salvage.matches((1, "x", 1.0, b""), cols, min_columns=4)  # the rowid alias is stored as NULL
    assert salvage.scan(b"") == []
    assert isinstance(salvage.scan(garbage(50_000), garbage(9000)), list)  # never raises on noise


def test_a_wal_with_a_damaged_header_is_caught_and_its_frames_still_read(tmp_path):
    """Random bytes over the WAL's own header: SQLite would ignore the whole log (every
    commit since the last checkpoint gone, silently). The damage is caught and the frames
    are read anyway, their page size and salt taken from the frames."""
    path = tmp_path / "outbox.sqlite3"
    killed_writer(path)
    wal = Path(f"{path}-wal")
    data = bytearray(wal.read_bytes())
    data[:32] = garbage(32)
    wal.write_bytes(bytes(data))
    with open(path, "r+b") as f:  # and the main file's header too
        f.write(garbage(100))
    assert salvage.wal_damaged(bytes(data))
    db = StateDB(path, [OUTBOX_TABLE])
    try:
        assert {i.key for i in Outbox(db).items()} == {f"w-{i:03d}" for i in range(60)}
    finally:
        db.close()
