"""Helpers shared by the benchmarks in ``bench/`` (development only, not shipped).

* statistics and ``/proc`` readings: :func:`pct`, :func:`cpu_seconds`, :func:`system_busy`,
  :func:`rss_bytes`, :func:`memory_detail`, :func:`child_pids`, :func:`loadavg`;
* :func:`machine_info` for the "Setup" notes;
* :func:`splice_section` / :func:`write_section`: replace one ``## `` section of
  ``docs/benchmarks.md`` and keep every other one;
* :class:`Procs`: child processes in their own sessions, stopped (whole process group)
  on exit, also on Ctrl-C or an exception;
* :func:`start_camera`: the GStreamer dev camera (``deploy/dev/camera.py``) at a chosen
  size and frame rate.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DOCS = Path(os.environ.get("PB_BENCH_DOCS") or ROOT / "docs" / "benchmarks.md")  # env: write elsewhere (trial runs)
VENV_BIN = ROOT / ".venv" / "bin"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3-gi (GStreamer bindings) lives here
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------- numbers
def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0..100) of ``values``."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of ``pid`` in seconds (/proc/<pid>/stat fields 14 and 15); with ``children``
    also cutime + cstime (16, 17: its exited, reaped children)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()  # fields from #3 (state) on
    n = 4 if children else 2
    return sum(int(f) for f in fields[11:11 + n]) / CLK_TCK


def system_busy() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs; /proc/stat minus idle and iowait)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (/proc/<pid>/statm, shared library pages included)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def memory_detail(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss`` and ``Private`` (= USS: private clean + dirty) of ``pid`` in bytes, from
    /proc/<pid>/smaps_rollup; empty when the kernel does not provide it."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    if out:
        out["Private"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads' ``/proc/<pid>/task/<tid>/children``)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids += [int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return kids


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its live descendants (a server's worker processes: granian, the gateway's
    default, serves from a forked worker, so the process that was started is only its supervisor)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo += child_pids(p)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` summed over :func:`tree_pids` (processes that vanish meanwhile count 0)."""
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError, ValueError):
            total += cpu_seconds(p)
    return total


def tree_rss_bytes(pid: int) -> int:
    """:func:`rss_bytes` summed over :func:`tree_pids` (pages a forked worker still shares with its
    supervisor count twice; :func:`tree_memory_detail`'s ``Pss`` does not)."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += rss_bytes(p)
    return total


def tree_memory_detail(pid: int) -> dict[str, int]:
    """:func:`memory_detail` summed over :func:`tree_pids`."""
    out: dict[str, int] = {}
    for p in tree_pids(pid):
        for k, v in memory_detail(p).items():
            out[k] = out.get(k, 0) + v
    return out


def proc_name(pid: int) -> str:
    """The ``comm`` name of ``pid`` ("" if it is gone)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def loadavg() -> str:
    """The 1/5/15-minute load averages as one string ("?" if unknown)."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def fmt_mb(n: float) -> str:
    """Bytes as MB (10^6) with one decimal."""
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------- machine
def _first_line(cmd: list[str]) -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return ((out.stdout + out.stderr).splitlines() or ["?"])[0]
    return "?"


def machine_info(packages: tuple[str, ...] = ("httpx", "litestar", "uvicorn", "uvloop", "msgspec")) -> dict[str, str]:
    """Machine and software facts for a benchmark's "Setup" notes: ``nproc``, ``cpu``, ``kernel``,
    ``python``, ``packages`` (versions of ``packages``), ``mosquitto``, ``ffmpeg``, ``fs`` (file
    system of the temp dir) and ``sqlite``."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    pkgs = {}
    for name in packages:
        with contextlib.suppress(Exception):
            pkgs[name] = version(name)
    first = _first_line([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"])
    mosq = first.split("version", 1)[1].strip() if "version" in first else first
    ff = _first_line([shutil.which("ffmpeg") or "ffmpeg", "-version"])
    ff = ff.split()[2] if ff.startswith("ffmpeg version") else ff
    fs = "?"
    with contextlib.suppress(OSError):  # the file system of the longest mount point holding the temp dir
        tmp, best = os.path.realpath(tempfile.gettempdir()), ""
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mnt, typ, *_ = line.split()
            if (tmp == mnt or tmp.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fs = mnt, typ
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "packages": ", ".join(f"{k} {v}" for k, v in pkgs.items()), "mosquitto": mosq, "ffmpeg": ff, "fs": fs,
            "sqlite": sqlite3.sqlite_version}


def machine_line(info: dict[str, str], *, extra: str = "") -> str:
    """One "Machine: …" sentence from :func:`machine_info`."""
    return (f"Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}; Python {info['python']}; "
            f"{extra}{info['packages']}.")


# ---------------------------------------------------------------------------- docs
def _sections(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """Split markdown ``lines`` into the preamble (title, intro) and one chunk per ``## `` section
    (each from its heading to the next ``## `` heading; headings inside code fences do not count)."""
    heads, fence = [], False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and line.startswith("## "):
            heads.append(i)
    first = heads[0] if heads else len(lines)
    bounds = heads + [len(lines)]
    return lines[:first], [lines[bounds[j]:bounds[j + 1]] for j in range(len(heads))]


def splice_section(doc: str, section: str, heading: str, *, title: str = "# Benchmarks") -> str:
    """``doc`` with its ``## `` section starting with ``heading`` (up to the next ``## `` heading)
    replaced in place by ``section``; appended when missing. Everything else is kept."""
    preamble, chunks = _sections(doc.rstrip("\n").splitlines())
    mine = section.strip("\n").splitlines()
    out, placed = [], False
    for chunk in chunks:
        if chunk[0].startswith(heading):
            if not placed:
                out.append(mine)
                placed = True
            continue  # a stale second copy is dropped
        out.append(chunk)
    if not placed:
        out.append(mine)
    if not any(line.startswith("# ") for line in preamble):
        preamble = [title] + preamble

    def trim(block: list[str]) -> str:
        return "\n".join(block).strip("\n")

    return "\n\n".join(t for t in (trim(preamble), *(trim(c) for c in out)) if t) + "\n"


def write_section(section: str, heading: str, docs: Path = DOCS) -> None:
    """Replace (or append) the section ``heading`` of ``docs`` (default docs/benchmarks.md) with
    ``section``, re-reading the file just before writing so concurrent edits of other sections
    are kept."""
    old = docs.read_text() if docs.exists() else ""
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(splice_section(old, section, heading))


# ---------------------------------------------------------------------------- processes
def child_env(**extra: str) -> dict[str, str]:
    """The environment for benchmark children: no PlateBridge overrides, no HTTP proxies."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PLATEBRIDGE_") and k != "POD_STREAM_SECRET"
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Procs:
    """Child processes started by a benchmark, each in its own session (so Ctrl-C in the terminal
    reaches only the benchmark, which then stops them, and :meth:`stop` reaches their own
    children too). Logs go to ``<workdir>/<name>.log``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.items: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
              stdout_pipe: bool = False) -> subprocess.Popen:
        """Start ``args`` as ``name`` (stdout+stderr to its log, or stdout to a pipe)."""
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        p = subprocess.Popen(args, stdout=subprocess.PIPE if stdout_pipe else log, stderr=log,
                             stdin=subprocess.DEVNULL, env=env if env is not None else child_env(), cwd=ROOT,
                             start_new_session=True)
        log.close()
        self.items[name] = p
        return p

    def log_tail(self, name: str, n: int = 20) -> str:
        """The last ``n`` lines of a child's log."""
        with contextlib.suppress(OSError):
            return "\n".join((self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop one child: ``sig`` to its process group, SIGKILL after ``timeout`` s."""
        p = self.items.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)  # the group of this child only (its own session)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)  # leftovers in its group
        if p.stdout is not None:
            p.stdout.close()

    def stop_all(self) -> None:
        """Stop every child, newest first."""
        for name in reversed(list(self.items)):
            self.stop(name)


def install_signal_exit() -> None:
    """Turn SIGTERM and SIGHUP into ``SystemExit`` so ``finally`` blocks stop the children
    (Ctrl-C already raises KeyboardInterrupt)."""
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate()`` until it returns something truthy (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last})" if last else ""))


def start_camera(procs: Procs, *, name: str = "camera", width: int = 640, height: int = 360, fps: int = 15,
                 pattern: str = "ball", host: str = "127.0.0.1", timeout: float = 20.0) -> tuple[subprocess.Popen, str]:
    """Start the GStreamer dev camera (``deploy/dev/camera.py``, H.264, 1 s GOP, videotestsrc
    ``pattern``) on a free port; return the process and its RTSP URL once it printed ``CAMERA READY``."""
    p = procs.spawn(name, [SYSTEM_PYTHON, str(ROOT / "deploy/dev/camera.py"), "--host", host, "--port", "0",
                           "--path", "/gate", "--width", str(width), "--height", str(height), "--fps", str(fps),
                           "--pattern", pattern], stdout_pipe=True)
    assert p.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if p.poll() is not None:
                    break
                continue
            line = p.stdout.readline().decode(errors="replace").strip()
            if line.startswith("CAMERA READY "):
                return p, line.split(" ", 2)[2]
            if not line and p.poll() is not None:
                break
    finally:
        sel.close()
    raise RuntimeError(f"camera did not start:\n{procs.log_tail(name)}")
