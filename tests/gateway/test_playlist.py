"""gateway.playlist: RFC 8216 playlist rewriting against real playlists and unit cases."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin

import pytest

from gateway.errors import ForeignURIError, PlaylistError
from gateway.playlist import is_multivariant, part_target, rewrite_playlist, target_duration

DATA = Path(__file__).resolve().parent.parent / "data" / "hls"
PLAYLISTS = sorted(p.name for p in DATA.glob("*.m3u8"))

POD = "http://127.0.0.2:8000"
SCOPE = f"{POD}/cameras/gate/"
SEG = "SEGGRANT"
PL = "PLGRANT"

# Attribute names that carry URIs, for the test-side (independent) extraction.
URI_ATTR = re.compile(r'(?<=[:,])(URI|SERVER-URI|X-ASSET-URI|X-ASSET-LIST)="([^"]*)"')

REWRITES = "rewrites"
FOREIGN = "foreign"
EXPECTED = {
    "akamai-hdntl-token-on-segment-uris.m3u8": REWRITES,  # relative URIs despite the CDN name
    "apple-fmp4-byterange-map-vod.m3u8": REWRITES,
    "apple-llhls-example-delta-update-skip.m3u8": FOREIGN,  # ../1M/ rendition reports
    "apple-llhls-example-parts-preload-hint.m3u8": FOREIGN,  # ../1M/ rendition reports
    "event-pdt-before-extinf-query-on-segments.m3u8": REWRITES,
    "ffmpeg-fmp4-append-list-restart-discontinuity.m3u8": REWRITES,
    "ffmpeg-fmp4-event-endlist.m3u8": REWRITES,
    "ffmpeg-fmp4-master-var-stream-map.m3u8": REWRITES,
    "ffmpeg-fmp4-master-variant-hi.m3u8": REWRITES,
    "ffmpeg-fmp4-master-variant-lo.m3u8": REWRITES,
    "ffmpeg-ts-live-pdt.m3u8": REWRITES,
    "gohlslib-mediamtx-multivariant-query-propagated.m3u8": REWRITES,
    "live-discontinuity-pdt.m3u8": REWRITES,
    "llhls-parts-byterange-preload-hint.fragment.m3u8": REWRITES,
    "map-byterange-per-segment.m3u8": REWRITES,
    "multiple-map-with-key.m3u8": REWRITES,
    "real-llhls-signed-part-uris.m3u8": REWRITES,
    "rfc8216-8.1-simple-media-playlist.m3u8": FOREIGN,  # http://media.example.com/
    "rfc8216-8.2-live-media-playlist-https.m3u8": FOREIGN,  # https://priv.example.com/
    "rfc8216-8.4-master-playlist.m3u8": FOREIGN,  # http://example.com/
    "rfc8216bis-22-9.11-low-latency.fragment.m3u8": FOREIGN,  # "..." elision line, /1M/ report
}


def rw(text: str, *, upstream: str = f"{SCOPE}index.m3u8", scope: str = SCOPE) -> str:
    return rewrite_playlist(text, upstream_url=upstream, scope_url=scope, segment_grant=SEG, playlist_grant=PL)


def pl(*lines: str, end: str = "\n") -> str:
    return "#EXTM3U" + end + end.join(lines) + end


def split_keep(text: str) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def uri_lines(text: str) -> list[str]:
    return [ln.rstrip("\r\n") for ln in split_keep(text) if ln.strip() and not ln.startswith("#")]


def attr_uris(text: str) -> list[str]:
    return [m.group(2) for ln in split_keep(text) if ln.startswith("#EXT") for m in URI_ATTR.finditer(ln)]


def masked_non_uri_lines(text: str) -> list[str]:
    """Every non-URI line, byte for byte, with URI attribute values blanked."""
    return [URI_ATTR.sub(r'\1=""', ln) for ln in split_keep(text) if not ln.strip() or ln.startswith("#")]


def all_uris(text: str) -> list[str]:
    return uri_lines(text) + attr_uris(text)


def query_of(uri: str) -> str | None:
    return uri.split("?", 1)[1] if "?" in uri else None


def test_every_playlist_has_an_expected_outcome() -> None:
    assert set(PLAYLISTS) == set(EXPECTED)
    assert len(PLAYLISTS) == 21


@pytest.mark.parametrize("name", PLAYLISTS)
def test_real_playlist(name: str) -> None:
    text = (DATA / name).read_text(encoding="utf-8")
    if EXPECTED[name] == FOREIGN:
        with pytest.raises(ForeignURIError):
            rw(text, upstream=f"{SCOPE}{name}")
        return
    out = rw(text, upstream=f"{SCOPE}{name}")
    assert masked_non_uri_lines(out) == masked_non_uri_lines(text)
    assert len(split_keep(out)) == len(split_keep(text))
    before, after = all_uris(text), all_uris(out)
    assert len(after) == len(before) > 0
    for old, new in zip(before, after, strict=True):
        assert new.count("pb_grant=") == 1
        assert "://" not in new and "127.0.0.2" not in new
        # same directory: the path is unchanged, the query kept byte for byte
        assert new.split("?", 1)[0] == old.split("?", 1)[0]
        old_q, new_q = query_of(old), query_of(new)
        if old_q is None:
            assert new_q in (f"pb_grant={SEG}", f"pb_grant={PL}")
        else:
            assert new_q.startswith(old_q)
            assert new_q[len(old_q) :] in (f"&pb_grant={SEG}", f"&pb_grant={PL}", f"pb_grant={SEG}", f"pb_grant={PL}")


def test_real_playlist_queries_preserved_byte_for_byte() -> None:
    out = rw((DATA / "real-llhls-signed-part-uris.m3u8").read_text())
    sig = "NjZmYzFjODBfYzY3NGRlODc4Zjk1MjM1OGNmMmE3NjhiM2E2NTUyNGI1Y2JiYzMyZDU5YTFjNTQzODI2MjI5ZTllZmNhMDZmNQ=="
    assert f'URI="chunk_6351.0.m4s?skid=default&signature={sig}&zone=1&pb_grant={SEG}"' in out
    assert f'URI="rendition_1.m3u8?pb_grant={PL}"' in out
    out = rw((DATA / "event-pdt-before-extinf-query-on-segments.m3u8").read_text())
    assert f"manifest_1_50.ts?m=1559946393&pb_grant={SEG}\n" in out
    out = rw((DATA / "akamai-hdntl-token-on-segment-uris.m3u8").read_text())
    # trailing '&' kept, no empty parameter added
    assert f"a0e3087c.ts?hdntl=exp=1596678764~acl=/*~data=hdntl~hmac=12345&pb_grant={SEG}\n" in out
    out = rw((DATA / "gohlslib-mediamtx-multivariant-query-propagated.m3u8").read_text())
    assert f'URI="audio2_stream.m3u8?key=value&pb_grant={PL}"' in out
    assert f"\nvideo1_stream.m3u8?key=value&pb_grant={PL}\n" in out


def test_real_master_uses_playlist_grant_for_variants() -> None:
    out = rw((DATA / "ffmpeg-fmp4-master-var-stream-map.m3u8").read_text())
    assert uri_lines(out) == [f"hi/index.m3u8?pb_grant={PL}", f"lo/index.m3u8?pb_grant={PL}"]


# Foreign-host playlists, run against their own origin so their rewriting is exercised.
OWN_ORIGIN = {
    "rfc8216-8.1-simple-media-playlist.m3u8": (
        "http://media.example.com/index.m3u8",
        "http://media.example.com/",
        [f"first.ts?pb_grant={SEG}", f"second.ts?pb_grant={SEG}", f"third.ts?pb_grant={SEG}"],
    ),
    "rfc8216-8.2-live-media-playlist-https.m3u8": (
        "https://priv.example.com/live.m3u8",
        "https://priv.example.com/",
        [f"fileSequence{n}.ts?pb_grant={SEG}" for n in (2680, 2681, 2682)],
    ),
    "rfc8216-8.4-master-playlist.m3u8": (
        "http://example.com/master.m3u8",
        "http://example.com/",
        [f"{n}.m3u8?pb_grant={PL}" for n in ("low", "mid", "hi", "audio-only")],
    ),
    "apple-llhls-example-delta-update-skip.m3u8": (
        "https://example.com/2M/waitForMSN.php?_HLS_msn=273&_HLS_part=3&_HLS_skip=YES",
        "https://example.com/",
        None,
    ),
    "apple-llhls-example-parts-preload-hint.m3u8": ("https://example.com/2M/waitForMSN.php", "https://example.com/",
                                                    None),
}


@pytest.mark.parametrize("name", sorted(OWN_ORIGIN))
def test_foreign_playlists_rewrite_against_their_own_origin(name: str) -> None:
    upstream, scope, expected_lines = OWN_ORIGIN[name]
    text = (DATA / name).read_text()
    out = rw(text, upstream=upstream, scope=scope)
    assert masked_non_uri_lines(out) == masked_non_uri_lines(text)
    after = all_uris(out)
    assert len(after) == len(all_uris(text))
    for uri in after:
        assert uri.count("pb_grant=") == 1 and "://" not in uri and "example.com" not in uri
    if expected_lines is not None:
        assert uri_lines(out) == expected_lines
    else:
        assert f'URI="../1M/waitForMSN.php?pb_grant={PL}"' in out
        assert f'URI="../4M/waitForMSN.php?pb_grant={PL}"' in out
        # resolving the output against the gateway lands on the same relative layout
        assert urljoin("https://gw/streams/gate/2M/x.m3u8", "../1M/waitForMSN.php") == "https://gw/streams/gate/1M/waitForMSN.php"


def test_rfc_low_latency_fragment_own_origin() -> None:
    text = (DATA / "rfc8216bis-22-9.11-low-latency.fragment.m3u8").read_text()
    # the "..." elision line of the RFC example is a URI line naming a hidden file: refused
    with pytest.raises(ForeignURIError):
        rw(text, upstream=f"{POD}/2M/LL-HLS.m3u8", scope=f"{POD}/")
    out = rw(text.replace("...\n", ""), upstream=f"{POD}/2M/LL-HLS.m3u8", scope=f"{POD}/")
    assert f'#EXT-X-RENDITION-REPORT:URI="../1M/LL-HLS.m3u8?pb_grant={PL}",LAST-MSN=274,LAST-PART=1\n' in out
    assert f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="midRoll274.1.mp4?pb_grant={SEG}"\n' in out


# ---------------------------------------------------------------- URI-bearing tags


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ('#EXT-X-MAP:URI="init.mp4",BYTERANGE="721@0"', f'#EXT-X-MAP:URI="init.mp4?pb_grant={SEG}",BYTERANGE="721@0"'),
        (
            '#EXT-X-KEY:METHOD=AES-128,URI="key.bin",IV=0x1234',
            f'#EXT-X-KEY:METHOD=AES-128,URI="key.bin?pb_grant={SEG}",IV=0x1234',
        ),
        (
            '#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,URI="k.bin"',
            f'#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,URI="k.bin?pb_grant={SEG}"',
        ),
        (
            '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="en",URI="audio/en"',
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="en",URI="audio/en?pb_grant={PL}"',
        ),
        (
            '#EXT-X-PART:DURATION=1.0,URI="p.1.m4s",INDEPENDENT=YES',
            f'#EXT-X-PART:DURATION=1.0,URI="p.1.m4s?pb_grant={SEG}",INDEPENDENT=YES',
        ),
        ('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p.2.m4s"', f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p.2.m4s?pb_grant={SEG}"'),
        (
            '#EXT-X-RENDITION-REPORT:URI="lo/live",LAST-MSN=3',
            f'#EXT-X-RENDITION-REPORT:URI="lo/live?pb_grant={PL}",LAST-MSN=3',
        ),
        (
            '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI="iframes"',
            f'#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI="iframes?pb_grant={PL}"',
        ),
        (
            '#EXT-X-SESSION-DATA:DATA-ID="com.x",URI="data.json"',
            f'#EXT-X-SESSION-DATA:DATA-ID="com.x",URI="data.json?pb_grant={SEG}"',
        ),
        (
            '#EXT-X-CONTENT-STEERING:SERVER-URI="steer.json",PATHWAY-ID="A"',
            f'#EXT-X-CONTENT-STEERING:SERVER-URI="steer.json?pb_grant={SEG}",PATHWAY-ID="A"',
        ),
        (
            '#EXT-X-DATERANGE:ID="ad",CLASS="com.apple.hls.interstitial",X-ASSET-URI="ad/main.m3u8"',
            f'#EXT-X-DATERANGE:ID="ad",CLASS="com.apple.hls.interstitial",X-ASSET-URI="ad/main.m3u8?pb_grant={PL}"',
        ),
        (
            '#EXT-X-DATERANGE:ID="ad",X-ASSET-LIST="list.json",START-DATE="2020-01-01T00:00:00Z"',
            f'#EXT-X-DATERANGE:ID="ad",X-ASSET-LIST="list.json?pb_grant={SEG}",START-DATE="2020-01-01T00:00:00Z"',
        ),
    ],
)
def test_uri_bearing_tags(tag: str, expected: str) -> None:
    assert rw(pl(tag)) == pl(expected)


def test_unlisted_tag_and_plain_daterange_untouched() -> None:
    text = pl('#EXT-X-DATERANGE:ID="x",START-DATE="2020-01-01T00:00:00Z",X-COM-URI="a.ts"', "#EXT-X-FOO:URI=\"b.ts\"")
    assert rw(text) == text


def test_server_uri_is_not_uri() -> None:
    # SERVER-URI must be rewritten as SERVER-URI, and a URI attribute elsewhere must not be touched
    text = pl('#EXT-X-CONTENT-STEERING:SERVER-URI="s.json",PATHWAY-ID="URI=x"')
    assert rw(text) == pl(f'#EXT-X-CONTENT-STEERING:SERVER-URI="s.json?pb_grant={SEG}",PATHWAY-ID="URI=x"')
    # in a tag where only URI counts, X-SERVER-URI is not a URI attribute
    text = pl('#EXT-X-MAP:X-SERVER-URI="keep",URI="init.mp4"')
    assert rw(text) == pl(f'#EXT-X-MAP:X-SERVER-URI="keep",URI="init.mp4?pb_grant={SEG}"')


def test_quoted_attribute_with_comma() -> None:
    text = pl('#EXT-X-MEDIA:TYPE=AUDIO,NAME="a,URI=x.ts",GROUP-ID="g,h",URI="au.m3u8",CHANNELS="2"')
    assert rw(text) == pl(
        f'#EXT-X-MEDIA:TYPE=AUDIO,NAME="a,URI=x.ts",GROUP-ID="g,h",URI="au.m3u8?pb_grant={PL}",CHANNELS="2"'
    )


def test_stream_inf_codecs_comma_and_variant_line() -> None:
    text = pl('#EXT-X-STREAM-INF:BANDWIDTH=1,CODECS="avc1.4d401f,mp4a.40.2"', "# comment", "", "hi/playlist")
    assert rw(text) == pl(
        '#EXT-X-STREAM-INF:BANDWIDTH=1,CODECS="avc1.4d401f,mp4a.40.2"', "# comment", "", f"hi/playlist?pb_grant={PL}"
    )


def test_method_none_key_has_no_uri() -> None:
    text = pl("#EXT-X-KEY:METHOD=NONE", "#EXTINF:2,", "a.ts")
    assert rw(text) == pl("#EXT-X-KEY:METHOD=NONE", "#EXTINF:2,", f"a.ts?pb_grant={SEG}")


def test_malformed_or_unquoted_uri_attribute_refused() -> None:
    with pytest.raises(PlaylistError):
        rw(pl("#EXT-X-MAP:URI=init.mp4"))
    with pytest.raises(PlaylistError):
        rw(pl('#EXT-X-MAP:URI="init.mp4'))
    with pytest.raises(PlaylistError):
        rw(pl('#EXT-X-MAP:URI=""'))


# ---------------------------------------------------------------- resolution and scope


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("seg.ts", "seg.ts"),
        ("./seg.ts", "seg.ts"),
        ("sub/seg.ts", "sub/seg.ts"),
        ("/cameras/gate/x.ts", "x.ts"),
        ("/cameras/gate/sub/x.ts", "sub/x.ts"),
        ("../gate/x.ts", "x.ts"),  # dot segments that stay inside the scope
        (f"{POD}/cameras/gate/x.ts", "x.ts"),
        ("HTTP://127.0.0.2:8000/cameras/gate/x.ts", "x.ts"),
        ("//127.0.0.2:8000/cameras/gate/x.ts", "x.ts"),
        ("seg.ts#frag", "seg.ts"),
        ("seg%20a.ts", "seg%20a.ts"),
        ("a:b.ts", None),  # scheme "a": foreign
    ],
)
def test_resolution_same_origin(uri: str, expected: str | None) -> None:
    text = pl("#EXTINF:2,", uri)
    if expected is None:
        with pytest.raises(ForeignURIError):
            rw(text)
        return
    assert uri_lines(rw(text)) == [f"{expected}?pb_grant={SEG}"]


def test_default_port_matches() -> None:
    out = rw(pl("#EXTINF:2,", "http://pod:80/cameras/gate/x.ts"), upstream="http://pod/cameras/gate/i.m3u8", scope="http://pod/cameras/gate/")
    assert uri_lines(out) == [f"x.ts?pb_grant={SEG}"]


@pytest.mark.parametrize(
    "uri",
    [
        "/other/x.ts",
        "/cameras/gate2/x.ts",
        "/cameras/x.ts",
        "http://evil/cameras/gate/x.ts",
        "http://127.0.0.2:8001/cameras/gate/x.ts",
        "http://127.0.0.2/cameras/gate/x.ts",
        "https://127.0.0.2:8000/cameras/gate/x.ts",
        "http://127.0.0.2:8000@evil/cameras/gate/x.ts",
        "http://user@127.0.0.2:8000/cameras/gate/x.ts",
        "//evil/x.ts",
        "//127.0.0.2:8000@evil/cameras/gate/x.ts",
        "http:x.ts",  # scheme without authority
        "data:video/mp2t;base64,AAAA",
        "skd://key-id",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "../x.ts",
        "../other/x.ts",
        "../../../../x.ts",
        "sub/../../x.ts",
        "%2e%2e/x.ts",
        "%2E%2E/other/x.ts",
        ".%2e/x.ts",
        "sub%2f..%2f..%2fx.ts",
        "%252e%252e/x.ts",
        "..\\x.ts",
        "sub\\x.ts",
        ".hidden.ts",
        "sub/",
        "/cameras/gate/",
    ],
)
def test_foreign_uris_refuse_the_whole_playlist(uri: str) -> None:
    with pytest.raises(ForeignURIError):
        rw(pl("#EXTINF:2,", "ok.ts", "#EXTINF:2,", uri))
    with pytest.raises(ForeignURIError):
        rw(pl(f'#EXT-X-MAP:URI="{uri}"'))


def test_relative_reference_between_directories() -> None:
    out = rw(pl("#EXTINF:2,", "../b/x.ts", "#EXTINF:2,", "y.ts", "#EXTINF:2,", "/cameras/gate/z.ts"),
             upstream=f"{SCOPE}a/index.m3u8")
    assert uri_lines(out) == [f"../b/x.ts?pb_grant={SEG}", f"y.ts?pb_grant={SEG}", f"../z.ts?pb_grant={SEG}"]
    # and they resolve back through the gateway to the same layout
    base = "https://gw/streams/gate/a/index.m3u8"
    assert [urljoin(base, u).split("?")[0] for u in uri_lines(out)] == [
        "https://gw/streams/gate/b/x.ts",
        "https://gw/streams/gate/a/y.ts",
        "https://gw/streams/gate/z.ts",
    ]


def test_colon_names_get_dot_slash_prefix() -> None:
    out = rw(pl("#EXTINF:2,", "/cameras/gate/cam:1.ts", "#EXTINF:2,", "sub/c:d.ts"))
    assert uri_lines(out) == [f"./cam:1.ts?pb_grant={SEG}", f"sub/c:d.ts?pb_grant={SEG}"]
    assert urljoin("https://gw/streams/gate/index.m3u8", "./cam:1.ts") == "https://gw/streams/gate/cam:1.ts"
    # a single-letter first segment looks like a drive letter: the gateway would not serve it
    with pytest.raises(ForeignURIError):
        rw(pl("#EXTINF:2,", "/cameras/gate/a:b.ts"))


# ---------------------------------------------------------------- queries and grants


def test_query_merge_byte_for_byte() -> None:
    out = rw(pl("#EXTINF:2,", "seg.m4s?a=1&b=%20x", "#EXTINF:2,", "s2.m4s?z=%2F&a=2&A=%2f", "#EXTINF:2,", "s3.m4s?",
                "#EXTINF:2,", "s4.m4s?q&"))
    assert uri_lines(out) == [
        f"seg.m4s?a=1&b=%20x&pb_grant={SEG}",
        f"s2.m4s?z=%2F&a=2&A=%2f&pb_grant={SEG}",
        f"s3.m4s?pb_grant={SEG}",
        f"s4.m4s?q&pb_grant={SEG}",
    ]


def test_query_only_reference_resolves_to_the_playlist_itself() -> None:
    out = rw(pl('#EXT-X-RENDITION-REPORT:URI="?_HLS_msn=1"'), upstream=f"{SCOPE}hi/index.m3u8?x=1")
    assert out == pl(f'#EXT-X-RENDITION-REPORT:URI="index.m3u8?_HLS_msn=1&pb_grant={PL}"')


def test_grant_is_percent_encoded() -> None:
    out = rewrite_playlist(pl("#EXTINF:2,", "a.ts"), upstream_url=f"{SCOPE}i.m3u8", scope_url=SCOPE,
                           segment_grant="a b&c=d", playlist_grant="p")
    assert uri_lines(out) == ["a.ts?pb_grant=a%20b%26c%3Dd"]


@pytest.mark.parametrize("uri", ["a.ts?pb_grant=x", "a.ts?x=1&pb_grant=", "a.ts?PB_GRANT=1", "a.ts?pb%5Fgrant=1",
                                 "a.ts?x=1;pb_grant=2"])
def test_existing_grant_refused(uri: str) -> None:
    with pytest.raises(PlaylistError) as info:
        rw(pl("#EXTINF:2,", uri))
    assert not isinstance(info.value, ForeignURIError)


@pytest.mark.parametrize("uri", ["seg_7.ts?x=\u00e9", "s\u00e9g_7.ts", "seg_7.ts?q=\u4e2d", "seg_7.ts?" + "x" * 8200])
def test_non_ascii_or_overlong_uris_refuse_the_playlist(uri: str) -> None:
    """A raw non-ASCII URI (an IRI) got a grant minted over its raw form, while players send it
    percent-encoded: every segment was a 403 with no reason logged. A URI longer than any
    request line a viewer can send is refused too. Both now make the playlist a 502 that says why."""
    with pytest.raises(PlaylistError) as info:
        rw(pl("#EXTINF:2,", uri))
    assert "ASCII" in str(info.value) or "longer than" in str(info.value)
    assert uri_lines(rw(pl("#EXTINF:2,", "seg_7.ts?x=%C3%A9"))) == [f"seg_7.ts?x=%C3%A9&pb_grant={SEG}"]


def test_similar_parameter_names_are_not_grants() -> None:
    out = rw(pl("#EXTINF:2,", "a.ts?pb_grants=1&xpb_grant=2"))
    assert uri_lines(out) == [f"a.ts?pb_grants=1&xpb_grant=2&pb_grant={SEG}"]


def test_playlist_vs_segment_grant() -> None:
    text = pl(
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="a",URI="audio.php"',
        '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI="iframe.php"',
        '#EXT-X-MAP:URI="init.mp4"',
        '#EXT-X-KEY:METHOD=AES-128,URI="sub.M3U8"',
        "#EXT-X-STREAM-INF:BANDWIDTH=1",
        "variant.php",
        "#EXTINF:2,",
        "seg.ts",
        "#EXTINF:2,",
        "other.m3u",
    )
    out = rw(text)
    assert uri_lines(out) == [f"variant.php?pb_grant={PL}", f"seg.ts?pb_grant={SEG}", f"other.m3u?pb_grant={PL}"]
    assert attr_uris(out) == [
        f"audio.php?pb_grant={PL}",
        f"iframe.php?pb_grant={PL}",
        f"init.mp4?pb_grant={SEG}",
        f"sub.M3U8?pb_grant={PL}",
    ]


# ---------------------------------------------------------------- bytes, endings, input checks


def test_crlf_preserved() -> None:
    text = pl("#EXT-X-TARGETDURATION:2", '#EXT-X-MAP:URI="init.mp4"', "#EXTINF:2,", "a.ts", "", "# c", end="\r\n")
    assert rw(text) == pl(
        "#EXT-X-TARGETDURATION:2", f'#EXT-X-MAP:URI="init.mp4?pb_grant={SEG}"', "#EXTINF:2,", f"a.ts?pb_grant={SEG}",
                          "", "# c", end="\r\n"
    )


def test_mixed_endings_and_missing_final_newline() -> None:
    text = "#EXTM3U\r\n#EXTINF:2,\na.ts\r\n#EXTINF:2,\r\nb.ts"
    assert rw(text) == f"#EXTM3U\r\n#EXTINF:2,\na.ts?pb_grant={SEG}\r\n#EXTINF:2,\r\nb.ts?pb_grant={SEG}"
    text = '#EXTM3U\n#EXT-X-MAP:URI="i.mp4"'
    assert rw(text) == f'#EXTM3U\n#EXT-X-MAP:URI="i.mp4?pb_grant={SEG}"'


def test_bom_and_comments_and_unknown_tags_kept() -> None:
    text = "\ufeff#EXTM3U\n#EXT-X-UNKNOWN:FOO=1\n#  comment , URI=\"x\"\n\n#EXTINF:2,title, with comma\na.ts\n"
    assert rw(text) == (f"\ufeff#EXTM3U\n#EXT-X-UNKNOWN:FOO=1\n#  comment , URI=\"x\"\n\n"
                        f"#EXTINF:2,title, with comma\na.ts?pb_grant={SEG}\n")


@pytest.mark.parametrize(
    "text",
    ["", "hello", "<html>#EXTM3U</html>", "\n#EXTM3U\n", "#EXTM3", "#EXTM3UX\n", "#EXT-X-VERSION:3\n#EXTM3U\n"],
)
def test_non_playlist_refused(text: str) -> None:
    with pytest.raises(PlaylistError):
        rw(text)


def test_oversized_playlist_refused() -> None:
    line = "#EXTINF:2,\na.ts\n"
    text = "#EXTM3U\n" + line * (2 * 1024 * 1024 // len(line) + 1)
    with pytest.raises(PlaylistError):
        rw(text)
    # multi-byte characters count as bytes
    text = "#EXTM3U\n# " + "é" * (1024 * 1024 + 10) + "\n"
    with pytest.raises(PlaylistError):
        rw(text)
    ok = "#EXTM3U\n# " + "é" * (1024 * 1024 - 100) + "\n"
    assert rw(ok) == ok


@pytest.mark.parametrize("uri", ["a b.ts", 'a".ts', "a\x00.ts"])
def test_bad_characters_refused(uri: str) -> None:
    with pytest.raises(PlaylistError):
        rw(pl("#EXTINF:2,", uri))


def test_upstream_outside_scope_refused() -> None:
    with pytest.raises(PlaylistError):
        rw(pl("#EXTINF:2,", "a.ts"), upstream=f"{POD}/cameras/other/index.m3u8")
    with pytest.raises(PlaylistError):
        rw(pl("#EXTINF:2,", "a.ts"), upstream="http://127.0.0.3:8000/cameras/gate/index.m3u8")


# ---------------------------------------------------------------- helpers


def test_target_duration() -> None:
    assert target_duration(pl("#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:10")) == 10.0
    assert target_duration(pl("#EXT-X-TARGETDURATION:2", end="\r\n")) == 2.0
    assert target_duration(pl("#EXT-X-VERSION:3")) is None
    assert target_duration((DATA / "rfc8216-8.2-live-media-playlist-https.m3u8").read_text()) == 8.0
    with pytest.raises(PlaylistError):
        target_duration(pl("#EXT-X-TARGETDURATION:abc"))
    with pytest.raises(PlaylistError):
        target_duration(pl("#EXT-X-TARGETDURATION:-1"))


def test_is_multivariant() -> None:
    assert is_multivariant((DATA / "ffmpeg-fmp4-master-var-stream-map.m3u8").read_text())
    assert is_multivariant(pl('#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI="i.m3u8"'))
    assert not is_multivariant((DATA / "ffmpeg-fmp4-master-variant-hi.m3u8").read_text())
    assert not is_multivariant(pl("# #EXT-X-STREAM-INF:BANDWIDTH=1", "#EXT-X-STREAM-INFO:X=1"))


def test_part_target() -> None:
    assert part_target((DATA / "real-llhls-signed-part-uris.m3u8").read_text()) == pytest.approx(1.034)
    assert part_target((DATA / "apple-llhls-example-parts-preload-hint.m3u8").read_text()) == pytest.approx(0.33334)
    assert part_target((DATA / "ffmpeg-ts-live-pdt.m3u8").read_text()) is None
    assert part_target(pl('#EXT-X-PART-INF:X="a,b",PART-TARGET=0.5')) == 0.5
    with pytest.raises(PlaylistError):
        part_target(pl("#EXT-X-PART-INF:FOO=1"))
