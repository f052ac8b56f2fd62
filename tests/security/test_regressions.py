"""Regression tests for the bugs the security suite found (pure functions, no sockets).

1. ``$`` in Python regexes matches before a trailing newline: ``is_dns_label``,
   ``is_camera_id``, ``pod.frigate.is_event_id`` and the grant's canonical form accepted
   ``"main-gate-pod\\n"`` and friends (a token with such a ``pod_id`` was accepted by the
   gateway; an event id with a newline could reach an HTTP header and a file name).
2. A playlist line break that only some players honour (lone CR, U+2028, U+2029, …)
   let a hostile pod hide a foreign URI inside a tag or comment the gateway passed through
   verbatim; hls.js would have fetched it from the browser.
3. U+2028/U+2029 were accepted inside a plate read.

Each test also runs the clean input through the same code (a positive control): it must
be accepted, and the refusal of the hostile one must give the reason of this regression,
so a parser that refused for some other reason would fail here.
"""

from __future__ import annotations

import json

import pytest

from gateway.errors import GrantError, PlaylistError
from gateway.grants import Grant, GrantSigner
from gateway.playlist import rewrite_playlist
from pod.frigate import is_event_id, parse_message
from protocol.ids import is_camera_id, is_dns_label

SCOPE = "http://127.0.0.2:8000/cameras/gate-camera-1/"


@pytest.mark.parametrize("suffix", ["\n", "\r\n"])
def test_ids_with_a_trailing_newline_are_refused(figure, suffix):
    checks = [(is_dns_label, "main-gate-pod"), (is_camera_id, "gate-camera-1"), (is_event_id, "1767225600.1-abc123")]
    assert all(ok(value) for ok, value in checks)  # control: the clean ids are accepted
    accepted = sum(ok(value + suffix) for ok, value in checks)
    figure(f"ids with a trailing {suffix!r} accepted", accepted, "ids", "== 0", accepted == 0)
    assert accepted == 0


def test_grant_with_a_trailing_newline_is_refused(figure):
    signer = GrantSigner([b"s" * 40])
    grant = signer.mint(Grant("media", "main-gate-pod", 2**31 - 1, 2**31 - 1, b"\0" * 8), camera_id="gate-camera-1",
                        path="seg_1.m4s")
    where = {"camera_id": "gate-camera-1", "path": "seg_1.m4s", "query": "", "kind": "media", "now": 0.0}
    assert signer.verify(grant, **where).pod_id == "main-gate-pod"  # control: the clean grant is accepted
    try:
        signer.verify(grant + "\n", **where)
        accepted = 1
    except GrantError:
        accepted = 0
    figure("grant spellings with a trailing newline accepted", accepted, "grants", "== 0", accepted == 0)
    assert accepted == 0


def test_frigate_event_id_with_a_trailing_newline_is_not_a_message(figure):
    def event(event_id: str) -> bytes:
        return json.dumps({"type": "new", "after": {"id": event_id, "camera": "gate_cam",
                                                    "recognized_license_plate": ["ABC123", 0.9]}}).encode()

    clean, why = parse_message("events", event("1767225600.1-abc"))  # control: the same message, clean id
    assert why is None and clean.id == "1767225600.1-abc" and clean.read.plate_raw == "ABC123"
    msg, why = parse_message("events", event("1767225600.1-abc\n"))
    figure("Frigate messages accepted with a newline in the event id", int(msg is not None), "messages", "== 0",
           msg is None)
    assert msg is None and "event id" in why, why


@pytest.mark.parametrize("sep", ["\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
@pytest.mark.parametrize("where", ["unknown tag", "comment", "extinf title"])
def test_playlist_with_a_player_only_line_break_is_refused(figure, sep, where):
    hidden = '#EXT-X-MAP:URI="http://127.0.0.9/x.mp4"'
    clean_line = {"unknown tag": "#EXT-X-FOO:1", "comment": "# note", "extinf title": "#EXTINF:2.0,t"}[where]
    line = {"unknown tag": f"#EXT-X-FOO:1{sep}{hidden}", "comment": f"# note{sep}{hidden}",
            "extinf title": f"#EXTINF:2.0,t{sep}http://127.0.0.9/x.m4s"}[where]

    def playlist(line: str) -> str:
        return f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n{line}\n#EXTINF:2.0,\nseg_1.m4s\n"

    def rewrite(text: str) -> str:
        return rewrite_playlist(text, upstream_url=SCOPE + "index.m3u8", scope_url=SCOPE, segment_grant="G",
                                playlist_grant="P")

    # control: the same playlist without the smuggled part is accepted and rewritten
    assert rewrite(playlist(clean_line)) == playlist(clean_line).replace("seg_1.m4s", "seg_1.m4s?pb_grant=G")
    try:
        rewrite(playlist(line))
        accepted, reason = 1, ""
    except PlaylistError as exc:
        accepted, reason = 0, str(exc)
    figure(f"playlists accepted with {sep!r} in a {where}", accepted, "playlists", "== 0", accepted == 0)
    assert accepted == 0
    assert "line break" in reason, reason  # refused for the smuggling line break, not for something else


def test_crlf_playlists_are_still_rewritten(figure):
    text = "#EXTM3U\r\n#EXT-X-TARGETDURATION:2\r\n#EXTINF:2.0,\r\nseg_1.m4s\r\n"
    out = rewrite_playlist(text, upstream_url=SCOPE + "index.m3u8", scope_url=SCOPE, segment_grant="G",
                           playlist_grant="P")
    granted = out.count("pb_grant=G")
    figure("CRLF playlist URIs rewritten", granted, "URIs", "== 1", granted == 1)
    assert out == "#EXTM3U\r\n#EXT-X-TARGETDURATION:2\r\n#EXTINF:2.0,\r\nseg_1.m4s?pb_grant=G\r\n"


@pytest.mark.parametrize("plate", ["AB\u2028C1", "\u2029ABC"])
def test_plate_with_a_line_separator_is_not_a_read(figure, plate):
    def lpr(plate: str):
        doc = {"type": "lpr", "id": "a1", "camera": "gate_cam", "plate": plate, "score": 0.9}
        return parse_message("tracked_object_update", json.dumps(doc).encode())

    clean = plate.replace("\u2028", "").replace("\u2029", "")
    msg, why = lpr(clean)  # control: the same read without the separator is accepted
    assert why is None and msg.read is not None and msg.read.plate_raw == clean
    msg, _ = lpr(plate)
    read = int(msg is not None and msg.read is not None)
    figure(f"plate reads accepted for {plate!r}", read, "reads", "== 0", read == 0)
    assert read == 0
