"""deploy/tailscale/policy.hujson: parses as HuJSON; exactly one grant reaches tag:pod
(tag:gateway → tcp:8000); its tests block asserts that.

No well-kept HuJSON package exists on PyPI, so a small parser is here (and tested):
HuJSON (JWCC) is JSON plus ``//`` and ``/* */`` comments and trailing commas.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

POLICY = Path(__file__).resolve().parents[2] / "deploy" / "tailscale" / "policy.hujson"


def hujson_to_json(text: str) -> str:
    """Standardise HuJSON to JSON: drop comments and trailing commas, outside strings only.

    Comments become spaces (newlines kept) so ``json`` error positions still match.
    Raises ValueError for an unterminated string or block comment.
    """
    out: list[str] = []
    i, n = 0, len(text)
    pending_comma: int | None = None  # index in out of a comma that may be trailing
    last = ""  # last significant character outside strings and comments
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ValueError(f"unterminated string at offset {i}")
            out.append(text[i : j + 1])
            pending_comma = None
            last = '"'
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j == -1 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j == -1:
                raise ValueError(f"unterminated block comment at offset {i}")
            out.append("".join(ch if ch == "\n" else " " for ch in text[i : j + 2]))
            i = j + 2
        elif c == ",":
            # only a comma after a value can be a trailing one; "[,]" stays invalid
            pending_comma = len(out) if last not in ("", "[", "{", ",") else None
            out.append(c)
            last = c
            i += 1
        elif c in "]}":
            if pending_comma is not None:
                out[pending_comma] = " "
            pending_comma = None
            out.append(c)
            last = c
            i += 1
        else:
            if not c.isspace():
                pending_comma = None
                last = c
            out.append(c)
            i += 1
    return "".join(out)


def load_hujson(text: str):
    return json.loads(hujson_to_json(text))


# ---------------------------------------------------------------- the parser itself


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('{"a": 1,}', {"a": 1}),
        ('[1, 2, 3 , ]', [1, 2, 3]),
        ('{"a": [1, {"b": 2,},],}', {"a": [1, {"b": 2}]}),
        ('// c\n{"a": 1 // trailing\n}', {"a": 1}),
        ('{/* x, } */ "a": /* y */ 1}', {"a": 1}),
        ('{"url": "http://x//y", "c": "/* not */", "q": "a\\"//b"}', {"url": "http://x//y", "c": "/* not */",
                                                                      "q": 'a"//b'}),
        ('{"s": "a,]", "t": ",}",}', {"s": "a,]", "t": ",}"}),
        ('{"a": 1, // comment after comma\n}', {"a": 1}),
        ('{"a": 1, /* block */ }', {"a": 1}),
        ('{"a": "\\\\", "b": 2}', {"a": "\\", "b": 2}),
    ],
)
def test_hujson_parser(text, expected):
    assert load_hujson(text) == expected


@pytest.mark.parametrize("text", ['{"a": 1,,}', '{"a": "x', '{"a": 1 /* open', '[,]', '{,}'])
def test_hujson_parser_rejects_invalid(text):
    with pytest.raises(ValueError):  # json.JSONDecodeError is a ValueError
        load_hujson(text)


def test_hujson_comments_keep_line_numbers():
    with pytest.raises(json.JSONDecodeError) as exc:
        load_hujson('// one\n/* two\n three */\n{"a": }')
    assert exc.value.lineno == 4


# ---------------------------------------------------------------- the policy


@pytest.fixture(scope="module")
def policy() -> dict:
    return load_hujson(POLICY.read_text(encoding="utf-8"))


def _reaches_pods(rule: dict) -> bool:
    dst = rule.get("dst", [])
    return any(d in ("tag:pod", "*", "autogroup:tagged") or d.startswith("tag:pod:") for d in dst)


def test_policy_is_hujson_not_plain_json():
    text = POLICY.read_text(encoding="utf-8")
    assert "//" in text  # it is commented for operators
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_tag_owners(policy):
    owners = policy["tagOwners"]
    assert set(owners) >= {"tag:pod", "tag:gateway"}
    for tag in ("tag:pod", "tag:gateway"):
        assert owners[tag], tag
        assert all(o in ("autogroup:admin", "group:admins") for o in owners[tag]), owners[tag]
    if any("group:admins" in v for v in owners.values()):
        assert policy.get("groups", {}).get("group:admins"), "group:admins is used but not defined"


def test_exactly_one_grant_reaches_pods(policy):
    grants = policy["grants"]
    to_pods = [g for g in grants if _reaches_pods(g)]
    assert to_pods == [{"src": ["tag:gateway"], "dst": ["tag:pod"], "ip": ["tcp:8000"]}]
    # Nothing else is set on it (no app capabilities, no via, no posture).
    assert set(to_pods[0]) == {"src", "dst", "ip"}


def test_no_legacy_acls_ssh_or_other_paths_to_pods(policy):
    for acl in policy.get("acls", []):
        assert not any(d == "*:*" or d.startswith(("tag:pod:", "autogroup:tagged:")) for d in acl.get("dst", [])), acl
    for rule in policy.get("ssh", []):
        assert not _reaches_pods(rule), rule
    # no node attributes or auto-approvers that could widen access (funnel, routes, exit nodes)
    assert "autoApprovers" not in policy
    for attr in policy.get("nodeAttrs", []):
        assert "tag:pod" not in attr.get("target", []) or "funnel" not in attr.get("attr", []), attr


def _test_for(policy, src: str) -> dict:
    matches = [t for t in policy["tests"] if t["src"] == src]
    assert len(matches) == 1, f"one tests entry for src {src!r}, found {len(matches)}"
    return matches[0]


def test_tests_block_gateway_reaches_pod_8000(policy):
    t = _test_for(policy, "tag:gateway")
    assert "tag:pod:8000" in t["accept"]
    assert "tag:pod:8000" not in t.get("deny", [])
    assert all(d.startswith("tag:pod:") and d != "tag:pod:8000" for d in t.get("deny", []))


def test_tests_block_pod_cannot_reach_pod(policy):
    t = _test_for(policy, "tag:pod")
    assert "tag:pod:8000" in t["deny"]
    assert not t.get("accept")


def test_tests_block_member_cannot_reach_pod(policy):
    users = [t for t in policy["tests"] if "@" in t["src"] or t["src"].startswith("group:")]
    assert users, "a tests entry for an ordinary member"
    for t in users:
        assert "tag:pod:8000" in t["deny"]
        assert not any(a.startswith("tag:pod") for a in t.get("accept", []))


def test_tests_block_syntax(policy):
    allowed = {"src", "proto", "accept", "deny", "srcPostureAttrs"}
    for t in policy["tests"]:
        assert set(t) <= allowed, t
        assert isinstance(t["src"], str)
        assert t.get("accept") or t.get("deny")
        for dst in t.get("accept", []) + t.get("deny", []):
            host, _, port = dst.rpartition(":")
            assert host and port.isdigit(), dst


def test_tests_agree_with_grants(policy):
    """Evaluate the tests block against the grants (tags and tcp ports only): the policy
    file must be self-consistent before Tailscale even sees it."""

    def allowed(src: str, dst: str) -> bool:
        host, _, port = dst.rpartition(":")
        for g in policy["grants"]:
            if src in g["src"] and host in g["dst"]:
                for ip in g.get("ip", []):
                    proto, _, ports = ip.rpartition(":") if ":" in ip else ("", "", ip)
                    if proto not in ("", "tcp") and ip != "*":
                        continue
                    if ip == "*" or ports == "*" or ports == port:
                        return True
                    if "-" in ports:
                        lo, hi = ports.split("-")
                        if int(lo) <= int(port) <= int(hi):
                            return True
        return False

    for t in policy["tests"]:
        for dst in t.get("accept", []):
            assert allowed(t["src"], dst), (t["src"], dst)
        for dst in t.get("deny", []):
            assert not allowed(t["src"], dst), (t["src"], dst)
