"""README.md and docs/portal-integration.md tell a portal built from the PlateBridge POD
connection guide what stays the same and what changes (issue 11): option B, the stream URL,
the token — and the portal guide shows where the portal calls Gatewise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def section(path: Path, heading: str) -> str:
    text = path.read_text()
    m = re.search(rf"^(#+) {re.escape(heading)}\n(.*?)(?=^#{{1,3}} (?!#)|\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"{path.name} has no '{heading}' section"
    return m.group(2)


@pytest.mark.parametrize("doc", ["README.md", "docs/portal-integration.md"])
def test_coming_from_the_guide_says_what_is_the_same_and_what_changes(doc):
    text = section(ROOT / doc, "Coming from the guide")
    for needle in ("Option B", "tailnet", "gateway", "accept_legacy_tokens", "JWT", "config_version",
                   "site_id", "/api/pod/stream-token"):
        assert needle in text, (doc, needle)
    assert re.search(r"\*\*The same\*\*|\*\*The same:\*\*", text), doc
    assert re.search(r"[Ss]tream URL", text) and re.search(r"\*\*Token", text), doc


def test_portal_guide_shows_where_the_portal_calls_gatewise():
    text = section(ROOT / "docs/portal-integration.md", "Where the portal calls Gatewise")
    assert "GATEWISE_API_KEY" in text and 'decision === "allow"' in text and "duplicate" in text
    assert "gatewise_standin.py" in text
