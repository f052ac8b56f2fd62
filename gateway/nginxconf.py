"""The nginx data plane: nginx in front of the gateway serves cached media segments itself.

Issue 15 asked for cache hits at nginx's speed. A Python server does not get there (granian,
2 workers: 0.40× nginx's requests/s on 125 KB segments; docs/benchmarks.md), so with
``data_plane: nginx`` the gateway keeps doing everything it does, and nginx, on the same host,
answers the one hot request itself: a media segment (``.ts .m4s .aac .vtt``, RFC 8216 §3)
that is already kept in the host store, asked for with a valid grant. Per request:

1. Lua (``gateway/lua/platebridge_grant.lua``, LuaJIT through Debian's
   ``libnginx-mod-http-lua``, which ``nginx-extras`` brings) verifies the ``pb_grant`` exactly
   as :meth:`gateway.grants.GrantSigner.verify` does for a
   media grant: the MAC over camera, path and (empty) query with the gateway's grant keys, the
   kind, the expiry. It names the store file, ``<host_cache_dir>/<key_name>.data``
   (:func:`gateway.hoststore.key_name` of ``(pod_id, camera_id, path, "")``).
2. nginx serves that file when it exists (``try_files``), with the gateway's headers
   (content type, ``Cache-Control: private, max-age=<segment_max_age>, immutable``, CORS for
   ``allowed_origins``, ``nosniff``); byte ranges work as nginx's always do.
3. Everything else goes to the gateway unchanged: playlists, init segments (EXT-X-MAP), keys,
   misses, and every request whose grant nginx did not accept, so every refusal and its reason
   are the gateway's, before any upstream request, as without nginx.

:func:`render` writes the config (for nginx's ``http`` context; it holds the grant keys, so
mode 0600); ``platebridge-gateway nginx-conf`` (:func:`main`) writes it and the Lua module to a
directory. No I/O in :func:`render`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import stat
import sys
from importlib import resources
from pathlib import Path

from gateway.config import GatewayConfig, load_config, origin_problem
from gateway.errors import ConfigError

#: the Lua module, in the package (``gateway/lua``)
LUA_MODULE = "platebridge_grant.lua"
CONF_NAME = "platebridge-dataplane.conf"
SERVE_NAME = "platebridge-dataplane-serve.conf"
#: Debian's nginx modules (Debian's nginx.conf loads them from modules-enabled)
MODULES_DIR = "/usr/lib/nginx/modules"
#: the Lua module (libnginx-mod-http-lua) and the Nginx Development Kit it needs, loaded first
#: (libnginx-mod-http-ndk), as file names in :data:`MODULES_DIR`
LUA_SO = "ngx_http_lua_module.so"
NDK_SO = "ndk_http_module.so"
#: where Debian's lua-resty-core (which the Lua module requires) and its ngx.* modules live
RESTY_LUA_DIR = "/usr/share/lua/5.1"
#: requests on one keep-alive connection before nginx closes it (nginx's default: 1000)
KEEPALIVE_REQUESTS = 100_000
#: media types nginx serves, as :func:`protocol.paths.content_type_for` names them
SERVED_TYPES: dict[str, str] = {"ts": "video/mp2t", "m4s": "video/mp4", "aac": "audio/aac", "vtt": "text/vtt"}

_ADDRESS = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}\Z")
_LISTEN = re.compile(r"^(?:(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):)?(?P<port>\d{1,5})(?P<opts>(?: [a-z0-9_=]+)*)\Z")
_NAME = re.compile(r"^[A-Za-z0-9_.*-]{1,253}\Z")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./-]*\Z")
def _need(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {why}")


def render(cfg: GatewayConfig, *, listen: str, gateway: str, conf_dir: str, server_name: str = "_",
           access_log: str = "/var/log/nginx/platebridge-dataplane.log",
           error_log: str = "/var/log/nginx/platebridge-dataplane.error.log") -> dict[str, str]:
    """The nginx config files of the data plane for ``cfg``: ``{file name: text}`` for
    :data:`CONF_NAME` (``http`` context; it holds the grant keys: write it 0600) and
    :data:`SERVE_NAME` (the lines every served media type's location includes).

    ``listen``: nginx's ``listen`` value (``127.0.0.1:8443``, ``443 ssl``); ``gateway``: the
    gateway's ``host:port`` on this host; ``conf_dir``: the directory the files and
    :data:`LUA_MODULE` go to; ``server_name``; log paths (``access_log`` may be ``off``,
    ``error_log`` ``stderr``).
    Raises :class:`ConfigError` (field path and reason) when ``cfg.data_plane`` is not
    ``nginx``, or a value would not be one nginx token (no quotes, ``;``, braces or spaces
    where nginx would split them).
    """
    _need(cfg.data_plane == "nginx", "$.data_plane", "must be nginx to run an nginx data plane")
    _need(cfg.host_cache_dir is not None, "$.host_cache_dir", "must be set with data_plane: nginx")
    store = str(cfg.host_cache_dir)
    _need(bool(_SAFE_PATH.match(store)) and ".." not in store, "$.host_cache_dir",
          "must be a plain absolute path (letters, digits, _ . / -) for the nginx config")
    m = _LISTEN.match(listen)
    _need(m is not None and 1 <= int(m["port"]) <= 65535, "--listen",
          "must be like 127.0.0.1:8443 or 8443 (a port 1-65535; options such as backlog=4096 may follow)")
    _need(m is not None and "ssl" not in m["opts"].split(), "--listen",
          "no ssl here: TLS belongs to the front (Caddy or the balancer), which proxies to this address")
    _need(bool(_ADDRESS.match(gateway)) and 1 <= int(gateway.rsplit(":", 1)[1]) <= 65535, "--gateway",
          "must be host:port of the gateway on this host")
    _need(bool(_NAME.match(server_name)), "--server-name", "must be one host name (or _)")
    for label, path, word in (("--out", conf_dir, ""), ("--access-log", access_log, "off"),
                              ("--error-log", error_log, "stderr")):
        _need(bool(_SAFE_PATH.match(path)) or bool(word and path == word), label,
              "must be a plain absolute path (letters, digits, _ . / -)" + (f" or {word}" if word else ""))
    for i, origin in enumerate(cfg.allowed_origins):
        problem = origin_problem(origin)
        _need(problem is None, f"$.allowed_origins[{i}]", problem or "")
    keys = ",".join(k.hex() for k in cfg.grant_keys())
    # regexes: a map compares plain strings without case, the gateway's check is exact
    origins = "".join(f'    "~^{re.escape(o)}$" $http_origin;\n' for o in cfg.allowed_origins)
    expose = "".join(f'    "~^{re.escape(o)}$" "Content-Length, Content-Range, Accept-Ranges";\n'
                     for o in cfg.allowed_origins)
    cache_control = f"private, max-age={int(cfg.segment_max_age)}, immutable"
    served = "".join(f"""
    location ~ "^/streams/[^/]+/.+\\.{ext}$" {{
        default_type {ctype};
        include {conf_dir}/{SERVE_NAME};
    }}
""" for ext, ctype in SERVED_TYPES.items())
    conf = f"""# PlateBridge gateway, nginx data plane (gateway/nginxconf.py). Written by
# `platebridge-gateway nginx-conf` from the gateway's config: write it again whenever the grant
# keys, host_cache_dir, allowed_origins or segment_max_age change, then `nginx -s reload`.
# It holds the grant keys: mode 0600, owned by root. Needs the Lua module (Debian package
# libnginx-mod-http-lua, which nginx-extras brings; its load_module lines are in
# /etc/nginx/modules-enabled).
#
# nginx serves a media segment itself only when it is kept in the host store and its grant is
# valid for exactly that URI; everything else (playlists, init segments, keys, misses, any
# grant Lua did not accept) goes to the gateway, which answers or refuses it as it always does.

{lua_paths(conf_dir)}init_by_lua_block {{ require("platebridge_grant").init("{keys}") }}

# a whole segment is immutable; a ranged answer is not kept (nginx turns an unsatisfiable range
# into a 416 after the headers are set, which must not be cached for a minute)
map $http_range $pb_segment_cache_control {{
    "" "{cache_control}";
    default "private, no-store";
}}
map $http_origin $pb_cors_origin {{
    default "";
{origins}}}
map $http_origin $pb_cors_expose {{
    default "";
{expose}}}

upstream platebridge_gateway {{
    server {gateway};
    keepalive 64;
    # idle connections to the gateway are dropped here before its own server closes them
    # (timeout_keep_alive), so a request never goes out on a connection it is closing
    keepalive_timeout {max(1, int(cfg.timeout_keep_alive) // 2)}s;
}}

# Access log without query strings: grants (?pb_grant=) and user tokens (?token=) ride in them.
# The path as asked ($uri is the store file's name once nginx serves it); "$upstream_addr" is
# "-" for a segment nginx served itself.
map $request_uri $pb_request_path {{
    "~^(?<pb_path>[^?]*)" $pb_path;
}}
log_format platebridge_dataplane '$remote_addr [$time_local] "$request_method $pb_request_path" $status '
                                 '$body_bytes_sent $request_time "$upstream_addr"';

server {{
    listen {listen};
    server_name {server_name};
    access_log {"off" if access_log == "off" else access_log + " platebridge_dataplane"};
    # At "error" or "crit" nginx quotes the request line, grant included, whenever the gateway
    # is unreachable or a store file cannot be read: only alerts here. An unreadable store shows
    # as every segment going to the gateway (access log) and in `platebridge-gateway check`.
    error_log {error_log} alert;
    log_not_found off;
    server_tokens off;
    max_ranges 1;  # as the gateway: one byte range (several: the whole file, never a multipart body)

    large_client_header_buffers 4 16k;
    client_max_body_size 64k;
    # timeout_keep_alive, as the gateway's own server applies it: idle keep-alive connections
    # and requests whose headers are not in yet are closed after it
    client_header_timeout {int(cfg.timeout_keep_alive)}s;
    client_body_timeout 10s;
    send_timeout 60s;
    keepalive_timeout {int(cfg.timeout_keep_alive)}s;
    # nginx closes a keep-alive connection after keepalive_requests (default 1000). A player's
    # connection, or the TLS front's pooled one, then has to reconnect, and a request the front
    # sends as nginx closes fails or is retried. An LL-HLS viewer makes several requests a
    # second (parts, blocking reloads): 1000 is minutes. The bench saw it too: at c=10 the p99
    # of kept segments was 1.5-4 ms with the default and 0.3 ms with this
    keepalive_requests {KEEPALIVE_REQUESTS};

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_connect_timeout 2s;
    proxy_send_timeout 10s;
    # parts and segments the gateway streams while the pod sends them pass on as they arrive
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_read_timeout 40s;  # blocking playlist reloads (LL-HLS, RFC 8216bis §6.2.5.2)

    # the host store (gateway/hoststore.py): Lua names the kept file of a granted segment
    root {store};
{served}
    location @platebridge_gateway {{
        proxy_pass http://platebridge_gateway;
    }}

    # Scrape the gateway's /metrics on its own address, not through here (a prefix, so that
    # /metrics/ and /metrics%2F are refused too).
    location ^~ /metrics {{
        return 404;
    }}

    location / {{
        proxy_pass http://platebridge_gateway;
    }}
}}
"""
    return {CONF_NAME: conf, SERVE_NAME: SERVE_SNIPPET}


def lua_paths(conf_dir: str) -> str:
    """The ``http``-context lines that say where Lua modules come from: ``conf_dir`` (our
    :data:`LUA_MODULE`) and Debian's lua-resty-core only. Never ``./?.lua`` or LuaJIT's default
    path (``;;``), which start with nginx's working directory, and no C modules."""
    return (f"# Lua modules from {conf_dir} and Debian's lua-resty-core only (never ./?.lua: nginx's\n"
            "# working directory is not ours), no C modules\n"
            f'lua_package_path "{conf_dir}/?.lua;{RESTY_LUA_DIR}/?.lua";\n'
            f'lua_package_cpath "{conf_dir}/?.so";\n')


def render_self_test(conf_dir: str) -> str:
    """An ``http`` context body that makes nginx exit as soon as it has loaded its config:
    status 0 when :data:`LUA_MODULE` in ``conf_dir`` loads and its HMAC-SHA256 through
    libcrypto passes RFC 4231's test vectors (``self_test``), else 1 with the reason on
    stderr at ``alert``. ``nginx -t`` cannot tell: it does not run ``init_by_lua``."""
    return (lua_paths(conf_dir)
            + 'init_by_lua_block {\n'
            '    local ok, err = pcall(function() require("platebridge_grant").self_test() end)\n'
            '    if not ok then ngx.log(ngx.ALERT, "platebridge data plane self-test: ", err) os.exit(1) end\n'
            '    os.exit(0)\n'
            '}\n')


#: the lines every served media type's location shares (:data:`SERVE_NAME`)
SERVE_SNIPPET = """# PlateBridge data plane (gateway/nginxconf.py): serve the host-store file Lua names, else
# hand the request to the gateway. The headers are the gateway's own for a media segment.
types { }
set_by_lua_block $pb_store_file { return require("platebridge_grant").store_file() }
try_files $pb_store_file @platebridge_gateway;
# descriptors of served files kept open: no open()/fstat() per hit. Misses are never cached
# (a segment is kept moments after its first request); an evicted file stays readable through
# a cached descriptor until it was unused for 20 s (its bytes are immutable, its grant checked)
open_file_cache max=4096 inactive=20s;
open_file_cache_valid 10s;
open_file_cache_errors off;
etag off;
add_header Cache-Control $pb_segment_cache_control always;
add_header Vary Origin always;
add_header Access-Control-Allow-Origin $pb_cors_origin always;
add_header Access-Control-Expose-Headers $pb_cors_expose always;
add_header X-Content-Type-Options nosniff always;
add_header Referrer-Policy no-referrer always;
"""


def store_access_problem(store: str | os.PathLike[str], nginx_conf: str = "/etc/nginx/nginx.conf") -> str | None:
    """Why nginx's workers could not read kept segments in ``store``, or None when they can.

    Looks at the directory (it must exist, with group read and search and no group write) and
    at the user nginx's workers run as (the ``user`` directive of ``nginx_conf``; Debian's
    default ``www-data``; root reads anything), which must be in the directory's group."""
    import grp
    import pwd

    try:
        st = os.stat(store)
    except OSError as exc:
        return f"{store}: {exc.strerror or exc} (the gateway creates it when it starts)"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o050 != 0o050:
        return f"{store} is mode {mode:04o}: nginx's workers (its group) cannot read it; chmod 0750"
    user = "www-data"
    try:
        m = re.search(r"^\s*user\s+([A-Za-z0-9_.-]+)", Path(nginx_conf).read_text(errors="replace"), re.MULTILINE)
        user = m.group(1) if m else user
    except OSError:
        pass
    if user == "root":
        return None
    try:
        group = grp.getgrgid(st.st_gid)
        pw = pwd.getpwnam(user)
    except KeyError:
        return f"nginx's worker user {user} or the group of {store} does not exist"
    if pw.pw_gid != st.st_gid and user not in group.gr_mem:
        return (f"nginx's workers run as {user}, who is not in {group.gr_name}, the group of {store}: "
                f"usermod -aG {group.gr_name} {user} (then restart nginx)")
    return None


def lua_source() -> str:
    """The Lua module's text (package data ``gateway/lua/platebridge_grant.lua``)."""
    return resources.files("gateway").joinpath("lua", LUA_MODULE).read_text(encoding="utf-8")


def write(cfg: GatewayConfig, out_dir: str | os.PathLike[str], *, listen: str, gateway: str,
          server_name: str = "_", access_log: str | None = None, error_log: str | None = None) -> list[Path]:
    """Write the data plane's files to ``out_dir`` (created 0700 if missing): the config
    (:data:`CONF_NAME`, mode 0600, it holds the grant keys), the shared location lines and
    the Lua module (0644). Returns their paths. Raises :class:`ConfigError` as :func:`render`
    does, or when ``out_dir`` cannot be written."""
    out = Path(os.path.abspath(out_dir))
    logs = {k: v for k, v in (("access_log", access_log), ("error_log", error_log)) if v}
    files = render(cfg, listen=listen, gateway=gateway, conf_dir=str(out), server_name=server_name, **logs)
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = out.lstat()
        # nginx (root) loads these files: nobody else may be able to replace them or plant links
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o022:
            raise ConfigError(f"--out: {out} must be a directory owned by this user (uid {os.geteuid()}) that only "
                              f"it can write (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}; a symlink is "
                              "not accepted)")
        written = []
        for name, text, mode in ((CONF_NAME, files[CONF_NAME], 0o600), (SERVE_NAME, files[SERVE_NAME], 0o644),
                                 (LUA_MODULE, lua_source(), 0o644)):
            path = out / name
            tmp = path.with_name(f".{name}.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # a leftover (or a link): removed, never followed
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), mode)
                f.write(text)
            os.replace(tmp, path)  # replaces a link at ``path`` itself, never its target
            written.append(path)
    except OSError as exc:
        raise ConfigError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
    return written


def main(argv: list[str]) -> int:
    """``platebridge-gateway nginx-conf``: exit 0 written, 2 bad config or arguments."""
    p = argparse.ArgumentParser(prog="platebridge-gateway nginx-conf",
                                description="write the nginx data plane's config (data_plane: nginx)")
    p.add_argument("--config", "-c", help="path to gateway.yaml (optional if env configures everything)")
    p.add_argument("--out", required=True, help="directory for the config and the Lua module, e.g. "
                                                "/etc/nginx/platebridge")
    p.add_argument("--listen", default="127.0.0.1:8443", help="nginx listen value (default 127.0.0.1:8443)")
    p.add_argument("--gateway", help="the gateway's host:port on this host (default: its config host:port)")
    p.add_argument("--server-name", default="_", help="nginx server_name (default _)")
    p.add_argument("--access-log", help="nginx access log path, or off")
    p.add_argument("--error-log", help="nginx error log path")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(cfg.host, cfg.host)  # noqa: S104 - a bind-all address
        gateway = args.gateway or f"{host}:{cfg.port}"
        files = write(cfg, args.out, listen=args.listen, gateway=gateway, server_name=args.server_name,
                      access_log=args.access_log, error_log=args.error_log)
    except ConfigError as exc:
        print(f"platebridge-gateway nginx-conf: config error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(f) for f in files)}\n"
          f"add to nginx's http context: include {files[0]};\n"
          f"(needs the Lua module: apt-get install libnginx-mod-http-lua)")
    if args.listen.split(":")[0] in ("0.0.0.0", "[::]") or ":" not in args.listen.split()[0]:  # noqa: S104
        print(f"warning: --listen {args.listen} is plain HTTP on every address; let only the TLS front reach it",
              file=sys.stderr)
    problem = store_access_problem(str(cfg.host_cache_dir))
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    return 0
