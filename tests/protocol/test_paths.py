"""protocol.paths: camera-relative request path rules and HLS media types."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.paths import UnsafePath, content_type_for, safe_relative_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("index.m3u8", "index.m3u8"),
        ("seg_17.m4s", "seg_17.m4s"),
        ("sub/a.ts", "sub/a.ts"),
        ("hi/index.m3u8", "hi/index.m3u8"),
        ("seg%20a.ts", "seg a.ts"),  # decoded once
        ("seg%2541.ts", "seg%41.ts"),  # ... and only once
        ("a..b.ts", "a..b.ts"),  # dots inside a name are fine
        ("x" * 255, "x" * 255),
    ],
)
def test_safe_paths_are_returned_decoded(path: str, expected: str) -> None:
    assert safe_relative_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "%2fetc/passwd",
        "..",
        ".",
        "../x.ts",
        "a/../../x.ts",
        "a/./x.ts",
        "%2e%2e/x.ts",
        "%2E%2E/x.ts",
        ".%2e/x.ts",
        "%252e%252e/x.ts",
        "a%2fb.ts",
        "a%2Fb.ts",
        "a%5cb.ts",
        "a%255cb.ts",
        "a\\b.ts",
        "..\\x.ts",
        "a\x00.ts",
        "a%00.ts",
        "a\n.ts",
        "a%0d.ts",
        "a\x7f.ts",
        "C:/x.ts",
        "c:x.ts",
        "C%3a/x.ts",
        "x" * 256,
        ".env",
        "sub/.hidden.ts",
        "a//b.ts",
        "sub/",
        "%ff.ts",  # not UTF-8 after decoding
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        safe_relative_path(path)


def test_unsafe_path_is_a_value_error() -> None:
    assert issubclass(UnsafePath, ValueError)


@given(st.text())
def test_never_returns_dot_segment_or_absolute_path(path: str) -> None:
    try:
        result = safe_relative_path(path)
    except UnsafePath:
        return
    assert not result.startswith("/")
    assert ".." not in result.split("/")
    assert "\\" not in result and "\x00" not in result


@given(st.text(alphabet=["a", ".", "/", "\\", "%", "2", "5", "e", "E", "f", "F", "c"], max_size=24))
def test_never_returns_dot_segment_for_dot_heavy_text(path: str) -> None:
    try:
        result = safe_relative_path(path)
    except UnsafePath:
        return
    segments = result.split("/")
    assert not result.startswith("/")
    assert all(s and not s.startswith(".") for s in segments)
    assert "\\" not in result


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("index.m3u8", "application/vnd.apple.mpegurl"),
        ("hi/INDEX.M3U8", "application/vnd.apple.mpegurl"),
        ("list.m3u", "application/vnd.apple.mpegurl"),
        ("seg_1.ts", "video/mp2t"),
        ("init.mp4", "video/mp4"),
        ("seg_1.m4s", "video/mp4"),
        ("audio.aac", "audio/aac"),
        ("subs.vtt", "text/vtt"),
        ("key.bin", None),
        ("keys/k1.key", "application/octet-stream"),  # EXT-X-KEY (RFC 8216 §4.3.2.4)
        ("K1.KEY", "application/octet-stream"),
        ("README", None),
        ("m3u8", None),
        ("seg.ts.bak", None),
        ("dir.ts/file", None),
    ],
)
def test_content_type_for(path: str, expected: str | None) -> None:
    assert content_type_for(path) == expected
