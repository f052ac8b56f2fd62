#!/usr/bin/env python3
"""Benchmark: PlateBridge gateway (granian / uvicorn, 1 or 2 workers) vs Debian nginx on cache-hit segments.

    .venv/bin/python bench/gateway_vs_nginx.py [--duration 3] [--connections 10,100,500] [--repeat 2]
        [--servers nginx:1,granian:1,uvicorn:1,uvicorn-asyncio:1,nginx:2,granian:2,uvicorn:2]
        [--playlist-connections 100] [--profile granian:1,uvicorn:1] [--viewers 20]
        [--no-profile] [--no-control] [--no-docs | --docs FILE]

Everything runs on loopback, all servers at once (each on its own port; only the one under
load is busy):

* pod     — the real ``pod.hls_server.create_hls_app`` under uvicorn on 127.0.0.2 (its
            "tailnet" address), wrapped in a request counter (``GET /__bench/counts``), serving
            fake camera directories: one 125 KB and one 1 MB ``.m4s`` segment of random bytes,
            an init segment and a playlist (plus two small cameras for the fetch-count and
            split-connection checks);
* gateway — ``platebridge-gateway --server granian|uvicorn --loop uvloop|asyncio --workers N`` on
            127.0.0.1 (static discovery → the pod, access log off, log level WARNING); requests
            carry a ``pb_grant``;
* nginx   — ``nginx -p <tmp> -c <tmp>/nginx.conf -g 'daemon off;'`` with 1 or 2 worker
            processes, ``secure_link`` (md5 of expires + uri + secret) checked on every request,
            ``proxy_pass`` to the same pod with a gateway→pod JWT in ``Authorization``,
            ``proxy_cache`` + ``proxy_cache_lock on`` + ``proxy_cache_valid 200 10m``.
            Pod tokens live 60 s, so the config is rewritten with a fresh token and
            nginx reloaded (SIGHUP) before every nginx run.

Every gateway is warmed until the pod has served both segments (its workers share one host
store, so once per host) and then over new connections, so every worker has served them.
Then, per case (segment 125 KB / 1 MB, playlist) and connection count, ``wrk -t2 -c<N>
-d<duration>s --latency`` runs against every server, interleaved, ``--repeat`` times: the most
requests/s of the runs, and the median p50 and p99 (:func:`combine_runs` says why). A gateway
with N workers is compared with nginx with N workers (same CPU budget). The CPU used by the server's process group and by wrk is recorded
per run, and the server's accept queue is sampled (connections wrk opened that the server has
not accepted yet complete no request, so wrk's percentiles cannot show their wait). Two
functional checks per gateway: pod fetches per new segment when ``--viewers`` players ask for it
at once (one connection each), and how many segment requests fail when a player's playlist and
segment requests travel on different connections; and the fetch goal's matrix: granian
gateways with 1, 2 and 4 workers, 20, 100 and 500 players at once. A control serves the same 125 KB from a bare
ASGI app under each server (no gateway code). Then the gateways named by ``--profile`` are
sampled with py-spy during a short wrk run. The tables go to stdout and, with the profiles and
machine info, to ``docs/benchmarks.md`` — only its own "## Gateway vs nginx" section is
replaced; other sections of that file (e.g. bench/decisions.py's) are kept. All child
processes are stopped on exit, also on failure.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import splice_section  # noqa: E402
from deploy.dev.stack import free_port, wait_until  # noqa: E402
from gateway.nginxconf import KEEPALIVE_REQUESTS  # noqa: E402
from gateway.server import tmpfs_dir  # noqa: E402

VENV_BIN = Path(sys.executable).parent
POD_HOST = "127.0.0.2"
HOST = "127.0.0.1"
POD_ID = "bench-pod"
CAMERA_ID = "bench-cam"
FRESH_CAM = "bench-fresh"  # new segments for the pod-fetch count
SPLIT_CAM = "bench-split"  # playlist on one connection, segment on others
FRESH_SEGMENTS = [f"fresh_{i}.m4s" for i in range(4)]
#: the fetch-count matrix (issue 15 goal): gateways with these worker counts, these many players at once
FETCH_WORKERS = (1, 2, 4)
FETCH_VIEWERS = (20, 100, 500)


def fresh_names(tag: str) -> list[str]:
    """New segment names for one fetch check (each check needs segments no gateway has seen)."""
    return [f"fresh_{tag}_{i}.m4s" for i in range(4)]


def all_fresh_names() -> list[str]:
    return FRESH_SEGMENTS + [n for w in FETCH_WORKERS for v in FETCH_VIEWERS for n in fresh_names(f"w{w}v{v}")]
SPLIT_SEGMENT = "split.m4s"
SEGMENTS = {"125KB": ("seg_125k.m4s", 125 * 1024), "1MB": ("seg_1m.m4s", 1024 * 1024)}
PLAYLIST = "index.m3u8"
# issue 15: req/s ≥ 0.7 × nginx's on 125 KB hits and ≥ 0.9 × on 1 MB (geometric mean over the
# connection counts), p99 ≤ 2 × nginx's in every cell; the default server's p99 ≤ 2 × at ≥ 100 connections
GOAL_RATIO = {"125KB": 0.7, "1MB": 0.9}
GOAL_P99 = 2.0
CHOICE_MIN_CONNECTIONS = 100  # the server-choice goal looks at the cells with this many connections or more
MAX_WRK_SECONDS = 10
NGINX_WORKER_CONNECTIONS = 4096
DEFAULT_SERVERS = "nginx:1,granian:1,uvicorn:1,uvicorn-asyncio:1,dataplane:1,nginx:2,granian:2,uvicorn:2,dataplane:2"
# the gateway's default setup (gateway/dataplane.py): data_plane auto, which with nginx and its Lua
# module installed (setup.sh, the container, the systemd install) runs nginx in front of granian, one
# worker per CPU each; this bench measures up to 2 workers (the goal is set for 2), so on a
# bigger box the default row is 2w
DEFAULT_SERVER = ("dataplane", max(1, min(2, os.cpu_count() or 1)))
#: the ASGI server behind it (gateway/server.py), picked among the Python servers by pick_server
DEFAULT_APP_SERVER = "granian"
DOCS = Path(os.environ.get("PB_BENCH_DOCS") or ROOT / "docs" / "benchmarks.md")  # env: write elsewhere (trial runs)
LOADAVG_AT_START = "?"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- pod child
class CountingApp:
    """ASGI wrapper for the bench pod: counts requests per path; ``GET /__bench/counts`` returns them."""

    def __init__(self, app) -> None:
        self.app = app
        self.counts: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/__bench/counts":
                body = json.dumps(self.counts).encode()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            self.counts[scope["path"]] += 1
        await self.app(scope, receive, send)


def serve_pod(directory: str, port: int) -> None:
    """Run the real pod HLS app (child process entry; secret from env PB_BENCH_SECRET)."""
    import uvicorn

    from pod.hls_server import create_hls_app
    from protocol.tokens import Keyring

    streamers = {cam: SimpleNamespace(dir=Path(directory) / cam, packaged=False, status=lambda: {"state": "running"})
                 for cam in (CAMERA_ID, FRESH_CAM, SPLIT_CAM)}
    app = create_hls_app(pod_id=POD_ID, token_keys=[Keyring.single(os.environ["PB_BENCH_SECRET"])],
                         streamers=streamers, tailnet_host=POD_HOST)
    uvicorn.run(CountingApp(app), host=POD_HOST, port=port, loop="uvloop", http="httptools", access_log=False,
                log_config=None, log_level="warning")


_PLAIN_BODY = os.urandom(SEGMENTS["125KB"][1])
_PLAIN_HEADERS = [(b"content-type", b"video/iso.segment"), (b"content-length", str(len(_PLAIN_BODY)).encode())]


async def plain_app(scope, receive, send) -> None:
    """The control's bare ASGI app: every request answered with the same 125 KiB body."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _PLAIN_HEADERS})
    await send({"type": "http.response.body", "body": _PLAIN_BODY})


def serve_plain(port: int, variant: str) -> None:
    """Control (child process entry): :func:`plain_app` — no gateway code at all — under
    ``variant``, one of :data:`CONTROLS` (uvicorn with httptools on uvloop or asyncio, or granian)."""
    server, _, loop = variant.partition("+")
    if server == "granian":
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops

        Granian("bench.gateway_vs_nginx:plain_app", address=HOST, port=port, interface=Interfaces.ASGI,
                loop=Loops(loop), http=HTTPModes.http1, websockets=False, backlog=2048, backpressure=4096,
                log_enabled=False).serve()
        return
    import uvicorn

    uvicorn.run(plain_app, host=HOST, port=port, loop=loop, http="httptools", access_log=False, log_config=None,
                log_level="warning", lifespan="off", backlog=2048)


# ---------------------------------------------------------------------------- processes
class Procs:
    """Children started here; each in its own session so stop() reaches its workers too."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.items: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``args`` in a new session, output to ``<workdir>/<name>.log``."""
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=ROOT, start_new_session=True)
        log.close()
        self.items[name] = p
        return p

    def log_tail(self, name: str, n: int = 20) -> str:
        """The last ``n`` lines of a child's log."""
        with contextlib.suppress(OSError):
            return "\n".join((self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one child and everything in its process group."""
        p = self.items.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)  # the group of this child only (its own session)
            try:
                p.wait(8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        # leftovers in the group (nginx or gateway workers after a master crash)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop every child started here."""
        for name in list(self.items):
            self.stop(name)


def child_env(**extra: str) -> dict[str, str]:
    """This environment without PlateBridge settings or proxies, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PLATEBRIDGE_") and k != "POD_STREAM_SECRET"
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(extra)
    return env


def http_get(url: str, **kw) -> httpx.Response:
    """One GET on a new connection."""
    with httpx.Client(trust_env=False, timeout=5.0) as c:
        return c.get(url, **kw)


# ---------------------------------------------------------------------------- CPU accounting
def group_cpu(pgid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every live process in process group ``pgid``, by pid."""
    out: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # fields[0] is state; pgrp is field 5 of the full line
            out[int(d)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def groups_cpu(pgids: tuple[int, ...]) -> dict[int, float]:
    """:func:`group_cpu` of several process groups, by pid."""
    out: dict[int, float] = {}
    for pgid in pgids:
        out.update(group_cpu(pgid))
    return out


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (all CPUs, from /proc/stat)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuMeter:
    """CPU used during one interval by some process groups, this process's waited-for
    children (wrk) and the whole machine; :meth:`stop` returns cores (seconds per second)."""

    def __init__(self, groups: dict[str, tuple[int, ...]]) -> None:
        self.groups = groups
        self.t0 = time.monotonic()
        self.g0 = {name: groups_cpu(pgids) for name, pgids in groups.items()}
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.c0 = ru.ru_utime + ru.ru_stime
        self.m0 = machine_busy()

    def stop(self) -> dict[str, float]:
        """Cores used per group, by ``children`` (wrk), ``machine`` and ``other`` (the rest of the box)."""
        wall = max(time.monotonic() - self.t0, 1e-6)
        out: dict[str, float] = {}
        for name, pgids in self.groups.items():
            now, before = groups_cpu(pgids), self.g0[name]
            out[name] = sum(now[p] - before.get(p, 0.0) for p in now) / wall  # new pids count from 0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["children"] = (ru.ru_utime + ru.ru_stime - self.c0) / wall
        out["machine"] = (machine_busy() - self.m0) / wall
        out["other"] = max(0.0, out["machine"] - out["children"] - sum(out[n] for n in self.groups))
        return out


# ---------------------------------------------------------------------------- fixtures
def _write_camera(base: Path, camera: str, segments: list[tuple[str, int]]) -> Path:
    d = base / camera
    d.mkdir(parents=True)
    (d / "init.mp4").write_bytes(os.urandom(1024))
    for name, size in segments:
        (d / name).write_bytes(os.urandom(size))
    return d


def make_pod_dir(base: Path) -> Path:
    """The pod's camera directories under ``base/hls``; returns that directory."""
    root = base / "hls"
    d = _write_camera(root, CAMERA_ID, list(SEGMENTS.values()))
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0",
             '#EXT-X-MAP:URI="init.mp4"']
    for i in range(3):
        for name, _ in SEGMENTS.values():
            lines += ["#EXTINF:2.000,", name if i == 0 else name.replace(".m4s", f"_{i}.m4s")]
    (d / PLAYLIST).write_text("\n".join(lines) + "\n")
    for camera, names in ((FRESH_CAM, all_fresh_names()), (SPLIT_CAM, [SPLIT_SEGMENT])):
        d = _write_camera(root, camera, [(n, 125 * 1024) for n in names])
        lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0",
                 '#EXT-X-MAP:URI="init.mp4"']
        for n in names:
            lines += ["#EXTINF:2.000,", n]
        (d / PLAYLIST).write_text("\n".join(lines) + "\n")
    return root


def pod_counts(pod_port: int) -> collections.Counter[str]:
    """Requests the pod has answered so far, per path."""
    return collections.Counter(http_get(f"http://{POD_HOST}:{pod_port}/__bench/counts").json())


#: main context and http tuning of the nginx baseline (the data plane's own, gateway/dataplane.py and
#: gateway/nginxconf.py, matches it: the same socket, accept and keep-alive settings); ``{head}`` opens the
#: main context, ``{http}`` ends the http one
NGINX_MAIN = """\
# generated by bench/gateway_vs_nginx.py
{head}worker_processes {workers};
worker_cpu_affinity auto;  # as the data plane: each worker bound to its own CPU
worker_rlimit_nofile {nofile};
{user_line}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections {worker_connections}; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush off;  # on (TCP_CORK) showed 20-40 ms delayed-ACK stalls on loopback
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests {keepalive_requests};
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
{http}}}
"""

NGINX_CONF = NGINX_MAIN.replace("{head}", "").replace("{http}", """\
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=hls:10m max_size=256m inactive=10m use_temp_path=off;
    upstream pod {{
        server {pod_host}:{pod_port};
        keepalive 32;
    }}
    server {{
        listen {host}:{port} backlog=4096 reuseport;
        # playlists: no cache (the pod says no-cache; players reload them)
        location ~ ^/streams/[A-Za-z0-9][A-Za-z0-9_.-]*/[^/]+\\.m3u8$ {{
{auth}
            proxy_cache off;
        }}
        location ~ ^/streams/[A-Za-z0-9][A-Za-z0-9_.-]*/[^/]+$ {{
{auth}
            proxy_cache hls;
            proxy_cache_key $uri;
            proxy_cache_lock on;
            proxy_cache_valid 200 10m;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
        location / {{ return 404; }}
    }}
""")

NGINX_AUTH = """\
            secure_link $arg_md5,$arg_expires;
            secure_link_md5 "$secure_link_expires$uri {secret}";
            if ($secure_link = "") {{ return 403; }}
            if ($secure_link = "0") {{ return 410; }}
            rewrite ^/streams/(.*)$ /cameras/$1 break;
            proxy_pass http://pod;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {pod_token}";"""


def secure_link(uri: str, secret: str, expires: int) -> str:
    """``uri`` with nginx ``secure_link`` query parameters (md5 of expires + uri + secret)."""
    digest = hashlib.md5(f"{expires}{uri} {secret}".encode()).digest()  # noqa: S324 - nginx secure_link
    return f"{uri}?md5={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}&expires={expires}"


class Nginx:
    """One nginx instance (own prefix, cache and port) in front of the pod."""

    def __init__(self, procs: Procs, tmp: Path, name: str, port: int, pod_port: int, secret: str, workers: int) -> None:
        self.procs, self.tmp, self.name, self.port, self.pod_port, self.secret = procs, tmp, name, port, pod_port, secret
        self.workers = workers
        self.conf = tmp / "nginx.conf"
        self.popen: subprocess.Popen | None = None

    def write_conf(self) -> None:
        """Write nginx.conf with a freshly minted pod token."""
        from protocol.tokens import Keyring, mint_pod_token

        token = mint_pod_token(Keyring.single(self.secret), camera_id=CAMERA_ID, pod_id=POD_ID, ttl=60)
        auth = NGINX_AUTH.format(secret=self.secret, pod_token=token)
        # as root, nginx would switch workers to "nobody", who cannot use our 0700 temp dir
        user_line = "user root root;" if os.geteuid() == 0 else ""
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.conf.write_text(NGINX_CONF.format(
            workers=self.workers, nofile=nofile, worker_connections=NGINX_WORKER_CONNECTIONS, user_line=user_line,
            tmp=self.tmp, pod_host=POD_HOST, pod_port=self.pod_port, host=HOST, port=self.port, auth=auth,
            keepalive_requests=KEEPALIVE_REQUESTS))
        self.conf.chmod(0o600)

    def start(self) -> subprocess.Popen:
        """Start nginx (foreground master) and wait until it proxies with a fresh token."""
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        self.write_conf()
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.popen = self.procs.spawn(self.name, [nginx, "-p", str(self.tmp), "-e", str(self.tmp / "nginx-error.log"),
                                                  "-c", str(self.conf), "-g", "daemon off;"])
        self._wait_fresh_token()
        return self.popen

    def refresh_token(self) -> None:
        """Re-mint the pod token (60 s life) and reload nginx; wait until it is in effect."""
        self.write_conf()
        assert self.popen is not None
        self.popen.send_signal(signal.SIGHUP)
        self._wait_fresh_token()

    def _wait_fresh_token(self) -> None:
        # an uncached upstream request must succeed with the new config; a probe query
        # string that no wrk run uses makes sure the request reaches the pod
        marker = secrets.token_hex(4)
        url = self.url(PLAYLIST)

        def ok() -> bool:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n" + self.procs.log_tail(self.name)
                                   + "\n" + (self.tmp / "nginx-error.log").read_text(errors="replace")[-2000:])
            return http_get(url + "&probe=" + marker).status_code == 200

        wait_until(ok, 15, 0.1, f"{self.name} to answer with a fresh pod token")
        time.sleep(0.3)  # let old workers (old token) finish their graceful shutdown

    def url(self, name: str) -> str:
        """A secure-link URL of ``name`` in the bench camera, valid for an hour."""
        return f"http://{HOST}:{self.port}" + secure_link(f"/streams/{CAMERA_ID}/{name}", self.secret,
                                                           int(time.time()) + 3600)


@dataclass
class Server:
    """One server under test: nginx or a gateway (uvicorn/granian) with ``workers`` processes."""

    kind: str
    workers: int
    port: int = 0
    popen: subprocess.Popen | None = None
    nginx: Nginx | None = None
    extra_groups: tuple[int, ...] = ()  # dataplane: nginx's process group (the gateway runs it)
    signer: Any = None  # gateway.grants.GrantSigner with the gateway's grant_secret
    grants: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        """(kind, workers)."""
        return self.kind, self.workers

    @property
    def label(self) -> str:
        """E.g. ``uvicorn 2w``."""
        return f"{self.kind} {self.workers}w"

    @property
    def is_nginx(self) -> bool:
        """True for nginx."""
        return self.kind == "nginx"

    @property
    def server(self) -> str:
        """The gateway's ``--server`` (uvicorn or granian; granian behind the data plane's nginx)."""
        return "granian" if self.kind == "dataplane" else self.kind.split("-")[0]

    @property
    def loop(self) -> str:
        """The gateway's ``--loop`` (uvloop unless the kind ends in ``-asyncio``)."""
        return "asyncio" if self.kind.endswith("-asyncio") else "uvloop"

    def url(self, name: str, camera: str = CAMERA_ID) -> str:
        """URL of ``name`` in ``camera`` through this server (grant or secure link included)."""
        if self.nginx is not None:
            return self.nginx.url(name)
        return f"http://{HOST}:{self.port}/streams/{camera}/{name}?pb_grant={self.grant(camera, name)}"

    def grant(self, camera: str, name: str) -> str:
        """The grant for exactly ``camera``/``name`` (grants are bound to their URI), minted once."""
        key = (camera, name)
        if key not in self.grants:
            from gateway.grants import Grant

            now = int(time.time())
            kind = "playlist" if name.split("?")[0].endswith(".m3u8") else "media"
            self.grants[key] = self.signer.mint(Grant(kind, POD_ID, now + 3600, now + 3600, b"bench-00"),
                                                camera_id=camera, path=name)
        return self.grants[key]


KINDS = ("nginx", "uvicorn", "uvicorn-asyncio", "granian", "granian-asyncio", "dataplane")


def parse_servers(text: str) -> list[tuple[str, int]]:
    """``nginx:1,uvicorn:2`` → ``[("nginx", 1), ("uvicorn", 2)]`` (workers default 1). Kinds: nginx,
    uvicorn, granian (both with uvloop), uvicorn-asyncio, granian-asyncio (standard asyncio loop),
    dataplane (the gateway's default: ``platebridge-gateway`` running its nginx data plane,
    gateway/dataplane.py: nginx with N workers serving kept segments, in front of N granian workers)."""
    out = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        kind, _, n = item.partition(":")
        if kind not in KINDS:
            raise SystemExit(f"--servers: unknown server {kind!r} ({', '.join(KINDS)})")
        workers = int(n or 1)
        if not 1 <= workers <= 8:
            raise SystemExit(f"--servers: {item}: workers must be 1-8")
        if (kind, workers) not in out:
            out.append((kind, workers))
    return out


# ---------------------------------------------------------------------------- wrk
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot parse latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, connections: int, duration: int, threads: int = 2) -> dict:
    """Run wrk once; requests/s, p50/p99 (ms), error count, transfer rate and raw output."""
    duration = max(1, min(int(duration), MAX_WRK_SECONDS))
    threads = min(threads, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 20, check=False)
    text = out.stdout
    if out.returncode != 0 or "Requests/sec" not in text:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or text}")
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", text).group(1))
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", text, re.MULTILINE).group(1))
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", text, re.MULTILINE).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    transfer = re.search(r"Transfer/sec:\s*([\d.]+)(\w+)", text)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors, "raw": text,
            "transfer": f"{transfer.group(1)}{transfer.group(2)}/s" if transfer else "?"}


def accept_queue(port: int) -> int | None:
    """Connections the kernel has completed but the server has not accepted yet, on the socket
    listening on ``HOST:port`` (``rx_queue`` of its LISTEN entry in /proc/net/tcp), or None."""
    addr = int.from_bytes(bytes(int(x) for x in HOST.split(".")), "little")
    local = f"{addr:08X}:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[1] == local and fields[3] == "0A":
                    return int(fields[4].split(":")[1], 16)
    except OSError:
        return None
    return None


class AcceptQueueMonitor:
    """Samples :func:`accept_queue` every ``interval`` s in a thread while a run lasts.

    wrk times a request from the moment it writes it, but a connection that was never accepted
    never completes one, so wrk's percentiles silently leave it out. wrk opens all its
    connections at once, so every server has a queue for a moment; ``late`` is the largest
    queue seen after ``grace`` s (connections that waited longer than that to be served at all)
    and ``seconds`` how long the queue stayed non-empty: they show what the p99 cannot."""

    def __init__(self, port: int, interval: float = 0.1, grace: float = 0.5) -> None:
        self.port, self.interval, self.grace = port, interval, grace
        self.max = 0
        self.late = 0
        self.nonempty = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            n = accept_queue(self.port) or 0
            self.max = max(self.max, n)
            if time.monotonic() - t0 >= self.grace:
                self.late = max(self.late, n)
            self.nonempty += n > 0
            self._stop.wait(self.interval)

    def __enter__(self) -> AcceptQueueMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def seconds(self) -> float:
        """Seconds (sampled) during which at least one connection waited to be accepted."""
        return self.nonempty * self.interval


def combine_runs(runs: list[dict]) -> dict:
    """One cell from the ``--repeat`` runs of one server: the run with the most requests/s, but
    with the median p50 and p99 (ms) over all runs (``p99_runs`` keeps each run's) and the most
    unaccepted connections any run saw.

    Why the median: on the 2-vCPU VM this runs on, one run's p99 is decided by a few stalls of
    30-80 ms that hit any server at random (the same nginx config, 16 runs of 4 s at c=100: p99
    from 1.8 to 35 ms). The run with the most requests/s is the one least disturbed, so its
    throughput is kept, while a p99 needs the middle of several runs: the same rule for nginx
    and every gateway."""
    out = dict(max(runs, key=lambda r: r["rps"]))
    for q in ("p50", "p99"):
        out[q] = statistics.median(r[q] for r in runs)
    out["p99_runs"] = [r["p99"] for r in runs]
    out["accept_late"] = max(r["accept_late"] for r in runs)
    out["accept_max"] = max(r["accept_max"] for r in runs)
    return out


def measured_wrk(srv: Server, url: str, connections: int, duration: int, pod_pgid: int) -> dict:
    """:func:`run_wrk` plus the cores used meanwhile by the server, wrk, the pod and the rest of the
    box, and the server's accept queue (:class:`AcceptQueueMonitor`)."""
    assert srv.popen is not None
    meter = CpuMeter({"server": (srv.popen.pid, *srv.extra_groups), "pod": (pod_pgid,)})
    with AcceptQueueMonitor(srv.port) as aq:
        result = run_wrk(url, connections, duration)
    cpu = meter.stop()
    result.update(cpu_server=cpu["server"], cpu_wrk=cpu["children"], cpu_pod=cpu["pod"], cpu_other=cpu["other"],
                  accept_max=aq.max, accept_late=aq.late, accept_seconds=aq.seconds)
    return result


# ---------------------------------------------------------------------------- gateway checks
def start_gateway(procs: Procs, srv: Server, cfg: Path, name: str | None = None) -> str:
    """Start ``platebridge-gateway`` for ``srv`` on a free port and wait for /healthz; returns
    its name among ``procs``."""
    srv.port = free_port(HOST)
    name = name or f"gateway-{srv.kind}-{srv.workers}w"
    srv.popen = procs.spawn(name, [str(VENV_BIN / "platebridge-gateway"), "--config", str(cfg), "--port", str(srv.port),
                                   "--server", srv.server, "--loop", srv.loop, "--workers", str(srv.workers)],
                        env=child_env())

    def up() -> bool:
        if srv.popen.poll() is not None:
            raise RuntimeError(f"{name} exited ({srv.popen.returncode}):\n{procs.log_tail(name)}")
        return http_get(f"http://{HOST}:{srv.port}/healthz").status_code == 200

    wait_until(up, 30, 0.1, name)
    return name


def start_dataplane(procs: Procs, srv: Server, base_cfg: str, tmp: Path) -> None:
    """``dataplane`` kind: the gateway's default setup, exactly as ``platebridge-gateway`` runs it
    (``data_plane: managed``, which ``auto`` picks when nginx and its Lua module are installed): the gateway
    starts nginx with its data-plane config in front of its granian workers, ``srv.workers`` of
    each. ``srv.port`` is nginx's, ``srv.popen`` the gateway; the server's CPU is both process
    groups' (the gateway's and nginx's own)."""
    name = f"dataplane-{srv.workers}w"
    d = tmp / name
    d.mkdir(mode=0o700)
    cfg = d / "gateway.yaml"
    cfg.write_text(base_cfg.replace("data_plane: gateway\n", "") +
                   f"data_plane: managed\ninternal_port: {free_port(HOST)}\n")
    cfg.chmod(0o600)
    start_gateway(procs, srv, cfg, name=name)
    assert srv.popen is not None
    masters = [pid for pid in children_of(srv.popen.pid) if cmdline(pid).startswith("nginx: master")]
    if len(masters) != 1:
        raise RuntimeError(f"{name}: the gateway did not start its nginx:\n{procs.log_tail(name)}")
    srv.extra_groups = (masters[0],)  # nginx runs in its own process group


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
    return out


def cmdline(pid: int) -> str:
    """``/proc/<pid>/cmdline`` with spaces ("" once the process is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def served_by_dataplane_nginx(srv: Server) -> bool:
    """Whether the data plane's nginx, not the gateway, answers the kept 125 KB segment: nginx's
    own file responses carry ``Last-Modified`` (the file's mtime); the gateway sends none."""
    r = http_get(srv.url(SEGMENTS["125KB"][0]))
    return r.status_code == 200 and "last-modified" in r.headers


def warm_gateway(srv: Server, pod_port: int) -> int:
    """Load the playlist and both segments over new connections until the pod has served each
    segment (the workers share one host store: one fetch per host), then as many more rounds
    over new connections as every worker needs to have served them; returns the pod fetches."""
    before = pod_counts(pod_port)
    paths = [f"/cameras/{CAMERA_ID}/{name}" for name, _ in SEGMENTS.values()]
    for _ in range(40):
        if http_get(srv.url(PLAYLIST)).status_code != 200:
            raise RuntimeError(f"{srv.label}: playlist not served")
        for label, (name, size) in SEGMENTS.items():
            r = http_get(srv.url(name))
            if r.status_code == 200 and len(r.content) != size:
                raise RuntimeError(f"{srv.label} {label}: {len(r.content)} bytes, expected {size}")
        now = pod_counts(pod_port)
        if all(now[p] - before[p] >= 1 for p in paths):
            break
    else:
        raise RuntimeError(f"{srv.label}: the segments were never fetched")
    for _ in range(8 * srv.workers):  # every new connection, whichever worker takes it, is served
        for label, (name, size) in SEGMENTS.items():
            r = http_get(srv.url(name))
            if r.status_code != 200 or len(r.content) != size:
                raise RuntimeError(f"{srv.label} {label}: HTTP {r.status_code}, {len(r.content)} bytes: {r.text[:200]}")
    now = pod_counts(pod_port)
    return sum(now[p] - before[p] for p in paths)


def fetch_check(srv: Server, pod_port: int, viewers: int, names: list[str] = FRESH_SEGMENTS) -> dict:
    """``viewers`` players (one keep-alive connection each) load the FRESH_CAM playlist, then ask
    for the same new segments ``names`` at the same moment: pod fetches per segment. Then one
    connection loads the SPLIT_CAM playlist and ``viewers`` new connections ask for its segment
    (a player whose playlist and segment requests use different connections): how many are
    refused."""
    before = pod_counts(pod_port)
    barrier = threading.Barrier(viewers)
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def viewer() -> None:
        codes = []
        with httpx.Client(trust_env=False, timeout=10.0, limits=httpx.Limits(max_connections=1)) as c:
            codes.append(c.get(srv.url(PLAYLIST, FRESH_CAM)).status_code)
            barrier.wait(10)
            for name in names:
                codes.append(c.get(srv.url(name, FRESH_CAM)).status_code)
        with lock:
            statuses.update(codes)

    threads = [threading.Thread(target=viewer) for _ in range(viewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = pod_counts(pod_port)
    fetches = [after[f"/cameras/{FRESH_CAM}/{n}"] - before[f"/cameras/{FRESH_CAM}/{n}"] for n in names]
    if http_get(srv.url(PLAYLIST, SPLIT_CAM)).status_code != 200:
        raise RuntimeError(f"{srv.label}: split playlist not served")
    split = collections.Counter(http_get(srv.url(SPLIT_SEGMENT, SPLIT_CAM)).status_code for _ in range(viewers))
    return {"fetches": fetches, "viewer_status": dict(statuses), "split": dict(split), "viewers": viewers,
            "segments": len(names)}


def fetch_matrix(procs: Procs, cfg: Path, pod_port: int, signer) -> list[dict]:
    """The issue-15 fetch goal: a granian gateway with each of :data:`FETCH_WORKERS` worker
    counts (started for this, stopped after), :data:`FETCH_VIEWERS` players at once on new
    segments each time; one row per (workers, viewers)."""
    rows = []
    for w in FETCH_WORKERS:
        srv = Server("granian", w)
        srv.signer = signer
        name = start_gateway(procs, srv, cfg, name=f"fetch-check-granian-{w}w")
        try:
            for v in FETCH_VIEWERS:
                chk = fetch_check(srv, pod_port, v, fresh_names(f"w{w}v{v}"))
                rows.append({"workers": w, **chk})
                print(f"  fetch check granian {w}w, {v} viewers: pod fetches per new segment {chk['fetches']}, "
                      f"split-connection statuses {chk['split']}", flush=True)
        finally:
            procs.stop(name)
    return rows


# ---------------------------------------------------------------------------- profile
def _category(frame: str) -> str:
    f = frame.lower()
    for key, cat in (("gateway/proxy", "gateway proxy (gateway/proxy.py)"),
                     ("gateway/cache", "segment cache / Flight (gateway/cache.py)"),
                     ("grants", "grant verify (HMAC, base64, msgspec)"), ("hmac", "grant verify (HMAC, base64, msgspec)"),
                     ("base64", "grant verify (HMAC, base64, msgspec)"),
                     ("prometheus_client", "Prometheus metrics (labels/inc)"),
                     ("litestar", "Litestar routing / mount / scope copy"),
                     ("selectorsockettransport.write", "socket write (asyncio transport.write → send(): the kernel "
                                                      "copies the body)"),
                     ("uvicorn", "uvicorn HTTP protocol (httptools parse, response framing; with uvloop also "
                                 "transport.write, whose C code py-spy counts here)"),
                     ("granian/server", "granian's Rust HTTP runtime thread (parsing, socket writes; sampled "
                                        "under its Python entry frame)"),
                     ("granian", "granian ASGI glue (Python side)"),
                     ("asyncio", "asyncio / uvloop event loop"), ("uvloop", "asyncio / uvloop event loop"),
                     ("httpx/", "httpx (upstream client)"),
                     ("urllib/parse", "urllib.parse (unquote)"), ("protocol/", "protocol helpers (paths, ids)")):
        if key in f:
            return cat
    return "other"


def summarise_profile(raw_file: Path, top: int = 12) -> dict:
    """Parse py-spy ``--format raw`` (collapsed stacks) into self/inclusive tables."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    cats: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if "(" in f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        self_t[leaf] += n
        # attribute the sample to the innermost frame that belongs to a known category
        for fr in reversed(frames):
            cat = _category(fr)
            if cat != "other":
                cats[cat] += n
                break
        else:
            cats["other"] += n
        for fr in set(frames):
            incl[fr] += n
    return {"total": total, "self": self_t.most_common(top), "cats": cats.most_common(),
            "incl": [(f, n) for f, n in incl.most_common(60) if "gateway/" in f][:top]}


def _short(frame: str) -> str:
    func, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in loc:
            loc = loc.split(marker, 1)[1]
    return f"{func} ({loc})"


def profile_gateway(gw_pid: int, url: str, duration: int, connections: int, out: Path) -> tuple[dict | None, str]:
    """Sample the gateway (and its worker processes) with py-spy during a wrk run."""
    spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if not spy:
        return None, "py-spy is not installed (`.venv/bin/pip install py-spy`)"
    duration = max(1, min(duration, MAX_WRK_SECONDS))
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115
    p = subprocess.Popen([spy, "record", "--pid", str(gw_pid), "--subprocesses", "--duration", str(duration + 1),
                          "--rate", "250", "--function", "--nonblocking", "--format", "raw", "-o", str(out)],
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        time.sleep(0.7)
        if p.poll() is not None:
            return None, "py-spy could not attach: " + out.with_suffix(".log").read_text(errors="replace")[-500:]
        result = run_wrk(url, connections, duration)
        p.wait(duration + 30)
    finally:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            p.wait(10)
    if not out.exists() or out.stat().st_size == 0:
        return None, "py-spy produced no samples: " + out.with_suffix(".log").read_text(errors="replace")[-500:]
    prof = summarise_profile(out)
    prof["rps_under_profiler"] = result["rps"]
    return prof, ""


# ---------------------------------------------------------------------------- analysis
@dataclass
class Case:
    """One wrk target: a segment (``size`` 125KB or 1MB) or the playlist at one connection count."""

    label: str
    name: str
    connections: int
    segment: bool
    size: str = ""


def reference(servers: list[Server], srv: Server) -> Server | None:
    """The nginx a gateway is compared with: same worker count if measured, else the first nginx."""
    nginxes = [s for s in servers if s.is_nginx]
    same = [s for s in nginxes if s.workers == srv.workers]
    return (same or nginxes or [None])[0]


def geomean(xs: list[float]) -> float:
    """Geometric mean (nan for an empty list)."""
    xs = [x for x in xs if x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def unserved(r: dict) -> bool:
    """A run whose p99 leaves out connections: some waited more than the monitor's grace to be
    accepted (:class:`AcceptQueueMonitor`), or wrk counted errors (timeouts, refused)."""
    return r.get("accept_late", 0) > 0 or r["errors"] > 0


def p99_ok(g: dict, n: dict) -> bool:
    """The p99 goal for one cell: ≤ GOAL_P99 × nginx's, and every connection served."""
    return g["p99"] <= GOAL_P99 * max(n["p99"], 0.001) and not unserved(g)


def summarise(servers: list[Server], cases: list[Case], results: dict, checks: dict) -> list[dict]:
    """Per gateway: segment req/s ratios to its nginx (geometric mean per segment size, over the
    connection counts), p99 ratios per cell, the issue-15 goal verdicts, fetch and split checks."""
    out = []
    for srv in servers:
        if srv.is_nginx:
            continue
        ref = reference(servers, srv)
        by_size: dict[str, list[float]] = {}
        p99_r, rps, choice_cells = [], [], []
        errors = late = 0
        p99_met = n_p99_met = n_cells = 0
        for case in cases:
            g = results[case.label][srv.key]
            errors += g["errors"]
            if not case.segment:
                continue
            rps.append(g["rps"])
            late = max(late, g.get("accept_late", 0))
            if ref is None:
                continue
            n = results[case.label][ref.key]
            by_size.setdefault(case.size, []).append(g["rps"] / n["rps"])
            p99_r.append(g["p99"] / max(n["p99"], 0.001))
            n_cells += 1
            n_p99_met += p99_ok(g, n)
            if case.connections >= CHOICE_MIN_CONNECTIONS:
                choice_cells.append((g["p99"] / max(n["p99"], 0.001), p99_ok(g, n)))
        p99_met = n_cells > 0 and n_p99_met == n_cells
        geo = {size: geomean(r) for size, r in by_size.items()}
        out.append({
            "server": srv, "ref": ref, "geo_by_size": geo,
            "rps_met": bool(geo) and all(geo[size] >= GOAL_RATIO.get(size, 0) for size in geo),
            "max_p99": max(p99_r, default=float("nan")), "geo_p99": geomean(p99_r), "geo_rps": geomean(rps),
            "p99_met": p99_met, "n_p99_met": n_p99_met, "n_cases": n_cells, "errors": errors, "accept_late": late,
            "choice_max_p99": max((r for r, _ in choice_cells), default=float("nan")),
            "choice_met": bool(choice_cells) and all(ok for _, ok in choice_cells), "choice_cells": len(choice_cells),
            "check": checks.get(srv.key),
        })
    return out


def compare(results: dict, cases: list[Case], a: tuple[str, int], b: tuple[str, int]) -> dict:
    """Segment cases: geometric-mean req/s and p99 of ``a`` relative to ``b``, and how many cases ``a`` won."""
    rps = [results[c.label][a]["rps"] / results[c.label][b]["rps"] for c in cases if c.segment]
    p99 = [results[c.label][a]["p99"] / max(results[c.label][b]["p99"], 0.001) for c in cases if c.segment]
    return {"rps": geomean(rps), "p99": geomean(p99), "wins": sum(r > 1 for r in rps), "n": len(rps)}


def pick_server(summary: list[dict]) -> tuple[tuple[str, int] | None, bool]:
    """The one-worker setup the server-choice goal picks: among those whose p99 is ≤ GOAL_P99 ×
    nginx's in every segment cell with ≥ CHOICE_MIN_CONNECTIONS connections (and every connection
    served), the one with the most req/s (geometric mean); if none meets it, the one with the
    smallest worst p99 ratio in those cells. Returns (kind, workers) and whether the goal was met."""
    # the data plane is nginx serving hits in front of the default server, not a server choice
    ones = [s for s in summary if s["server"].workers == 1 and s["choice_cells"] and s["server"].kind != "dataplane"]
    if not ones:
        return None, False
    met = [s for s in ones if s["choice_met"]]
    if met:
        return max(met, key=lambda s: s["geo_rps"])["server"].key, True
    return min(ones, key=lambda s: (s["accept_late"] > 0, s["choice_max_p99"]))["server"].key, False


def recommend(summary: list[dict], results: dict, cases: list[Case]) -> tuple[str, list[str]]:
    """What this run says about the server choice (short verdict, reasons): the pick of
    :func:`pick_server` against the configured default, and the several-worker caveats."""
    by_key = {s["server"].key: s for s in summary}
    default = by_key.get(DEFAULT_SERVER)
    reasons: list[str] = []
    pick, met = pick_server(summary)
    for s in summary:
        if s["server"].workers != 1:
            continue
        cells = f"p99 at ≥ {CHOICE_MIN_CONNECTIONS} connections up to {s['choice_max_p99']:.1f}× nginx's"
        late = (f"; up to {s['accept_late']} connections waited > 0.5 s to be accepted (their requests are "
                "missing from wrk's percentiles)" if s["accept_late"] else "")
        vs = ""
        if default is not None and s is not default:
            c = compare(results, cases, s["server"].key, DEFAULT_SERVER)
            vs = f"; vs {default['server'].label}: {c['rps']:.2f}× the req/s, {c['p99']:.2f}× the p99 (geometric means)"
        reasons.append(f"{s['server'].label}: {cells} ({'goal met' if s['choice_met'] else 'goal NOT met'}){late}{vs}.")
    for s in summary:
        if s["server"].workers == 1:
            continue
        one = by_key.get((s["server"].kind, 1))
        chk = s["check"] or {}
        fetches = chk.get("fetches") or [float("nan")]
        split = chk.get("split") or {}
        refused = sum(v for k, v in split.items() if k != 200)
        gain = ""
        if one is not None:
            c = compare(results, cases, s["server"].key, one["server"].key)
            gain = (f"{c['rps']:.2f}× the req/s of {one['server'].label} (faster in {c['wins']} of {c['n']} segment "
                    f"cases), {c['p99']:.2f}× the p99, ")
        reasons.append(
            f"{s['server'].label}: {gain}up to {max(fetches):.0f} pod fetches per new segment "
            f"(mean {sum(fetches) / len(fetches):.1f}) and {refused} of {sum(split.values())} segment requests "
            "refused when a player's playlist and segment requests use different connections.")
    if pick is None:
        return "no one-worker gateway was measured", reasons
    kind, workers = pick
    label = f"{kind} {workers}w"
    goal = (f"p99 ≤ {GOAL_P99:g}× nginx's at ≥ {CHOICE_MIN_CONNECTIONS} connections with every connection served"
            if met else f"no Python server alone met p99 ≤ {GOAL_P99:g}× nginx's at ≥ {CHOICE_MIN_CONNECTIONS} "
            f"connections, {label} came closest")
    if kind == DEFAULT_APP_SERVER:
        verdict = (f"{kind}, the ASGI server behind the default data plane ({label}: {goal}; the default runs "
                   "one worker per CPU)")
    else:
        verdict = (f"{label} ({goal}) rather than {DEFAULT_APP_SERVER} behind the default data plane; one run on a "
                   "shared machine is not enough to change the default: repeat it on a quiet one")
    return verdict, reasons


# ---------------------------------------------------------------------------- reporting
def machine_info() -> dict[str, str]:
    """CPU, kernel, versions and limits of this machine for the report."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_v = (wrk_v.stdout + wrk_v.stderr).split("\n")[0].split(" [")[0].replace("wrk ", "")
    pkgs = {}
    for name in ("litestar", "uvicorn", "granian", "uvloop", "httptools", "httpx"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version
            pkgs[name] = version(name)
    somaxconn = "?"
    with contextlib.suppress(OSError):
        somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "loadavg": LOADAVG_AT_START, "kernel": platform.release(),
            "python": platform.python_version(), "nginx": nginx_v, "wrk": wrk_v,
            "packages": ", ".join(f"{k} {v}" for k, v in pkgs.items()),
            "nofile": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]), "somaxconn": somaxconn,
            "nice": str(os.nice(0))}


def _cols(servers: list[Server]) -> list[Server]:
    return sorted(servers, key=lambda s: (s.workers, not s.is_nginx, servers.index(s)))


def fmt_tables(servers: list[Server], cases: list[Case], results: dict) -> dict[str, list[str]]:
    """Markdown tables: throughput, latency and CPU, one row per case, one column per server."""
    cols = _cols(servers)
    head = "| case | c | " + " | ".join(s.label for s in cols) + " |"
    sep = "|---|---|" + "|".join("---" for _ in cols) + "|"
    tables: dict[str, list[str]] = {"rps": [head, sep], "lat": [head, sep], "cpu": [head, sep]}
    for case in cases:
        cells: dict[str, list[str]] = {"rps": [], "lat": [], "cpu": []}
        for s in cols:
            r = results[case.label][s.key]
            ref = None if s.is_nginx else reference(servers, s)
            n = results[case.label][ref.key] if ref is not None else None
            err = f" ⚠ {r['errors']} errors" if r["errors"] else ""
            if r.get("accept_late"):
                err += f" ⚠ {r['accept_late']} unaccepted after 0.5 s"
            rps = f"{r['rps']:,.0f}"
            lat = f"{r['p50']:.1f} / {r['p99']:.1f}"
            if n is not None:
                rps += f" ({r['rps'] / n['rps']:.2f}×)"
                lat += f" ({r['p99'] / max(n['p99'], 0.001):.1f}×)"
            cells["rps"].append(rps + err)
            cells["lat"].append(lat + err)
            cells["cpu"].append(f"{r['cpu_server']:.2f} / {r['cpu_wrk']:.2f}"
                                + (f" / pod {r['cpu_pod']:.2f}" if r["cpu_pod"] >= 0.05 else "")
                                + f" (+{r['cpu_other']:.2f})")
        what = case.label.rsplit(",", 1)[0]
        for k in tables:
            tables[k].append(f"| {what} | {case.connections} | " + " | ".join(cells[k]) + " |")
    return tables


def fmt_summary(summary: list[dict]) -> list[str]:
    """Markdown table: one row per gateway server/worker choice."""
    sizes = list(SEGMENTS)
    out = ["| gateway | compared with | "
           + " | ".join(f"req/s ratio {size} (geo-mean; goal ≥ {GOAL_RATIO[size]}×)" for size in sizes)
           + f" | p99 ratio: highest (geo-mean) | goal p99 ≤ {GOAL_P99:g}× in every cell | server-choice goal: "
           f"p99 ≤ {GOAL_P99:g}× at c ≥ {CHOICE_MIN_CONNECTIONS} | connections left unaccepted > 0.5 s (max) "
           "| pod fetches per new segment | segment requests refused, playlist on another connection |",
           "|---|---|" + "---|" * len(sizes) + "---|---|---|---|---|---|"]
    for s in summary:
        chk = s["check"] or {}
        fetches = chk.get("fetches") or []
        split = chk.get("split") or {}
        refused = sum(v for k, v in split.items() if k != 200)
        codes = ", ".join(f"{v}× {k}" for k, v in sorted(split.items(), key=lambda kv: -kv[1]) if k != 200)
        fetch_txt = (f"{sum(fetches) / len(fetches):.2f} (max {max(fetches)}; {chk['viewers']} viewers at once)"
                     if fetches else "–")
        ratios = " | ".join(
            (f"{s['geo_by_size'][size]:.2f}× ({'met' if s['geo_by_size'][size] >= GOAL_RATIO[size] else 'NOT met'})"
             if size in s["geo_by_size"] else "–") for size in sizes)
        out.append(
            f"| {s['server'].label} | {s['ref'].label if s['ref'] else '–'} | {ratios} "
            f"| {s['max_p99']:.1f}× ({s['geo_p99']:.1f}×) "
            f"| {'met' if s['p99_met'] else 'NOT met'} ({s['n_p99_met']}/{s['n_cases']}) "
            f"| {'met' if s['choice_met'] else 'NOT met'} (up to {s['choice_max_p99']:.1f}×) "
            f"| {s['accept_late']} "
            f"| {fetch_txt} | {refused} of {sum(split.values())}{f' ({codes})' if codes else ''} |")
    return out


def print_report(servers, cases, results, summary) -> None:
    """Tables and verdicts to stdout."""
    t = fmt_tables(servers, cases, results)
    print("\nrequests/s (gateway: ratio to nginx with the same workers)")
    print("\n".join(t["rps"]))
    print("\np50 / p99 ms (gateway: p99 ratio)")
    print("\n".join(t["lat"]))
    print("\ncores used: server / wrk [/ pod] (+ rest of the machine)")
    print("\n".join(t["cpu"]))
    print()
    print("\n".join(fmt_summary(summary)))


CONTROLS = ("uvicorn+uvloop", "uvicorn+asyncio", "granian+uvloop")


def tail_shape(cell: dict, connections: int) -> float:
    """p99 ÷ mean latency of one wrk cell; the mean from Little's law (connections ÷ req/s), in ms."""
    mean_ms = 1000.0 * connections / max(cell["rps"], 1e-9)
    return cell["p99"] / mean_ms


def analysis(servers: list[Server], cases: list[Case], results: dict, summary: list[dict], controls: dict) -> list[str]:
    """The "Reading the numbers" part: fixed explanations plus the sentences that depend on this run."""
    by_key = {s["server"].key: s for s in summary}
    out = ["### Reading the numbers", "",
           "* Noise: wrk, the server under test and the pod share two CPUs, and during a run other work on the "
           "box competes too (the brackets in the CPU table). One cell can move by ±30 % between runs; compare "
           "within a row and prefer the geometric means in the summary. Runs are interleaved so slow phases of "
           "the box hit every server alike.",
           "* Same CPU budget: 1-worker gateways are compared with 1-worker nginx, 2-worker gateways with 2-worker "
           "nginx. granian runs its Rust HTTP/IO thread next to the Python thread, so its \"1 worker\" can use "
           "more than one core (CPU table).",
           "* Why nginx is ahead on small segments: nginx answers a hit in C with `sendfile` from its cache file; "
           "the gateway runs its per-request Python (path and grant checks, cache lookup, CORS, metrics) and then "
           "copies the body from memory into the socket. For 1 MB segments the copy dominates on both sides and "
           "the ratio is closer to 1; for 125 KB the fixed per-request cost weighs more.",
           "* Closed loop: wrk keeps every connection busy, so a server's mean latency is connections ÷ its "
           "requests/s (Little's law). At 500 connections a gateway at half nginx's requests/s has about twice "
           "nginx's mean latency, so its p99 ratio cannot be far below 2× unless its latencies are more even "
           "than nginx's: at high connection counts the p99 goal is also a throughput goal.",
           "* Unaccepted connections: wrk opens all its connections at once and times each request from the "
           "moment it writes it. A connection the server has not accepted yet completes no request, so its wait "
           "is missing from wrk's percentiles (it shows up only as fewer requests, or as a few very slow first "
           "requests). The accept queue of the listening socket is therefore sampled during every run "
           "(`/proc/net/tcp`); a cell marked \"unaccepted after 0.5 s\" had connections waiting longer than that "
           "to be served at all, and does not meet the p99 goal whatever its p99 says."]
    hi = [c for c in cases if c.segment and c.connections >= CHOICE_MIN_CONNECTIONS]
    uv = by_key.get(("uvicorn", 1))
    if uv is not None and uv["ref"] is not None:
        p99 = [results[c.label][("uvicorn", 1)]["p99"] / max(results[c.label][uv["ref"].key]["p99"], 0.001) for c in hi]
        late = [results[c.label][("uvicorn", 1)].get("accept_late", 0) for c in hi]
        out.append(
            f"* uvicorn with uvloop (the default before issue 15): p99 {', '.join(f'{x:.1f}×' for x in p99)} nginx's in "
            f"the segment cells with ≥ {CHOICE_MIN_CONNECTIONS} connections; up to {max(late, default=0)} connections "
            "still waiting to be accepted 0.5 s into a run. The cause is the accept loop, not the gateway: libuv "
            "(≥ 1.45, which uvloop bundles) accepts one connection per event-loop iteration (libuv/libuv#3696, "
            "\"unix: don't accept() connections in a loop\"), and under load each iteration serves hundreds of "
            "requests, so a burst of new connections drains from the kernel's accept queue a few at a time, over "
            "seconds; their first requests make the tail. asyncio's loop accepts up to `backlog` connections per "
            "wake-up and granian accepts on its own Rust thread, so neither has that queue. Any burst of new "
            "connections does the same in production (viewers reconnecting after a restart, a balancer "
            "re-spreading cameras).")
    shapes = []
    for s in summary:
        if s["server"].workers != 1 or s["ref"] is None:
            continue
        for key, label in ((s["ref"].key, s["ref"].label), (s["server"].key, s["server"].label)):
            vals = [tail_shape(results[c.label][key], c.connections) for c in hi if key in results[c.label]]
            if vals and label not in (x[0] for x in shapes):
                shapes.append((label, vals))
    if shapes:
        out.append(
            "* Tail shape, p99 ÷ mean latency (mean = connections ÷ requests/s, Little's law), in the segment cells "
            f"with ≥ {CHOICE_MIN_CONNECTIONS} connections: "
            + "; ".join(f"{label} {', '.join(f'{v:.1f}' for v in vals)}" for label, vals in shapes)
            + ". Near nginx's shape, a p99 ratio above 2× comes from requests/s, not from a tail of the server's "
              "own; far above it (uvicorn on uvloop), from requests that waited.")
    if controls:
        cc = controls["connections"]
        parts = [f"{name} p99 {controls[name]['p99']:.0f} ms, {controls[name].get('accept_late', 0)} connections "
                 "unaccepted after 0.5 s" for name in CONTROLS if name in controls]
        out.append(f"* The control (a bare ASGI app answering every request with the same 125 KiB, no gateway code, "
                   f"c={cc}) shows the same: " + "; ".join(parts) + ".")
        ref = next((s["ref"] for s in summary if s["server"].workers == 1 and s["ref"] is not None), None)
        cell = next((c for c in cases if c.segment and c.size == "125KB" and c.connections == cc), None)
        if ref is not None and cell is not None and ref.key in results[cell.label]:
            ng = results[cell.label][ref.key]
            ratios = [f"{name} {controls[name]['rps'] / max(ng['rps'], 1):.2f}× the req/s, "
                      f"{controls[name]['p99'] / max(ng['p99'], 0.001):.1f}× the p99"
                      for name in CONTROLS if name in controls]
            out.append(
                f"* The control is also the ceiling for one Python worker: against {ref.label} on the same 125 KB "
                f"at c={cc} ({ng['rps']:,.0f} req/s, p99 {ng['p99']:.1f} ms) the bare app reaches "
                + "; ".join(ratios) + ". Where a bare app alone is near or above 2× nginx's p99, the gateway's "
                "1-worker p99 goal at that connection count needs a cheaper hit or more cores, not a different "
                "server.")
    out.append(
        "* granian's `backpressure` (set from `limit_concurrency`) caps the connections it serves at once; the "
        "rest wait unaccepted in the listen backlog. A cap below the connection count makes wrk's p99 look "
        "excellent because the waiting connections complete no request (tried: `--backpressure 32` at c=500 "
        "gave p99 8 ms with 468 connections never accepted during the run). It is therefore left at "
        "`limit_concurrency` (4096), above any connection count here.")
    multi = [s for s in summary if s["server"].workers > 1]
    if multi:
        parts = []
        for s in multi:
            chk = s["check"] or {}
            f = chk.get("fetches") or [0]
            split = chk.get("split") or {}
            refused = sum(v for k, v in split.items() if k != 200)
            parts.append(f"{s['server'].label}: {sum(f) / len(f):.2f} pod fetches per new segment, {refused} of "
                         f"{sum(split.values())} split-connection segment requests refused")
        out.append(
            "* Several workers: grants are bound to their URI and verified with the key alone, so any worker "
            "accepts any viewer's request (without `grant_secret` or `pod_signing_key_file` the gateway makes one "
            "random grant key per run for all its workers), and the workers share one host store: the worker that "
            "takes a key's lock fetches, the others stream the part file as it grows, so a new segment costs one pod "
            "fetch per host. Measured here: " + "; ".join(parts) + ".")
    out.append(
        "* Quick wins tried for the 125 KB case: none kept. `gc.freeze()` (the collector hardly runs: about 10 "
        "young-generation collections per ~10,000 requests), granian's HTTP/1 buffer size and its runtime options "
        "(`--runtime-mode st`, `--task-impl rust`, `--runtime-threads 2`, `--loop asyncio`) moved the numbers by "
        "less than the noise. The remaining Python work is spread over many small steps and the body copy is "
        "bound by the kernel.")
    out.append(
        "* Cheap hits (issue 15, point 3), measured by hand on 2026-12-05 with this script "
        "(`--duration 2 --connections 10,100 --repeat 1`) and two temporary switches that are not in the code: "
        "(1) granian's ASGI path-send (the server opens the stored file and sends it; no body copy through "
        "Python) against the bytes read and sent by the app, granian 2w with the host store: 125 KB 6,945 / "
        "7,667 req/s with path-send vs 6,610 / 7,479 without (c = 10 / 100), 1 MB 1,992 / 2,041 vs 2,908 / "
        "2,362 — no gain on 125 KB, a loss on 1 MB (granian 2.8 reads the file on its own runtime after the "
        "app returns), so hits are sent as bytes; (2) the host store against no shared store (each worker its "
        "own memory cache, 2 pod fetches per segment): 125 KB 8,399 / 9,665 vs 9,495 / 10,081 req/s, 1 MB "
        "2,798 / 2,490 vs 3,004 / 2,715 — the store cost 4-12 % of the hit rate for one pod fetch per host; a "
        "profile of that version put the file read and the lookup at 28 % of a hit, so each worker now keeps "
        "hits in its own memory cache in front of the store (the file is read about once per worker). "
        "On this 2-core box, 2 workers serve fewer hits than 1 (granian 1w 11,679 / 13,641 on 125 KB in the "
        "same run): wrk takes most of a core, and each worker's Rust HTTP threads compete with the other "
        "worker's Python thread. A Python data plane does not reach 0.7× nginx on 125 KB here, so the "
        "gateway's default is an nginx data plane that it runs itself (`data_plane: auto`, the `dataplane` "
        "rows; `data_plane: nginx` for an nginx you run): nginx checks the "
        "path-bound grant (HMAC-SHA256; `secure_link` is MD5 only) and serves the host store's file. The check "
        "runs on every hit, where nginx's whole static hit of a 125 KB file costs about 17 us of CPU, so its "
        "engine decided the result. In njs (0.7.9) it held the data plane to 0.63-0.72x nginx on 125 KB. "
        "Profile (measured by hand on 2026-12-06, nginx 1.22, 2 workers, the same 125 KB file, wrk c=100, "
        "`perf record` of the workers): a static hit 55,000 req/s; an njs call that returns at once 53,500 (njs "
        "6 % of the workers' CPU: the VM clone is cheap); the njs grant check 38,000-42,000 (njs 34 %, kernel "
        "49 %, nginx 8 %). Timed in a loop inside njs, the check took 13.5 us per hit, 7.9 us once rewritten "
        "(one pattern over the whole target, no Buffer slices): HMAC and key 3.4, target pattern 1.4, the store "
        "name's SHA-256 0.9; njs interprets every call and allocation. So the check is now Lua "
        "(`gateway/lua/platebridge_grant.lua`, LuaJIT through Debian's libnginx-mod-http-lua, which "
        "nginx-extras already brought): the HMAC's inner and outer SHA-256 states are computed once per key "
        "(RFC 2104) and each hit runs two SHA-256 compressions of libcrypto through the FFI, the target is "
        "matched by PCRE's JIT. Measured by hand the same way (2 workers, c=10 / 100, 6 s each): the data "
        "plane's config with the file name fixed (no check) 45,900 / 52,600 req/s, the njs check 33,700 / "
        "40,400, the Lua check 42,500 / 51,100. `perf` of the Lua data plane's workers at c=10: kernel 67 %, "
        "nginx 12 %, the LuaJIT VM 8 %, libcrypto 4 % (half of it OpenSSL 3's one-shot SHA256(), which fetches "
        "the digest from its provider and mallocs per call: the store name now uses SHA256_Init/Update/Final, "
        "1 %), PCRE 2 %. `jit.v` showed why the VM was not smaller: the check's root trace aborted at the "
        "capture loop inside lua-resty-core's ngx.re.match (\"inner loop in root trace\"), so the check ran "
        "in the interpreter with its loops compiled. The target is now read by a byte scanner (`scan_target`, "
        "checked against PCRE's answers for the old pattern over 20,000 mutated targets in "
        "`tests/gateway/test_lua_grant.py`), and `jit.v` shows the check and `store_file` compiled as root "
        "traces. Measured by hand on 2026-12-06 (`--servers nginx:2,dataplane:2 --connections 10,100 "
        "--repeat 4 --duration 3`, two runs each, interleaved): on 125 KB hits the scanner gave 1.07× / 0.96× "
        "and 0.96× / 1.05× nginx's requests/s at c = 10 / 100, the pattern 0.99× / 1.03× and 1.00× / 1.12×: "
        "no difference above run-to-run noise on this box (a loop in nginx's LuaJIT times both at 0.3-0.4 us "
        "per target, against about 17 us for a whole hit), so the gain is the compiled trace, not a measured "
        "rate; in all four runs every p99 cell was within 2× nginx's (125 KB, c = 10: 0.7-1.3×). "
        "`multi_accept on` in the data plane's events: with one "
        "accept per event-loop pass, up to 101 connections waited > 0.5 s at c=500 (1 worker), none with it; "
        "with it and one shared listening socket, the first worker to wake took every waiting connection (all "
        "10 of 10 at c=10 in some runs, 30k instead of 52k req/s), so the data plane and the baseline listen "
        "with `reuseport`; both keep a keep-alive connection for 100,000 requests (nginx's default of 1,000 "
        "closed wrk's connections every few hundred ms and cost the c=10 p99 1.5-4 ms)."
        " CPU binding (measured by hand on 2026-12-06 with `--servers nginx:2,dataplane:2 --repeat 5`): with floating workers the data plane's 125 KB c=100 runs were bimodal, p99 6 ms in some and 18-31 ms in others (runs of 6.4 / 18.4 / 6.5 / 28.3 / 30.7 ms against nginx's 6.8-12.4), as both workers sometimes shared one CPU for a whole run; the idle granian workers were not it (0 CPU ticks in 10 s idle, 0.3 s over a whole bench). With `worker_cpu_affinity auto` (one worker bound to each CPU) the same cell gave 5.6-7.7 ms in 18 of 18 runs, and the c=500 cells became as steady; the baseline nginx gets the same directive, which brought its c=10 p99 from 1.1-2.7 ms down to 0.3-0.8 ms. The c=10 cell then still flipped either side of the 2x line (data plane 0.3-2.8 ms, median of 5 about 1.0-1.5 ms, against nginx's 0.3-0.6). Ruled out by hand (standalone nginx with the data plane's config, 12 interleaved runs each): Lua's garbage collector (stopped: 0.37-2.47 ms, running: 0.37-2.39 ms) and the workers' age (reloaded before every run, as the baseline is: median 1.0 ms). The cause was the filesystem: the data plane's host store is on a tmpfs (/dev/shm) and the baseline's proxy cache was on ext4 (/tmp). With the store on ext4 too, the data plane's c=10 runs gave 0.3-1.0 ms (nginx 0.3-0.5) and its c=100 runs 4.3-5.0 ms (nginx 4.9-5.6); with the baseline's cache on a tmpfs too, nginx's own c=10 runs gave 2.8-3.1 ms in 5 of 6 (the data plane 0.7-4.0 in the same run). Serving files from a tmpfs has the longer tail on this kernel (6.18), whoever serves them, so the baseline's cache now lives on the same filesystem as the gateway's store (the bench's directory is made there). Whether the production store should move off tmpfs (the systemd unit's RuntimeDirectory) for a shorter tail, at the price of page-cache writeback of every kept segment, is left open.")
    return out


def fmt_matrix(matrix: list[dict]) -> list[str]:
    """The fetch-goal table: pod fetches per new segment and refused split-connection requests
    for each (workers, players) pair; empty without a matrix."""
    if not matrix:
        return []
    out = ["Pod fetches per new segment with 1, 2 and 4 granian workers (one host store) when 20, 100 and 500 "
           "players ask for 4 new 125 KiB segments at the same moment, and segment requests refused when the "
           "playlist came on another connection (goal: 1.00 and 0 in every cell):", "",
           "| workers | players | pod fetches per new segment (mean, max) | player answers | split-connection "
           "requests refused |", "|---|---|---|---|---|"]
    for row in matrix:
        f = row["fetches"]
        refused = sum(v for k, v in row["split"].items() if k != 200)
        answers = ", ".join(f"{v}× {k}" for k, v in sorted(row["viewer_status"].items()))
        ok = max(f) == 1 and min(f) == 1 and refused == 0
        out.append(f"| {row['workers']} | {row['viewers']} | {sum(f) / len(f):.2f}, {max(f)} | {answers} | "
                   f"{refused} of {sum(row['split'].values())} {'(goal met)' if ok else '(goal NOT met)'} |")
    return [*out, ""]


def write_docs(servers: list[Server], cases: list[Case], results: dict, summary: list[dict], info: dict, args,
               profiles: list[tuple[str, dict | None, str]], elapsed: float, others: list[float],
               controls: dict, matrix: list[dict]) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (other sections are kept)."""
    t = fmt_tables(servers, cases, results)
    verdict, reasons = recommend(summary, results, cases)
    by_key = {s["server"].key: s for s in summary}
    d = by_key.get(DEFAULT_SERVER)
    conns = ",".join(str(c) for c in sorted({c.connections for c in cases if c.segment}))
    lines = [
        "# Benchmarks", "",
        "## Gateway vs nginx (cache-hit segments)", "",
        f"**Goals (issue 15):** on cache-hit segments, with as many worker processes as nginx, the gateway serves "
        f"**≥ {GOAL_RATIO['125KB']}× nginx's requests/s on 125 KB** and **≥ {GOAL_RATIO['1MB']}× on 1 MB** (geometric "
        f"mean over the connection counts; the goal is set for 2 workers) with a **p99 ≤ {GOAL_P99:g}× nginx's in every "
        f"cell**. The default is picked by measurement: its p99 must be ≤ {GOAL_P99:g}× nginx's at "
        f"{CHOICE_MIN_CONNECTIONS} connections and more (against nginx with as many workers), every connection served "
        "(see \"Unaccepted connections\" below). The default is the nginx data plane the gateway runs itself "
        "(`data_plane: auto` with nginx and its Lua module installed; the `dataplane` rows), with granian behind it; the "
        "Python servers' rows show the gateway serving every segment itself (`data_plane: gateway`, or `auto` "
        "without nginx).", "",
    ]
    if d is not None:
        sizes = ", ".join(f"{d['geo_by_size'][k]:.2f}× on {k}" for k in SEGMENTS if k in d["geo_by_size"])
        lines += [
            f"**Result (default: {d['server'].label}, vs nginx {d['ref'].workers if d['ref'] else '?'}w):** "
            f"server-choice goal {'met' if d['choice_met'] else 'NOT met'} (p99 at ≥ {CHOICE_MIN_CONNECTIONS} "
            f"connections up to {d['choice_max_p99']:.1f}× nginx's); req/s {sizes} "
            f"({'met' if d['rps_met'] else 'NOT met'}); p99 ≤ {GOAL_P99:g}× in {d['n_p99_met']} of {d['n_cases']} "
            "segment cells. Every server/worker choice below.", ""]
    for s in summary:
        if s["server"].kind != "dataplane" or s["ref"] is None:
            continue
        sizes = ", ".join(f"{s['geo_by_size'][k]:.2f}× on {k}" for k in SEGMENTS if k in s["geo_by_size"])
        lines += [
            f"**nginx data plane, the default ({s['server'].label}, `data_plane: auto`, vs nginx {s['ref'].workers}w):** req/s "
            f"{sizes} ({'met' if s['rps_met'] else 'NOT met'}); p99 ≤ {GOAL_P99:g}× in {s['n_p99_met']} of "
            f"{s['n_cases']} segment cells (highest {s['max_p99']:.1f}×).", ""]
    lines += [f"**Recommendation:** {verdict}.", ""]
    lines += [f"* {r}" for r in reasons]
    lines += [
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')} with `nice -n {info['nice']} .venv/bin/python "
        f"bench/gateway_vs_nginx.py --duration {args.duration} --connections {conns} --repeat {args.repeat} "
        f"--servers {','.join(f'{s.kind}:{s.workers}' for s in servers)} "
        f"--playlist-connections {args.playlist_connections}` ({elapsed / 60:.1f} min in all, profiles included); "
        f"each cell holds the most requests/s of {args.repeat} interleaved wrk runs of {args.duration} s and the "
        "median p50 and p99 of those runs (on this 2-vCPU VM one run's p99 is decided by a few stalls of 30-80 ms "
        "that hit any server at random: 16 runs of the same nginx config gave p99 1.8-35 ms; "
        "`combine_runs` in the script).", "",
        "### Summary per server/worker choice", "",
        *fmt_summary(summary), "",
        "Pod fetches: after warming, each gateway is asked for new segments by "
        f"{summary[0]['check']['viewers'] if summary and summary[0]['check'] else '?'} players at the same moment, "
        "one keep-alive connection each (playlist first, as a player does); counted at the pod. "
        "Refused requests: one connection loads a playlist, then new connections ask for a segment it lists, as a "
        "browser may when it spreads requests over its connection pool.", "",
        *fmt_matrix(matrix),
        "### Requests/s", "",
        "Gateway cells: requests/s (ratio to nginx with the same number of workers).", "",
        *t["rps"], "",
        "### Latency: p50 / p99 (ms)", "",
        "Gateway cells: p50 / p99 (p99 ratio to nginx with the same number of workers). wrk's `--latency` "
        "percentiles, the median over the runs (each run's p99 is in `--json`'s `p99_runs`); all cases are "
        "HTTP/1.1 keep-alive on loopback.", "",
        *t["lat"], "",
        "### CPU during the runs (cores)", "",
        "Cores used by the server's process group / by wrk (/ by the pod, when it worked) over each kept run, "
        f"and in brackets by everything else on the machine (from /proc; {info['nproc']} cores in all). "
        "A large bracket means the run competed with other work and is less trustworthy.", "",
        *t["cpu"], "",
    ]
    if controls:
        cc = controls["connections"]
        lines += [
            "### Control: the same response without the gateway", "",
            "A bare ASGI app (no gateway code, `serve_plain` in this script) answering every request with one "
            f"125 KiB body, `wrk -c{cc}`, best of {args.repeat} interleaved runs; the accept queue sampled as in the "
            "gateway runs:", "",
            "| server | req/s | p50 / p99 (ms) | wrk errors | connections unaccepted after 0.5 s (max) "
            "| accept queue non-empty (s) |", "|---|---|---|---|---|---|",
            *[f"| {name} | {controls[name]['rps']:,.0f} | {controls[name]['p50']:.1f} / {controls[name]['p99']:.1f} | "
              f"{controls[name]['errors']} | {controls[name].get('accept_late', 0)} | "
              f"{controls[name].get('accept_seconds', 0):.1f} |" for name in CONTROLS if name in controls], ""]
    lines += [
        "### Setup", "",
        f"* Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}; Python {info['python']}; "
        f"nginx {info['nginx']} (Debian nginx-extras); wrk {info['wrk']}; {info['packages']}. "
        f"Load average before the run: {info['loadavg']}. CPU used by processes outside the benchmark during the "
        f"kept runs: mean {sum(others) / max(len(others), 1):.2f}, max {max(others, default=0):.2f} cores.",
        f"* Limits for 500 connections: `ulimit -n` {info['nofile']} (nginx gets it as `worker_rlimit_nofile`), "
        f"nginx `worker_connections {NGINX_WORKER_CONNECTIONS}` and `listen … backlog=4096`, "
        f"`net.core.somaxconn` {info['somaxconn']}; gateway `limit_concurrency` 4096 (uvicorn) / `backpressure` 4096 "
        "(granian), backlog 2048 (both). No run had socket errors unless a cell says so.",
        "* Pod: the real `pod.hls_server.create_hls_app` under uvicorn (uvloop + httptools) on 127.0.0.2, "
        "serving random-byte segments (125 KiB and 1 MiB) from a temp dir, behind a request counter.",
        "* Gateway: `platebridge-gateway --server granian|uvicorn --loop uvloop|asyncio --workers N` (granian, the "
        "default: ASGI, HTTP/1 only, the app on uvloop, served from a worker process; uvicorn: httptools, "
        "`uvicorn` = uvloop, `uvicorn-asyncio` = the standard asyncio loop; with granian or several workers the app "
        "is built per worker by `gateway.asgi:create_app_from_env`), static discovery, access log off, log level "
        "WARNING; every request "
        "carries a `pb_grant` that is verified (HMAC) before the cache lookup. The workers of one gateway share "
        "one host store (files on /dev/shm, `gateway/hoststore.py`); a hit is the stored file's bytes, read and "
        "sent by the app (see \"Cheap hits\" below for why not the ASGI path-send extension). Each "
        "gateway is warmed until the pod has served both segments once and then over 8 new connections per worker.",
        "* dataplane, the gateway's default: `platebridge-gateway --workers N` with `data_plane: managed` (what "
        "the default `auto` picks when nginx and its Lua module are installed, `gateway/dataplane.py`): the gateway "
        "starts nginx with N worker processes in front of its N granian workers, with the data plane's config "
        "(Lua verifies the grant, `try_files` serves the host store's file, `open_file_cache`; access log off; "
        "`sendfile on`, `tcp_nopush off`, `worker_connections` 4096 as the nginx baseline); misses and playlists "
        "go to granian. The server's CPU is both process groups'. Warmed like a gateway; the run stops if a kept "
        "segment is not answered by nginx itself.",
        "* nginx: 1 or 2 worker processes, `secure_link` md5(expires + uri + secret) checked on every request, "
        "`proxy_pass` to the pod with `Authorization: Bearer <pod token>`, `proxy_cache` + `proxy_cache_lock on` + "
        "`proxy_cache_valid 200 10m`, `sendfile on`, `tcp_nopush off`. Pod tokens live 60 s, so the config is "
        "rewritten and nginx reloaded before each nginx run.",
        f"* wrk: 2 threads, {args.duration} s per run, `--latency`, `--timeout 5s`, on the same machine "
        f"(wrk, the server under test and the idle pod share the {info['nproc']} CPUs; all servers run at once, "
        "only the one under load is busy); runs are interleaved across servers and the order is reversed on "
        "every other repeat.",
        "* Playlist rows: the gateway fetches the pod playlist at most once per half target duration (per host) "
        "and rewrites it per viewer (a fresh grant per URI); nginx proxies the playlist uncached, so its "
        "number is bounded by the pod's Python server. Not part of the goals.", "",
        *analysis(servers, cases, results, summary, controls), "",
        "### Where the time goes (gateway, py-spy)", "",
    ]
    for case, prof, why in profiles:
        if prof is None:
            lines += [f"Profiling ({case}) was not possible: {why}", ""]
            continue
        total = prof["total"] or 1
        lines += [f"py-spy `record --subprocesses --function --nonblocking --rate 250` during a wrk run "
                  f"({case}; {prof['rps_under_profiler']:,.0f} req/s under the sampler, {prof['total']} samples). "
                  "Samples attributed to the innermost known layer:", ""]
        for cat, n in prof["cats"]:
            if n / total >= 0.01:
                lines.append(f"* {100 * n / total:.0f}% — {cat}")
        if "granian" in case:
            lines += ["", "With granian, `await send(...)` calls into its Rust extension; py-spy cannot see inside, "
                      "so the time spent there (handing the body to the Rust side) counts as self time of the "
                      "calling gateway frame (`StreamProxy._segment`), and the Rust HTTP thread's own work "
                      "(parsing, socket writes) shows under its Python entry frame (`_spawn_asgi_lifespan_worker`)."]
        lines += ["", "Top self-time frames:", "", "| self % | frame |", "|---|---|"]
        lines += [f"| {100 * n / total:.1f} | `{_short(f)}` |" for f, n in prof["self"]]
        lines += ["", "Gateway functions, inclusive:", "", "| incl % | frame |", "|---|---|"]
        lines += [f"| {100 * n / total:.1f} | `{_short(f)}` |" for f, n in prof["incl"]]
        lines.append("")
    docs = Path(args.docs)
    docs.parent.mkdir(parents=True, exist_ok=True)
    old = docs.read_text() if docs.exists() else ""
    docs.write_text(splice_section(old, "\n".join(lines[2:]), OWN_HEADING))  # lines[:2]: title


OWN_HEADING = "## Gateway vs nginx"


# ---------------------------------------------------------------------------- main
def main() -> int:
    """Run the benchmark; returns the exit code."""
    t_start = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=3, help=f"seconds per wrk run (max {MAX_WRK_SECONDS})")
    ap.add_argument("--connections", default="10,100,500", help="comma-separated wrk connection counts")
    ap.add_argument("--servers", default=DEFAULT_SERVERS,
                    help="comma-separated kind:workers, kind nginx, uvicorn or granian (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case and server: the best requests/s and "
                    "the median p50/p99 are reported")
    ap.add_argument("--playlist-connections", default="100",
                    help="comma-separated connection counts for the playlist rows ('' for none)")
    ap.add_argument("--profile", default="granian:1,uvicorn:1", help="gateways to sample with py-spy (kind:workers)")
    ap.add_argument("--viewers", type=int, default=20, help="simultaneous players in the pod-fetch check")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy runs")
    ap.add_argument("--no-fetch-matrix", action="store_true",
                    help="skip the pod-fetch checks with 1, 2 and 4 workers and 20, 100 and 500 players")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--json", type=Path, help="also write every kept run (per case and server) to this JSON file")
    ap.add_argument("--docs", type=Path, default=DOCS, help="markdown file whose section to replace (default: %(default)s)")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the control runs (a bare ASGI app under uvicorn with uvloop and with asyncio)")
    ap.add_argument("--serve-pod", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--serve-plain", nargs=2, metavar=("PORT", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_pod:
        serve_pod(args.serve_pod[0], int(args.serve_pod[1]))
        return 0
    if args.serve_plain:
        serve_plain(int(args.serve_plain[0]), args.serve_plain[1])
        return 0
    args.duration = max(1, min(args.duration, MAX_WRK_SECONDS))
    global LOADAVG_AT_START
    with contextlib.suppress(OSError):
        LOADAVG_AT_START = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    conns = sorted({int(c) for c in args.connections.split(",") if c.strip()})
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} not found", file=sys.stderr)
            return 2
    specs = parse_servers(args.servers)
    try:
        import granian  # noqa: F401
    except ImportError:
        if any(k.startswith("granian") for k, _ in specs):
            print("granian is not installed (`.venv/bin/pip install -e '.[bench]'`): skipping it", file=sys.stderr)
            specs = [s for s in specs if not s[0].startswith("granian")]
    if not any(k == "nginx" for k, _ in specs) or all(k == "nginx" for k, _ in specs):
        print("--servers needs at least one nginx and one gateway", file=sys.stderr)
        return 2
    servers = [Server(kind, workers) for kind, workers in specs]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile < 4 * max(conns) + 256:
        print(f"warning: ulimit -n is {nofile}; {max(conns)} connections need more", file=sys.stderr)

    from gateway.grants import GrantSigner

    # on the filesystem where the gateway keeps its host store (a tmpfs), so the nginx baseline's
    # proxy cache is too: serving files from a tmpfs has a longer tail on the kernel measured
    # (6.18: 125 KB hits at c=10, p99 0.3-0.6 ms from ext4's page cache, 0.4-3.4 ms from tmpfs,
    # for nginx and the data plane alike), which is the storage's, not the server's
    tmp = Path(tempfile.mkdtemp(prefix="pb-bench-", dir=tmpfs_dir()))
    procs = Procs(tmp)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        secret = secrets.token_urlsafe(32)
        pod_dir = make_pod_dir(tmp)

        # 1. pod
        pod_port = free_port(POD_HOST)
        pod = procs.spawn("pod", [sys.executable, str(Path(__file__).resolve()), "--serve-pod", str(pod_dir),
                                  str(pod_port)], env=child_env(PB_BENCH_SECRET=secret))
        from protocol.tokens import Keyring, mint_pod_token

        def pod_up() -> bool:  # /health on the pod's tailnet listener wants a gateway→pod token
            token = mint_pod_token(Keyring.single(secret), camera_id="*", pod_id=POD_ID)
            return http_get(f"http://{POD_HOST}:{pod_port}/health",
                            headers={"Authorization": f"Bearer {token}"}).status_code == 200

        wait_until(pod_up, 20, 0.1, "pod")

        # 2. servers (all at once; each idles while another is measured)
        cfg = tmp / "gateway.yaml"
        grant_secret = secrets.token_urlsafe(32)
        cfg.write_text(
            f"stream_secret: {secret}\ngrant_secret: {grant_secret}\n"
            f"discovery: static\npods:\n  {POD_ID}: http://{POD_HOST}:{pod_port}\n"
            f"host: {HOST}\nport: 8080\npublic_base_url: http://{HOST}:8080\n"
            # the Python servers' own data plane; the dataplane kind runs the default (nginx)
            "access_log: false\nlog_level: WARNING\ndata_plane: gateway\n")
        cfg.chmod(0o600)
        signer = GrantSigner([grant_secret.encode()])
        for srv in servers:
            if srv.is_nginx:
                name = f"nginx-{srv.workers}w"
                srv.port = free_port(HOST)
                srv.nginx = Nginx(procs, tmp / name, name, srv.port, pod_port, secret, srv.workers)
                srv.popen = srv.nginx.start()
            elif srv.kind == "dataplane":
                srv.signer = signer
                start_dataplane(procs, srv, cfg.read_text(), tmp)
            else:
                srv.signer = signer
                start_gateway(procs, srv, cfg)
        print(f"servers up: {', '.join(f'{s.label} :{s.port}' for s in servers)}", flush=True)

        # 3. warm + check
        for srv in servers:
            if srv.is_nginx:
                for label, (name, size) in SEGMENTS.items():
                    for _ in range(3):
                        r = http_get(srv.url(name))
                        if r.status_code != 200 or len(r.content) != size:
                            raise RuntimeError(f"{srv.label} {label}: HTTP {r.status_code}, {len(r.content)} bytes")
                    if http_get(srv.url(name)).headers.get("x-cache-status") != "HIT":
                        raise RuntimeError(f"{srv.label}: cache not warm for {label}")
                # secure_link really is enforced
                if http_get(f"http://{HOST}:{srv.port}/streams/{CAMERA_ID}/{SEGMENTS['1MB'][0]}").status_code != 403:
                    raise RuntimeError(f"{srv.label} served a segment without a secure link")
            else:
                rounds = warm_gateway(srv, pod_port)
                print(f"  {srv.label}: warm ({rounds} pod fetches for {len(SEGMENTS)} segments)", flush=True)
                if srv.kind == "dataplane" and not served_by_dataplane_nginx(srv):
                    raise RuntimeError(f"{srv.label}: nginx does not serve the kept segment itself")
            r = http_get(srv.url(PLAYLIST))
            if r.status_code != 200 or "#EXTM3U" not in r.text:
                raise RuntimeError(f"{srv.label} playlist: HTTP {r.status_code}: {r.text[:200]}")

        # 4. pod fetches per new segment; split-connection players
        checks = {}
        for srv in servers:
            if not srv.is_nginx:
                checks[srv.key] = chk = fetch_check(srv, pod_port, args.viewers)
                print(f"  {srv.label}: pod fetches per new segment {chk['fetches']}, viewer statuses "
                      f"{chk['viewer_status']}, split-connection statuses {chk['split']}", flush=True)

        # 4b. the fetch goal: 1, 2, 4 workers; 20, 100, 500 players at once
        matrix = [] if args.no_fetch_matrix else fetch_matrix(procs, cfg, pod_port, signer)

        # 5. runs
        cases = [Case(f"segment {label} hit, c={c}", name, c, True, label) for label, (name, _) in SEGMENTS.items()
                 for c in conns]
        pl_conns = sorted({int(c) for c in args.playlist_connections.split(",") if c.strip()})
        cases += [Case(f"playlist (rewrite vs uncached proxy), c={c}", PLAYLIST, c, False) for c in pl_conns]
        results: dict[str, dict] = {}
        others: list[float] = []
        for case in cases:
            runs: dict[tuple[str, int], list[dict]] = {}
            for rep in range(args.repeat):  # interleaved, order reversed every other repeat
                for srv in (servers if rep % 2 == 0 else servers[::-1]):
                    if srv.nginx is not None:
                        srv.nginx.refresh_token()
                    r = measured_wrk(srv, srv.url(case.name), case.connections, args.duration, pod.pid)
                    runs.setdefault(srv.key, []).append(r)
            best = {key: combine_runs(rs) for key, rs in runs.items()}
            results[case.label] = best
            others += [r["cpu_other"] for r in best.values()]
            print(f"  {case.label}: " + ", ".join(
                f"{s.label} {best[s.key]['rps']:,.0f} req/s p99 {best[s.key]['p99']:.1f} ms "
                f"(runs {' / '.join(f'{x:.1f}' for x in best[s.key]['p99_runs'])})"
                + (f" ({best[s.key]['errors']} errors)" if best[s.key]["errors"] else "") for s in servers),
                flush=True)

        summary = summarise(servers, cases, results, checks)
        print_report(servers, cases, results, summary)
        verdict, reasons = recommend(summary, results, cases)
        print(f"\nrecommendation: {verdict}")
        for r in reasons:
            print(f"  - {r}")

        # 6. control: the same 125 KB response from a bare ASGI app under each server
        controls: dict[str, Any] = {}
        if not args.no_control:
            cc = max(conns)
            plain = {}
            for variant in CONTROLS:
                port = free_port(HOST)
                procs.spawn(f"plain-{variant}", [sys.executable, str(Path(__file__).resolve()), "--serve-plain",
                                                 str(port), variant], env=child_env())
                plain[variant] = port
                wait_until(lambda port=port: http_get(f"http://{HOST}:{port}/").status_code == 200, 20, 0.1,
                           f"bare ASGI app ({variant})")
            for rep in range(args.repeat):
                for variant in (CONTROLS if rep % 2 == 0 else CONTROLS[::-1]):
                    with AcceptQueueMonitor(plain[variant]) as aq:
                        r = run_wrk(f"http://{HOST}:{plain[variant]}/", cc, args.duration)
                    r.update(accept_late=aq.late, accept_seconds=aq.seconds)
                    if variant not in controls or r["rps"] > controls[variant]["rps"]:
                        controls[variant] = r
            for variant in plain:
                procs.stop(f"plain-{variant}")
            controls["connections"] = cc
            print(f"\ncontrol, bare ASGI app, 125 KB, c={cc}: " + ", ".join(
                f"{v} {controls[v]['rps']:,.0f} req/s p50 {controls[v]['p50']:.1f} p99 {controls[v]['p99']:.1f} ms, "
                f"{controls[v]['errors']} errors, {controls[v]['accept_late']} unaccepted after 0.5 s"
                for v in CONTROLS))

        # 7. profile
        profiles: list[tuple[str, dict | None, str]] = []
        if not args.no_profile:
            pc = 100 if 100 in conns else max(conns)
            for key in parse_servers(args.profile):
                srv = next((s for s in servers if s.key == key and not s.is_nginx), None)
                if srv is None:
                    continue
                for label, (name, _) in SEGMENTS.items():
                    case = f"{srv.label}, segment {label} hit, c={pc}"
                    out = Path(f"/tmp/pb_gateway_profile_{srv.kind}_{srv.workers}w_{label}.txt")
                    assert srv.popen is not None
                    prof, why = profile_gateway(srv.popen.pid, srv.url(name), min(args.duration + 2, 5), pc, out)
                    profiles.append((case, prof, why))
                    if prof is None:
                        print(f"\nprofile {case}: not possible: {why}")
                        continue
                    total = prof["total"] or 1
                    print(f"\nprofile {case} ({out}, {prof['total']} samples, {prof['rps_under_profiler']:,.0f} req/s):")
                    for cat, n in prof["cats"]:
                        print(f"  {100 * n / total:5.1f}%  {cat}")
                    print("  top self frames:")
                    for f, n in prof["self"][:8]:
                        print(f"  {100 * n / total:5.1f}%  {_short(f)}")

        elapsed = time.monotonic() - t_start
        print(f"\ntotal time {elapsed / 60:.1f} min")
        if args.json:
            args.json.write_text(json.dumps({
                "loadavg": LOADAVG_AT_START, "started": time.time() - elapsed, "controls": controls,
                "cases": [{"label": c.label, "size": c.size, "connections": c.connections, "segment": c.segment,
                           "results": {f"{k[0]}:{k[1]}": {m: v for m, v in r.items() if m != "raw"}
                                       for k, r in results[c.label].items()}} for c in cases]}, indent=1))
        if not args.no_docs:
            write_docs(servers, cases, results, summary, machine_info(), args, profiles, elapsed, others, controls,
                       matrix)
            print(f"wrote {args.docs}")
        return 0
    except Exception as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        for name in list(procs.items):
            tail = procs.log_tail(name)
            if tail:
                print(f"--- {name} log ---\n{tail}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
