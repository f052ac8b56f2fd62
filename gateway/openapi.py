"""The gateway's OpenAPI document, served at ``/schema/openapi.json``.

Litestar generates the operations of its own routes (``/watch``, ``/assets``,
``/pods/{pod_id}/nudge``, ``/healthz``, ``/readyz``, ``/metrics``). The stream
proxy (:class:`gateway.proxy.StreamProxy`) is a raw ASGI app in front of
Litestar, so its ``/streams/{camera_id}/{path}`` operations are written here by
hand (:func:`streams_path_item`) and merged into the generated document when it
is served. Keep this module in step with :mod:`gateway.proxy`: the security
suite (``tests/security/test_openapi_schemathesis.py``) checks every response
the gateway gives against it.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
from litestar.connection import Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from protocol.messages import Nudge

__all__ = ["NUDGE_PATH", "SCHEMA_PATH", "STREAMS_PATH", "GatewaySchemaJson", "merge_streams", "openapi_config",
           "streams_path_item"]

SCHEMA_PATH = "/schema/openapi.json"
STREAMS_PATH = "/streams/{camera_id}/{path}"
NUDGE_PATH = "/pods/{pod_id}/nudge"

_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_MEDIA_TYPES = ("application/vnd.apple.mpegurl", "video/mp4", "video/mp2t", "audio/aac", "text/vtt",
                "application/octet-stream")  # the last: EXT-X-KEY keys (.key)
_CORS_HEADERS = {
    "Vary": {"description": "Always `Origin`.", "schema": {"type": "string"}},
    "Access-Control-Allow-Origin": {
        "description": "The request's `Origin`, echoed only when it is one of `allowed_origins`.",
        "schema": {"type": "string"},
    },
}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": _TEXT, "headers": dict(_CORS_HEADERS)}
    if headers:
        out["headers"].update(headers)
    return out


def _parameters() -> list[dict[str, Any]]:
    return [
        {"name": "camera_id", "in": "path", "required": True,
         "description": "Camera id: 1-64 characters of `A-Za-z0-9_.-`, starting with a letter or digit, no `..`. "
                        "Anything else is 404.",
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}},
        {"name": "path", "in": "path", "required": True,
         "description": "File below the camera directory. `index.m3u8` starts a session (with `token`); every "
                        "other file must be a URI the gateway wrote into a rewritten playlist (with its `pb_grant`). "
                        "Traversal, encoded separators, control characters, absolute paths or more than 255 "
                        "characters: 400. Unknown file types: 404.",
         "schema": {"type": "string"}},
        {"name": "token", "in": "query", "required": False,
         "description": "User stream token (HS256 JWT, `aud=platebridge-stream`). Accepted for `index.m3u8` only; "
                        "a valid one answers 302 to `index.m3u8` with a session grant, and every other query "
                        "parameter of that request is dropped.",
         "schema": {"type": "string"}},
        {"name": "pb_grant", "in": "query", "required": False,
         "description": "Grant written by the gateway into the playlist it served (unpadded base64url), bound to "
                        "that one URI (camera, path, query) and its kind: a playlist grant lasts the session, a "
                        "media grant `grant_ttl` seconds. Exactly one; tampered, expired, of the wrong kind (a media "
                        "grant on a playlist) or for another URI: 403.",
         "schema": {"type": "string"}},
        {"name": "_HLS_msn", "in": "query", "required": False,
         "description": "LL-HLS delivery directive (RFC 8216bis §6.2.5.2; an integer). Forwarded to the pod "
                        "unchanged for playlists, and only when the pod advertises `CAN-BLOCK-RELOAD=YES`; "
                        "otherwise ignored. The gateway does not validate it: the pod does.",
         "schema": {"type": "string"}},
        {"name": "_HLS_part", "in": "query", "required": False,
         "description": "LL-HLS delivery directive (an integer), as `_HLS_msn`.", "schema": {"type": "string"}},
        {"name": "_HLS_skip", "in": "query", "required": False,
         "description": "LL-HLS delta update directive (`YES` or `v2`), as `_HLS_msn`.", "schema": {"type": "string"}},
        {"name": "Authorization", "in": "header", "required": False,
         "description": "`Bearer <user stream token>`: the same as `token`, for `index.m3u8` only. (OpenAPI tools "
                        "may ignore an `Authorization` parameter; it is listed to document the proxy.)",
         "schema": {"type": "string"}},
        {"name": "Range", "in": "header", "required": False,
         "description": "One byte range (`bytes=a-b`, `a-`, `-n`) of a segment; multi-range is 416.",
         "schema": {"type": "string"}},
    ]


def _get_responses(*, head: bool = False) -> dict[str, Any]:
    body = {} if head else {"content": {m: {"schema": {"type": "string"}} for m in _MEDIA_TYPES}}
    return {
        "200": {"description": "A rewritten playlist (every URI relative, with a fresh grant; `Cache-Control: "
                               "no-cache, private`), a segment from the gateway's cache, or an `EXT-X-KEY` key "
                               "(`.key`, `Cache-Control: private, no-store`).",
                **body, "headers": {"Cache-Control": {"schema": {"type": "string"}}, **_CORS_HEADERS}},
        "206": {"description": "The requested byte range of a segment.",
                **({} if head else {"content": {m: {"schema": {"type": "string"}} for m in _MEDIA_TYPES[1:]}}),
                "headers": {"Content-Range": {"schema": {"type": "string"}}, **_CORS_HEADERS}},
        "302": {"description": "A valid user token for `index.m3u8`: redirect to `index.m3u8?pb_grant=<session "
                               "grant>` (relative). No pod request.",
                "headers": {"Location": {"required": True, "schema": {"type": "string"}}, **_CORS_HEADERS}},
        "400": _error("Unsafe path, more than one grant or token."),
        "401": _error("No credentials, or an invalid, expired or foreign-audience user token.",
                      {"WWW-Authenticate": {"schema": {"type": "string"}}}),
        "403": _error("Token for another camera, session over, or a grant that is tampered, expired, of the "
                      "wrong kind or for another URI."),
        "404": _error("Unknown camera or file type, or the pod's 404."),
        "416": _error("Range not satisfiable.", {"Content-Range": {"schema": {"type": "string"}}}),
        "4XX": _error("Another 4xx the pod answered is passed through (e.g. 400 for an LL-HLS directive too far "
                      "ahead)."),
        "502": _error("Pod unreachable, refused the gateway, sent a body over its cap, or sent an invalid playlist "
                      "or one with a URI outside its camera directory (never fetched)."),
        "503": _error("Pod unknown/offline or claimed by two tailnet devices, the camera's stream is (re)starting, "
                      "or the gateway's memory budget is full.", {"Retry-After": {"schema": {"type": "string"}}}),
        "504": _error("Pod did not deliver within the fetch deadline."),
    }


def streams_path_item() -> dict[str, Any]:
    """The hand-written OpenAPI 3.1 path item of ``/streams/{camera_id}/{path}`` (GET, HEAD, OPTIONS).

    Authentication happens before any request to a pod: a missing or bad
    credential is 401/403 and the pod is never contacted.
    """
    params = _parameters()
    any_path = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "Any value: preflights are answered without looking at the path."}
                for name in ("camera_id", "path")]
    return {
        "get": {
            "summary": "HLS playlist or segment through the gateway",
            "operationId": "StreamsGet",
            "tags": ["streams"],
            "parameters": params,
            "responses": _get_responses(),
        },
        "head": {
            "summary": "As GET, without a body",
            "operationId": "StreamsHead",
            "tags": ["streams"],
            "parameters": params,
            "responses": _get_responses(head=True),
        },
        "options": {
            "summary": "CORS preflight (no authentication)",
            "operationId": "StreamsPreflight",
            "tags": ["streams"],
            "parameters": [
                *any_path,
                {"name": "Origin", "in": "header", "required": False, "schema": {"type": "string"}},
                {"name": "Access-Control-Request-Method", "in": "header", "required": False,
                 "schema": {"type": "string"}},
                {"name": "Access-Control-Request-Headers", "in": "header", "required": False,
                 "schema": {"type": "string"}},
            ],
            "responses": {
                "204": {"description": "Allows GET, HEAD, OPTIONS with `Range` and `Authorization` headers.",
                        "headers": {"Access-Control-Allow-Methods": {"schema": {"type": "string"}},
                                    "Access-Control-Allow-Headers": {"schema": {"type": "string"}},
                                    **_CORS_HEADERS}},
            },
        },
    }


def merge_streams(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a generated OpenAPI document with the ``/streams`` path item added, and the
    nudge relay's optional JSON body (the handler reads it raw, so Litestar cannot see it)."""
    out = copy.deepcopy(schema)
    out.setdefault("paths", {})[STREAMS_PATH] = streams_path_item()
    nudge = out["paths"].get(NUDGE_PATH, {}).get("post")
    if nudge is not None:
        (ref,), components = msgspec.json.schema_components([Nudge], ref_template="#/components/schemas/{name}")
        out.setdefault("components", {}).setdefault("schemas", {}).update(components)
        nudge["requestBody"] = {"required": False, "description": "Empty, or a JSON nudge object.",
                                "content": {"application/json": {"schema": ref}}}
    tags = out.setdefault("tags", [])
    if not any(t.get("name") == "streams" for t in tags):
        tags.append({"name": "streams", "description": "The HLS proxy (raw ASGI, in front of Litestar)."})
    return out


class GatewaySchemaJson(JsonRenderPlugin):
    """Serves the generated document merged with :func:`streams_path_item` at ``/openapi.json``."""

    def __init__(self) -> None:
        super().__init__(path="/openapi.json")
        self._merged: tuple[int, dict[str, Any]] | None = None

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        """Render the merged document (computed once per generated document)."""
        if self._merged is None or self._merged[0] != id(openapi_schema):
            self._merged = (id(openapi_schema), merge_streams(openapi_schema))
        return self.render_json(request, self._merged[1])


def openapi_config(version: str) -> OpenAPIConfig:
    """Litestar's OpenAPI config for the gateway: JSON only, at :data:`SCHEMA_PATH`."""
    return OpenAPIConfig(
        title="PlateBridge gateway",
        version=version,
        description="Tailnet HLS gateway: user stream token → session grant → rewritten playlists and cached "
                    "segments from pods. Every `/streams` request is authenticated before any pod request.",
        path="/schema",
        render_plugins=[GatewaySchemaJson()],
        components=Components(security_schemes={
            "adminBearer": SecurityScheme(type="http", scheme="bearer",
                                          description="`admin_token` from gateway.yaml (the portal's service key)."),
        }),
    )
