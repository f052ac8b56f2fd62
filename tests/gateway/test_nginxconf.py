"""The nginx data plane's config (gateway/nginxconf.py) and what the gateway changes for it:
config checks, the store's file modes, the key names Lua must compute. nginx itself runs in
tests/e2e/test_nginx_data_plane.py."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.hoststore import HostStore, key_name, open_store_dir
from gateway.nginxconf import CONF_NAME, LUA_MODULE, SERVE_NAME, main, render, write
from tests.gateway.conftest import signing_key_file

SECRET = "s" * 32


def cfg(tmp_path: Path, **over):
    return parse_config({"grant_secret": SECRET, "user_token_secret": "u" * 32, "data_plane": "nginx",
                         "pod_signing_key_file": signing_key_file(),
                         "host_cache_dir": str(tmp_path / "store"), "allowed_origins": ["https://portal.example.com"],
                         "pods": {"gate-1": "http://100.64.0.7:8000"}, **over}, env={})


def test_the_config_holds_the_grant_keys_origins_store_and_headers(tmp_path):
    files = render(cfg(tmp_path, segment_max_age=45), listen="127.0.0.1:8443", gateway="127.0.0.1:8080",
                   conf_dir="/etc/nginx/platebridge")
    conf, serve = files[CONF_NAME], files[SERVE_NAME]
    assert f'init_by_lua_block {{ require("platebridge_grant").init("{SECRET.encode().hex()}") }}' in conf
    # Lua modules from the config's directory and Debian's lua-resty-core only: never ./?.lua
    # (nginx's working directory) or the default path (";;")
    assert 'lua_package_path "/etc/nginx/platebridge/?.lua;/usr/share/lua/5.1/?.lua";' in conf
    assert 'lua_package_cpath "/etc/nginx/platebridge/?.so";' in conf
    assert 'set_by_lua_block $pb_store_file { return require("platebridge_grant").store_file() }' in serve
    assert f"root {tmp_path / 'store'};" in conf
    assert '"~^https://portal\\.example\\.com$" $http_origin;' in conf  # exact, case and all
    assert "server 127.0.0.1:8080;" in conf and "listen 127.0.0.1:8443;" in conf
    assert "include /etc/nginx/platebridge/platebridge-dataplane-serve.conf;" in conf
    for ext, ctype in (("ts", "video/mp2t"), ("m4s", "video/mp4"), ("aac", "audio/aac"), ("vtt", "text/vtt")):
        assert f'location ~ "^/streams/[^/]+/.+\\.{ext}$" {{\n        default_type {ctype};' in conf
    assert ".mp4" not in conf and ".key" not in conf  # init segments and keys: always the gateway's
    assert '    "" "private, max-age=45, immutable";\n    default "private, no-store";' in conf  # by Range
    assert "add_header Cache-Control $pb_segment_cache_control always;" in serve
    assert "try_files $pb_store_file @platebridge_gateway;" in serve
    assert "$request_uri" in conf and '"$request_method $uri"' not in conf  # no query (grants) in the log
    # at error/crit nginx quotes request lines (grants) when the gateway is down or a file unreadable
    assert re.search(r"^    error_log \S+ alert;$", conf, re.MULTILINE)


@pytest.mark.parametrize(("keep_alive", "upstream_idle"), [(15, 7), (2, 1), (1, 1)])
def test_timeouts_follow_timeout_keep_alive(tmp_path, keep_alive, upstream_idle):
    """As the gateway's own server: idle keep-alive connections and unfinished request headers
    close after ``timeout_keep_alive``; idle connections to the gateway close before it does."""
    conf = render(cfg(tmp_path, timeout_keep_alive=keep_alive), listen="8443", gateway="127.0.0.1:8080",
                  conf_dir="/x")[CONF_NAME]
    assert f"    keepalive_timeout {keep_alive}s;\n" in conf and f"    client_header_timeout {keep_alive}s;\n" in conf
    # a viewer's (or the front's pooled) connection is not closed every 1000 requests (nginx's default)
    assert "    keepalive_requests 100000;\n" in conf
    upstream = conf[conf.index("upstream platebridge_gateway {"):]
    upstream = upstream[:upstream.index("}")]
    assert f"keepalive_timeout {upstream_idle}s;" in upstream


def test_error_log_may_be_stderr_access_log_off(tmp_path):
    conf = render(cfg(tmp_path), listen="8443", gateway="127.0.0.1:8080", conf_dir="/x", access_log="off",
                  error_log="stderr")[CONF_NAME]
    assert "    access_log off;" in conf and "    error_log stderr alert;" in conf
    with pytest.raises(ConfigError, match=r"^--access-log:"):
        render(cfg(tmp_path), listen="8443", gateway="127.0.0.1:8080", conf_dir="/x", access_log="stderr")
    with pytest.raises(ConfigError, match=r"^--error-log:"):
        render(cfg(tmp_path), listen="8443", gateway="127.0.0.1:8080", conf_dir="/x", error_log="off")


def test_rotated_keys_all_verify_signing_key_first(tmp_path):
    c = cfg(tmp_path, grant_secret=None, grant_secrets={"old": "o" * 32, "new": "n" * 32}, grant_secret_primary="new")
    conf = render(c, listen="8443", gateway="127.0.0.1:8080", conf_dir="/x")[CONF_NAME]
    assert f'"{("n" * 32).encode().hex()},{("o" * 32).encode().hex()}"' in conf


@pytest.mark.parametrize(("over", "kw", "field"), [
    ({"data_plane": "gateway"}, {}, "$.data_plane"),
    ({"host_cache_dir": "/run/pb store"}, {}, "$.host_cache_dir"),
    ({"allowed_origins": ["https://a.example.com\"; evil"]}, {}, "$.allowed_origins"),
    ({}, {"listen": "8443; include /etc/shadow"}, "--listen"),
    ({}, {"listen": "127.0.0.1:99999"}, "--listen"),
    ({}, {"listen": "127.0.0.1:8443 ssl"}, "--listen"),  # no certificate lines: TLS is the front's
    ({}, {"gateway": "127.0.0.1:8080 backup; x"}, "--gateway"),
    ({}, {"server_name": "a b"}, "--server-name"),
    ({}, {"conf_dir": "relative/dir"}, "--out"),
    ({}, {"access_log": "/var/log/x.log;"}, "--access-log"),
])
def test_a_value_nginx_would_split_is_refused_with_its_field(tmp_path, over, kw, field):
    args = {"listen": "127.0.0.1:8443", "gateway": "127.0.0.1:8080", "conf_dir": "/etc/nginx/pb", **kw}
    try:
        c = cfg(tmp_path, **over)
    except ConfigError as exc:  # refused by the gateway's own config check already
        assert field in str(exc)
        return
    with pytest.raises(ConfigError, match=f"^{field.replace('$', '[$]')}"):
        render(c, **args)


@pytest.mark.parametrize(("over", "field"), [
    ({"host_cache_dir": None}, "$.host_cache_dir"),
    ({"grant_secret": None, "pod_signing_key_file": None, "stream_secret": "l" * 32},
     "$.grant_secret"),  # legacy: a random grant key per run, which nginx could never verify
])
def test_data_plane_nginx_needs_a_fixed_store_and_grant_key(tmp_path, over, field):
    with pytest.raises(ConfigError, match=field.replace("$", "[$]")):
        cfg(tmp_path, **over)


def test_write_makes_the_key_file_root_only_and_ships_the_lua_module(tmp_path):
    out = tmp_path / "nginx"
    paths = write(cfg(tmp_path), out, listen="127.0.0.1:8443", gateway="127.0.0.1:8080")
    assert [p.name for p in paths] == [CONF_NAME, SERVE_NAME, LUA_MODULE]
    assert stat.S_IMODE((out / CONF_NAME).stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert "function M.store_file()" in (out / LUA_MODULE).read_text()
    assert stat.S_IMODE((out / LUA_MODULE).stat().st_mode) == 0o644
    assert f'lua_package_path "{out}/?.lua;' in (out / CONF_NAME).read_text()


def test_cli_exit_codes(tmp_path, capsys):
    path = tmp_path / "gateway.yaml"
    keys = f"grant_secret: {SECRET}\nuser_token_secret: {'u' * 32}\npod_signing_key_file: {signing_key_file()}\n"
    path.write_text(f"{keys}data_plane: nginx\nhost_cache_dir: {tmp_path / 'store'}\n")
    assert main(["--config", str(path), "--out", str(tmp_path / "o")]) == 0
    assert "include " in capsys.readouterr().out
    path.write_text(keys)
    assert main(["--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "$.data_plane" in capsys.readouterr().err


def test_lua_module_loads_in_nginx(tmp_path):
    """Debian's nginx with the Lua module loads the written config (nginx -t runs
    init_by_lua: the keys load and libcrypto's SHA-256 answers)."""
    modules = [Path("/usr/lib/nginx/modules/ndk_http_module.so"), Path("/usr/lib/nginx/modules/ngx_http_lua_module.so")]
    if not all(so.exists() for so in modules):
        pytest.fail("the Lua module is missing: run ./run setup (libnginx-mod-http-lua)")
    out = tmp_path / "conf"
    write(cfg(tmp_path), out, listen="127.0.0.1:1", gateway="127.0.0.1:8080", access_log=str(tmp_path / "a.log"),
          error_log=str(tmp_path / "e.log"))
    main_conf = tmp_path / "nginx.conf"
    main_conf.write_text("".join(f"load_module {so};\n" for so in modules) + f"pid {tmp_path / 'pid'};\nevents {{}}\n"
                         f"http {{ include {out / CONF_NAME}; }}\n")
    r = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(main_conf), "-e", str(tmp_path / "m.log")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


# ---- the host store's side -------------------------------------------------------------

def test_key_names_are_what_lua_computes():
    """The proxy's keys are named by SHA-256 of "pbk1\\n" + each part + "\\n" (Lua repeats it);
    anything else keeps a name of its own kind."""
    want = hashlib.sha256(b"pbk1\nmain-gate-pod\ngate-camera-1\nseg_17.m4s\n\n").hexdigest()
    assert key_name(("main-gate-pod", "gate-camera-1", "seg_17.m4s", "")) == want
    assert key_name(("a\nb", "c")) != key_name(("a", "b", "c"))  # a newline cannot forge another key
    assert key_name(("a", 1)) == hashlib.sha256(b"repr\n('a', 1)").hexdigest()


async def test_group_readable_store_for_nginx(tmp_path):
    """data_plane: nginx: kept bodies are 0640 even under the systemd unit's UMask=0077 (nginx's
    workers read them through the directory's group); other store files stay 0600."""
    from gateway.cache import Flight

    root = tmp_path / "store"
    old = os.umask(0o077)
    try:
        store = HostStore(root, max_bytes=1 << 20, group_read=True)

        async def pod(flight: Flight, _stale: Flight | None) -> None:
            flight.start(200, {"content-type": "video/mp4"})
            flight.append(b"segment")
            flight.finish()

        flight = Flight()
        flight.cached = True
        key = ("pod-1", "gate-camera-1", "seg_1.m4s", "")
        assert await store.fill(key, flight, pod, ttl=lambda _f: float("inf")) == "fetched"
    finally:
        os.umask(old)
    name = key_name(key)
    assert stat.S_IMODE(root.stat().st_mode) == 0o750  # created so, whatever the umask
    assert stat.S_IMODE((root / f"{name}.data").stat().st_mode) == 0o640
    assert stat.S_IMODE((root / f"{name}.meta").stat().st_mode) == 0o600
    root.chmod(0o770)  # group-writable: another process could plant a body nginx serves
    with pytest.raises(ConfigError, match="0750 or stricter"):
        open_store_dir(root, group_read=True)
    root.chmod(0o750)
    with pytest.raises(ConfigError, match="0700 or stricter"):  # the plain store stays private
        open_store_dir(root)
    assert HostStore(tmp_path / "plain", max_bytes=1 << 20).body_mode == 0o600


def test_store_access_problem_names_what_keeps_nginx_out(tmp_path):
    """The check behind the gateway's start warning and ``platebridge-gateway check``: the
    directory's mode, and whether nginx's worker user (its config's ``user``) is in its group."""
    import grp
    import pwd

    from gateway.check import check_data_plane
    from gateway.nginxconf import store_access_problem

    store = tmp_path / "store"
    conf = tmp_path / "nginx.conf"
    conf.write_text("user nobody;\nworker_processes auto;\n")
    assert "No such file" in store_access_problem(store, str(conf))
    store.mkdir(mode=0o700)
    store.chmod(0o700)
    assert "mode 0700" in store_access_problem(store, str(conf))
    store.chmod(0o750)
    nobody = pwd.getpwnam("nobody")
    other = next(g for g in grp.getgrall() if g.gr_gid != nobody.pw_gid and "nobody" not in g.gr_mem)
    os.chown(store, -1, other.gr_gid)
    assert f"usermod -aG {other.gr_name} nobody" in store_access_problem(store, str(conf))
    os.chown(store, -1, nobody.pw_gid)
    assert store_access_problem(store, str(conf)) is None
    conf.write_text("user root;\n")
    os.chown(store, -1, other.gr_gid)
    assert store_access_problem(store, str(conf)) is None  # root reads anything

    c = cfg(tmp_path)  # host_cache_dir = tmp_path / "store"
    store.chmod(0o700)
    [line] = check_data_plane(c)
    assert line.status == "WARN" and "mode 0700" in line.detail
    assert check_data_plane(cfg(tmp_path, data_plane="gateway", host_cache_dir=None)) == []


def test_write_refuses_an_out_dir_others_can_write_and_never_follows_links(tmp_path):
    """nginx (root) loads what ``write`` puts in ``--out``: a directory another user can write
    is refused, and a planted link where a temporary file goes is replaced, not followed."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="only it can write"):
        write(cfg(tmp_path), shared, listen="127.0.0.1:8443", gateway="127.0.0.1:8080")
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    loot = tmp_path / "loot"
    loot.write_text("")
    (out / f".{CONF_NAME}.tmp").symlink_to(loot)
    (out / CONF_NAME).symlink_to(loot)
    write(cfg(tmp_path), out, listen="127.0.0.1:8443", gateway="127.0.0.1:8080")
    assert loot.read_text() == "" and not (out / CONF_NAME).is_symlink()
    assert stat.S_IMODE((out / CONF_NAME).stat().st_mode) == 0o600
