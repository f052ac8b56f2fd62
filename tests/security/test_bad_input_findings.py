"""Bad input found by an attack run on the pod's config, the outbox operator command and the
gateway's config: each case once got through (a key httpx refuses parked every detection, a pasted
private key was echoed, the CLI wrote its tables into a foreign file, a drop by reason deleted an
unparked clip, a YAML alias bomb stalled the event loop on SIGHUP). Each asserts the clear error
or the untouched data the brief asks for."""
from __future__ import annotations

import io
import json
import sqlite3

import pytest
import yaml

from pod import clipjobs, outboxctl
from pod.cli import _parser
from pod.db import StateDB
from pod.errors import ConfigError
from pod.outbox import TABLE as OT
from pod.outbox import Outbox
from pod.uploads import TABLE as UT
from pod.uploads import UploadQueue

POD = {"portal_url": "http://127.0.0.1:9", "pod_api_key": "pbk_k", "pod_id": "pod-1", "site_id": "s",
       "camera_id": "cam1", "camera_rtsp_url": "rtsp://127.0.0.1:9/s", "enable_streaming": False}


def _cfg(tmp_path, **kw):
    d = {**POD, "state_dir": str(tmp_path / "state"), "recordings_dir": str(tmp_path / "rec"), **kw}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.fixture
def state(tmp_path):
    path = _cfg(tmp_path)
    db = StateDB(tmp_path / "state" / "outbox.sqlite3", [OT, UT, clipjobs.TABLE])
    ob, up = Outbox(db), UploadQueue(db)
    for i in range(3):
        ob.put("detect", f"evt-{i}", json.dumps({"plate": f"A{i}"}).encode(), now=1000.0 + i)
    ob.park(ob.items()[0].id, "HTTP 400", reason="rejected")
    (tmp_path / "rec").mkdir()
    for i in range(3):
        f = tmp_path / "rec" / f"c{i}.mp4"
        f.write_bytes(b"x")
        up.add(f"clip-{i}", "cam1", f, "A", 2.0)
    db.close()
    return path, tmp_path / "state" / "outbox.sqlite3"


def cli(*argv):
    out = io.StringIO()
    return outboxctl.main(_parser().parse_args(["outbox", *argv]), out=out, err=out), out.getvalue()


# --- pod config -------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["pbk_k\n", "   ", "pbk_k\r\nX-Evil: 1", " pbk_k", "pbk_\x00k"])
def test_api_key_that_cannot_be_sent_is_a_config_error(tmp_path, key):
    from pod.config import load_config
    with pytest.raises(ConfigError, match=r"\$\.pod_api_key"):
        load_config(_cfg(tmp_path, pod_api_key=key))


@pytest.mark.parametrize("url", ["http://", "https:///api", "http:// evil host/", "https://portal\r\n/"])
def test_portal_url_without_a_usable_host_is_a_config_error(tmp_path, url):
    from pod.config import load_config
    with pytest.raises(ConfigError, match=r"\$\.portal_url"):
        load_config(_cfg(tmp_path, portal_url=url))


def test_yaml_alias_bomb_is_refused():
    from protocol.yamlconf import load_yaml
    bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcde", "bcdef"))  # 10^6 nodes
    with pytest.raises(ValueError):
        load_yaml(bomb)


# --- outbox CLI -------------------------------------------------------------------------------

def test_reason_rejected_matches_legacy_rows_the_list_calls_rejected(state):
    path, db = state
    c = sqlite3.connect(db)
    c.execute("UPDATE outbox SET park_reason = NULL WHERE state = 'failed'")  # parked before reasons existed
    c.commit()
    c.close()
    code, text = cli("list", "--config", str(path))
    assert "parked (rejected 1)" in text
    code, text = cli("retry", "--kind", "detect", "--reason", "rejected", "--config", str(path))
    assert code == 0, text


def test_drop_key_with_reason_leaves_a_clip_not_parked_for_that_reason(state, tmp_path):
    path, _ = state
    code, text = cli("drop", "clip-1", "--reason", "auth", "--config", str(path))
    assert (tmp_path / "rec" / "c1.mp4").exists(), text
    assert code == 1


@pytest.mark.parametrize("limit", ["-1", "0", "x"])
def test_a_limit_below_one_is_a_usage_error(state, limit, capsys):
    path, _ = state
    with pytest.raises(SystemExit) as exc:
        cli("list", "--kind", "clip", "--limit", limit, "--json", "--config", str(path))
    assert exc.value.code == 2 and "--limit" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", "foreign"])
def test_cli_does_not_write_its_schema_into_a_foreign_or_empty_file(tmp_path, content):
    path = _cfg(tmp_path)
    db = tmp_path / "state" / "outbox.sqlite3"
    db.parent.mkdir()
    if content == "foreign":
        c = sqlite3.connect(db)
        c.execute("CREATE TABLE frigate_events (id TEXT)")
        c.commit()
        c.close()
    else:
        db.write_bytes(content)
    before = db.read_bytes()
    code, _ = cli("list", "--config", str(path))
    assert code == 3 and db.read_bytes() == before


# --- gateway config ---------------------------------------------------------------------------

def test_gateway_never_echoes_a_pasted_private_key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.config import parse_config
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()).decode()
    with pytest.raises(Exception) as ei:
        parse_config({"user_token_secret": "u" * 40, "pod_signing_key_file": pem, "discovery": "static",
                      "pods": {"pod-1": "http://127.0.0.1:9"}}, env={})
    assert pem.splitlines()[1] not in str(ei.value)


def test_gateway_public_base_url_with_crlf_is_refused():
    from gateway.config import parse_config
    with pytest.raises(Exception, match=r"public_base_url"):
        parse_config({"user_token_secret": "u" * 40, "stream_secret": "s" * 40, "discovery": "static",
                      "pods": {"pod-1": "http://127.0.0.1:9"}, "public_base_url": "http://a\r\nb"}, env={})


def test_gateway_empty_user_token_secret_is_a_config_error():
    from gateway.config import parse_config
    with pytest.raises(Exception, match=r"user_token_secret"):
        parse_config({"user_token_secret": "", "stream_secret": "s" * 40, "discovery": "static",
                      "pods": {"pod-1": "http://127.0.0.1:9"}}, env={})
