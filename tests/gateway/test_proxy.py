"""The gateway proxy against programmable pods (counted at the upstream transport seam).

Covers: auth before any upstream request, JWT → session grant, grants on every
URI, the shared cases in tests/data/hls/cases (B01 B02 B07 B09 B10 B11 B12 B14
B17), error mapping, headers, CORS, ranges, query pass-through, hostile pods,
single-flight with many viewers, and redacted access logs.
"""

import asyncio
import logging
import time

import httpx
import jwt
import pytest

from tests.gateway.conftest import (
    CAM,
    LIVE,
    ORIGIN,
    POD,
    SECRET,
    SIGNER,
    keys,
    ll_playlist,
    make_token,
    start_session,
    uris,
)


# ---- authentication happens before any upstream request ------------------------------------
def forged(**over):
    now = int(time.time())
    c = {"aud": "platebridge-stream", "iat": now, "exp": now + 300, "user_id": "u", "camera_id": CAM, "pod_id": POD}
    c.update(over)
    return c


BAD_TOKENS = {
    "forged": lambda: jwt.encode(forged(), "wrong-secret" * 6, algorithm="HS256"),
    "alg_none": lambda: jwt.encode(forged(), None, algorithm="none"),
    "hs512": lambda: jwt.encode(forged(), SECRET, algorithm="HS512"),
    "expired": lambda: jwt.encode(forged(iat=int(time.time()) - 900, exp=int(time.time()) - 60), SECRET,
                                  algorithm="HS256"),
    "not_yet_valid": lambda: jwt.encode(forged(nbf=int(time.time()) + 600), SECRET, algorithm="HS256"),
    "lifetime_over_max": lambda: jwt.encode(forged(exp=int(time.time()) + 86400 * 7), SECRET, algorithm="HS256"),
    "wrong_aud": lambda: jwt.encode(forged(aud="platebridge-pod"), SECRET, algorithm="HS256"),
    "pod_id_not_dns_label": lambda: jwt.encode(forged(pod_id="Evil_Pod.example.com"), SECRET, algorithm="HS256"),
    "garbage": lambda: "not-a-jwt",
    # NumericDates that used to give a 500 or never expire (RFC 7519 §2 wants seconds)
    "exp_nan": lambda: jwt.encode(forged(exp=float("nan")), SECRET, algorithm="HS256"),
    "exp_10e400": lambda: jwt.encode(forged(exp=10**400), SECRET, algorithm="HS256"),
    "iat_minus_infinity": lambda: jwt.encode(forged(iat=float("-inf")), SECRET, algorithm="HS256"),
    "iat_minus_10e400": lambda: jwt.encode(forged(iat=-10**400), SECRET, algorithm="HS256"),
}


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
async def test_bad_token_rejected_with_zero_upstream_requests(client, pod, name):
    r = await client.get(f"/streams/{CAM}/index.m3u8?token={BAD_TOKENS[name]()}")
    assert r.status_code == 401, r.text
    assert pod.requests == []


async def test_camera_mismatch_is_403_and_no_upstream(client, pod):
    r = await client.get(f"/streams/{CAM}/index.m3u8?token={make_token(camera_id='other-cam')}")
    assert r.status_code == 403 and pod.requests == []


async def test_no_credentials_401(client, pod):
    assert (await client.get(f"/streams/{CAM}/index.m3u8")).status_code == 401
    assert pod.requests == []


async def test_bearer_header_accepted(client, pod):
    r = await client.get(f"/streams/{CAM}/index.m3u8", headers={"Authorization": f"Bearer {make_token()}"})
    assert r.status_code == 302 and "pb_grant=" in r.headers["location"]
    assert pod.requests == []  # the redirect itself needs no pod


# ---- B01/B02: every URI carries its own grant; segments need no JWT or header -------------
async def test_playlist_uris_all_granted_and_segments_work_without_jwt(client, pod):
    url = await start_session(client)
    r = await client.get(url)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    found = uris(r.text)
    assert len(found) == 3 and all("pb_grant=" in u for u in found)
    assert "127.0.0.2" not in r.text and "token=" not in r.text
    for u in found:
        seg = await client.get(f"/streams/{CAM}/{u}")  # no Authorization header, no JWT
        assert seg.status_code == 200
        assert seg.headers["content-type"] == "video/mp4"


async def test_segment_without_grant_is_401_tampered_is_403_no_upstream(client, pod):
    assert (await client.get(f"/streams/{CAM}/seg_100.m4s")).status_code == 401
    assert (await client.get(f"/streams/{CAM}/seg_100.m4s?token={make_token()}")).status_code == 401
    assert (await client.get(f"/streams/{CAM}/seg_100.m4s?pb_grant=v1.AAAA.BBBB")).status_code == 403
    assert pod.requests == []


async def test_grant_reused_on_another_camera_is_403(client, pod):
    text = (await client.get(await start_session(client))).text
    seg = [u for u in uris(text) if u.startswith("seg_100")][0]
    n = len(pod.requests)
    r = await client.get(f"/streams/other-cam/{seg}")
    assert r.status_code == 403 and len(pod.requests) == n


async def test_two_grants_refused(client, pod):
    url = await start_session(client)
    r = await client.get(url + "&pb_grant=v1.x.y")
    assert r.status_code == 400 and pod.requests == []


# ---- B11: the session outlives the JWT; the session itself is capped ----------------------
async def test_reload_works_after_jwt_expiry_but_not_after_session_cap(client, pod, clock):
    token = make_token(ttl=60)
    url = await start_session(client, token)
    clock.shift(600)  # JWT long expired
    assert (await client.get(f"/streams/{CAM}/index.m3u8?token={token}")).status_code == 401
    r = await client.get(url)
    assert r.status_code == 200
    seg = [u for u in uris(r.text) if u.startswith("seg_101")][0]
    assert (await client.get(f"/streams/{CAM}/{seg}")).status_code == 200
    clock.shift(3600)  # past max_session_seconds (3600 s from the JWT's iat)
    r = await client.get(url)
    assert r.status_code == 403


async def test_segment_grant_expires_but_each_reload_remints(client, pod, clock):
    url = await start_session(client)
    old = (await client.get(url)).text
    clock.shift(200)  # > grant_ttl (120 s)
    seg_old = [u for u in uris(old) if u.startswith("seg_100")][0]
    assert (await client.get(f"/streams/{CAM}/{seg_old}")).status_code == 403
    new = (await client.get(url)).text
    seg_new = [u for u in uris(new) if u.startswith("seg_100")][0]
    assert seg_new != seg_old
    assert (await client.get(f"/streams/{CAM}/{seg_new}")).status_code == 200


# ---- B17: grants are not bound to client IP or cookies --------------------------------------
async def test_grant_works_from_another_client_without_cookies(client, pod, gw_config):
    url = await start_session(client)
    text = (await client.get(url)).text
    seg = [u for u in uris(text) if u.startswith("seg_100")][0]
    r = await client.get(f"/streams/{CAM}/{seg}", headers={"X-Forwarded-For": "2001:db8::7", "Cookie": ""})
    assert r.status_code == 200


# ---- B07/B09: headers -------------------------------------------------------------------------
async def test_playlist_headers_no_cache_and_no_pod_validators(client, pod):
    r = await client.get(await start_session(client))
    assert r.headers["cache-control"] == "no-cache, private"
    assert "etag" not in r.headers and "last-modified" not in r.headers


@pytest.mark.parametrize("name,ctype", [("a.ts", "video/mp2t"), ("b.m4s", "video/mp4"), ("init.mp4", "video/mp4"),
                                        ("x.m3u8", "application/vnd.apple.mpegurl")])
async def test_content_type_by_file_type_not_by_pod(client, pod, name, ctype):
    pl = ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n"
          "#EXTINF:2,\na.ts\n#EXTINF:2,\nb.m4s\n#EXTINF:2,\nx.m3u8\n")
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(200, text=pl)
    body = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n" if name.endswith("m3u8") else "data"
    pod.routes[f"/cameras/{CAM}/{name}"] = httpx.Response(200, text=body, headers={"content-type": "text/plain"})
    text = (await client.get(await start_session(client))).text
    [uri] = [u for u in uris(text) if u.startswith(name + "?")]
    r = await client.get(f"/streams/{CAM}/{uri}")
    assert r.status_code == 200 and r.headers["content-type"] == ctype


async def test_segment_cache_control_covers_window(client, pod):
    text = (await client.get(await start_session(client))).text
    seg = [u for u in uris(text) if u.startswith("seg_100")][0]
    r = await client.get(f"/streams/{CAM}/{seg}")
    cc = r.headers["cache-control"]
    assert "private" in cc and int(cc.split("max-age=")[1].split(",")[0]) >= 12


# ---- Range ------------------------------------------------------------------------------------
async def test_range_request_206(client, pod):
    text = (await client.get(await start_session(client))).text
    seg = [u for u in uris(text) if u.startswith("seg_100")][0]
    r = await client.get(f"/streams/{CAM}/{seg}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.headers["content-length"] == "10"
    assert r.headers["content-range"] == "bytes 10-19/5000" and r.content == bytes([100]) * 10
    r = await client.get(f"/streams/{CAM}/{seg}", headers={"Range": "bytes=-100"})
    assert r.status_code == 206 and len(r.content) == 100
    r = await client.get(f"/streams/{CAM}/{seg}", headers={"Range": "bytes=9999-"})
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */5000"


async def test_a_ranged_answer_is_never_kept_and_if_range_gets_the_whole_segment(client, pod):
    """As the data plane's nginx answers (an attack run found both planes differing): any Range
    header gives Cache-Control no-store, and with If-Range (RFC 9110 §13.1.5) the Range is
    ignored, since the gateway sends no validator a client could hold."""
    text = (await client.get(await start_session(client))).text
    seg = [u for u in uris(text) if u.startswith("seg_100")][0]
    whole = await client.get(f"/streams/{CAM}/{seg}")
    assert whole.status_code == 200 and "immutable" in whole.headers["cache-control"]
    for header in ("bytes=0-9", "items=0-1", "bytes=9999-"):
        r = await client.get(f"/streams/{CAM}/{seg}", headers={"Range": header})
        assert r.headers["cache-control"] in ("private, no-store", "no-store"), header  # 416: an error text
    for validator in ('"x"', "Mon, 01 Jan 2001 00:00:00 GMT"):
        r = await client.get(f"/streams/{CAM}/{seg}", headers={"Range": "bytes=0-9", "If-Range": validator})
        assert r.status_code == 200 and r.content == bytes([100]) * 5000 and "content-range" not in r.headers


@pytest.mark.parametrize("header,status", [
    ("bytes=0-0,5-5", 200),  # several ranges: the whole segment, as the gateway's nginx answers
    ("items=0-1", 200),  # an unknown unit is ignored (RFC 9110 §14.2)
    ("bytes=+0-+9", 416),  # malformed: ASCII digits only (int() took "+0")
    ("bytes=0-1_0", 416),
])
async def test_ranges_the_gateway_ignores_or_refuses_as_nginx_does(client, pod, header, status):
    text = (await client.get(await start_session(client))).text
    seg = [u for u in uris(text) if u.startswith("seg_100")][0]
    r = await client.get(f"/streams/{CAM}/{seg}", headers={"Range": header})
    assert r.status_code == status
    if status == 200:
        assert r.content == bytes([100]) * 5000 and "content-range" not in r.headers
    else:
        assert r.headers["content-range"] == "bytes */5000"


# ---- B10: CORS on every response --------------------------------------------------------------
async def test_cors_exact_echo_on_success_error_redirect_and_preflight(client, pod):
    h = {"Origin": ORIGIN}
    r = await client.get(f"/streams/{CAM}/index.m3u8?token={make_token()}", headers=h)
    assert r.status_code == 302 and r.headers["access-control-allow-origin"] == ORIGIN and "Origin" in r.headers["vary"]
    url = f"/streams/{CAM}/" + r.headers["location"]
    r = await client.get(url, headers=h)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    grant = url.split("pb_grant=")[1]
    r = await client.get(f"/streams/{CAM}/seg_99999.m4s?pb_grant={grant}", headers=h)  # grant of another URI
    assert r.status_code == 403 and r.headers["access-control-allow-origin"] == ORIGIN
    pod.routes[f"/cameras/{CAM}/seg_100.m4s"] = httpx.Response(404)
    seg = [u for u in uris((await client.get(url)).text) if u.startswith("seg_100")][0]
    r = await client.get(f"/streams/{CAM}/{seg}", headers=h)  # the pod's own 404, passed through
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == ORIGIN
    r = await client.get(f"/streams/{CAM}/seg_1.m4s", headers=h)
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    r = await client.options(f"/streams/{CAM}/index.ts?pb_grant=x", headers={
        **h, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range,authorization"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == ORIGIN
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "range" in allowed and "authorization" in allowed
    r = await client.get(url, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


# ---- B12: pod outages are 5xx, never 401 ------------------------------------------------------
async def test_pod_unreachable_502_timeout_504(client, pod):
    url = await start_session(client)

    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    def slow(request):
        raise httpx.ReadTimeout("slow", request=request)

    pod.routes[f"/cameras/{CAM}/index.m3u8"] = refuse
    assert (await client.get(url)).status_code == 502
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = slow
    assert (await client.get(url)).status_code == 504


async def test_pod_statuses_mapped(client, pod):
    url = await start_session(client)
    grant = url.split("pb_grant=")[1]
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(503, headers={"retry-after": "3"})
    r = await client.get(url)
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(401)
    assert (await client.get(url)).status_code == 502  # the pod refusing *us* is not the viewer's fault
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(
        200, text="#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg_424242.m4s\n#EXTINF:2,\nseg_424243.m4s\n")
    pod.routes[f"/cameras/{CAM}/seg_424243.m4s"] = httpx.Response(400, text="msn too far")
    await asyncio.sleep(1.1)  # past the cached 401's reload window
    text = (await client.get(url)).text
    gone, bad = [u for u in uris(text) if u.startswith("seg_42424")]
    assert (await client.get(f"/streams/{CAM}/{gone}")).status_code == 404  # the pod's 404 passes through
    assert (await client.get(f"/streams/{CAM}/{bad}")).status_code == 400  # and so does its 400 (B14)
    # a grant opens only its own URI: the session grant on a segment is refused before any pod request
    n = len(pod.requests)
    assert (await client.get(f"/streams/{CAM}/seg_424242.m4s?pb_grant={grant}")).status_code == 403
    assert len(pod.requests) == n


@pytest.mark.parametrize("ranged", [False, True])
async def test_a_body_that_fails_before_its_first_byte_is_an_error_answer_not_a_started_200(client, pod, ranged):
    """The pod answers 200 with its headers, then its body breaks before any byte. Nothing has
    gone to the viewer yet, so the viewer gets the error's own status (502), not a started 200
    with no body, which ASGI servers turn into a 500 or an empty 200 (seen with 16 endless bodies
    filling the memory budget: a viewer got 500)."""
    text = (await client.get(await start_session(client))).text
    seg = [u for u in uris(text) if u.startswith("seg_101")][0]

    async def broken():
        await asyncio.sleep(0.2)  # the viewer is waiting for the first chunk by now
        raise httpx.ReadError("pod went away")
        yield b""  # an async generator

    pod.routes[f"/cameras/{CAM}/seg_101.m4s"] = lambda r: httpx.Response(
        200, content=broken(), headers={"content-length": "5000"})
    headers = {"Range": "bytes=0-9"} if ranged else {}
    r = await client.get(f"/streams/{CAM}/{seg}", headers=headers)
    assert r.status_code == 502, (r.status_code, r.headers, r.content[:100])
    assert r.headers["content-type"].startswith("text/plain")


async def test_unknown_pod_is_503(client, pod):
    r = await client.get(f"/streams/{CAM}/index.m3u8?token={make_token(pod_id='unknown-pod')}")
    url = f"/streams/{CAM}/" + r.headers["location"]
    r = await client.get(url)
    assert r.status_code == 503 and pod.requests == []


async def test_llhls_directives_reach_the_pod_canonically_and_its_400_passes_through(client, pod):
    """B14: each generation is asked of the pod with its own (canonical) directives, never
    answered with another msn's playlist; the pod's 400 (msn too far ahead) passes through, and
    one far beyond the live edge the gateway knows is a 400 without asking the pod."""
    seen = []

    def blocking(request):
        seen.append(request.url.raw_path.decode())
        q = dict(p.split("=") for p in request.url.query.decode().split("&"))
        msn, part = int(q["_HLS_msn"]), int(q["_HLS_part"])
        if msn == 275:
            return httpx.Response(400, text="msn too far ahead")
        return httpx.Response(200, text=ll_playlist(msn, part + 1))

    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(200, text=ll_playlist(273, 3))
    for q in ("_HLS_msn=273&_HLS_part=3", "_HLS_msn=274&_HLS_part=0", "_HLS_msn=275&_HLS_part=0"):
        pod.routes[f"/cameras/{CAM}/index.m3u8?{q}"] = blocking
    url = await start_session(client)
    assert (await client.get(url)).status_code == 200  # the pod advertises CAN-BLOCK-RELOAD=YES
    a = await client.get(url.replace("index.m3u8?", "index.m3u8?_HLS_msn=273&_HLS_part=3&"))
    b = await client.get(url + "&_HLS_part=0&_HLS_msn=0274")  # any order, leading zeros: one canonical form
    assert a.status_code == b.status_code == 200
    assert "part_273_3.m4s" in a.text and "part_274_0.m4s" not in a.text and "part_274_0.m4s" in b.text
    assert seen == [f"/cameras/{CAM}/index.m3u8?_HLS_msn=273&_HLS_part=3",
                    f"/cameras/{CAM}/index.m3u8?_HLS_msn=274&_HLS_part=0"]
    c = await client.get(url.replace("index.m3u8?", "index.m3u8?_HLS_msn=275&_HLS_part=0&"))
    assert c.status_code == 400 and len(seen) == 3  # the pod's verdict, not a 502
    d = await client.get(url.replace("index.m3u8?", "index.m3u8?_HLS_msn=400&_HLS_part=0&"))
    assert d.status_code == 400 and "too far ahead" in d.text and len(seen) == 3  # the gateway's own


async def test_directives_ignored_when_the_pod_cannot_block(client, pod):
    """Without CAN-BLOCK-RELOAD=YES the directives are not forwarded: they must not
    defeat the shared playlist cache (one pod fetch for all of them)."""
    url = await start_session(client)
    for n in range(10):
        r = await client.get(url.replace("index.m3u8?", f"index.m3u8?_HLS_msn={n}&"))
        assert r.status_code == 200
    assert pod.paths() == [f"/cameras/{CAM}/index.m3u8"]


async def test_upstream_query_passes_byte_for_byte(client, pod):
    pl = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg_7.ts?sig=a%2Bb%3D&x=%20y&&flag\n"
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(200, text=pl)
    pod.routes[f"/cameras/{CAM}/seg_7.ts?sig=a%2Bb%3D&x=%20y&&flag"] = httpx.Response(200, content=b"TS")
    text = (await client.get(await start_session(client))).text
    [seg] = uris(text)
    assert seg.startswith("seg_7.ts?sig=a%2Bb%3D&x=%20y&&flag&pb_grant=")
    r = await client.get(f"/streams/{CAM}/{seg}")
    assert r.status_code == 200 and r.content == b"TS"
    assert pod.paths()[-1] == f"/cameras/{CAM}/seg_7.ts?sig=a%2Bb%3D&x=%20y&&flag"


async def test_only_uris_from_current_playlists_are_fetched(client, pod):
    """A grant holder cannot make the gateway fetch (or cache) anything the playlist did not
    hand out: junk query parameters, other file names, other playlists."""
    text = (await client.get(await start_session(client))).text
    seg = [u for u in uris(text) if u.startswith("seg_100")][0]
    grant = seg.split("pb_grant=")[1]
    n = len(pod.requests)
    # each grant is bound to its one URI (path, query, kind): anything else is a bad grant
    for i in range(20):
        assert (await client.get(f"/streams/{CAM}/{seg}&x={i}")).status_code == 403
        assert (await client.get(f"/streams/{CAM}/index.m3u8?x={i}&pb_grant={grant}")).status_code == 403
    assert (await client.get(f"/streams/{CAM}/seg_999.m4s?pb_grant={grant}")).status_code == 403
    assert (await client.get(f"/streams/{CAM}/other.m3u8?pb_grant={grant}")).status_code == 403
    assert len(pod.requests) == n


async def test_session_entry_is_the_root_playlist_only(client, pod):
    token = make_token()
    for path in ("https:evil.example%3F.m3u8", "%E2%82%AC.m3u8", "a%23b.m3u8", "other.m3u8"):
        r = await client.get(f"/streams/{CAM}/{path}?token={token}")
        assert r.status_code == 404 and "location" not in r.headers, path
    r = await client.get(f"/streams/{CAM}/index.m3u8?foo=bar&token={token}")
    assert r.status_code == 302 and r.headers["location"].startswith("index.m3u8?pb_grant=")
    assert "foo" not in r.headers["location"] and pod.requests == []


async def test_playlist_with_foreign_uris_is_refused_and_never_fetched(client, pod):
    pl = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"http://169.254.169.254/latest\"\n#EXTINF:2,\nhttp://evil.example/x.ts\n"
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(200, text=pl)
    r = await client.get(await start_session(client))
    assert r.status_code == 502 and "evil" not in r.text and "169.254" not in r.text
    assert all(req.url.host == "127.0.0.2" for req in pod.requests)


@pytest.mark.parametrize("path", ["..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/etc/passwd", "a/../../x.ts",
                                  "%252e%252e/x.ts", "..\\x.ts", "/etc/passwd.ts"])
async def test_traversal_refused_before_upstream(client, pod, path):
    url = await start_session(client)
    grant = url.split("pb_grant=")[1]
    r = await client.get(f"/streams/{CAM}/{path}?pb_grant={grant}")
    assert r.status_code in (400, 404) and pod.requests == []


# ---- many viewers, one pod fetch ---------------------------------------------------------------
async def test_50_concurrent_viewers_cause_one_fetch_per_segment(client, pod):
    pod.delay = 0.05  # keep requests overlapping
    urls = [await start_session(client, make_token(user=f"user{i}")) for i in range(50)]
    playlists = await asyncio.gather(*(client.get(u) for u in urls))
    assert all(p.status_code == 200 for p in playlists)
    assert pod.count(f"/cameras/{CAM}/index.m3u8") == 1
    segs = [await asyncio.gather(*(client.get(f"/streams/{CAM}/{u}") for u in uris(p.text))) for p in playlists]
    bodies = {r.content for group in segs for r in group if "seg_100" in str(r.url)}
    assert len(bodies) == 1
    for path in ("init.mp4", "seg_100.m4s", "seg_101.m4s"):
        assert pod.count(f"/cameras/{CAM}/{path}") == 1, path


async def test_playlist_fetched_at_most_once_per_half_target_duration(client, pod):
    url = await start_session(client)
    for _ in range(20):
        assert (await client.get(url)).status_code == 200
    assert pod.count(f"/cameras/{CAM}/index.m3u8") == 1
    await asyncio.sleep(1.1)  # target duration 2 s → shared for 1 s
    assert (await client.get(url)).status_code == 200
    assert pod.count(f"/cameras/{CAM}/index.m3u8") == 2


async def test_init_segment_revalidated_after_ffmpeg_restart(client, pod):
    text = (await client.get(await start_session(client))).text
    init = [u for u in uris(text) if u.startswith("init.mp4")][0]
    assert (await client.get(f"/streams/{CAM}/{init}")).content == b"INIT" * 100
    pod.routes[f"/cameras/{CAM}/init.mp4"] = lambda r: (
        httpx.Response(304) if r.headers.get("if-none-match") == '"i2"'
        else httpx.Response(200, content=b"NEWINIT", headers={"etag": '"i2"'}))
    await asyncio.sleep(1.1)
    assert (await client.get(f"/streams/{CAM}/{init}")).content == b"NEWINIT"
    await asyncio.sleep(1.1)
    assert (await client.get(f"/streams/{CAM}/{init}")).content == b"NEWINIT"  # 304 reuses the cached body
    assert [r.headers.get("if-none-match") for r in pod.requests if r.url.path.endswith("init.mp4")][-1] == '"i2"'


# ---- secrets never reach the access log --------------------------------------------------------
async def test_access_log_redacts_token_and_grant(client, pod, caplog):
    caplog.set_level(logging.INFO, logger="platebridge.gateway.access")
    token = make_token()
    url = await start_session(client, token)
    text = (await client.get(url)).text
    await client.get(f"/streams/{CAM}/{uris(text)[0]}")
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("platebridge"))
    grant = url.split("pb_grant=")[1]
    assert "/streams/" in logged
    assert token not in logged and grant not in logged and SECRET not in logged
    assert "pb_grant=***" in logged and "token=***" in logged


async def test_pod_address_never_leaks_through_comments(client, pod):
    leaky = LIVE.replace("#EXT-X-INDEPENDENT-SEGMENTS\n", "#EXT-X-INDEPENDENT-SEGMENTS\n# served by 127.0.0.2:8000\n")
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(200, text=leaky)
    r = await client.get(await start_session(client))
    assert r.status_code == 200 and "127.0.0.2" not in r.text and len(uris(r.text)) == 3


async def test_pod_address_in_an_attribute_refuses_the_playlist(client, pod):
    data = LIVE + '#EXT-X-SESSION-DATA:DATA-ID="com.x",VALUE="http://127.0.0.2:8000/"\n'
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = httpx.Response(200, text=data)
    r = await client.get(await start_session(client))
    assert r.status_code == 502 and "127.0.0.2" not in r.text


async def test_watch_page_health_ready_metrics(client, pod):
    r = await client.get(f"/watch/{CAM}?token={make_token()}")
    assert r.status_code == 200 and "hls.min.js" in r.text and "watch.js" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["referrer-policy"] == "no-referrer"
    bad = await client.get(f"/watch/{CAM}?token=x")
    assert bad.status_code == 401 and "not valid" in bad.text
    other = await client.get(f"/watch/{CAM}?token={make_token(camera_id='other')}")
    assert other.status_code == 403
    js = await client.get("/assets/hls.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert len(js.content) > 100_000
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["pods_known"] == 1
    assert (await client.get(await start_session(client))).status_code == 200
    m = (await client.get("/metrics")).text
    assert 'platebridge_gateway_requests_total{kind="playlist",status="302"}' in m
    viewers = float(m.split("\nplatebridge_gateway_active_viewers ")[1].split()[0])
    assert viewers >= 1


# ---- nudge relay: portal → gateway → pod over the tailnet -------------------------------------
@pytest.fixture
async def admin_client(pod):
    from litestar.testing import AsyncTestClient

    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.discovery import StaticDiscovery

    cfg = parse_config({**keys(), "pods": {POD: "http://127.0.0.2:8000"}, "admin_token": "a" * 32},
                       env={})
    app = create_app(cfg, discovery=StaticDiscovery(cfg.pods), transport=httpx.MockTransport(pod.handler))
    async with AsyncTestClient(app=app) as c:
        yield c


async def test_nudge_relay_needs_admin_token_and_forwards_with_pod_token(admin_client, pod):
    seen = []

    def pod_nudge(request):
        from protocol.tokens import verify_pod_token

        claims = verify_pod_token(request.headers["authorization"].split()[1], SIGNER.public_keys(), pod_id=POD)
        seen.append((claims.pod_id, claims.camera_id, request.content))
        return httpx.Response(202, json={"accepted": True})

    pod.routes["/nudge"] = pod_nudge
    r = await admin_client.post(f"/pods/{POD}/nudge", json={"reason": "whitelist_changed"})
    assert r.status_code == 401 and pod.requests == []
    r = await admin_client.post(f"/pods/{POD}/nudge", headers={"Authorization": "Bearer " + "b" * 32})
    assert r.status_code == 401 and pod.requests == []
    r = await admin_client.post(f"/pods/{POD}/nudge", headers={"Authorization": "Bearer " + "a" * 32},
                                json={"reason": "whitelist_changed", "config_version": "v9"})
    assert r.status_code == 202
    assert seen[0][:2] == (POD, "*") and b'"config_version":"v9"' in seen[0][2]
    r = await admin_client.post("/pods/unknown-pod/nudge", headers={"Authorization": "Bearer " + "a" * 32})
    assert r.status_code == 503
    r = await admin_client.post("/pods/Bad_Pod/nudge", headers={"Authorization": "Bearer " + "a" * 32})
    assert r.status_code == 400


async def test_nudge_disabled_without_admin_token(client, pod):
    r = await client.post(f"/pods/{POD}/nudge", headers={"Authorization": "Bearer x"})
    assert r.status_code == 404 and pod.requests == []
