"""Local development stack: camera, pod and gateway as real processes on loopback.

Used by the demo (``./run demo``) and by the end-to-end tests, so both exercise
exactly the same wiring. Development only: nothing here ships in the
``platebridge`` distribution.

Addresses: the camera on 127.0.0.1, the pod on 127.0.0.2 (standing in for its
tailnet address), the gateway on 127.0.0.1. Each process writes its own log in
the stack's work directory.

Keys (generated per stack, nothing to configure): ``secret`` is the user-token
secret the portal stand-in and the gateway share; the gateway signs gateway→pod
tokens with a fresh Ed25519 key (``gateway-pod-signing.pem``, mode 0600, in the work
directory) whose public half is all the pod gets; ``grant_secret`` is the gateway's
own. ``legacy=True`` runs the connection guide's layout instead: one
``stream_secret`` on portal, gateway and pod.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from protocol.tokens import Keyring, SigningKey, mint_user_token

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3-gi lives here, not in the venv


def _free_on(port: int, hosts: tuple[str, ...]) -> bool:
    for host in hosts:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1", preferred: int = 0, *, also: tuple[str, ...] = ()) -> int:
    """``preferred`` if it is free on ``host`` (and every address in ``also``), else an
    unused TCP port free on all of them."""
    hosts = (host, *also)
    if preferred and _free_on(preferred, hosts):
        return preferred
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if _free_on(port, hosts):
            return port
    raise OSError(f"no free port on {hosts}")


class ProcessDied(RuntimeError):
    """A stack process exited while we waited for it to become ready."""


#: set (from a signal handler: the demo's Ctrl-C) to stop a stack that is still starting: every
#: :func:`wait_until` raises KeyboardInterrupt at its next poll. A handler that raised by itself
#: could interrupt a fork (logging's at-fork lock handlers) and leave the process hung.
interrupted = threading.Event()


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate()`` until truthy (returned) or raise TimeoutError after ``timeout`` s;
    KeyboardInterrupt once :data:`interrupted` is set."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        if interrupted.is_set():
            raise KeyboardInterrupt
        try:
            value = predicate()
            if value:
                return value
        except ProcessDied:
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last_exc})" if last_exc else ""))


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls prctl between fork and exec
_PR_SET_PDEATHSIG = 1


def _child_setup(parent_pid: int):
    """``preexec_fn`` for stack children (runs in the child between fork and exec, after the
    ``setsid`` of ``start_new_session``): SIGTERM when the parent dies (PR_SET_PDEATHSIG,
    the call pod/streamer.py makes for ffmpeg), so a hard-killed pytest or demo leaks no
    camera, pod, gateway, broker or portal. It survives exec (the camera's /usr/bin/python3
    included).

    Linux sends the signal when the *thread* that forked the child ends: spawn stack
    processes from a thread that lives as long as the stack (the main thread)."""

    def setup() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl: no signal will ever come
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def group_members(pgid: int) -> list[tuple[int, str]]:
    """Live (not zombie) processes in process group ``pgid``, as (pid, command name)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        head, _, rest = stat.rpartition(")")
        fields = rest.split()  # state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            out.append((int(entry.name), head.partition("(")[2]))
    return out


@dataclass
class Proc:
    """A child process with its log file. :func:`_spawn` starts it in its own session, so
    it leads process group ``pgid`` (its children, e.g. the pod's ffmpeg, are in it too).

    ``leftovers``: members of that group :meth:`stop` found still alive ``grace`` seconds
    after the process itself had exited (children it failed to stop; [] when clean)."""

    name: str
    popen: subprocess.Popen
    log: Path
    pgid: int | None = None
    leftovers: list[tuple[int, str]] = field(default_factory=list)

    def stop(self, timeout: float = 10.0, grace: float = 5.0) -> int | None:
        """SIGTERM the process, SIGKILL after ``timeout`` s; returns its exit code.

        Only the process itself is signalled at first: stopping its own children is its job,
        and tests check that the pod does. Whatever of its process group is still alive
        ``grace`` s after it exited is recorded in :attr:`leftovers` and signalled as a
        group (SIGTERM, then SIGKILL 3 s later), so no grandchild outlives the stack."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.leftovers = self._reap_group(grace)
        return self.popen.returncode

    def _reap_group(self, grace: float) -> list[tuple[int, str]]:
        if self.pgid is None:
            return []
        deadline = time.monotonic() + grace
        while (left := group_members(self.pgid)) and time.monotonic() < deadline:
            time.sleep(0.05)  # e.g. children still dying of their own PR_SET_PDEATHSIG
        if not left:
            return []
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, sig)
            deadline = time.monotonic() + wait
            while group_members(self.pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
        return left

    def tail(self, n: int = 30) -> str:
        """Last ``n`` lines of the process log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""


def _spawn(name: str, args: list[str], workdir: Path, env: dict | None = None, cwd: Path = ROOT) -> Proc:
    """Start ``args`` in ``cwd`` with its output in ``<workdir>/<name>.log``, in a new session
    (its own process group: Ctrl-C in a terminal reaches only the parent, which stops the
    stack) and with PR_SET_PDEATHSIG=SIGTERM (:func:`_child_setup`). Call it from the main
    thread."""
    log = workdir / f"{name}.log"
    fh = open(log, "ab")  # noqa: SIM115 - owned by the child
    popen = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
                             preexec_fn=_child_setup(os.getpid()))  # noqa: PLW1509 - only calls prctl
    fh.close()
    return Proc(name, popen, log, pgid=popen.pid)


@dataclass
class Stack:
    """Camera + pod + gateway. ``start_*`` methods block until each is ready."""

    workdir: Path
    camera_host: str = "127.0.0.1"
    camera_port: int = 0
    pod_host: str = "127.0.0.2"
    pod_port: int = 0
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 0
    #: where the gateway's workers listen behind the nginx data plane it runs (data_plane: auto)
    gateway_internal_port: int = 0
    pod_id: str = "main-gate-pod"
    camera_id: str = "gate-camera-1"
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))  # user-token secret (portal + gateway)
    grant_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))  # gateway only
    signing_kid: str = "dev-1"
    legacy: bool = False  # the guide's one shared stream_secret instead of keys by role
    segment_seconds: float = 1.0
    streaming: bool = True
    mqtt_port: int = 0
    portal_port: int = 0
    api_key: str = field(default_factory=lambda: "pbk_dev_" + secrets.token_hex(12))
    frigate_camera: str = "gate_cam"
    pod_overrides: dict = field(default_factory=dict)
    gateway_overrides: dict = field(default_factory=dict)  # merged into gateway.yaml (e.g. cache_max_bytes)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    _http: httpx.Client | None = field(default=None, init=False, repr=False)
    procs: dict[str, Proc] = field(default_factory=dict)
    #: the gateway's console script; another one (e.g. from a venv with the built wheel installed)
    #: runs with the work directory as its cwd, so nothing is imported from the checkout
    gateway_bin: Path = VENV_BIN / "platebridge-gateway"

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gateway_key = SigningKey.generate(self.signing_kid)
        self.signing_key_file.touch(mode=0o600)
        self.signing_key_file.chmod(0o600)
        self.signing_key_file.write_bytes(self.gateway_key.private_pem())
        self.public_key_file.write_text(self.gateway_key.public_pem())
        self.camera_port = free_port(self.camera_host, self.camera_port)
        self.pod_port = free_port(self.pod_host, self.pod_port, also=("127.0.0.1",))  # /health listens there too
        self.gateway_port = free_port(self.gateway_host, self.gateway_port)
        self.gateway_internal_port = free_port("127.0.0.1", self.gateway_internal_port)
        self.mqtt_port = free_port("127.0.0.1", self.mqtt_port)
        self.portal_port = free_port("127.0.0.1", self.portal_port)

    @property
    def http(self) -> httpx.Client:
        """One HTTP client for the stack's own calls (loopback, no proxies from the environment):
        a new ``httpx.get`` builds an SSL context each time, about 30 ms of CPU, and the demo
        polls three of these twice a second."""
        if self._http is None:
            self._http = httpx.Client(timeout=10, trust_env=False)
        return self._http

    @property
    def signing_key_file(self) -> Path:
        """The gateway's Ed25519 private key (PEM, mode 0600)."""
        return self.workdir / "gateway-pod-signing.pem"

    @property
    def public_key_file(self) -> Path:
        """Its public half: all the pod is given."""
        return self.workdir / "gateway-pod-signing.pub.pem"

    def pod_signer(self) -> SigningKey | Keyring:
        """What the gateway signs gateway→pod tokens with (tests mint pod tokens with it)."""
        return Keyring.single(self.secret) if self.legacy else self.gateway_key

    @property
    def rtsp_url(self) -> str:
        return f"rtsp://{self.camera_host}:{self.camera_port}/gate"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def gateway_direct_url(self) -> str:
        """The gateway's workers themselves: behind the nginx data plane the gateway runs
        (``data_plane: auto`` with nginx installed), their internal address; else
        :attr:`gateway_url`."""
        internal = f"http://127.0.0.1:{self.gateway_internal_port}"
        try:
            with socket.create_connection(("127.0.0.1", self.gateway_internal_port), timeout=1):
                return internal
        except OSError:
            return self.gateway_url

    @property
    def gateway_metrics_url(self) -> str:
        """The gateway's ``/metrics`` (never served through nginx: on :attr:`gateway_direct_url`)."""
        return f"{self.gateway_direct_url}/metrics"

    @property
    def pod_url(self) -> str:
        return f"http://{self.pod_host}:{self.pod_port}"

    @property
    def hls_dir(self) -> Path:
        return self.workdir / "hls"

    @property
    def portal_url(self) -> str:
        return f"http://127.0.0.1:{self.portal_port}"

    def start_mosquitto(self, timeout: float = 10.0) -> Proc:
        """Start Debian's mosquitto on 127.0.0.1:<mqtt_port> (anonymous, no persistence)."""
        conf = self.workdir / "mosquitto.conf"
        # Started as root, mosquitto switches to user "mosquitto", and a change of user clears
        # PR_SET_PDEATHSIG: it would outlive a killed parent. "user root" keeps it as it was
        # started (it logs a warning about running as root; loopback only, like every part here).
        stay = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"listener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n{stay}"
                        "set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        proc = _spawn("mosquitto", [exe, "-c", str(conf)], self.workdir)
        self.procs["mosquitto"] = proc

        def ready():
            if proc.popen.poll() is not None:
                raise ProcessDied(f"mosquitto exited:\n{proc.tail()}")
            with socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=0.5):
                return True

        wait_until(ready, timeout, what="mosquitto listening")
        return proc

    def restart_mosquitto(self, down_seconds: float = 0.0, timeout: float = 10.0) -> float:
        """Stop mosquitto, keep it down ``down_seconds``, start it again on the same port.
        Returns ``time.monotonic()`` at the moment it accepts connections again."""
        self.procs["mosquitto"].stop()
        if down_seconds > 0:
            time.sleep(down_seconds)  # the outage itself
        self.start_mosquitto(timeout)
        return time.monotonic()

    def start_portal(self, plates: list[dict] | dict | None = None, timeout: float = 20.0) -> Proc:
        """Start the portal STAND-IN (deploy/dev/portal_standin.py) with an initial whitelist:
        a list of entries, or a whole ``/api/plates`` answer (``{"config_version": 42,
        "entries": [...]}``, served as given). It relays ``POST /api/nudge`` through the gateway
        (the stack's ``admin_token``) and opens its Gatewise stand-in on allowed detections."""
        plates_file = self.workdir / "plates.json"
        plates_file.write_text(json.dumps(plates if isinstance(plates, dict) else {"entries": plates or []}))
        proc = _spawn("portal", [str(VENV_BIN / "python"), str(ROOT / "deploy/dev/portal_standin.py"),
                                 "--host", "127.0.0.1", "--port", str(self.portal_port),
                                 "--db", str(self.workdir / "portal.sqlite3"), "--gateway-url", self.gateway_url,
                                 "--plates-file", str(plates_file), "--pod-id", self.pod_id], self.workdir,
                      env={"PORTAL_STANDIN_API_KEY": self.api_key, "PORTAL_STANDIN_USER_TOKEN_SECRET": self.secret,
                           "PLATEBRIDGE_GATEWAY_ADMIN_TOKEN": self.admin_token, "PYTHONPATH": str(ROOT)})
        self.procs["portal"] = proc

        def ready():
            if proc.popen.poll() is not None:
                raise ProcessDied(f"portal stand-in exited:\n{proc.tail()}")
            return self.http.get(f"{self.portal_url}/__standin/fault", timeout=1).status_code == 200

        wait_until(ready, timeout, what="portal stand-in")
        return proc

    def gate_openings(self) -> list[dict]:
        """Gate openings at the portal stand-in's Gatewise stand-in, in order."""
        return self.http.get(f"{self.portal_url}/gatewise/__standin/openings", timeout=5).json()["openings"]

    def detections(self) -> list[dict]:
        """What the portal stand-in has received, in arrival order (with a count per event_id)."""
        return self.http.get(f"{self.portal_url}/__standin/detections", timeout=5).json()["detections"]

    def pod_health(self) -> dict:
        """The pod's /health document (from its 127.0.0.1 listener)."""
        return self.http.get(f"http://127.0.0.1:{self.pod_port}/health", timeout=5).json()

    def start_camera(self, timeout: float = 20.0, *, name: str = "camera", port: int | None = None,
                     path: str = "/gate", args: tuple[str, ...] = ()) -> Proc:
        """Start the GStreamer RTSP camera and wait for its READY line. ``name``, ``port``,
        ``path`` and extra camera.py ``args`` (e.g. ``--width``) start another camera next
        to the stack's own (a multi-camera pod): it serves ``rtsp://<camera_host>:<port><path>``."""
        log = self.workdir / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0  # a restarted camera appends: wait for its own line
        proc = _spawn(name, [SYSTEM_PYTHON, str(ROOT / "deploy/dev/camera.py"), "--host", self.camera_host,
                             "--port", str(self.camera_port if port is None else port), "--path", path, *args],
                      self.workdir)
        self.procs[name] = proc

        def ready():
            with open(proc.log, "rb") as fh:
                fh.seek(offset)
                return b"CAMERA READY" in fh.read() or proc.popen.poll() is not None

        wait_until(ready, timeout, what="camera READY")
        if proc.popen.poll() is not None:
            raise ProcessDied(f"camera exited:\n{proc.tail()}")
        return proc

    def pod_config(self) -> dict:
        """The pod's config.yaml content (seed keys + streaming + decision keys)."""
        cfg = {
            "portal_url": self.portal_url,
            "pod_api_key": self.api_key,
            "pod_id": self.pod_id,
            "site_id": "dev-site",
            "company_id": "dev-company",
            "camera_id": self.camera_id,
            "camera_rtsp_url": self.rtsp_url,
            "frigate_camera": self.frigate_camera,
            "enable_streaming": self.streaming,
            "stream_port": self.pod_port,
            "stream_bind": self.pod_host,
            "hls_dir": str(self.hls_dir),
            "hls_segment_seconds": self.segment_seconds,
            "state_dir": str(self.workdir / "state"),
            "recordings_dir": str(self.workdir / "recordings"),
            "rtsp_timeout_seconds": 5,
            "enable_mqtt": "mosquitto" in self.procs,
            "mqtt_host": "127.0.0.1",
            "mqtt_port": self.mqtt_port,
            "heartbeat_interval": 5,
            "record_on_detection": self.streaming,  # without streaming it would capture from RTSP
        }
        if self.legacy:
            cfg["stream_secret"] = self.secret
        else:
            cfg["gateway_public_keys"] = {self.signing_kid: str(self.public_key_file)}
        cfg.update(self.pod_overrides)
        return cfg

    def gateway_config(self) -> dict:
        """The gateway's gateway.yaml content (static discovery), plus ``gateway_overrides``."""
        keys: dict = {"stream_secret": self.secret} if self.legacy else {
            "user_token_secret": self.secret, "grant_secret": self.grant_secret,
            "pod_signing_key_file": str(self.signing_key_file), "pod_signing_key_id": self.signing_kid}
        return {
            **keys,
            "public_base_url": self.gateway_url,
            "pods": {self.pod_id: self.pod_url},
            "host": self.gateway_host,
            "port": self.gateway_port,
            "internal_port": self.gateway_internal_port,
            "admin_token": self.admin_token,
            **self.gateway_overrides,
        }

    @property
    def pod_config_path(self) -> Path:
        """Where :meth:`start_pod` writes the pod's config.yaml."""
        return self.workdir / "pod.yaml"

    @property
    def state_dir(self) -> Path:
        """The pod's ``state_dir`` (outbox.sqlite3, whitelist.json)."""
        return Path(self.pod_config()["state_dir"])

    def write_pod_config(self) -> Path:
        """Write :meth:`pod_config` (with ``pod_overrides``) to :attr:`pod_config_path`."""
        path = self.pod_config_path
        path.write_text(yaml.safe_dump(self.pod_config()))
        return path

    def reload_pod(self) -> None:
        """Rewrite the pod's config file and send the running pod SIGHUP (reload)."""
        self.write_pod_config()
        self.procs["pod"].popen.send_signal(signal.SIGHUP)

    def pod_cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run ``platebridge-pod <args> --config <the pod's config>`` (e.g. ``outbox list``)."""
        return subprocess.run([str(VENV_BIN / "platebridge-pod"), *args, "--config", str(self.pod_config_path)],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def portal_admin(self, path: str, body: dict | None = None) -> dict:
        """POST ``body`` to a stand-in admin endpoint (``/__standin/...``); returns its JSON."""
        r = self.http.post(f"{self.portal_url}{path}", json=body or {}, timeout=10)
        r.raise_for_status()
        return r.json()

    def portal_admin_get(self, path: str) -> dict:
        """GET a stand-in admin endpoint (``/__standin/...``); returns its JSON."""
        r = self.http.get(f"{self.portal_url}{path}", timeout=10)
        r.raise_for_status()
        return r.json()

    def start_pod(self, timeout: float = 30.0, wait_segments: bool = True) -> Proc:
        """Start the pod; wait until ``/health`` reports the camera running."""
        cfg = self.write_pod_config()
        proc = _spawn("pod", [str(VENV_BIN / "platebridge-pod"), "run", "--config", str(cfg)], self.workdir)
        self.procs["pod"] = proc

        def ready():
            if proc.popen.poll() is not None:
                raise ProcessDied(f"pod exited:\n{proc.tail()}")
            health = self.http.get(f"http://127.0.0.1:{self.pod_port}/health", timeout=1).json()
            if "mosquitto" in self.procs and not health.get("mqtt", {}).get("connected"):
                return False
            if not self.streaming or not wait_segments:
                return True
            return health["cameras"][self.camera_id]["state"] == "running"

        wait_until(ready, timeout, what="pod /health running")
        return proc

    def start_gateway(self, timeout: float = 20.0, *, name: str = "gateway", port: int | None = None) -> Proc:
        """Start the gateway; wait for ``/healthz``. ``name`` and ``port`` start another
        instance next to the stack's own (same keys and pods: several gateway hosts behind a
        balancer), with its config in ``<name>.yaml`` and its log in ``<name>.log``."""
        port = self.gateway_port if port is None else port
        cfg = self.workdir / f"{name}.yaml"
        cfg.touch(mode=0o600)  # it holds the user-token secret, grant secret and admin token
        cfg.chmod(0o600)
        settings = {**self.gateway_config(), "port": port}
        if name != "gateway" and "internal_port" not in self.gateway_overrides:
            settings["internal_port"] = free_port("127.0.0.1")  # another instance: its own
        cfg.write_text(yaml.safe_dump(settings))
        own = self.gateway_bin == VENV_BIN / "platebridge-gateway"
        proc = _spawn(name, [str(self.gateway_bin), "--config", str(cfg)], self.workdir,
                      cwd=ROOT if own else self.workdir)
        self.procs[name] = proc

        def ready():
            if proc.popen.poll() is not None:
                raise ProcessDied(f"{name} exited:\n{proc.tail()}")
            return self.http.get(f"http://{self.gateway_host}:{port}/healthz", timeout=1).status_code == 200

        wait_until(ready, timeout, what=f"{name} /healthz")
        return proc

    def user_token(self, ttl: float = 600, user_id: str = "demo-user") -> str:
        """A user stream token as the portal would mint it."""
        return mint_user_token(Keyring.single(self.secret), user_id=user_id, camera_id=self.camera_id,
                               pod_id=self.pod_id, ttl=ttl)

    def watch_url(self, token: str) -> str:
        return f"{self.gateway_url}/watch/{self.camera_id}?token={token}"

    def stop(self) -> None:
        """Stop everything, gateway first, camera last (:meth:`Proc.stop`: each process,
        then whatever of its process group it left behind)."""
        order = ["gateway", "pod", "camera", "portal", "mosquitto"]
        for name in order[:3] + [n for n in self.procs if n not in order] + order[3:]:
            if name in self.procs:
                self.procs[name].stop()
        if self._http is not None:
            self._http.close()
            self._http = None
