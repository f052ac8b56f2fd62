"""Gateway configuration: YAML file, then environment overrides.

Every key may be overridden by ``PLATEBRIDGE_GATEWAY_<KEY>`` (upper-case); the
value is parsed as YAML, so lists/maps work (``PLATEBRIDGE_GATEWAY_PODS='{gate-1:
http://100.64.0.7:8000}'``). Errors name the key path and the reason.

Keys by role (each rotates with ``kid``; see docs/portal-integration.md):

* ``user_token_secret(s)`` — HS256 secret(s) of user stream tokens, shared with the
  portal only;
* ``pod_signing_key_file`` + ``pod_signing_key_id`` — the gateway's Ed25519 private key
  (PEM) that signs gateway→pod tokens; pods hold only its public key;
* ``grant_secret(s)`` — the grant MAC key, gateway-only; by default derived (HKDF)
  from the signing key.

Legacy: ``stream_secret`` (env ``POD_STREAM_SECRET``), the connection guide's one
secret shared by portal, gateway and every pod, still works for whichever role has
no key of its own, with a warning at start (:meth:`GatewayConfig.legacy_warnings`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from gateway.errors import ConfigError
from protocol.checks import MIN_SECRET_BYTES
from protocol.ids import is_dns_label
from protocol.tokens import Keyring, SigningKey
from protocol.yamlconf import ConfigValueError, check_known_keys, convert_config, http_url_problem, load_yaml

DiscoveryMode = Literal["static", "localapi", "tailscale_api"]
ENV_PREFIX = "PLATEBRIDGE_GATEWAY_"
#: names the config file for :func:`gateway.asgi.create_app_from_env`; not a config key
CONFIG_PATH_ENV = "PLATEBRIDGE_GATEWAY_CONFIG"
#: most worker processes (``workers``); the default, one per CPU, is capped here too
MAX_WORKERS = 64
MAX_DURATION_SECONDS = 86400  # the cap on every duration key (seconds)
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """All gateway settings. Durations are seconds, sizes bytes."""

    # keys by role
    user_token_secret: str | None = None  # kid "default"
    user_token_secrets: dict[str, str] | None = None  # kid -> secret, for rotation
    user_token_secret_primary: str | None = None
    pod_signing_key_file: str | None = None  # Ed25519 private key, PEM (openssl genpkey -algorithm ed25519)
    pod_signing_key_id: str = "default"  # the kid pods know its public key by
    grant_secret: str | None = None  # default: HKDF of the signing key
    grant_secrets: dict[str, str] | None = None
    grant_secret_primary: str | None = None
    # legacy: the connection guide's one shared secret (portal, gateway and every pod)
    stream_secret: str | None = None
    stream_secrets: dict[str, str] | None = None  # kid -> secret, for rotation
    stream_secret_primary: str | None = None
    public_base_url: str = "http://127.0.0.1:8080"
    allowed_origins: list[str] = []
    max_token_ttl: float = 900.0
    # also accept the PlateBridge POD connection guide's stream tokens (base64(json).sha256hex;
    # protocol/legacy_tokens.py) while a portal moves to JWTs; off by default
    accept_legacy_tokens: bool = False
    max_session_seconds: float = 3600.0
    grant_ttl: float = 120.0
    discovery: DiscoveryMode = "static"
    pods: dict[str, str] = {}
    pod_tag: str = "tag:pod"
    pod_port: int = 8000
    localapi_socket: str = "/var/run/tailscale/tailscaled.sock"
    tailnet: str = "-"
    tailscale_api_key: str | None = None
    tailscale_oauth_client_id: str | None = None
    tailscale_oauth_client_secret: str | None = None
    discovery_refresh_seconds: float = 30.0
    upstream_proxy: str | None = None
    upstream_connect_timeout: float = 2.0
    upstream_read_timeout: float = 10.0
    upstream_deadline: float = 20.0  # whole fetch: queue, connect, headers and body
    upstream_pod_connections: int = 8  # concurrent requests per pod
    upstream_pod_held_requests: int = 32  # and LL-HLS requests a pod holds (blocking reloads, hinted parts)
    upstream_max_playlist_bytes: int = 2 * 1024 * 1024
    upstream_max_segment_bytes: int = 32 * 1024 * 1024
    upstream_max_init_bytes: int = 1024 * 1024
    cache_max_bytes: int = 256 * 1024 * 1024
    segment_max_age: int = 60  # browser cache of segments; >= playlist window
    host: str = "127.0.0.1"
    port: int = 8080
    hlsjs_path: str | None = None
    access_log: bool = True
    admin_token: str | None = None  # portal service key for POST /pods/{pod_id}/nudge
    # connections served at once; beyond it granian leaves new ones in the listen backlog
    # (its backpressure), uvicorn answers 503 (it counts connections + tasks)
    limit_concurrency: int = 4096
    # s: an idle keep-alive connection, or one whose request headers are not in yet, is closed
    # (granian: HTTP/1 header read timeout, at most 60 s)
    timeout_keep_alive: int = 15
    # HTTP server: granian (ASGI, HTTP/1.1) or uvicorn (httptools); gateway/server.py and
    # docs/benchmarks.md say why granian is the default.
    server: Literal["granian", "uvicorn"] = "granian"
    # worker processes (None: one per CPU). They share one host store (host_cache_dir), so a
    # segment costs one pod fetch per host however many workers serve it
    workers: int | None = None
    # the host store's directory, on a tmpfs (gateway/hoststore.py); None: with more than one
    # worker or a data plane the gateway runs, a fresh private directory under /dev/shm for each
    # run. Its kept bodies are bounded by cache_max_bytes, and the workers' memory by the same
    # again (an even share each)
    host_cache_dir: str | None = None
    # who serves cached media segments: the gateway itself, or nginx in front of it, which
    # verifies their grants and serves them straight from host_cache_dir (gateway/nginxconf.py;
    # `platebridge-gateway nginx-conf` writes its config). "nginx" needs host_cache_dir and a
    # configured grant key (grant_secret(s) or pod_signing_key_file); the store's directory
    # may then be group-readable (0750, nginx's group) and its bodies are 0640
    #
    # "auto" (the default): the gateway runs that nginx itself (gateway/dataplane.py) when nginx
    # and its Lua module are installed, else serves segments itself; "managed": it must run
    # nginx itself (a missing nginx is an error); "nginx": an nginx you run, configured by
    # `platebridge-gateway nginx-conf`; "gateway": no nginx. docs/benchmarks.md says why: only
    # the nginx data plane keeps the p99 of cache hits within 2x nginx's
    data_plane: Literal["auto", "managed", "nginx", "gateway"] = "auto"
    # with a data plane the gateway runs itself: the port its workers listen on at 127.0.0.1
    # behind nginx (scrape /metrics there); 0: a free port picked at each start (logged)
    internal_port: int = 0
    nginx_bin: str | None = None  # None: /usr/sbin/nginx, /usr/local/sbin/nginx, nginx on PATH
    # where nginx's Lua module (ngx_http_lua_module.so) and the NDK it needs (ndk_http_module.so)
    # are; None: Debian's /usr/lib/nginx/modules
    nginx_modules_dir: str | None = None
    # that nginx's access log (a file; None: off): the requests it served itself, which the
    # gateway's metrics and access log never see. Paths only, never query strings (grants, tokens)
    nginx_access_log: str | None = None
    loop: Literal["uvloop", "asyncio"] = "uvloop"  # the event loop that runs the app
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def body_caps(self) -> dict[str, int]:
        """Body cap per kind in bytes (each at most ``cache_max_bytes``)."""
        return {"playlist": min(self.upstream_max_playlist_bytes, self.cache_max_bytes),
                "segment": min(self.upstream_max_segment_bytes, self.cache_max_bytes),
                "init": min(self.upstream_max_init_bytes, self.cache_max_bytes)}

    def secrets(self) -> dict[str, str]:
        """kid → legacy stream secret (``stream_secret`` is kid ``"default"``)."""
        return _ring(self.stream_secrets, self.stream_secret)

    def user_secrets(self) -> dict[str, str]:
        """kid → user-token secret: ``user_token_secret(s)``, else the legacy stream secrets."""
        return _ring(self.user_token_secrets, self.user_token_secret) or self.secrets()

    def named_secrets(self) -> list[tuple[str, str]]:
        """``(where, secret)`` for every configured HMAC secret (checks; never printed)."""
        users = _ring(self.user_token_secrets, self.user_token_secret)
        out = [(f"user_token_secrets.{k}", v) for k, v in users.items()]
        out += [(f"grant_secrets.{k}", v) for k, v in _ring(self.grant_secrets, self.grant_secret).items()]
        out += [(f"stream_secrets.{k}", v) for k, v in self.secrets().items()]
        return out

    def weak_secrets(self) -> list[str]:
        """Where a secret is shorter than 32 bytes (reported at startup)."""
        return [where for where, s in self.named_secrets() if len(s.encode()) < 32]

    def user_keyring(self) -> Keyring:
        """The user-token :class:`Keyring` (HS256)."""
        if _ring(self.user_token_secrets, self.user_token_secret):
            secrets = _ring(self.user_token_secrets, self.user_token_secret)
            return Keyring(secrets, self.user_token_secret_primary or next(iter(secrets)))
        return self.keyring()

    def keyring(self) -> Keyring:
        """The legacy stream :class:`Keyring` (primary = ``stream_secret_primary`` or the single secret)."""
        secrets = self.secrets()
        return Keyring(secrets, self.stream_secret_primary or next(iter(secrets)))

    def pod_signer(self) -> SigningKey | Keyring:
        """What signs gateway→pod tokens: the Ed25519 key of ``pod_signing_key_file``, else (legacy)
        the stream-secret keyring. Raises :class:`ConfigError` for an unreadable or wrong key file."""
        if not self.pod_signing_key_file:
            return self.keyring()
        if "-----BEGIN" in self.pod_signing_key_file or "\n" in self.pod_signing_key_file:
            raise _fail("$.pod_signing_key_file", "expected the path of a PEM file, got key text (not shown); "
                        "write the key to a file with mode 0600 and give its path")
        path = Path(self.pod_signing_key_file)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise _fail("$.pod_signing_key_file", f"cannot read {path}: {exc.strerror}") from None
        try:
            return SigningKey(pem, self.pod_signing_key_id)
        except ValueError as exc:
            raise _fail("$.pod_signing_key_file", f"{path}: {exc}") from None

    def grant_keys(self) -> list[bytes]:
        """Grant MAC keys, the signing one first: ``grant_secret(s)``; else HKDF of the signing key;
        else (legacy, no gateway-only key configured) one random key for this process."""
        ring = _ring(self.grant_secrets, self.grant_secret)
        if ring:
            primary = self.grant_secret_primary or next(iter(ring))
            return [ring[primary].encode()] + [v.encode() for k, v in ring.items() if k != primary]
        signer = self.pod_signer()
        if isinstance(signer, SigningKey):
            return [signer.derive(GRANT_KEY_INFO)]
        return [os.urandom(32)]

    def worker_memory_bytes(self) -> int:
        """Bytes of pod bodies one worker process may hold in memory: all of ``cache_max_bytes``
        without a host store; with one (several workers), an even share of it (the kept bodies
        live in the store, bounded by ``cache_max_bytes`` on their own), at least 1 MiB."""
        if not self.host_cache_dir:
            return self.cache_max_bytes
        return max(1024 * 1024, self.cache_max_bytes // max(1, self.workers or 1))

    def grant_keys_configured(self) -> bool:
        """Whether the grant key comes from config (``grant_secret(s)`` or ``pod_signing_key_file``),
        so every worker and every restart derives the same one."""
        return bool(_ring(self.grant_secrets, self.grant_secret)) or bool(self.pod_signing_key_file)

    def legacy_warnings(self) -> list[str]:
        """One line per role that falls back to the shared legacy ``stream_secret``."""
        out = []
        if not _ring(self.user_token_secrets, self.user_token_secret):
            out.append("user stream tokens are verified with the legacy stream_secret, which every pod also "
                       "holds: a stolen pod can mint tokens for every camera. Set user_token_secret (shared with "
                       "the portal only)")
        if not self.pod_signing_key_file:
            out.append("gateway→pod tokens are signed with the legacy stream_secret (HS256): any pod can mint "
                       "tokens for every other pod. Set pod_signing_key_file (Ed25519) and give pods its public key "
                       "(gateway_public_keys)")
            if not _ring(self.grant_secrets, self.grant_secret):
                out.append("no gateway-only grant key (grant_secret or pod_signing_key_file): grants use a random "
                           "key of this process, so viewing sessions end when the gateway restarts")
        return out


GRANT_KEY_INFO = b"platebridge grant key v2"


def _ring(many: dict[str, str] | None, single: str | None) -> dict[str, str]:
    ring = dict(many or {})
    if single:
        ring.setdefault("default", single)
    return ring


def _fail(path: str, reason: str) -> ConfigError:
    return ConfigError(f"{path}: {reason}")


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ORIGIN = re.compile(rf"(https?)://({_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]+\])(?::([0-9]{{1,5}}))?\Z")


def origin_problem(origin: object) -> str | None:
    """Why ``origin`` is not an origin a browser sends, or None when it is.

    A browser's ``Origin`` header is the ASCII serialization of RFC 6454 §6.2:
    ``scheme://host[:port]``, scheme and host lowercase, no path, no default port
    (80 for http, 443 for https). The CORS check echoes only an exact match, so
    anything else would never match, and the data plane's nginx map holds these
    strings too: nothing outside that grammar reaches its config."""
    if not isinstance(origin, str):
        return "must be a string like https://portal.example.com"
    m = _ORIGIN.match(origin)
    if m is None:
        if origin != origin.lower() and _ORIGIN.match(origin.lower()):
            return f"must be lowercase, as browsers send it ({origin.lower()})"
        return "must be an exact origin like https://portal.example.com (scheme://host[:port], no path)"
    scheme, host, port = m.groups()
    # an IP literal as browsers serialize it (the WHATWG URL standard's host serializer): IPv6
    # compressed, in brackets; IPv4 as four decimal numbers. A host whose last label is a
    # number is read as IPv4 (127.1, 2130706433, 0x7f.1), so it must be one, written so
    if host.startswith("["):
        try:
            canonical = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return f"{host} is not an IPv6 address"
        if canonical != host:
            return f"write the IPv6 address as browsers send it ({scheme}://{canonical})"
    elif (last := host.rsplit(".", 1)[-1]).isdigit() or last.startswith("0x"):
        try:
            ok = str(ipaddress.IPv4Address(host)) == host
        except ValueError:
            ok = False
        if not ok:
            return "an IPv4 address must be four numbers 0-255 without leading zeros, as browsers send it"
    if port is not None:
        if not 1 <= int(port) <= 65535 or port != str(int(port)):
            return "port must be 1-65535 without leading zeros"
        if int(port) == {"http": 80, "https": 443}[scheme]:
            return f"leave out the default port, as browsers do ({scheme}://{host})"
    return None


def _check_base_url(path: str, url: str) -> None:
    problem = http_url_problem(url, origin_only=True)
    if problem:
        raise _fail(path, problem)


def parse_config(data: Any, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate a decoded YAML mapping plus environment overrides.

    Raises :class:`ConfigError` naming the key path (``$.pods.gate-1``) and reason.
    """
    env = os.environ if env is None else env
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail("$", "the config file must be a YAML mapping")
    data = dict(data)
    from_env: dict[str, str] = {}  # key -> the environment variable that set it
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name != CONFIG_PATH_ENV:
            key = name[len(ENV_PREFIX):].lower()
            if not key:
                raise _fail(f"env {name}", f"names no key (the key follows {ENV_PREFIX}, e.g. {ENV_PREFIX}PORT)")
            try:
                data[key] = load_yaml(value)
            except ValueError:
                raise _fail(f"env {name}", "is not valid YAML") from None
            from_env[key] = name
    if env.get("POD_STREAM_SECRET"):
        data["stream_secret"] = env["POD_STREAM_SECRET"]
        from_env["stream_secret"] = "POD_STREAM_SECRET"  # noqa: S105 - the name of a variable, not a secret
    try:
        return _validate(data)
    except ConfigError as exc:
        path, sep, reason = str(exc).partition(": ")
        top = re.match(r"\$\.([A-Za-z0-9_]+)", path)
        key = top.group(1) if top else ""
        if key.endswith("_secrets") and path == f"$.{key}.default" and key[:-1] in from_env:
            key = key[:-1]  # a single *_secret is the ring's "default" key
        if sep and key in from_env:  # the value is the environment's, not the file's
            raise ConfigError(f"{path} (set by env {from_env[key]}): {reason}") from None
        raise


def _validate(data: dict[str, Any]) -> GatewayConfig:
    try:
        check_known_keys(data, GatewayConfig)
        cfg = convert_config(data, GatewayConfig)
    except ConfigValueError as exc:
        raise _fail(exc.path, exc.reason) from None
    if not cfg.user_secrets():
        raise _fail("$.user_token_secret", "required: the HS256 secret the portal signs user stream tokens with "
                    "(or, legacy, stream_secret / env POD_STREAM_SECRET)")
    if not cfg.pod_signing_key_file and not cfg.secrets():
        raise _fail("$.pod_signing_key_file", "required: the gateway's Ed25519 private key for gateway→pod tokens "
                    "(openssl genpkey -algorithm ed25519 -out gateway-pod-signing.pem)")
    for key, many, single, primary in (
            ("user_token_secret", cfg.user_token_secrets, cfg.user_token_secret, cfg.user_token_secret_primary),
            ("grant_secret", cfg.grant_secrets, cfg.grant_secret, cfg.grant_secret_primary),
            ("stream_secret", cfg.stream_secrets, cfg.stream_secret, cfg.stream_secret_primary)):
        if single is not None and not single:
            raise _fail(f"$.{key}", "must not be empty (leave the key out instead)")
        ring = _ring(many, single)
        for kid, secret in ring.items():
            if not secret:
                raise _fail(f"$.{key}s.{kid}", "must not be empty")
        if primary is not None and primary not in ring:
            raise _fail(f"$.{key}_primary", f"{primary!r} is not a key id of {key}s")
    # HS256 and the grants' HMAC-SHA256 need a key at least as long as the hash: RFC 7518 §3.2
    # (a MUST for JWS HS256), RFC 2104 §3. Tokens ride in URLs, so a short key can be searched
    # for offline from any one of them. The legacy stream_secret (the connection guide's own
    # example is 13 bytes) is only warned about, at startup and by check.
    for key, ring in (("user_token_secrets", _ring(cfg.user_token_secrets, cfg.user_token_secret)),
                      ("grant_secrets", _ring(cfg.grant_secrets, cfg.grant_secret))):
        for kid, secret in ring.items():
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise _fail(f"$.{key}.{kid}", f"must be at least {MIN_SECRET_BYTES} bytes, as long as the "
                            f"SHA-256 it keys (RFC 7518 §3.2); make one with: openssl rand -base64 48")
    if not cfg.pod_signing_key_id or not _KID.match(cfg.pod_signing_key_id):
        raise _fail("$.pod_signing_key_id", "must be 1-64 characters of A-Za-z0-9._-")
    cfg.pod_signer()  # the key file loads and is an Ed25519 private key
    _check_base_url("$.public_base_url", cfg.public_base_url)
    for i, origin in enumerate(cfg.allowed_origins):
        problem = origin_problem(origin)
        if problem:
            raise _fail(f"$.allowed_origins[{i}]", problem)
    for pod_id, url in cfg.pods.items():
        if not is_dns_label(pod_id):
            raise _fail(f"$.pods.{pod_id}", "pod_id must be a DNS label")
        _check_base_url(f"$.pods.{pod_id}", url)
    if cfg.discovery == "tailscale_api" and not (
        cfg.tailscale_api_key or (cfg.tailscale_oauth_client_id and cfg.tailscale_oauth_client_secret)
    ):
        raise _fail("$.tailscale_api_key", "tailscale_api discovery needs an API key or an OAuth client id + secret")
    if not cfg.pod_tag.startswith("tag:"):
        raise _fail("$.pod_tag", "must look like tag:pod")
    for key in ("max_token_ttl", "max_session_seconds", "grant_ttl", "discovery_refresh_seconds",
                "upstream_connect_timeout", "upstream_read_timeout", "upstream_deadline"):
        # a day at most: a session's end is a uint32 of Unix seconds in every grant, and
        # asyncio refuses timers that overflow the selector's timeout
        if not 0 < getattr(cfg, key) <= MAX_DURATION_SECONDS:
            raise _fail(f"$.{key}", f"must be > 0 and at most {MAX_DURATION_SECONDS} seconds (a day)")
    if not 1 <= cfg.upstream_pod_connections <= 256:
        raise _fail("$.upstream_pod_connections", "must be 1-256 concurrent requests per pod")
    if not 1 <= cfg.upstream_pod_held_requests <= 1024:
        raise _fail("$.upstream_pod_held_requests", "must be 1-1024 held LL-HLS requests per pod")
    for key in ("upstream_max_playlist_bytes", "upstream_max_segment_bytes", "upstream_max_init_bytes"):
        if getattr(cfg, key) < 1024:
            raise _fail(f"$.{key}", "must be at least 1024 bytes (a body is also never bigger than cache_max_bytes)")
    for key in ("port", "pod_port"):
        if not 1 <= getattr(cfg, key) <= 65535:
            raise _fail(f"$.{key}", "must be 1-65535")
    if cfg.limit_concurrency < 16:
        raise _fail("$.limit_concurrency", "must be >= 16 connections")
    if not 1 <= cfg.timeout_keep_alive <= 60:
        raise _fail("$.timeout_keep_alive", "must be 1-60 seconds")
    if not 1 <= cfg.segment_max_age <= MAX_DURATION_SECONDS:
        raise _fail("$.segment_max_age", f"must be 1-{MAX_DURATION_SECONDS} seconds (and at least the playlist window)")
    if cfg.admin_token is not None and len(cfg.admin_token) < 16:
        raise _fail("$.admin_token", "must be at least 16 characters (it authorises nudges to every pod)")
    if cfg.grant_ttl < 10:
        raise _fail("$.grant_ttl", "must be >= 10 seconds (players fetch segments after the playlist)")
    if cfg.cache_max_bytes < 1024 * 1024:
        raise _fail("$.cache_max_bytes", "must be >= 1 MiB")
    if cfg.workers is not None and not 1 <= cfg.workers <= MAX_WORKERS:
        raise _fail("$.workers", "must be 1-64 worker processes (or left out: one per CPU)")
    if cfg.host_cache_dir is not None and not os.path.isabs(cfg.host_cache_dir):
        raise _fail("$.host_cache_dir", "must be an absolute path (a directory on a tmpfs, mode 0700)")
    if not 0 <= cfg.internal_port <= 65535:
        raise _fail("$.internal_port", "must be a TCP port 1-65535 (or 0: a free one at each start)")
    if cfg.internal_port and cfg.internal_port == cfg.port:
        raise _fail("$.internal_port", "must differ from port (nginx listens there, the workers here)")
    for key in ("nginx_bin", "nginx_modules_dir", "nginx_access_log"):
        value = getattr(cfg, key)
        if value is not None and not os.path.isabs(value):
            raise _fail(f"$.{key}", "must be an absolute path")
    if cfg.data_plane == "nginx":
        if cfg.host_cache_dir is None:
            raise _fail("$.host_cache_dir", "must be set with data_plane: nginx (nginx serves segments from it)")
        if not cfg.grant_keys_configured():
            raise _fail("$.grant_secret", "must be set (or pod_signing_key_file) with data_plane: nginx: nginx "
                        "verifies grants with the same key, so it cannot be a random one per run")
    if cfg.upstream_proxy:
        try:
            proxy = urlsplit(cfg.upstream_proxy)
            ok = proxy.scheme in ("socks5", "socks5h", "http") and bool(proxy.hostname) and proxy.port is not None
        except ValueError:
            ok = False
        if not ok:
            raise _fail("$.upstream_proxy", "must be socks5://host:port or http://host:port")
    try:
        ipaddress.ip_address(cfg.host)
    except ValueError:
        if not is_dns_label(cfg.host.split(".")[0]) and cfg.host != "localhost":
            raise _fail("$.host", "must be an IP address or host name") from None
    return cfg


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load ``path`` (optional: env alone may configure the gateway) and validate.

    Raises :class:`ConfigError`.
    """
    data: Any = {}
    if path is not None:
        p = Path(path)
        try:
            data = load_yaml(p.read_bytes())
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    return parse_config(data, env)
