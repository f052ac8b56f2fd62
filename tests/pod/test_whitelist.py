"""pod.whitelist: atomic private cache file, offline start, refresh keeps/replaces."""

import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from pod.plates import Whitelist
from pod.whitelist import WhitelistStore, load_cache, save_cache
from protocol.messages import PlateEntry, PlatesResponse

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def resp(version="v1", *plates, tenant="Jo Resident"):
    return PlatesResponse(config_version=version,
                          entries=[PlateEntry(plate=p, unit="1A", tenant=tenant) for p in plates])


def allows(store, plate):
    return store.current.match(plate, 0.99, now=NOW, min_confidence=0.75).decision == "allow"


def mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


# --------------------------------------------------------------------------- cache file

def test_save_then_load_roundtrip(tmp_path):
    p = tmp_path / "wl.json"
    r = PlatesResponse(config_version="v9", entries=[
        PlateEntry(plate="ABC 123", unit="4B", tenant="Kim", enabled=False,
                   starts="2026-01-01T00:00:00Z", ends="2026-02-01T00:00:00+02:00")])
    save_cache(p, r)
    assert load_cache(p) == r
    # wire form: the PlatesResponse JSON
    assert msgspec.json.decode(p.read_bytes())["config_version"] == "v9"


def test_save_is_atomic_private_and_leaves_no_temp_files(tmp_path):
    p = tmp_path / "wl.json"
    save_cache(p, resp("v1", "A1"))
    save_cache(p, resp("v2", "B2"))  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["wl.json"]
    assert mode(p) == 0o600
    assert load_cache(p).config_version == "v2"


def test_save_mode_0600_even_with_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        p = tmp_path / "new" / "wl.json"
        save_cache(p, resp("v1", "A1"))
    finally:
        os.umask(old)
    assert mode(p) == 0o600
    assert mode(p.parent) == 0o700


def test_save_creates_parent_dir_0700(tmp_path):
    p = tmp_path / "state" / "pod" / "whitelist.json"
    save_cache(p, resp("v1", "A1"))
    assert mode(p.parent) == 0o700
    assert load_cache(p).config_version == "v1"


def test_save_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "wl.json"
    save_cache(p, resp("v1", "A1"))

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_cache(p, resp("v2", "B2"))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["wl.json"]
    assert load_cache(p).config_version == "v1"


def test_missing_cache_is_none_without_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="platebridge.pod.whitelist"):
        assert load_cache(tmp_path / "nope.json") is None
    assert not caplog.records


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"not json", b"[]", b"null", b'{"entries": []}', b'{"config_version": true}',
     b'{"config_version": 4.2}',
     b'{"config_version": "v", "entries": [{"unit": "1"}]}', b"\xff\xfe\x00garbage"],
)
def test_corrupt_cache_is_none_with_warning(tmp_path, caplog, content):
    p = tmp_path / "wl.json"
    p.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="platebridge.pod.whitelist"):
        assert load_cache(p) is None
    assert any(r.levelno == logging.WARNING and "corrupt" in r.getMessage() for r in caplog.records)


def test_unreadable_cache_is_none_with_warning(tmp_path, caplog):
    d = tmp_path / "wl.json"
    d.mkdir()  # a directory where the file should be
    with caplog.at_level(logging.WARNING, logger="platebridge.pod.whitelist"):
        assert load_cache(d) is None
    assert any(r.levelno == logging.WARNING for r in caplog.records)


# --------------------------------------------------------------------------- store

def test_store_starts_empty():
    s = WhitelistStore(None)
    assert isinstance(s.current, Whitelist)
    assert (s.version, len(s.current), s.last_refresh) == ("", 0, None)
    assert not allows(s, "A1")
    assert s.load_from_cache() is False


def test_offline_start_from_cache(tmp_path):
    p = tmp_path / "wl.json"
    save_cache(p, resp("v3", "TEST 123"))
    s = WhitelistStore(p)
    assert s.load_from_cache() is True
    assert s.version == "v3"
    assert allows(s, "test-123")
    assert s.last_refresh is None  # a cache load is not a portal refresh


def test_load_from_missing_or_corrupt_cache_keeps_current(tmp_path):
    p = tmp_path / "wl.json"
    s = WhitelistStore(p)
    assert s.load_from_cache() is False
    assert s.version == ""
    save_cache(p, resp("v1", "A1"))
    assert s.load_from_cache() is True
    p.write_bytes(b"{broken")
    assert s.load_from_cache() is False
    assert s.version == "v1" and allows(s, "A1")


async def test_refresh_success_replaces_and_saves(tmp_path):
    p = tmp_path / "wl.json"
    ticks = iter([100.0, 200.0])
    s = WhitelistStore(p, clock=lambda: next(ticks))

    async def fetch():
        return resp("v1", "ABC123")

    assert await s.refresh(fetch) is True
    assert s.version == "v1" and allows(s, "ABC123")
    assert s.last_refresh == 100.0
    assert load_cache(p).config_version == "v1"
    assert mode(p) == 0o600

    async def fetch2():
        return resp("v2", "XYZ789")

    assert await s.refresh(fetch2) is True
    assert s.version == "v2" and allows(s, "XYZ789") and not allows(s, "ABC123")
    assert s.last_refresh == 200.0
    assert load_cache(p) == resp("v2", "XYZ789")
    assert sorted(os.listdir(tmp_path)) == ["wl.json"]


@pytest.mark.parametrize("exc", [ConnectionError("portal down"), TimeoutError(), ValueError("bad json")])
async def test_refresh_failure_keeps_old_whitelist(tmp_path, caplog, exc):
    p = tmp_path / "wl.json"
    s = WhitelistStore(p, clock=lambda: 5.0)

    async def ok():
        return resp("v1", "ABC123")

    async def failing():
        raise exc

    assert await s.refresh(ok) is True
    before = s.current
    with caplog.at_level(logging.WARNING, logger="platebridge.pod.whitelist"):
        assert await s.refresh(failing) is False
    assert s.current is before and s.version == "v1" and allows(s, "ABC123")
    assert s.last_refresh == 5.0
    assert load_cache(p).config_version == "v1"
    assert any("refresh failed" in r.getMessage() for r in caplog.records)


async def test_refresh_failure_on_empty_store_stays_empty(tmp_path):
    s = WhitelistStore(tmp_path / "wl.json")

    async def failing():
        raise OSError("no route")

    assert await s.refresh(failing) is False
    assert s.version == "" and len(s.current) == 0 and s.last_refresh is None
    assert not (tmp_path / "wl.json").exists()


async def test_refresh_wrong_type_keeps_old(tmp_path):
    s = WhitelistStore(tmp_path / "wl.json")

    async def weird():
        return {"config_version": "v9", "entries": []}

    assert await s.refresh(weird) is False
    assert s.version == ""


async def test_refresh_failure_log_redacts_secrets(caplog):
    s = WhitelistStore(None)

    async def failing():
        raise ConnectionError("GET https://portal/api/plates?key=sekret123 failed, Authorization: Bearer sk_live_abc")

    with caplog.at_level(logging.WARNING, logger="platebridge.pod.whitelist"):
        assert await s.refresh(failing) is False
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refresh failed" in text
    assert "sekret123" not in text and "sk_live_abc" not in text


async def test_cache_write_failure_after_refresh_keeps_new_whitelist(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = WhitelistStore(blocker / "wl.json")  # parent is a file: save fails

    async def ok():
        return resp("v2", "ABC123")

    with caplog.at_level(logging.WARNING, logger="platebridge.pod.whitelist"):
        assert await s.refresh(ok) is True
    assert s.version == "v2" and allows(s, "ABC123")
    assert any("not saved" in r.getMessage() for r in caplog.records)


async def test_collisions_logged_on_load(tmp_path, caplog):
    s = WhitelistStore(tmp_path / "wl.json")

    async def ok():
        return resp("v1", "TEST 123", "test-123", "OK1")

    with caplog.at_level(logging.WARNING, logger="platebridge.pod.whitelist"):
        assert await s.refresh(ok) is True
    assert s.current.collisions == [("TEST123", ["TEST 123", "test-123"])]
    assert any("TEST123" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

    caplog.clear()
    s2 = WhitelistStore(tmp_path / "wl.json")
    with caplog.at_level(logging.WARNING, logger="platebridge.pod.whitelist"):
        assert s2.load_from_cache() is True
    assert any("TEST123" in r.getMessage() for r in caplog.records)


async def test_invalid_entries_logged_on_load(caplog):
    s = WhitelistStore(None)

    async def ok():
        return PlatesResponse("v1", [PlateEntry(plate="A1", ends="soon")])

    with caplog.at_level(logging.WARNING, logger="platebridge.pod.whitelist"):
        assert await s.refresh(ok) is True
    assert any("can never allow" in r.getMessage() for r in caplog.records)
    assert not allows(s, "A1")


def test_a_damaged_cache_is_moved_aside_and_its_readable_entries_salvaged(tmp_path, caplog):
    """Random bytes in the middle of the cache (an SD card sector): the pod still starts
    with every entry that can be read, under a version the portal's next answer replaces;
    the damaged file is kept aside for diagnosis and the healing is reported."""
    p = tmp_path / "whitelist.json"
    save_cache(p, PlatesResponse(config_version=42, entries=[
        PlateEntry(plate=f"GATE{i:02d}", tenant=f"T{i}") for i in range(20)]))
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 40] = os.urandom(40)
    p.write_bytes(bytes(data))
    seen = []
    s = WhitelistStore(p, on_recovery=seen.append)
    with caplog.at_level(logging.WARNING, logger="platebridge.pod.whitelist"):
        assert s.load_from_cache() is True
    assert s.version == "42~salvaged" and 15 <= len(s.current) < 20
    assert allows(s, "GATE00") and allows(s, "GATE19")  # entries away from the damage survive
    [rec] = seen
    assert rec is s.recovery and rec.store == "whitelist" and rec.salvaged == {"entries": len(s.current)}
    aside = Path(rec.moved_to)
    assert aside.name.startswith("whitelist.json.corrupt-") and aside.read_bytes() == bytes(data)
    assert not p.exists()  # the next portal refresh writes a fresh cache
    assert any("moved aside" in r.getMessage() for r in caplog.records)


def test_nothing_readable_is_moved_aside_and_the_pod_starts_empty(tmp_path):
    p = tmp_path / "whitelist.json"
    p.write_bytes(os.urandom(500))
    s = WhitelistStore(p)
    assert s.load_from_cache() is False and s.version == "" and s.recovery.method == "none"
    assert len(list(tmp_path.glob("whitelist.json.corrupt-*"))) == 1
