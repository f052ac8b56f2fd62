"""The gateway serves an OpenAPI document that also describes the stream proxy."""

from __future__ import annotations

from gateway.openapi import SCHEMA_PATH, STREAMS_PATH


async def test_schema_is_served_and_lists_streams(client, pod):
    r = await client.get(SCHEMA_PATH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/vnd.oai.openapi+json")
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    streams = doc["paths"][STREAMS_PATH]
    assert set(streams) == {"get", "head", "options"}
    names = {p["name"] for p in streams["get"]["parameters"]}
    assert names >= {"camera_id", "path", "token", "pb_grant", "Authorization"}
    codes = set(streams["get"]["responses"])
    assert codes >= {"200", "206", "302", "400", "401", "403", "404", "502", "503", "504"}
    assert "Location" in streams["get"]["responses"]["302"]["headers"]
    assert set(streams["options"]["responses"]) == {"204"}
    # the Litestar routes are still generated next to it, the schema routes themselves are not listed
    assert {"/healthz", "/readyz", "/metrics", "/watch/{camera_id}", "/pods/{pod_id}/nudge"} <= set(doc["paths"])
    assert not any(p.startswith("/schema") for p in doc["paths"])
    assert doc["paths"]["/pods/{pod_id}/nudge"]["post"]["security"] == [{"adminBearer": []}]
    assert pod.requests == []  # the document needs no pod


async def test_schema_documents_every_status_the_proxy_maps(client):
    """Every status :mod:`gateway.proxy` can answer on GET is a documented response code
    (every status of the error table :data:`gateway.errors.STATUS`, the statuses it sends
    itself, and the pod's 4xx it passes through)."""
    import re
    from pathlib import Path

    import gateway.proxy
    from gateway.errors import STATUS, ConfigError, GatewayError, UpstreamStatus

    source = Path(gateway.proxy.__file__).read_text()
    raised = {code for cls, code in STATUS.items() if code is not None and cls not in (GatewayError, ConfigError)}
    sent = {int(code) for code in re.findall(r"send_(?:body|start)\(send, (\d{3})", source)}
    # the table and the scan found the proxy's refusals and answers at all (a changed spelling would empty it)
    assert raised >= {400, 401, 403, 404, 405, 416, 502, 503, 504}, raised
    assert sent >= {200, 204, 206, 302}, sent
    # statuses passed through from the pod: UpstreamStatus carries the pod's own (any 4xx, and 503/504)
    assert STATUS[UpstreamStatus] is None and "UpstreamStatus(st," in source, "pod pass-through moved: update this test"
    doc = (await client.get(SCHEMA_PATH)).json()
    item = doc["paths"][STREAMS_PATH]
    documented = set(item["get"]["responses"])
    undocumented = [code for code in sorted((raised | sent) - {204, 405})  # 204: OPTIONS; 405: other methods
                    if str(code) not in documented and f"{str(code)[0]}XX" not in documented]
    assert undocumented == [], undocumented
    assert "4XX" in documented, "the pod's other 4xx answers, passed through, are not documented"
    assert {"503", "504"} <= documented  # the pod's 503/504, passed through with Retry-After
    assert "Retry-After" in item["get"]["responses"]["503"]["headers"]
    assert set(item["options"]["responses"]) == {"204"}
