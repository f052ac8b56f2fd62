"""JSON Schema of the wire contract, generated from the msgspec types (pure).

``python -m protocol schema`` prints :func:`contract_schema_text`; the checked-in
``docs/protocol.schema.json`` must equal it (a test says how to regenerate). The
text is deterministic: keys sorted, two-space indent, one trailing newline, so
the file diffs cleanly when a message changes.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from protocol.messages import ALL_MESSAGES

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REF_TEMPLATE = "#/$defs/{name}"


def dumps(doc: Any) -> str:
    """Deterministic JSON text of a schema document (sorted keys, indent 2, trailing newline)."""
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def contract_schema(messages: tuple[type, ...] = ALL_MESSAGES) -> dict[str, Any]:
    """One JSON Schema document for every contract message.

    Each message is a definition under ``$defs`` (named after its msgspec type,
    e.g. ``DetectRequest``); the document itself accepts any one of them
    (``anyOf``), and ``messages`` lists the definition names in contract order.
    """
    refs, components = msgspec.json.schema_components(messages, ref_template=REF_TEMPLATE)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "PlateBridge pod/portal contract messages",
        "description": "Generated from protocol/messages.py by `python -m protocol schema`; do not edit by hand.",
        "$defs": components,
        "anyOf": list(refs),
        "messages": [m.__name__ for m in messages],
    }


def contract_schema_text() -> str:
    """:func:`contract_schema` as the deterministic text of ``docs/protocol.schema.json``."""
    return dumps(contract_schema())


def struct_schema_text(typ: type, *, title: str | None = None) -> str:
    """The JSON Schema of one msgspec type (e.g. the pod config) as deterministic text."""
    doc: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT, **msgspec.json.schema(typ)}
    if title:
        doc["title"] = title
    return dumps(doc)
