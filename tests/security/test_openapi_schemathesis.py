"""schemathesis against the gateway's own OpenAPI document (``/schema/openapi.json``).

The in-process gateway app talks to a fake pod at the httpx transport seam
(:class:`tests.gateway.conftest.FakePod`), which counts every request the gateway
sends towards a pod. Two runs over every documented operation:

* **unauthenticated** — whatever schemathesis generates (random tokens, grants,
  headers, paths, bodies), every other ``/streams`` case steered to a real camera
  and HLS file name with forged credentials that look right (so the authentication
  code is reached, not just the 404 for unknown file types): no 500, every response
  conforms to the document (status code documented, content type, headers, body
  schema, invalid input rejected), and the fake pod receives **zero** requests.
* **authenticated** — the same with valid credentials in every other ``/streams``
  case (user token, session grant, segment grant) and the admin token in every other
  nudge case, so rewriting, the segment cache and error mapping are fuzzed too (pod
  requests are allowed here).

Each operation's run is checked on its own, once all its examples ran (in the fixture
that counts them), so the checks hold whatever tests are selected and in any order:
``GET /streams`` unauthenticated must have met 401 and 403 (the runs got past the
file-type check into authentication), authenticated 302 and 200 with pod requests;
``GET /watch`` must serve the player page only to valid tokens.
"""

from __future__ import annotations

import collections

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.config import parse_config
from gateway.discovery import StaticDiscovery
from gateway.grants import Grant, GrantSigner
from gateway.openapi import SCHEMA_PATH, STREAMS_PATH
from tests.gateway.conftest import CAM, GRANT_SECRET, LIVE, ORIGIN, POD, POD_URL, SECRET, FakePod, keys, make_token


@schemathesis.check
def no_internal_error(ctx, response, case):
    """No 500 (or other unplanned 5xx): 502/503/504 are the gateway's documented answers about pods."""
    if response.status_code >= 500 and response.status_code not in (502, 503, 504):
        raise AssertionError(f"{response.status_code} from {case.method} {case.formatted_path}")
    return


CHECKS = [no_internal_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
EXAMPLES = 40
ADMIN = "adm-" + "z" * 40


class WithoutLifespan:
    """The gateway app with lifespan events answered here: schemathesis stops and restarts an
    app's lifespan between tests, and the gateway's shutdown closes its upstream client for
    good (a real server runs the lifespan once). The gateway has no startup hooks."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def _app(pod: FakePod) -> WithoutLifespan:
    cfg = parse_config({**keys(), "pods": {POD: POD_URL}, "admin_token": ADMIN,
                        "allowed_origins": [ORIGIN]}, env={})
    return WithoutLifespan(create_app(cfg, discovery=StaticDiscovery(cfg.pods),
                                      transport=httpx.MockTransport(pod.handler)))


def _live_pod() -> FakePod:
    pod = FakePod()
    pod.routes[f"/cameras/{CAM}/index.m3u8"] = lambda r: httpx.Response(200, text=LIVE)
    pod.routes[f"/cameras/{CAM}/init.mp4"] = lambda r: httpx.Response(200, content=b"INIT" * 100)
    for n in (100, 101):
        pod.routes[f"/cameras/{CAM}/seg_{n}.m4s"] = lambda r, n=n: httpx.Response(200, content=bytes([n]) * 5000)
    pod.routes["/nudge"] = lambda r: httpx.Response(202, json={"accepted": True})
    return pod


UNAUTH_POD = FakePod()
AUTH_POD = _live_pod()
unauth = schemathesis.openapi.from_asgi(SCHEMA_PATH, _app(UNAUTH_POD))
authed = schemathesis.openapi.from_asgi(SCHEMA_PATH, _app(AUTH_POD))
STREAMS_GET = f"GET {STREAMS_PATH}"
WATCH_GET = "GET /watch/{camera_id}"
# operation → statuses its run must have met (at least) / must never have met
MUST_MEET = {"unauth": {STREAMS_GET: {401, 403}}, "authed": {STREAMS_GET: {200, 302}, WATCH_GET: {200}}}
MUST_NOT_MEET = {"unauth": {WATCH_GET: {200}, STREAMS_GET: {200, 206, 302}}, "authed": {}}


SEGMENTS = ["seg_100.m4s", "seg_101.m4s", "init.mp4"]


def _steer(case, i: int, *, valid: bool) -> str:
    """Rewrite every other generated ``/streams`` case into one of the interesting shapes, in turn, keeping
    the rest of what schemathesis generated (other query parameters, headers, bodies): a
    session start with a user token, a playlist reload and a segment with a grant, a token
    for another camera (the watch page and the nudge relay get a token / the admin token on
    every other case). ``valid``: real credentials (signed with the gateway's secret), else
    forged ones that look right. Returns the shape's name."""
    op = case.operation.path
    if op == "/pods/{pod_id}/nudge" and valid and i % 2:
        case.path_parameters = {**(case.path_parameters or {}), "pod_id": POD}
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN}"}
        return "nudge with the admin token"
    secret = SECRET if valid else "forged-" + "y" * 60
    if op == "/watch/{camera_id}" and i % 2:
        case.path_parameters = {"camera_id": CAM}
        case.query = {**(case.query or {}), "token": make_token(secret=secret)}
        return "watch page with a token"
    if op != STREAMS_PATH or case.method == "OPTIONS" or i % 2 == 0:
        return "as generated"
    signer = GrantSigner([(GRANT_SECRET if valid else secret).encode()])
    query = {k: v for k, v in (case.query or {}).items() if k not in ("token", "pb_grant")}
    shape = ("session start", "playlist reload", "segment", "other camera")[(i // 2) % 4]
    camera, path = CAM, "index.m3u8"
    if shape == "session start":
        query["token"] = make_token(secret=secret)
    elif shape == "playlist reload":  # a grant binds its URI's whole query: generated extras would void it
        query = {"pb_grant": signer.mint(Grant("playlist", POD, 2**31 - 1, 2**31 - 1, b"\0" * 8), camera_id=CAM,
                                         path=path)}
    elif shape == "segment":
        path = SEGMENTS[(i // 8) % len(SEGMENTS)]
        query = {"pb_grant": signer.mint(Grant("media", POD, 2**31 - 1, 2**31 - 1, b"\0" * 8), camera_id=CAM,
                                         path=path)}
    else:
        camera = "other-cam"
        query["token"] = make_token(secret=secret)
    case.path_parameters = {"camera_id": camera, "path": path}
    case.query = query
    return shape


class Tally:
    """Cases run, pod requests they caused, 500s they met and every status, for one operation."""

    def __init__(self) -> None:
        self.cases = 0
        self.pod_requests = 0
        self.errors = 0
        self.operation = ""
        self.statuses: collections.Counter = collections.Counter()


def _check_outcomes(run: str, tally: Tally, figure) -> None:
    """The statuses one operation's run must and must not have met (see the module docs)."""
    must = MUST_MEET[run].get(tally.operation, set())
    never = MUST_NOT_MEET[run].get(tally.operation, set())
    met = set(tally.statuses)
    if must or never:
        figure(f"required outcomes reached by {tally.cases} {run} cases of {tally.operation} "
               f"(met {sorted(met)})", len(must & met), f"of {len(must)}", f"== {len(must)}, none of {sorted(never)}",
               must <= met and not never & met)
    assert must <= met, f"{run} {tally.operation}: never met {sorted(must - met)} (met {sorted(met)})"
    assert not never & met, f"{run} {tally.operation}: met {sorted(never & met)}"


@pytest.fixture
def unauth_tally(figure):
    """Counts over every example of one operation; checks them once they have all run."""
    tally = Tally()
    yield tally
    ok = tally.pod_requests == 0 and tally.cases > 0
    figure(f"pod requests caused by {tally.cases} unauthenticated schemathesis cases [{tally.operation}]",
           tally.pod_requests, "requests", "== 0", ok)
    assert ok
    _check_outcomes("unauth", tally, figure)


@pytest.fixture
def authed_tally(figure):
    """Counts the examples of one operation (to take turns between the shapes of :func:`_steer`),
    the 500s and pod requests among them; checks them once they have all run."""
    tally = Tally()
    yield tally
    figure(f"500s in {tally.cases} authenticated schemathesis cases [{tally.operation}]", tally.errors, "responses",
           "== 0", tally.errors == 0 and tally.cases > 0)
    assert tally.cases > 0 and tally.errors == 0
    _check_outcomes("authed", tally, figure)
    if tally.operation == STREAMS_GET:
        figure("pod requests made by authenticated GET /streams cases", tally.pod_requests, "requests", "> 0",
               tally.pod_requests > 0)
        assert tally.pod_requests > 0, "the authenticated run never reached the (fake) pod"


@unauth.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_unauthenticated_cases_conform_and_never_reach_the_pod(case, unauth_tally):
    _steer(case, unauth_tally.cases, valid=False)
    before = len(UNAUTH_POD.requests)
    response = case.call_and_validate(checks=CHECKS)
    caused = len(UNAUTH_POD.requests) - before
    unauth_tally.cases += 1
    unauth_tally.pod_requests += caused
    unauth_tally.operation = case.operation.label
    unauth_tally.statuses[response.status_code] += 1
    assert caused == 0, f"{case.method} {case.formatted_path} reached the pod without valid credentials"
    assert response.status_code != 500
    # a pod-side answer (502/503/504) would mean the gateway tried to reach a pod
    assert response.status_code not in (502, 503, 504) or case.operation.path in ("/readyz", "/assets/hls.min.js")


@authed.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_authenticated_cases_conform(case, authed_tally):
    _steer(case, authed_tally.cases, valid=True)
    authed_tally.cases += 1
    # negative_data_rejection is left out here: _steer puts valid credentials into cases
    # schemathesis generated as invalid, and a valid token's session entry drops unknown
    # query parameters by design (documented), so "accepted" is the right answer there
    before = len(AUTH_POD.requests)
    response = case.call()
    authed_tally.pod_requests += len(AUTH_POD.requests) - before
    authed_tally.operation = case.operation.label
    authed_tally.statuses[response.status_code] += 1
    authed_tally.errors += response.status_code == 500
    case.validate_response(response, checks=[c for c in CHECKS if c is not negative_data_rejection])
    assert response.status_code != 500
