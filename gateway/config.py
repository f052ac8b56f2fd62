"""Gateway configuration: YAML file, then environment overrides.

Every key may be overridden by ``PLATEBRIDGE_GATEWAY_<KEY>`` (upper-case); the
value is parsed as YAML, so lists/maps work (``PLATEBRIDGE_GATEWAY_PODS='{gate-1:
http://100.64.0.7:8000}'``). ``POD_STREAM_SECRET`` sets ``stream_secret``, as on
the portal and the pods. Errors name the key path and the reason.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from gateway.errors import ConfigError
from protocol.ids import is_dns_label
from protocol.tokens import Keyring
from protocol.yamlconf import ConfigValueError, check_known_keys, convert_config, load_yaml

DiscoveryMode = Literal["static", "localapi", "tailscale_api"]
ENV_PREFIX = "PLATEBRIDGE_GATEWAY_"
#: names the config file for :func:`gateway.asgi.create_app_from_env`; not a config key
CONFIG_PATH_ENV = "PLATEBRIDGE_GATEWAY_CONFIG"


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """All gateway settings. Durations are seconds, sizes bytes."""

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
    cache_max_bytes: int = 256 * 1024 * 1024
    segment_max_age: int = 60  # browser cache of segments; >= playlist window
    host: str = "127.0.0.1"
    port: int = 8080
    hlsjs_path: str | None = None
    access_log: bool = True
    admin_token: str | None = None
    limit_concurrency: int = 4096  # connections + tasks; beyond it uvicorn answers 503
    timeout_keep_alive: int = 15  # portal service key for POST /pods/{pod_id}/nudge
    # HTTP server: uvicorn (uvloop + httptools) or granian (ASGI); see docs/benchmarks.md. One
    # process only: the segment cache and the record of issued URIs live in it (the CLI's
    # --workers exists for benchmarks and breaks viewer sessions).
    server: Literal["uvicorn", "granian"] = "uvicorn"
    loop: Literal["uvloop", "asyncio"] = "uvloop"  # the event loop that runs the app
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def secrets(self) -> dict[str, str]:
        """kid → stream secret (``stream_secret`` is kid ``"default"``)."""
        secrets = dict(self.stream_secrets or {})
        if self.stream_secret:
            secrets.setdefault("default", self.stream_secret)
        return secrets

    def weak_secrets(self) -> list[str]:
        """Key ids whose secret is shorter than 32 bytes (reported at startup)."""
        return [kid for kid, s in self.secrets().items() if len(s.encode()) < 32]

    def keyring(self) -> Keyring:
        """The stream :class:`Keyring` (primary = ``stream_secret_primary`` or the single secret)."""
        secrets = self.secrets()
        return Keyring(secrets, self.stream_secret_primary or next(iter(secrets)))


def _fail(path: str, reason: str) -> ConfigError:
    return ConfigError(f"{path}: {reason}")


def _check_base_url(path: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _fail(path, "is not a valid URL (host or port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(path, "must be an http(s)://host:port URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise _fail(path, "must be scheme://host:port only (no path, query or credentials)")


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
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name != CONFIG_PATH_ENV:
            key = name[len(ENV_PREFIX):].lower()
            try:
                data[key] = load_yaml(value)
            except ValueError:
                raise _fail(f"env {name}", "is not valid YAML") from None
    if env.get("POD_STREAM_SECRET"):
        data["stream_secret"] = env["POD_STREAM_SECRET"]
    try:
        check_known_keys(data, GatewayConfig)
        cfg = convert_config(data, GatewayConfig)
    except ConfigValueError as exc:
        raise _fail(exc.path, exc.reason) from None
    if not cfg.stream_secret and not cfg.stream_secrets:
        raise _fail("$.stream_secret", "required (or set env POD_STREAM_SECRET)")
    try:
        cfg.keyring()
    except ValueError as exc:
        raise _fail("$.stream_secret_primary", str(exc)) from None
    _check_base_url("$.public_base_url", cfg.public_base_url)
    for i, origin in enumerate(cfg.allowed_origins):
        try:
            parts = urlsplit(origin)
            parts.port  # noqa: B018
        except ValueError:
            parts = None
        if (origin == "*" or parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                or parts.path or parts.query or parts.fragment or parts.username):
            raise _fail(f"$.allowed_origins[{i}]", "must be an exact origin like https://portal.example.com")
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
                "upstream_connect_timeout", "upstream_read_timeout"):
        if getattr(cfg, key) <= 0:
            raise _fail(f"$.{key}", "must be > 0 seconds")
    for key in ("port", "pod_port"):
        if not 1 <= getattr(cfg, key) <= 65535:
            raise _fail(f"$.{key}", "must be 1-65535")
    if cfg.limit_concurrency < 16 or cfg.timeout_keep_alive < 1:
        raise _fail("$.limit_concurrency", "limit_concurrency must be >= 16 and timeout_keep_alive >= 1")
    if cfg.segment_max_age < 1:
        raise _fail("$.segment_max_age", "must be >= 1 second (and at least the playlist window)")
    if cfg.admin_token is not None and len(cfg.admin_token) < 16:
        raise _fail("$.admin_token", "must be at least 16 characters (it authorises nudges to every pod)")
    if cfg.grant_ttl < 10:
        raise _fail("$.grant_ttl", "must be >= 10 seconds (players fetch segments after the playlist)")
    if cfg.cache_max_bytes < 1024 * 1024:
        raise _fail("$.cache_max_bytes", "must be >= 1 MiB")
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
