"""Property tests for gateway.playlist.rewrite_playlist and protocol.paths.safe_relative_path."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ForeignURIError
from gateway.playlist import compile_playlist, drop_comments_containing, rewrite_playlist
from protocol.paths import UnsafePath, safe_relative_path

POD_HOST = "127.0.0.2"
POD = f"http://{POD_HOST}:8000"
SCOPE = f"{POD}/cameras/gate/"
SEG = "seg.G-1"
PL = "pl.G-2"
HOLE = "\x00URI\x00"  # placeholder in line templates

names = st.from_regex(r"[a-z0-9_][a-z0-9_-]{0,7}(\.(ts|m4s|mp4|m3u8|aac|vtt|bin|php))?", fullmatch=True)
rel_paths = st.lists(names, min_size=1, max_size=3).map("/".join)
# query strings with percent escapes; no '_' so no parameter can be named pb_grant
query_chars = st.sampled_from(list("abcxyz019=&~-.*/") + ["%20", "%2F", "%2f", "%3D", "%26", "%25", "%2e"])
queries = st.none() | st.lists(query_chars, max_size=12).map("".join)
fragments = st.none() | st.sampled_from(["frag", "t=1", ""])


@st.composite
def uris(draw, playlist_dir: str):
    """(uri, foreign, target path relative to the scope or None)."""
    path = draw(rel_paths)
    kind = draw(
        st.sampled_from(
            [
                "relative",
                "dot-relative",
                "root",
                "absolute",
                "network",
                "other-host",
                "other-port",
                "other-scheme",
                "userinfo",
                "protocol-relative",
                "root-outside",
                "dot-escape",
                "encoded-dots",
                "encoded-slash",
                "backslash",
                "non-http",
            ]
        )
    )
    foreign = True
    target = None
    if kind == "relative":
        uri, foreign, target = path, False, playlist_dir + path
    elif kind == "dot-relative":
        uri, foreign, target = "./" + path, False, playlist_dir + path
    elif kind == "root":
        uri, foreign, target = "/cameras/gate/" + path, False, path
    elif kind == "absolute":
        scheme = draw(st.sampled_from(["http", "HTTP"]))
        uri, foreign, target = f"{scheme}://{POD_HOST}:8000/cameras/gate/{path}", False, path
    elif kind == "network":
        uri, foreign, target = f"//{POD_HOST}:8000/cameras/gate/{path}", False, path
    elif kind == "other-host":
        uri = f"http://{draw(st.sampled_from(['evil', '127.0.0.3', 'example.com']))}:8000/cameras/gate/{path}"
    elif kind == "other-port":
        uri = f"http://{POD_HOST}:{draw(st.sampled_from(['8001', '80', '443', '']))}/cameras/gate/{path}"
    elif kind == "other-scheme":
        uri = f"https://{POD_HOST}:8000/cameras/gate/{path}"
    elif kind == "userinfo":
        uri = f"http://{POD_HOST}:8000@evil/cameras/gate/{path}"
    elif kind == "protocol-relative":
        uri = f"//evil/{path}"
    elif kind == "root-outside":
        uri = f"/{draw(st.sampled_from(['other', 'cameras/gat', 'cameras']))}/{path}"
    elif kind == "dot-escape":
        uri = "../" * (playlist_dir.count("/") + 1) + draw(st.sampled_from(["other/", "", "../"])) + path
    elif kind == "encoded-dots":
        uri = draw(st.sampled_from(["%2e%2e/", "%2E%2e/", ".%2e/", "%2e./"])) + path
    elif kind == "encoded-slash":
        uri = path + draw(st.sampled_from(["%2f..%2fx.ts", "%2F", "%5c..%5cx"]))
    elif kind == "backslash":
        uri = "..\\" + path
    else:
        uri = draw(st.sampled_from(["data:video/mp2t;base64,AA", "skd://k1", "file:///etc/passwd",
                                    "javascript:alert(1)", "ftp://127.0.0.2:8000/x"]))
    if kind not in ("non-http",):
        q = draw(queries)
        if q is not None:
            uri += "?" + q
        f = draw(fragments)
        if f is not None:
            uri += "#" + f
    return uri, foreign, target


# Quoted-string values may contain commas and "URI=" text; never '"', '://' or the pod host.
quoted_values = st.lists(st.sampled_from(list("abcXYZ09 ,=-.") + ["URI=", "SERVER-URI="]), max_size=10).map(
    lambda parts: '"' + "".join(parts) + '"'
)
unquoted_values = st.from_regex(r"[A-Z0-9.x@-]{1,8}", fullmatch=True)
extra_attributes = st.lists(
    st.tuples(st.sampled_from(["X-A", "NAME", "X-URI-ISH", "BANDWIDTH", "X-SERVER"]),
              quoted_values | unquoted_values).map(
        lambda kv: f"{kv[0]}={kv[1]}"
    ),
    max_size=3,
)

# tag name, URI attribute, playlist grant?
URI_TAGS = [
    ("EXT-X-MAP", "URI", None),
    ("EXT-X-KEY", "URI", None),
    ("EXT-X-SESSION-KEY", "URI", None),
    ("EXT-X-MEDIA", "URI", True),
    ("EXT-X-PART", "URI", None),
    ("EXT-X-PRELOAD-HINT", "URI", None),
    ("EXT-X-RENDITION-REPORT", "URI", True),
    ("EXT-X-I-FRAME-STREAM-INF", "URI", True),
    ("EXT-X-SESSION-DATA", "URI", None),
    ("EXT-X-CONTENT-STEERING", "SERVER-URI", None),
    ("EXT-X-DATERANGE", "X-ASSET-URI", True),
    ("EXT-X-DATERANGE", "X-ASSET-LIST", None),
]
PLAIN_LINES = ["#EXTINF:2.000,", "#EXT-X-DISCONTINUITY", "# a comment, URI=\"x\"", "", "#EXT-X-KEY:METHOD=NONE",
               "#EXT-X-UNKNOWN:URI=\"keep\""]


@st.composite
def playlists(draw):
    playlist_name = draw(st.sampled_from(["index.m3u8", "hi/index.m3u8", "a/b/live.m3u8"]))
    playlist_dir = playlist_name.rpartition("/")[0] + "/" if "/" in playlist_name else ""
    items = []  # (template, uri info or None, playlist grant expected?)
    for _ in range(draw(st.integers(1, 8))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            items.append((draw(st.sampled_from(PLAIN_LINES)), None, None))
        elif choice == 1:
            info = draw(uris(playlist_dir))
            items.append(("#EXTINF:2,", None, None))
            items.append((HOLE, info, None))
        elif choice == 2:
            items.append(("#EXT-X-STREAM-INF:BANDWIDTH=1,CODECS=\"avc1,mp4a\"", None, None))
            items.append((HOLE, draw(uris(playlist_dir)), True))
        else:
            name, attr, playlist = draw(st.sampled_from(URI_TAGS))
            attrs = draw(extra_attributes) + [f'{attr}="{HOLE}"']
            attrs = draw(st.permutations(attrs))
            items.append((f"#{name}:" + ",".join(attrs), draw(uris(playlist_dir)), playlist))
    endings = [draw(st.sampled_from(["\n", "\r\n"])) for _ in items]
    final = draw(st.booleans())
    return playlist_name, items, endings, final


def render(items, endings, final, values):
    out = ["#EXTM3U\n"]
    it = iter(values)
    for (template, info, _), end in zip(items, endings, strict=True):
        line = template.replace(HOLE, next(it)) if info is not None else template
        out.append(line + end)
    text = "".join(out)
    if not final:
        text = text[: -len(endings[-1])]
    return text


@settings(max_examples=400, deadline=None)
@given(playlists())
def test_rewrite_properties(case) -> None:
    playlist_name, items, endings, final = case
    infos = [info for _, info, _ in items if info is not None]
    text = render(items, endings, final, [info[0] for info in infos])
    any_foreign = any(info[1] for info in infos)
    try:
        out = rewrite_playlist(
            text, upstream_url=SCOPE + playlist_name + "?_HLS_msn=1", scope_url=SCOPE, segment_grant=SEG,
                               playlist_grant=PL
        )
    except ForeignURIError:
        assert any_foreign, f"refused a playlist without foreign URIs: {text!r}"
        return
    assert not any_foreign, f"accepted a foreign URI: {text!r}"
    assert POD_HOST not in out and "://" not in out
    # Structure: the output matches the input templates byte for byte, holes aside.
    pattern = re.escape(render(items, endings, final, [HOLE] * len(infos))).replace(re.escape(HOLE), r'([^"\r\n]*)')
    m = re.fullmatch(pattern, out)
    assert m is not None, (text, out)
    grant_expected = [p for _, info, p in items if info is not None]
    base = "https://gw/streams/gate/" + playlist_name
    for value, (uri, _, target), playlist in zip(m.groups(), infos, grant_expected, strict=True):
        assert value.count("pb_grant=") == 1 and "#" not in value
        assert value.endswith("pb_grant=" + (PL if playlist or target.endswith(".m3u8") else SEG))
        # the upstream query survives byte for byte
        query = uri.partition("#")[0].partition("?")
        if query[1] and query[2]:
            assert "?" + query[2] in value
        # resolving through the gateway reaches the same relative layout
        resolved = urljoin(base, value).partition("?")[0]
        assert resolved == "https://gw/streams/gate/" + target


@settings(max_examples=200, deadline=None)
@given(playlists(), st.sampled_from(["127.0.0.2:8000", "gate", "#"]))
def test_a_compiled_template_renders_what_rewriting_and_dropping_comments_give(case, needle) -> None:
    """The gateway compiles each upstream playlist once (dropping comments that name the pod)
    and renders it per viewer: byte for byte what rewrite_playlist + drop_comments_containing give."""
    playlist_name, items, endings, final = case
    infos = [info for _, info, _ in items if info is not None]
    text = render(items, endings, final, [info[0] for info in infos])
    text = text.replace("#EXTM3U\n", f"#EXTM3U\n# made by {needle} here\n", 1)
    if final:
        text += f"# trailing comment {needle}"
    kw = {"upstream_url": SCOPE + playlist_name, "scope_url": SCOPE}
    try:
        expected = drop_comments_containing(rewrite_playlist(text, segment_grant=SEG, playlist_grant=PL, **kw), needle)
    except ForeignURIError:
        with pytest.raises(ForeignURIError):
            compile_playlist(text, drop_comments_with=needle, **kw)
        return
    template = compile_playlist(text, drop_comments_with=needle, **kw)
    assert template.render_fixed(SEG, PL) == expected
    assert template.render(lambda path, query, is_playlist: PL if is_playlist else SEG) == expected


@given(st.text())
def test_safe_relative_path_never_escapes(path: str) -> None:
    try:
        result = safe_relative_path(path)
    except UnsafePath:
        return
    assert not result.startswith("/")
    assert ".." not in result.split("/")


@given(st.lists(st.sampled_from(["..", ".", "/", "\\", "%2e", "%2f", "%252e", "a", "b.ts", "%", "C:"]),
                max_size=8).map("".join))
def test_safe_relative_path_never_escapes_dot_heavy(path: str) -> None:
    try:
        result = safe_relative_path(path)
    except UnsafePath:
        return
    assert not result.startswith("/")
    assert all(seg not in ("", ".", "..") for seg in result.split("/"))
    assert "\\" not in result
