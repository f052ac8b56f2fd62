"""JSON Schema of the contract: generated from the msgspec types, deterministic, and
the checked-in ``docs/protocol.schema.json`` is up to date."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec

from protocol.messages import ALL_MESSAGES, DetectRequest
from protocol.schema import contract_schema, contract_schema_text

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "protocol.schema.json"
REGENERATE = ".venv/bin/python -m protocol schema > docs/protocol.schema.json"


def test_checked_in_schema_is_up_to_date():
    assert SCHEMA_FILE.exists(), f"docs/protocol.schema.json is missing; generate it with: {REGENERATE}"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == contract_schema_text(), (
        f"docs/protocol.schema.json is out of date with protocol/messages.py; regenerate it with: {REGENERATE}")


def test_python_m_protocol_schema_prints_it():
    r = subprocess.run([sys.executable, "-m", "protocol", "schema"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == contract_schema_text()


def test_every_message_is_defined_and_deterministic():
    doc = contract_schema()
    names = [m.__name__ for m in ALL_MESSAGES]
    assert doc["messages"] == names
    assert set(names) <= set(doc["$defs"])
    assert doc["anyOf"] == [{"$ref": f"#/$defs/{n}"} for n in names]
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    text = contract_schema_text()
    assert text == contract_schema_text() and text.endswith("}\n")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_schema_matches_the_types():
    detect = contract_schema()["$defs"]["DetectRequest"]
    assert set(detect["required"]) == {f.name for f in msgspec.structs.fields(DetectRequest) if f.required}
    assert detect["properties"]["decision"] == {"enum": ["allow", "deny"]}
    assert "no_plate_read" in detect["properties"]["reason"]["enum"]


def test_usage_error_without_command():
    r = subprocess.run([sys.executable, "-m", "protocol"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "schema" in r.stderr
