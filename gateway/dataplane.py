"""The nginx data plane run by the gateway itself (``data_plane: auto`` or ``managed``).

Issue 15 asks that the default server's p99 stay within 2× nginx's at 100 and 500
connections. No Python server does that on cache hits (docs/benchmarks.md: granian 2.5×
with 1 worker, 3.5× with 2), while nginx in front of the gateway, serving kept segments
itself (:mod:`gateway.nginxconf`), stays within 1.8×. So by default the gateway starts that
nginx as its own child process, and no nginx setup by hand is needed:

* nginx listens on the gateway's ``host:port`` with ``worker_processes`` = the gateway's
  worker count, answers kept media segments from the host store, and passes everything else
  to the gateway's workers, which listen on ``127.0.0.1:<internal_port>``.
* Its files live in a private run directory (mode 0700, removed when the gateway stops):
  ``nginx.conf``, the data plane's config (it holds the grant keys, 0600), the Lua module,
  the pid file and nginx's temp directories. nginx's workers run as the gateway's own user,
  so the host store stays 0700.
* nginx logs alerts only, to the gateway's stderr (its lower levels quote request lines with
  grants). It gets ``SIGTERM`` when the process that started it dies (``PR_SET_PDEATHSIG``).
  If nginx exits on its own, the gateway stops too (exit 1), so its service manager restarts
  both together: a gateway never keeps running with its public port unserved.

``data_plane: auto`` (the default) uses this when an nginx binary and Debian's Lua module
(package ``libnginx-mod-http-lua``, with ``libnginx-mod-http-ndk`` and ``lua-resty-core``;
``nginx-extras`` brings all three) are installed and ``nginx -t`` accepts the config, and the
gateway's own data plane otherwise (with a warning saying why). ``data_plane: managed``
requires it: a missing nginx is a config error.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import msgspec

from gateway import nginxconf
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.nginxconf import (
    LUA_MODULE,
    LUA_SO,
    MODULES_DIR,
    NDK_SO,
    RESTY_LUA_DIR,
    render_self_test,
    write,
)

log = logging.getLogger("platebridge.gateway")

#: where nginx is looked for when ``nginx_bin`` is not set (Debian puts it in /usr/sbin, which
#: is not on an unprivileged user's PATH)
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx")
MAIN_NAME = "nginx.conf"
#: the config of the Lua self-test run (:func:`lua_self_test`)
SELF_TEST_NAME = "self-test.conf"
#: s: how long a stopping nginx gets for its graceful shutdown before SIGKILL
STOP_TIMEOUT = 5.0
#: s: ``nginx -t`` time limit
TEST_TIMEOUT = 20.0
#: s: how long nginx waits for the gateway's workers to accept connections before it starts anyway
READY_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Found:
    """An nginx that can run the data plane: its binary and the modules it loads, in order
    (the Nginx Development Kit, then the Lua module)."""

    nginx: str
    modules: tuple[str, ...]


def find_nginx(cfg: GatewayConfig) -> Found | str:
    """The nginx binary and modules to run, or a sentence saying what is missing.

    ``cfg.nginx_bin`` (else the first of :data:`NGINX_CANDIDATES` / ``nginx`` on PATH that is
    executable); :data:`~gateway.nginxconf.NDK_SO` and :data:`~gateway.nginxconf.LUA_SO` in
    ``cfg.nginx_modules_dir`` (else Debian's :data:`~gateway.nginxconf.MODULES_DIR`); and
    Debian's lua-resty-core, which the Lua module requires."""
    candidates = [cfg.nginx_bin] if cfg.nginx_bin else [*NGINX_CANDIDATES, shutil.which("nginx") or ""]
    nginx = next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)
    install = "Debian: apt-get install nginx libnginx-mod-http-lua"
    if nginx is None:
        where = cfg.nginx_bin or ", ".join(NGINX_CANDIDATES)
        return f"no nginx binary at {where} ({install})"
    where = cfg.nginx_modules_dir or MODULES_DIR
    modules = tuple(os.path.join(where, name) for name in (NDK_SO, LUA_SO))
    for module in modules:
        if not os.path.isfile(module):
            return f"no nginx module {module} ({install})"
    if not os.path.isfile(os.path.join(RESTY_LUA_DIR, "resty", "core.lua")):
        return f"no lua-resty-core in {RESTY_LUA_DIR} (Debian: apt-get install lua-resty-core)"
    return Found(nginx=nginx, modules=modules)


def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listen_value(host: str, port: int, backlog: int) -> str:
    """nginx's ``listen`` value for the gateway's public ``host`` and ``port``:
    ``0.0.0.0:8080 backlog=2048 reuseport``, ``[::1]:8080 backlog=2048 reuseport``.

    ``reuseport``: each worker gets its own listening socket and the kernel spreads new
    connections over them. Without it, with ``multi_accept``, the worker that wakes first
    accepts every waiting connection: in the bench, all 10 of 10 keep-alive connections
    sometimes landed on one of 2 workers, which then served 30k req/s where both served 52k."""
    addr = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{addr}:{port} backlog={backlog} reuseport"


def load_modules(modules: tuple[str, ...]) -> str:
    """nginx's ``load_module`` lines for ``modules`` (paths of ``.so`` files), in order, each
    ending in a newline."""
    return "".join(f"load_module {m};\n" for m in modules)


def render_main(*, run_dir: str, modules: tuple[str, ...], workers: int, worker_connections: int,
                user: str | None) -> str:
    """The ``nginx.conf`` of a managed data plane (no I/O): main and events context, the
    temp paths in ``run_dir``, and an ``include`` of the data plane's ``http`` config there.

    ``modules``: the dynamic modules to load, in order; ``workers``: nginx worker processes;
    ``worker_connections`` per worker; ``user``:
    ``"name group"`` for the ``user`` directive (only when nginx starts as root), else None."""
    temp = "".join(f"    {kind}_temp_path {run_dir}/temp-{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# PlateBridge gateway: the nginx data plane it runs itself (gateway/dataplane.py).
# Written for one run of the gateway and removed when it stops; not for editing.
{f"user {user};" if user else "# no user directive: the workers run as the gateway's user"}
daemon off;
master_process on;
worker_processes {workers};
# one worker per CPU, each bound to its own (of those this process may use): with floating
# workers, both sometimes shared one CPU for a whole run while the other took the load
# generator or the gateway's own workers (bench, 2 workers on 2 vCPUs, 125 KB hits at c=100:
# p99 6 ms in some runs and 18-31 ms in others; bound, 6-7.7 ms in 18 of 18 runs)
worker_cpu_affinity auto;
worker_rlimit_nofile {max(1024, 2 * worker_connections + 64)};
pid {run_dir}/nginx.pid;
error_log stderr alert;
{load_modules(modules)}
events {{
    worker_connections {worker_connections};
    # accept every waiting connection per wake-up: with one accept per event-loop pass, a burst
    # of new viewers (a restart, a balancer re-spreading cameras) waited seconds behind the
    # served ones (bench: up to 101 connections unaccepted after 0.5 s at c=500, none with this)
    multi_accept on;
}}

http {{
{temp}    sendfile on;
    tcp_nopush off;
    default_type application/octet-stream;
    include {run_dir}/platebridge-dataplane.conf;
}}
"""


def _user_directive() -> str | None:
    """``user`` for nginx when it starts as root (its workers then run as root too, as the
    gateway does); None otherwise (nginx cannot change user, and need not)."""
    if os.geteuid() != 0:
        return None
    return f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _accepts(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _said(r: subprocess.CompletedProcess[str]) -> str:
    """What nginx wrote (stderr, else stdout), on one line, its last 600 characters."""
    return " ".join(line.strip() for line in (r.stderr or r.stdout).splitlines() if line.strip())[-600:]


def lua_self_test(found: Found, run_dir: str | None = None) -> str | None:
    """Run the Lua grant check's self-test (RFC 4231 HMAC vectors through libcrypto) in the
    nginx of ``found``, as nginx itself loads it: ``nginx -t`` skips ``init_by_lua``, where a
    missing lua-resty-core or an unexpected libcrypto would otherwise first fail when nginx
    starts. ``run_dir`` holds :data:`~gateway.nginxconf.LUA_MODULE` (a private 0700 directory);
    None: a temporary one with this package's module. Returns None when it passed, else why
    not, in nginx's words (one line)."""
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="platebridge-self-test-") as tmp:
            path = os.path.join(tmp, LUA_MODULE)
            with open(path, "w", encoding="utf-8") as f:
                f.write(nginxconf.lua_source())
            return lua_self_test(found, tmp)
    conf = os.path.join(run_dir, SELF_TEST_NAME)
    text = load_modules(found.modules)
    text += (f"daemon off;\nmaster_process off;\npid {run_dir}/self-test.pid;\nevents {{}}\n"
             f"http {{\n{render_self_test(run_dir)}}}\n")
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    argv = [found.nginx, "-p", run_dir, "-c", conf, "-e", "stderr"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TEST_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the Lua self-test in {found.nginx} did not run: {exc}"
    if r.returncode != 0:
        status = f"signal {-r.returncode}" if r.returncode < 0 else f"status {r.returncode}"
        return (f"the data plane's Lua grant check failed its self-test (nginx exited with {status}): "
                f"{_said(r) or 'no message'}")
    return None


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of nginx's process group (it has its own: the master's pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class ManagedNginx:
    """One nginx data plane for one run of the gateway.

    ``prepare()`` writes the run directory, checks the config with ``nginx -t`` and runs the
    Lua grant check's self-test (RFC 4231 vectors) in that nginx;
    ``start()`` starts nginx and a thread that watches it; ``stop()`` stops it (graceful,
    then SIGKILL after :data:`STOP_TIMEOUT` seconds) and removes the run directory.
    ``failed`` is True when nginx exited while the gateway still ran (the watcher then
    sends the gateway SIGTERM). Raises :class:`ConfigError` from ``prepare()`` with nginx's
    own message when it refuses the config.
    """

    def __init__(self, cfg: GatewayConfig, found: Found, *, run_dir: str, host: str, port: int,
                 internal_port: int, workers: int, backlog: int) -> None:
        self.cfg = msgspec.structs.replace(cfg, data_plane="nginx")
        self.found = found
        self.run_dir = run_dir
        self.listen = listen_value(host, port, backlog)
        self.internal = f"127.0.0.1:{internal_port}"
        self.workers = workers
        self.failed = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def main_conf(self) -> str:
        return os.path.join(self.run_dir, MAIN_NAME)

    def _argv(self, *extra: str) -> list[str]:
        return [self.found.nginx, "-p", self.run_dir, "-c", self.main_conf, "-e", "stderr", *extra]

    def prepare(self) -> None:
        """Write the run directory's files, test them with ``nginx -t`` and run the Lua
        self-test. Raises :class:`ConfigError` (``$.data_plane``, nginx's words) when either fails."""
        write(self.cfg, self.run_dir, listen=self.listen, gateway=self.internal,
              access_log=self.cfg.nginx_access_log or "off", error_log="stderr")
        text = render_main(run_dir=self.run_dir, modules=self.found.modules, workers=self.workers,
                           worker_connections=max(1024, self.cfg.limit_concurrency), user=_user_directive())
        fd = os.open(self.main_conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            r = subprocess.run(self._argv("-t", "-q"), capture_output=True, text=True, timeout=TEST_TIMEOUT,
                               check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"$.data_plane: {self.found.nginx} -t did not run: {exc}") from None
        if r.returncode != 0:
            why = _said(r)
            raise ConfigError(f"$.data_plane: nginx refused the data plane's config: {why}")
        self._self_test()

    def _self_test(self) -> None:
        """Run the Lua grant check's self-test in this nginx (:func:`lua_self_test`). Raises
        :class:`ConfigError` with nginx's words."""
        problem = lua_self_test(self.found, self.run_dir)
        if problem:
            raise ConfigError(f"$.data_plane: {problem}")

    def start(self) -> None:
        """Start the thread that starts nginx (``daemon off``) once the gateway's workers accept
        connections on the internal address (so nginx never answers 502 while they start; at
        most :data:`READY_TIMEOUT` s), then watches it."""
        self._watcher = threading.Thread(target=self._run, name="nginx-data-plane", daemon=True)
        self._watcher.start()

    def _run(self) -> None:
        # this thread starts nginx and lives as long as it does: PR_SET_PDEATHSIG fires when the
        # thread that forked the child ends, and this one ends only after nginx has exited
        host, port = self.internal.rsplit(":", 1)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._stopping.is_set() and not _accepts(host, int(port)):
            if time.monotonic() > deadline:
                log.warning("data plane: the gateway's workers did not accept connections on %s within %.0f s; "
                            "starting nginx anyway", self.internal, READY_TIMEOUT)
                break
            self._stopping.wait(0.05)
        with self._lock:
            if self._stopping.is_set():
                return
            proc = self._proc = subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,  # noqa: PLW1509
                close_fds=True, process_group=0)
        log.info("data plane: nginx (pid %d, %d workers) on %s serves kept media segments; the gateway's workers "
                 "listen on %s (/metrics there)", proc.pid, self.workers, self.listen.split()[0], self.internal)
        code = proc.wait()
        _kill_group(proc.pid)  # a master killed by a signal leaves its workers serving the port
        if self._stopping.is_set():
            return
        self.failed = True
        log.error("data plane: nginx exited (status %s) while the gateway was running; stopping the gateway so "
                  "that its service manager restarts both", code)
        os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        """Stop nginx (SIGQUIT: finish the requests in flight; SIGKILL after
        :data:`STOP_TIMEOUT` s) and remove the run directory."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("data plane: nginx did not stop within %.0f s; killing it", STOP_TIMEOUT)
                proc.kill()
                proc.wait()
        if proc is not None:
            _kill_group(proc.pid)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """nginx master's pid, once started."""
        return self._proc.pid if self._proc is not None else None
