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
    (the proxy's HTTPError statuses, the redirect and the pass-through 4xx)."""
    import re
    from pathlib import Path

    import gateway.proxy

    source = Path(gateway.proxy.__file__).read_text()
    raised = {int(code) for code in re.findall(r"HTTPError\((\d{3})", source)}
    doc = (await client.get(SCHEMA_PATH)).json()
    documented = set(doc["paths"][STREAMS_PATH]["get"]["responses"])
    for code in raised - {405}:  # 405 only for methods outside GET/HEAD/OPTIONS
        assert str(code) in documented or f"{str(code)[0]}XX" in documented, code
