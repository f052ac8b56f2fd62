"""``platebridge-gateway check`` against a real pod from the dev Stack (GStreamer
camera → pod on 127.0.0.2), with static discovery, and against broken setups: a dead
address, a wrong secret, a map pointing at the pod's loopback listener or at another
pod, a short secret, a bad config, and LocalAPI discovery (stand-in) with an offline pod."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from gateway.check import main
from gateway.cli import main as cli_main
from tests.standins.tailscaled import LocalAPIStandIn, status_body

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))
from stack import Stack, free_port  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Camera + pod (pod on 127.0.0.2, as on its tailnet address)."""
    if not shutil.which("ffmpeg"):
        pytest.fail("ffmpeg is missing: run ./run setup")
    s = Stack(workdir=tmp_path_factory.mktemp("gw-check"), pod_overrides={"heartbeat_interval": 300})
    try:
        s.start_camera()
        s.start_pod(timeout=60)
        yield s
    finally:
        s.stop()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("POD_STREAM_SECRET", raising=False)


def write_config(stack: Stack, tmp_path: Path, **over) -> Path:
    cfg = stack.gateway_config()
    cfg.update(over)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_check(path: Path) -> tuple[int, list[str]]:
    out = io.StringIO()
    rc = main(str(path), out=out)
    return rc, out.getvalue().splitlines()


def line(lines: list[str], name: str) -> str:
    hits = [x for x in lines if x.split(" ", 1)[1].startswith(name + ":")]
    assert hits, f"no {name!r} line in:\n" + "\n".join(lines)
    return hits[0]


def test_reachable_pod_passes(stack, tmp_path):
    rc, lines = run_check(write_config(stack, tmp_path))
    text = "\n".join(lines)
    assert rc == 0, text
    assert line(lines, "config").startswith("PASS config:") and line(lines, "secret").startswith("PASS secret:")
    assert line(lines, "keys").startswith("PASS keys: gateway→pod tokens signed with Ed25519 key 'dev-1'")
    assert not [x for x in lines if x.startswith("WARN")], lines  # no legacy role left
    assert line(lines, "discovery") == f"PASS discovery: static: 1 pod: {stack.pod_id} (online) {stack.pod_url}"
    pod = line(lines, f"pod {stack.pod_id}")
    assert pod.startswith(f"PASS pod {stack.pod_id}: {stack.pod_url}: GET /health 200 in ")
    assert " ms: status ok" in pod and f"{stack.camera_id} running" in pod
    token = line(lines, f"pod {stack.pod_id} token")
    assert token.startswith(f"PASS pod {stack.pod_id} token: GET /cameras/{stack.camera_id}/index.m3u8 → 200")
    assert stack.secret not in text and stack.grant_secret not in text
    # data_plane: auto, and setup installs nginx with its Lua module: the gateway will run it
    assert line(lines, "data plane").startswith(
        "PASS data plane: the gateway runs nginx (/usr/sbin/nginx, with /usr/lib/nginx/modules/ngx_http_lua_module.so)")
    assert line(lines, "data plane").endswith("(Lua self-test passed)")
    assert lines[-1] == "OK: 8 passed, 0 warning(s), 0 failed"


def test_data_plane_without_nginx(stack, tmp_path):
    """auto without nginx: a warning that says what to install; managed: a failure."""
    missing = str(tmp_path / "no-nginx")
    rc, lines = run_check(write_config(stack, tmp_path, nginx_bin=missing))
    assert rc == 0, lines
    assert line(lines, "data plane").startswith(f"WARN data plane: auto: no nginx binary at {missing} (Debian: "
                                                "apt-get install nginx libnginx-mod-http-lua)")
    rc, lines = run_check(write_config(stack, tmp_path, nginx_bin=missing, data_plane="managed"))
    assert rc == 1, lines
    assert line(lines, "data plane").startswith(f"FAIL data plane: managed: no nginx binary at {missing}")


@pytest.mark.parametrize("data_plane,status", [("auto", "WARN"), ("managed", "FAIL"), ("nginx", "WARN")])
def test_a_lua_check_that_fails_its_self_test_is_reported(stack, tmp_path, monkeypatch, data_plane, status):
    """check runs the Lua grant check's RFC 4231 self-test in this host's nginx, for the nginx
    the gateway runs and for one you run (data_plane: nginx), which got no self-test before."""
    from gateway import nginxconf

    real = nginxconf.lua_source()
    monkeypatch.setattr(nginxconf, "lua_source", lambda: real.replace("bxor(k, 0x36)", "bxor(k, 0x37)"))
    store = tmp_path / "store"
    store.mkdir(mode=0o750)
    rc, lines = run_check(write_config(stack, tmp_path, data_plane=data_plane, host_cache_dir=str(store),
                                       grant_secret="g" * 40))
    said = line(lines, "data plane")
    assert said.startswith(f"{status} data plane: "), said
    assert "the data plane's Lua grant check failed its self-test (nginx exited with status 1)" in said
    assert "RFC 4231 case 1" in said
    assert rc == (1 if status == "FAIL" else 0), lines


def test_cli_check_subcommand(stack, tmp_path, capsys):
    assert cli_main(["check", "--config", str(write_config(stack, tmp_path))]) == 0
    assert f"PASS pod {stack.pod_id}:" in capsys.readouterr().out


def test_dead_address_fails(stack, tmp_path):
    dead = f"http://127.0.0.3:{free_port('127.0.0.3')}"
    rc, lines = run_check(write_config(stack, tmp_path, pods={stack.pod_id: stack.pod_url, "dead-pod": dead}))
    assert rc == 1
    assert "dead-pod (online)" in line(lines, "discovery")
    d = line(lines, "pod dead-pod")
    assert d.startswith(f"FAIL pod dead-pod: {dead}: cannot connect") and "tag:gateway reach tag:pod" in d
    assert line(lines, f"pod {stack.pod_id}").startswith("PASS")


@pytest.mark.parametrize("kid,reason", [("dev-1", "bad signature"), ("dev-2", "unknown key id")])
def test_a_gateway_key_the_pod_does_not_know_fails(stack, tmp_path, kid, reason):
    """Another Ed25519 key under the pod's kid, or under a kid the pod has not been given."""
    from protocol.tokens import SigningKey

    other = tmp_path / "other.pem"
    other.write_bytes(SigningKey.generate(kid).private_pem())
    other.chmod(0o600)
    rc, lines = run_check(write_config(stack, tmp_path, pod_signing_key_file=str(other), pod_signing_key_id=kid))
    assert rc == 1
    h = line(lines, f"pod {stack.pod_id}")
    assert h.startswith(f"FAIL pod {stack.pod_id}:") and "refused the gateway's token on GET /health" in h
    assert reason in h and "gateway_public_keys" in h


def test_legacy_gateway_warns_per_role(stack, tmp_path):
    """A gateway on the guide's one stream_secret still passes (legacy pods share it) but says what it costs."""
    cfg = {k: v for k, v in stack.gateway_config().items()
           if k not in ("user_token_secret", "grant_secret", "pod_signing_key_file", "pod_signing_key_id")}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**cfg, "stream_secret": stack.secret, "pods": {}}))
    rc, lines = run_check(path)
    keys = [x for x in lines if x.split(" ", 2)[1] == "keys:"]
    assert rc == 0 and all(x.startswith("WARN keys:") for x in keys) and len(keys) == 3, lines
    assert "stolen pod can mint" in " ".join(keys) and "fix: set user_token_secret" in " ".join(keys)


def test_loopback_listener_serves_no_hls(stack, tmp_path):
    rc, lines = run_check(write_config(stack, tmp_path, pods={stack.pod_id: f"http://127.0.0.1:{stack.pod_port}"}))
    assert rc == 1 and "→ 404" in line(lines, f"pod {stack.pod_id} token")


def test_map_pointing_at_another_pod_fails(stack, tmp_path):
    rc, lines = run_check(write_config(stack, tmp_path, pods={"other-pod": stack.pod_url}))
    assert rc == 1
    assert f"it is pod '{stack.pod_id}', not 'other-pod'" in line(lines, "pod other-pod")


def test_short_secret_fails(stack, tmp_path):
    """A short user-token secret is a config error, for check as for the gateway, which used to
    start with it (a newcomer found the two disagreeing); a short legacy stream_secret (the
    guide's example) is a warning for both."""
    rc, lines = run_check(write_config(stack, tmp_path, user_token_secret="short-one"))
    assert rc == 2
    assert lines[0].startswith("FAIL config: $.user_token_secrets.default: must be at least 32 bytes"), lines
    assert "short-one" not in "\n".join(lines)
    legacy = {k: v for k, v in stack.gateway_config().items()
              if k not in ("user_token_secret", "grant_secret", "pod_signing_key_file", "pod_signing_key_id")}
    p = tmp_path / "legacy.yaml"
    p.write_text(yaml.safe_dump({**legacy, "stream_secret": "shared-secret"}))
    rc, lines = run_check(p)
    s = line(lines, "secret")
    assert s.startswith("WARN secret: stream_secrets.default is 13 bytes") and "openssl rand" in s, lines
    assert "shared-secret" not in "\n".join(lines)


def test_bad_config_stops(tmp_path):
    p = tmp_path / "gateway.yaml"
    p.write_text(yaml.safe_dump({"stream_secret": "s" * 40, "pods": {"Bad_Name": "http://127.0.0.2:8000"}}))
    rc, lines = run_check(p)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("FAIL config: $.pods.Bad_Name:")


async def test_localapi_discovery_lists_online_state(tmp_path):
    from gateway.check import run_checks
    from gateway.config import parse_config

    sock = tmp_path / "tailscaled.sock"
    peers = [{"HostName": "gate-a", "TailscaleIPs": ["100.64.0.7"], "Tags": ["tag:pod"], "Online": False},
             {"HostName": "laptop", "TailscaleIPs": ["100.64.0.9"], "Tags": [], "Online": True}]
    cfg = parse_config({"stream_secret": "s" * 40, "discovery": "localapi", "localapi_socket": str(sock)}, env={})
    async with LocalAPIStandIn(sock, status_body(["100.64.0.1"], peers)):
        results = await run_checks(cfg)
    lines = [r.line() for r in results]
    assert line(lines, "discovery") == ("PASS discovery: localapi: 1 pod: gate-a (offline) http://100.64.0.7:8000 "
                                        "[gate-a.tail0000.ts.net]")
    assert line(lines, "pod gate-a").startswith("WARN pod gate-a: http://100.64.0.7:8000: offline per discovery")
    results = await run_checks(cfg)  # the stand-in is gone: tailscaled not running
    d = [r for r in results if r.name == "discovery"][0]
    assert d.status == "FAIL" and "tailscaled" in d.line()
