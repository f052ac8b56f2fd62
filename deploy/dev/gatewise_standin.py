"""STAND-IN for Gatewise, the gate controller the portal opens (development and tests only).

The PlateBridge POD connection guide says the portal "opens the gate via Gatewise if
allowed" (``/api/pod/detect``, step 6) with a ``GATEWISE_API_KEY``; Gatewise's own API is
not public, so this stand-in only models the part the contract needs: one authenticated
call that opens one gate, and a record of every opening. Its route shape is ours, not
Gatewise's:

* ``POST /api/v1/gates/{gate_id}/open`` with ``Authorization: Bearer <GATEWISE_API_KEY>``
  and JSON ``{"plate", "site_id", "camera", "event_id", "reason"}`` (all optional strings)
  → ``200 {"success": true, "gate_id", "opened_at"}``; ``401`` without the key; ``400``
  for a bad gate id or body.
* ``GET /__standin/openings`` → ``{"openings": [{gate_id, plate, site_id, camera,
  event_id, reason, opened_at}, …]}`` in order (stand-in admin, no auth: bind to loopback).

Prints ``GATE: opened <plate> gate=<gate_id> event=<event_id>`` on stdout for every
opening. The routes are served by the portal stand-in's own server under ``/gatewise``
(:func:`route_handlers`), or alone by :func:`create_app`.
"""

from __future__ import annotations

import hmac
import re
import sys
import time
from typing import Any, TextIO

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

PREFIX = "/gatewise"
_GATE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class OpenRequest(msgspec.Struct, forbid_unknown_fields=False):
    """Body of an open call (every field optional, each at most 256 characters)."""

    plate: str | None = None
    site_id: str | None = None
    camera: str | None = None
    event_id: str | None = None
    reason: str | None = None


class GatewiseStandIn:
    """Gate openings recorded in memory. ``api_key`` is the ``GATEWISE_API_KEY`` callers must
    send (compared in constant time, never logged); ``out`` receives the ``GATE:`` lines
    (default: stdout at print time)."""

    def __init__(self, api_key: str, *, out: TextIO | None = None) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        self._key = api_key.encode()
        self.out = out
        self.openings: list[dict[str, Any]] = []

    def authorized(self, request: Request) -> bool:
        """True when the request carries ``Bearer <api_key>``."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._key)

    def open(self, gate_id: str, req: OpenRequest) -> dict[str, Any]:
        """Record one opening of ``gate_id``; returns the recorded row."""
        row = {"gate_id": gate_id, "plate": req.plate, "site_id": req.site_id, "camera": req.camera,
               "event_id": req.event_id, "reason": req.reason, "opened_at": time.time()}
        self.openings.append(row)
        print(f"GATE: opened {_printable(req.plate)} gate={gate_id} event={_printable(req.event_id)}",
              file=self.out or sys.stdout, flush=True)
        return row


def _printable(value: object) -> str:
    if value is None:
        return "-"
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in str(value))[:80] or "-"


def route_handlers(g: GatewiseStandIn, prefix: str = PREFIX) -> list[HTTPRouteHandler]:
    """The stand-in's routes under ``prefix`` (to be added to another Litestar app)."""

    @post(f"{prefix}/api/v1/gates/{{gate_id:str}}/open", status_code=200)
    async def open_gate(request: Request, gate_id: FromPath[str]) -> Response:
        if not g.authorized(request):
            return Response({"success": False, "error": "unauthorized"}, status_code=401)
        if not _GATE_ID.match(gate_id):
            return Response({"success": False, "error": "invalid gate id"}, status_code=400)
        body = await request.body()
        try:
            req = msgspec.json.decode(body or b"{}", type=OpenRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return Response({"success": False, "error": f"invalid body: {exc}"}, status_code=400)
        if any(v is not None and len(v) > 256 for v in msgspec.structs.astuple(req)):
            return Response({"success": False, "error": "invalid body: field too long"}, status_code=400)
        row = g.open(gate_id, req)
        return Response({"success": True, "gate_id": gate_id, "opened_at": row["opened_at"]})

    @get(f"{prefix}/__standin/openings", sync_to_thread=False)
    def openings() -> dict:
        return {"openings": g.openings}

    return [open_gate, openings]


def create_app(g: GatewiseStandIn) -> Litestar:
    """The Gatewise stand-in alone, at the root path."""
    return Litestar(route_handlers(g, prefix=""), openapi_config=None)
