#!/usr/bin/env python3
"""Benchmark: plate decisions from Frigate MQTT messages to the portal's POST /api/pod/detect.

    .venv/bin/python bench/decisions.py [--events 300] [--outage 500] [--rate 20] [--repeat 3]
                                        [--hold 0] [--storm-rate 1000] [--storm-seconds 3]
                                        [--storm-events 100] [--storm-latency-rate 5]
                                        [--no-profile] [--no-docs] [--keep]

Real parts, all on loopback (the same wiring as ``tests/e2e/test_decisions.py``, via
``deploy/dev/stack.py``): Debian's mosquitto, the real pod process (``platebridge-pod run``,
streaming off) and the portal stand-in (``deploy/dev/portal_standin.py``) as a real HTTP
server. Frigate is simulated with ``deploy/dev/frigate_sim.py`` (paho).

1. **Latency** — ``--events`` passages at ``--rate`` passages/s (new, update carrying the
   whitelisted plate at score 0.93, the lpr ``tracked_object_update``, end; distinct ids;
   QoS 1). Latency = the stand-in's ``received_at`` for the detection − the wall time just
   before the first plate-carrying message was published. Warm-up passages are excluded.
2. **Outage drain** — the stand-in is stopped, ``--outage`` passages are published, the
   pod's ``/health`` ``outbox.depth`` must reach that number (``--hold`` keeps the stand-in
   down longer); then the stand-in is started again and the time until depth 0 is measured
   (and, from ``received_at``, the rate once delivery has begun). The first round samples
   the pod with py-spy while it drains (``--no-profile`` to skip).
3. **Baseline** — the stand-in's own rate for ``POST /api/pod/detect`` from
   ``outbox_concurrency`` (4) concurrent clients — each its own ``httpx.AsyncClient`` with a
   keep-alive connection, on uvloop (the pod's client library), as many as the pod keeps
   in flight — sending the same bodies and headers as the pod (distinct event ids,
   ``Authorization: Bearer <api key>``, ``Idempotency-Key``): the drain is reported as a
   ratio to it. For reference also one sequential ``httpx.Client`` and one sequential
   ``httpx.AsyncClient``.
   Steps 2 and 3 run ``--repeat`` times, interleaved; the median round is reported. The
   stand-in's audit log is emptied before each drain and baseline (its duplicate check scans
   the whole table, so a growing table would slow later rounds).
4. **Update storm** — ``--storm-rate`` msg/s of Frigate ``events`` ``update`` messages
   (QoS 0, Frigate's default) for a handful of ids for ``--storm-seconds``; the pod's CPU
   time (``/proc/<pid>/stat`` utime + stime) and exactly one detection per id.
5. **Latency under the storm** — ``--storm-events`` passages at ``--storm-latency-rate``/s
   (measured as in 1), first on a quiet broker, then while a separate publisher process sends
   ``--storm-rate`` msg/s of Frigate ``update`` messages (QoS 0) for other tracked objects
   (:data:`STORM_OPEN_IDS` open ones, no plate read yet); p50/p99 with vs without the storm.

Prints a table and (unless ``--no-docs``) replaces/appends the section
"## Plate decisions (MQTT → portal)" of ``docs/benchmarks.md``, keeping every other
section. Every child process is stopped on exit, also on failure or SIGTERM; the work
directory (a temp dir) is removed unless ``--keep``. The machine is usually shared: the CPU
used by other processes during each part is measured and reported with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import (  # noqa: E402
    DOCS,
    cpu_seconds,
    pct,
    system_busy,
    write_section,
)
from bench.common import machine_info as _machine_info  # noqa: E402
from deploy.dev.frigate_sim import Publisher, passage_messages  # noqa: E402
from deploy.dev.stack import Stack, wait_until  # noqa: E402

SECTION_HEADING = "## Plate decisions (MQTT → portal)"
PLATE = "TEST123"
SCORE = 0.93
WHITELIST = [{"plate": PLATE, "unit": "4B", "tenant": "Bench Tenant", "enabled": True}]
GOAL_P50_MS = 50.0
GOAL_DRAIN_PER_S = 200.0
CONCURRENCY = 4  # the pod's outbox_concurrency default (pod/config.py); the baseline uses as many clients
WARMUP = 5
STORM_IDS = 5
STORM_OPEN_IDS = 20  # part 5: tracked objects the background storm updates (open passages, no plate yet)
STANDIN_SCAN = ("deploy/dev/portal_standin.py", "WHERE event_id = ? OR (? IS NOT NULL AND idempotency_key = ?)")
# every run is bounded
MAX_EVENTS = 5_000
MAX_OUTAGE = 5_000
MAX_STORM_SECONDS = 10.0
MAX_STORM_EVENTS = 1_000
DRAIN_TIMEOUT = 180.0  # the pod's retry pause is capped (outbox_retry_max, pod/config.py), drain on top


# ---------------------------------------------------------------------------- helpers
class OtherLoad:
    """CPU used by processes that are not part of the benchmark (the box is shared): machine busy
    time minus the pod, stand-in, mosquitto and this process (with its reaped children)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.t0, self.busy0, self.own0 = time.monotonic(), system_busy(), bench.own_cpu()

    def cores(self) -> float:
        wall = time.monotonic() - self.t0
        other = (system_busy() - self.busy0) - (self.bench.own_cpu() - self.own0)
        return max(0.0, other / wall) if wall > 0 else 0.0


def median_by(items: list, key):
    """The item with the median ``key`` (the lower middle one for an even count)."""
    ranked = sorted(items, key=key)
    return ranked[(len(ranked) - 1) // 2]


def sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


class Bench:
    """The stack plus the measurements (one instance per run)."""

    def __init__(self, workdir: Path, args) -> None:
        self.args = args
        self.stack = Stack(workdir=workdir, streaming=False, pod_overrides={
            "heartbeat_interval": 300,  # no heartbeats during the runs
            "whitelist_refresh_interval": 300,
            "log_level": "INFO",
            # no camera here (streaming off): a clip per decision would only spawn failing ffmpeg runs
            "record_on_detection": False,
            # distinct ids with one plate back to back are separate cars here, not one car's ids
            "passage_window": 0,
        })
        self.http = httpx.Client(timeout=10)
        self.pub: Publisher | None = None
        self.storm_proc = None  # part 5's background storm publisher (a child process)
        self.profile_error = ""
        self.profile_round = 0

    # --- stack access ---
    @property
    def pod_pid(self) -> int:
        return self.stack.procs["pod"].popen.pid

    def own_cpu(self) -> float:
        """CPU seconds of the benchmark's processes (children that exited and were reaped are in
        os.times()' children fields)."""
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        if self.storm_proc is not None and self.storm_proc.poll() is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += cpu_seconds(self.storm_proc.pid)
        for proc in self.stack.procs.values():
            if proc.popen.poll() is None:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += cpu_seconds(proc.popen.pid, children=True)
        return total

    def health(self) -> dict:
        return self.http.get(f"http://127.0.0.1:{self.stack.pod_port}/health").json()

    def depth(self) -> int:
        return int(self.health()["outbox"]["depth"])

    def detections(self) -> dict[str, dict]:
        rows = self.http.get(f"{self.stack.portal_url}/__standin/detections").json()["detections"]
        return {d["event_id"]: d for d in rows}

    def start(self) -> None:
        s = self.stack
        s.start_mosquitto()
        s.start_portal(WHITELIST)
        s.start_pod(timeout=30)
        wait_until(lambda: self.health()["whitelist"]["entries"] >= 1, 15, 0.1, "pod whitelist loaded")
        self.pub = Publisher("127.0.0.1", s.mqtt_port, client_id="bench-frigate")

    def stop(self) -> None:
        if self.storm_proc is not None and self.storm_proc.poll() is None:
            self.storm_proc.kill()
            self.storm_proc.wait()
        if self.pub is not None:
            with contextlib.suppress(Exception):
                self.pub.close()
        self.http.close()
        self.stack.stop()

    def wipe_portal_db(self) -> None:
        """Delete the stopped stand-in's SQLite audit log. Its duplicate check scans the whole
        detections table on every POST (see :data:`STANDIN_SCAN`), so every drain and baseline
        starts from an empty table to stay comparable."""
        assert self.stack.procs["portal"].popen.poll() is not None, "stand-in still running"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                (self.stack.workdir / f"portal.sqlite3{suffix}").unlink()

    def fresh_portal(self) -> None:
        """Restart the stand-in with an empty audit log."""
        self.stack.procs["portal"].stop()
        self.wipe_portal_db()
        self.stack.start_portal(WHITELIST)

    def publish_passage(self, eid: str) -> float:
        """new, update with the plate, lpr update, end; returns the wall time just before
        the first message that carries the plate was published."""
        msgs = passage_messages(PLATE, camera=self.stack.frigate_camera, score=SCORE, event_id=eid)
        new, _plain_update, plate_update, lpr, end = msgs
        self.pub.publish(*new)
        t = time.time()
        self.pub.publish(*plate_update)
        self.pub.publish(*lpr)
        self.pub.publish(*end)
        return t

    def wait_detections(self, ids: list[str], timeout: float, what: str) -> dict[str, dict]:
        want = set(ids)

        def got():
            d = self.detections()
            return d if want <= d.keys() else None

        return wait_until(got, timeout, 0.1, what)

    # --- 1. latency ---
    def run_latency(self) -> dict:
        a = self.args
        for i in range(WARMUP):  # first connection, first decision, imports: not measured
            self.publish_passage(f"bench-warm-{i:03d}")
        self.wait_detections([f"bench-warm-{i:03d}" for i in range(WARMUP)], 20, "warm-up detections")
        ids = [f"bench-lat-{i:05d}" for i in range(a.events)]
        sent: dict[str, float] = {}
        load = OtherLoad(self)
        cpu0, t0 = cpu_seconds(self.pod_pid), time.monotonic()
        for i, eid in enumerate(ids):
            sleep_until(t0 + i / a.rate)
            sent[eid] = self.publish_passage(eid)
        pub_s = time.monotonic() - t0
        det = self.wait_detections(ids, 30 + a.events / a.rate, f"{a.events} detections")
        cpu = cpu_seconds(self.pod_pid) - cpu0
        other = load.cores()
        lat = [(det[e]["received_at"] - sent[e]) * 1000 for e in ids]
        dup = sum(1 for e in ids if det[e]["count"] != 1)
        wrong = sum(1 for e in ids if det[e]["decision"] != "allow")
        return {"n": len(ids), "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": max(lat),
                "min": min(lat), "mean": statistics.fmean(lat), "rate": a.events / pub_s, "dup": dup,
                "not_allow": wrong, "pod_cpu_s": cpu, "other_cores": other}

    # --- 2. outage drain ---
    def outbox_head(self) -> dict | None:
        """The pod's oldest pending outbox row (read-only look at its SQLite file)."""
        path = self.stack.workdir / "state" / "outbox.sqlite3"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT attempts, next_attempt, last_error FROM outbox WHERE state = 'pending' "
                             "ORDER BY id LIMIT 1").fetchone()
        finally:
            db.close()
        return None if row is None else {"attempts": row[0], "next_attempt": row[1], "last_error": row[2]}

    def run_outage(self, rnd: int = 0, profile: bool = False) -> dict:
        m = self.args.outage
        s = self.stack
        assert self.depth() == 0, "outbox not empty before the outage"
        t_down = time.time()
        s.procs["portal"].stop()
        ids = [f"bench-out{rnd}-{i:05d}" for i in range(m)]
        t0 = time.monotonic()
        for eid in ids:  # as fast as QoS 1 publishing goes (the pod's fsync per put is the limit)
            self.publish_passage(eid)
        pub_s = time.monotonic() - t0
        wait_until(lambda: self.depth() >= m, 60 + m / 20, 0.05, f"outbox depth {m}")
        queued_s = time.monotonic() - t0
        if self.args.hold:
            time.sleep(self.args.hold)  # a longer outage: more failed attempts of the head row
        self.wipe_portal_db()
        depth_before = self.depth()
        head_q = self.outbox_head()
        # portal back
        t_spawn = time.time()
        s.start_portal(WHITELIST)
        t_ready = time.time()
        head = self.outbox_head()  # the retry state the pod is in when the portal is back
        load = OtherLoad(self)
        t_poll = time.monotonic()
        spy = None
        prof_window = None
        try:
            while True:
                depth = self.depth()
                if depth == 0:
                    break
                if depth < m and profile and prof_window is None:
                    # delivery has begun: sample the pod while it drains (not during the retry wait)
                    secs = 2 if depth >= 400 else 1
                    self.profile_round = rnd
                    spy = self.start_profile(secs)
                    prof_window = (time.time(), secs)
                if time.monotonic() - t_poll > DRAIN_TIMEOUT:
                    raise TimeoutError(f"outbox not drained after {DRAIN_TIMEOUT:.0f} s (depth {depth})")
                time.sleep(0.02)
            t_empty = time.time()
            other = load.cores()
            profile = self.finish_profile(spy, prof_window, t_empty)
        finally:
            if spy is not None and spy.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(spy.pid, signal.SIGTERM)
                spy.wait(10)
        det = self.wait_detections(ids, 20, f"{m} outage detections")
        recv = sorted(det[e]["received_at"] for e in ids)
        arrived = sorted(ids, key=lambda e: (det[e]["received_at"], e))
        pos = {e: i for i, e in enumerate(arrived)}
        displacement = max(abs(pos[e] - i) for i, e in enumerate(ids))
        first, last = recv[0], recv[-1]
        steady = (m - 1) / (last - first) if last > first else float("inf")
        return {"m": m, "depth": depth_before, "outage_s": t_spawn - t_down, "publish_s": pub_s,
                "queued_s": queued_s, "enqueue_rate": m / queued_s,
                "head_attempts_queued": head_q["attempts"] if head_q else None,
                "head_attempts": head["attempts"] if head else None,
                "head_due_in": head["next_attempt"] - t_ready if head else float("nan"),
                "portal_start_s": t_ready - t_spawn,
                "wait_first_s": first - t_ready, "drain_s": t_empty - t_ready, "rate": m / (t_empty - t_ready),
                "steady_s": last - first, "steady_rate": steady, "dup": sum(1 for e in ids if det[e]["count"] != 1),
                "displacement": displacement, "profile": profile and {**profile, "steady_rate": steady}, "other_cores": other}

    # --- pod profile during the drain (py-spy) ---
    @property
    def profile_file(self) -> Path:
        return self.stack.workdir / "drain-profile.txt"

    def start_profile(self, secs: int):
        import subprocess

        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if not spy:
            self.profile_error = "py-spy is not installed (`.venv/bin/pip install py-spy`)"
            return None
        log = open(self.stack.workdir / "py-spy.log", "wb")  # noqa: SIM115 - owned by the child
        p = subprocess.Popen([spy, "record", "--pid", str(self.pod_pid), "--duration", str(secs), "--rate", "250",
                              "--idle", "--nonblocking", "--format", "raw", "-o", str(self.profile_file)],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        return p

    def finish_profile(self, spy, window, t_empty: float) -> dict | None:
        if spy is None:
            return None
        try:
            spy.wait(window[1] + 30)
        except Exception:
            pass
        if not self.profile_file.exists() or self.profile_file.stat().st_size == 0:
            self.profile_error = "py-spy produced no samples: " + (
                (self.stack.workdir / "py-spy.log").read_text(errors="replace")[-300:])
            return None
        prof = summarise_profile(self.profile_file)
        prof["secs"] = window[1]
        prof["round"] = self.profile_round
        # py-spy needs a moment to attach; samples after t_empty would be idle time, not drain
        prof["drain_left_after_window_s"] = t_empty - (window[0] + window[1])
        return prof

    # --- 3. baseline ---
    def run_baseline(self, n: int, template: dict, rnd: int = 0) -> dict:
        body = {k: v for k, v in template.items() if k not in ("count", "idempotency_key", "received_at")}
        headers = {"Authorization": f"Bearer {self.stack.api_key}", "Content-Type": "application/json",
                   "Accept": "application/json", "User-Agent": "platebridge-bench"}
        url = f"{self.stack.portal_url}/api/pod/detect"
        bad = 0
        with httpx.Client(timeout=10) as c:
            def one(eid: str) -> None:
                nonlocal bad
                b = dict(body, event_id=eid)
                r = c.post(url, content=json.dumps(b, separators=(",", ":")).encode(),
                           headers={**headers, "Idempotency-Key": eid})
                if r.status_code != 200 or r.json().get("duplicate"):
                    bad += 1

            for i in range(10):
                one(f"bench-basewarm{rnd}-{i:03d}")
            times = []
            load = OtherLoad(self)
            t0 = time.perf_counter()
            for i in range(n):
                t1 = time.perf_counter()
                one(f"bench-base{rnd}-{i:05d}")
                times.append((time.perf_counter() - t1) * 1000)
            el = time.perf_counter() - t0
            other = load.cores()
        return {"n": n, "rate": n / el, "p50": pct(times, 50), "p99": pct(times, 99), "bad": bad, "other_cores": other}

    def run_baseline_async(self, n: int, template: dict, rnd: int = 0) -> dict:
        """The same requests through one ``httpx.AsyncClient`` on uvloop, one at a time —
        the client the pod uses (pod/portal.py), without the outbox around it."""

        import uvloop

        body = {k: v for k, v in template.items() if k not in ("count", "idempotency_key", "received_at")}
        headers = {"Authorization": f"Bearer {self.stack.api_key}", "Content-Type": "application/json",
                   "Accept": "application/json", "User-Agent": "platebridge-bench"}
        url = f"{self.stack.portal_url}/api/pod/detect"

        async def go() -> tuple[float, int]:
            bad = 0
            async with httpx.AsyncClient(timeout=10) as c:
                async def one(eid: str) -> None:
                    nonlocal bad
                    r = await c.post(url, content=json.dumps(dict(body, event_id=eid), separators=(",", ":")).encode(),
                                     headers={**headers, "Idempotency-Key": eid})
                    if r.status_code != 200 or r.json().get("duplicate"):
                        bad += 1

                for i in range(10):
                    await one(f"bench-abasewarm{rnd}-{i:03d}")
                t0 = time.perf_counter()
                for i in range(n):
                    await one(f"bench-abase{rnd}-{i:05d}")
                return time.perf_counter() - t0, bad

        el, bad = uvloop.run(go())
        return {"n": n, "rate": n / el, "bad": bad}

    def run_baseline_concurrent(self, n: int, template: dict, rnd: int = 0, clients: int = 4) -> dict:
        """The same requests from ``clients`` concurrent clients — each its own
        ``httpx.AsyncClient`` (one keep-alive connection) on uvloop, taking the next event id
        as soon as its previous request is answered: the most the stand-in serves to that
        many requests in flight, which is what the pod's drain keeps in flight."""

        import uvloop

        body = {k: v for k, v in template.items() if k not in ("count", "idempotency_key", "received_at")}
        headers = {"Authorization": f"Bearer {self.stack.api_key}", "Content-Type": "application/json",
                   "Accept": "application/json", "User-Agent": "platebridge-bench"}
        url = f"{self.stack.portal_url}/api/pod/detect"

        async def go() -> tuple[float, int]:
            bad = 0
            ids = iter([f"bench-cbase{rnd}-{i:05d}" for i in range(n)])
            cs = [httpx.AsyncClient(timeout=10) for _ in range(clients)]
            try:
                async def one(c: httpx.AsyncClient, eid: str) -> None:
                    nonlocal bad
                    r = await c.post(url, content=json.dumps(dict(body, event_id=eid), separators=(",", ":")).encode(),
                                     headers={**headers, "Idempotency-Key": eid})
                    if r.status_code != 200 or r.json().get("duplicate"):
                        bad += 1

                for k, c in enumerate(cs):  # warm every connection
                    await one(c, f"bench-cbasewarm{rnd}-{k:03d}")

                async def client_loop(c: httpx.AsyncClient) -> None:
                    for eid in ids:
                        await one(c, eid)

                t0 = time.perf_counter()
                await asyncio.gather(*(client_loop(c) for c in cs))
                return time.perf_counter() - t0, bad
            finally:
                for c in cs:
                    await c.aclose()

        el, bad = uvloop.run(go())
        return {"n": n, "rate": n / el, "bad": bad, "clients": clients}

    def commit_cost(self, n: int = 300) -> dict:
        """ms per single-row DELETE commit in a scratch SQLite file next to the pod's outbox, set up
        like it (WAL, synchronous=FULL: ``pod.db.open_sqlite``): the fsync each delivered row costs."""
        path = self.stack.workdir / "commit-probe.sqlite3"
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
            db.execute("BEGIN")
            db.executemany("INSERT INTO t (id, body) VALUES (?, ?)", [(i, b"x" * 400) for i in range(n)])
            db.execute("COMMIT")
            times = []
            for i in range(n):
                t1 = time.perf_counter()
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM t WHERE id = ?", (i,))
                db.execute("COMMIT")
                times.append((time.perf_counter() - t1) * 1000)
        finally:
            db.close()
        return {"n": n, "p50": pct(times, 50), "mean": statistics.fmean(times), "p99": pct(times, 99)}

    def standin_scan_cost(self, rows: int = 5000, n: int = 200) -> float:
        """ms per run of the stand-in's duplicate-check query over a ``rows``-row detections
        table (its schema, a scratch file)."""
        db = sqlite3.connect(self.stack.workdir / "scan-probe.sqlite3", isolation_level=None)
        try:
            db.execute("CREATE TABLE detections (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL "
                       "UNIQUE, idempotency_key TEXT, body TEXT NOT NULL, count INTEGER NOT NULL DEFAULT 1, "
                       "received REAL NOT NULL, last_received REAL NOT NULL)")
            db.execute("BEGIN")
            db.executemany("INSERT INTO detections (event_id, idempotency_key, body, received, last_received) "
                           "VALUES (?, ?, ?, 0, 0)", [(f"e{i}", f"e{i}", "{}" ) for i in range(rows)])
            db.execute("COMMIT")
            t0 = time.perf_counter()
            for i in range(n):
                db.execute(f"SELECT seq FROM detections {STANDIN_SCAN[1]}", (f"x{i}", f"x{i}", f"x{i}")).fetchone()
            return (time.perf_counter() - t0) / n * 1000
        finally:
            db.close()

    # --- 4. update storm ---
    def run_storm(self) -> dict:
        """Part 4: the pod's CPU under the update storm (see module docs)."""
        a = self.args
        ids = [f"bench-storm-{i}" for i in range(STORM_IDS)]
        topic = "frigate/events"
        payloads = []
        for eid in ids:
            upd = passage_messages(PLATE, camera=self.stack.frigate_camera, score=SCORE, event_id=eid)[2][1]
            payloads.append(json.dumps(upd).encode())
        total = int(a.storm_rate * a.storm_seconds)
        # idle CPU over the same wall time, for reference
        c0 = cpu_seconds(self.pod_pid)
        time.sleep(a.storm_seconds)
        idle_cpu = cpu_seconds(self.pod_pid) - c0
        msgs0 = self.health()["mqtt"]["messages"]
        # QoS 0 like Frigate's default (mqtt.qos: 0); QoS 1 would make the publisher wait for PUBACKs.
        storm_pub = Publisher("127.0.0.1", self.stack.mqtt_port, client_id="bench-frigate-storm")
        client = storm_pub.client
        batch = max(1, int(a.storm_rate / 100))  # every 10 ms
        load = OtherLoad(self)
        try:
            cpu0, t0 = cpu_seconds(self.pod_pid), time.monotonic()
            sent = 0
            while sent < total:
                sleep_until(t0 + sent / a.storm_rate)
                info = None
                for _ in range(min(batch, total - sent)):
                    info = client.publish(topic, payloads[sent % STORM_IDS], qos=0)
                    sent += 1
                info.wait_for_publish(timeout=10)  # written to the socket
            pub_s = time.monotonic() - t0
            for eid in ids:  # the passages end
                topic_end, end = passage_messages(PLATE, camera=self.stack.frigate_camera, score=SCORE,
                                                  event_id=eid)[-1]
                client.publish(topic_end, json.dumps(end), qos=0).wait_for_publish(timeout=10)
        finally:
            storm_pub.close()
        expect = msgs0 + total + len(ids)
        wait_until(lambda: self.health()["mqtt"]["messages"] >= expect, 60, 0.05, "pod received the storm")
        done_s = time.monotonic() - t0
        cpu = cpu_seconds(self.pod_pid) - cpu0
        other = load.cores()
        got_msgs = self.health()["mqtt"]["messages"] - msgs0
        time.sleep(1.0)  # anything late would show up now
        det = self.detections()
        per_id = {eid: det[eid]["count"] if eid in det else 0 for eid in ids}
        exactly_once = all(c == 1 for c in per_id.values())
        return {"ids": len(ids), "msgs": total, "rate": total / pub_s, "pub_s": pub_s, "done_s": done_s,
                "received": got_msgs, "cpu_s": cpu, "idle_cpu_s": idle_cpu, "cpu_pct": 100 * cpu / done_s,
                "us_per_msg": 1e6 * (cpu - idle_cpu * done_s / a.storm_seconds) / max(1, got_msgs),
                "per_id": per_id, "exactly_once": exactly_once, "other_cores": other}


    # --- 5. latency under the storm ---
    def _latency_series(self, ids: list[str], rate: float) -> dict:
        """Publish one passage per id at ``rate``/s; latency (ms) of each detection as in part 1,
        plus the pod's CPU and the MQTT messages it received meanwhile."""
        sent: dict[str, float] = {}
        msgs0 = self.health()["mqtt"]["messages"]
        cpu0, t0 = cpu_seconds(self.pod_pid), time.monotonic()
        for i, eid in enumerate(ids):
            sleep_until(t0 + i / rate)
            sent[eid] = self.publish_passage(eid)
        pub_s = time.monotonic() - t0
        cpu = cpu_seconds(self.pod_pid) - cpu0
        msgs = self.health()["mqtt"]["messages"] - msgs0
        det = self.wait_detections(ids, 30 + len(ids) / rate, f"{len(ids)} detections")
        lat = [(det[e]["received_at"] - sent[e]) * 1000 for e in ids]
        return {"n": len(ids), "rate": len(ids) / pub_s, "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat),
                "mean": statistics.fmean(lat), "dup": sum(1 for e in ids if det[e]["count"] != 1),
                "not_allow": sum(1 for e in ids if det[e]["decision"] != "allow"),
                "pod_cpu_pct": 100 * cpu / pub_s, "pod_msgs": msgs, "seconds": pub_s}

    def run_storm_latency(self) -> dict:
        """Part 5: the same passages without, then with a background ``update`` storm."""
        import subprocess

        a = self.args
        n, rate = a.storm_events, a.storm_latency_rate
        load = OtherLoad(self)
        quiet = self._latency_series([f"bench-sq-{i:04d}" for i in range(n)], rate)
        quiet["other_cores"] = load.cores()
        seconds = 1.0 + n / rate + 1.0  # the storm starts 1 s before the first passage, ends 1 s after the last
        msgs0 = self.health()["mqtt"]["messages"]
        self.storm_proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--storm-child", "127.0.0.1", str(self.stack.mqtt_port),
             f"{a.storm_rate:g}", f"{seconds:g}", self.stack.frigate_camera],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            assert self.storm_proc.stdout is not None
            line = self.storm_proc.stdout.readline().strip()
            if line != "READY":
                raise RuntimeError(f"storm publisher did not start: {line!r}")
            time.sleep(1.0)
            load = OtherLoad(self)
            stormy = self._latency_series([f"bench-ss-{i:04d}" for i in range(n)], rate)
            stormy["other_cores"] = load.cores()
            out, _ = self.storm_proc.communicate(timeout=seconds + 60)
            child = json.loads(out.strip().splitlines()[-1])
        finally:
            if self.storm_proc.poll() is None:
                self.storm_proc.kill()
                self.storm_proc.wait()
        expect = msgs0 + STORM_OPEN_IDS + child["sent"] + STORM_OPEN_IDS + 4 * n  # new, updates, end; passages
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self.health()["mqtt"]["messages"] >= expect, 20, 0.1, "pod received the storm")
        received = self.health()["mqtt"]["messages"] - msgs0
        return {"quiet": quiet, "storm": stormy, "storm_sent": child["sent"], "storm_rate": child["sent"] / child["seconds"],
                "storm_seconds": child["seconds"], "received": received, "expected": expect - msgs0,
                "storm_pub_cpu_s": child["cpu_s"]}


def storm_child(host: str, port: int, rate: float, seconds: float, camera: str) -> int:
    """Part 5's background publisher (its own process, so its CPU does not delay the latency
    passages in the benchmark process): ``new`` for :data:`STORM_OPEN_IDS` tracked objects, then
    ``update`` messages without a plate for them, round robin, at ``rate``/s for ``seconds``
    (QoS 0, Frigate's default), then ``end`` for each. Prints READY, then a JSON summary."""
    pub = Publisher(host, port, client_id="bench-frigate-storm-bg")
    try:
        ids = [f"bench-bg-{i:02d}" for i in range(STORM_OPEN_IDS)]
        passages = [passage_messages(None, camera=camera, event_id=eid) for eid in ids]
        for msgs in passages:
            pub.client.publish(msgs[0][0], json.dumps(msgs[0][1]), qos=0).wait_for_publish(timeout=10)
        topic = passages[0][1][0]
        payloads = [json.dumps(msgs[1][1]).encode() for msgs in passages]
        print("READY", flush=True)
        total = int(rate * seconds)
        batch = max(1, int(rate / 100))  # every 10 ms
        t0 = time.monotonic()
        sent = 0
        while sent < total:
            sleep_until(t0 + sent / rate)
            info = None
            for _ in range(min(batch, total - sent)):
                info = pub.client.publish(topic, payloads[sent % STORM_OPEN_IDS], qos=0)
                sent += 1
            info.wait_for_publish(timeout=10)
        pub_s = time.monotonic() - t0
        for msgs in passages:
            pub.client.publish(msgs[-1][0], json.dumps(msgs[-1][1]), qos=0).wait_for_publish(timeout=10)
        t = os.times()
        print(json.dumps({"sent": sent, "seconds": pub_s, "cpu_s": t.user + t.system}), flush=True)
        return 0
    finally:
        pub.close()


# ---------------------------------------------------------------------------- profile
PROFILE_CATEGORIES = (
    ("health", "`/health` requests (the bench's 20 ms depth poll)"),
    ("delete", "outbox DELETE + COMMIT with fsync (`Outbox.delete`)"),
    ("select", "outbox SELECTs of due rows (`Outbox.due`, `Outbox.next_due`)"),
    ("http", "HTTP client work (pod/portal.py → httpx, httpcore, anyio)"),
    ("mqtt", "MQTT (aiomqtt/paho)"),
    ("idle", "event loop idle in uvloop (waiting for the stand-in's answer)"),
    ("other", "other Python (body decode/encode, logging, asyncio)"),
)


def _profile_category(frames: list[str]) -> str:
    text = ";".join(frames)
    if "(litestar/" in text or "(uvicorn/" in text or "PodAgent.status" in text:
        return "health"
    if "Outbox.delete" in text or "Outbox._tx" in text:
        return "delete"
    if "Outbox.due" in text or "Outbox.next_due" in text or "Outbox.next_pending" in text:
        return "select"
    if "PortalClient." in text or "(httpx/" in text or "(httpcore/" in text or "(anyio/" in text:
        return "http"
    if "aiomqtt" in text or "(paho/" in text:
        return "mqtt"
    if frames[-1].startswith("Runner.run (asyncio/runners.py"):
        return "idle"
    return "other"


def summarise_profile(raw_file: Path) -> dict:
    """py-spy ``--format raw --idle`` (collapsed stacks with line numbers) of the pod → samples of
    its event-loop thread by category and by innermost pod frame (idle pool threads are left out)."""
    import collections

    cats: collections.Counter[str] = collections.Counter()
    by_pod: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if "(" in f and not f.startswith(("process ", "thread "))]
        if not frames or not any(f.startswith("Runner.run (asyncio/runners.py") for f in frames):
            continue  # not the event-loop thread (e.g. an idle executor worker)
        n = int(count)
        total += n
        cats[_profile_category(frames)] += n
        pod = [f for f in frames if "(pod/" in f and not f.startswith(("main (pod/cli.py", "run_with_config"))]
        if pod:
            by_pod[_short(pod[-1])] += n
    return {"total": total, "cats": cats, "pod": by_pod.most_common(8)}


def _short(frame: str) -> str:
    func, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in loc:
            loc = loc.split(marker, 1)[1]
    return f"{func} ({loc})"


# ---------------------------------------------------------------------------- machine + docs
def machine_info() -> dict[str, str]:
    """Machine facts for the Setup notes (see :func:`bench.common.machine_info`)."""
    return _machine_info(("aiomqtt", "paho-mqtt", "httpx", "litestar", "uvicorn", "uvloop", "msgspec"))


def table(r: dict) -> list[str]:
    """The result table (markdown lines) of one run ``r``."""
    lat, out, base, st = r["latency"], r["outage"], r["baseline"], r["storm"]
    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    n = len(r["rounds"])
    rates = [x["outage"]["rate"] for x in r["rounds"]]
    steadies = [x["outage"]["steady_rate"] for x in r["rounds"]]
    brates = [x["baseline"]["rate"] for x in r["rounds"]]
    crates = [x["baseline"]["concurrent_rate"] for x in r["rounds"]]
    ratio = out["rate"] / base["concurrent_rate"]
    rows = [
        ("MQTT event → detect POST latency",
         f"{lat['n']} passages at {lat['rate']:.1f}/s: p50 **{lat['p50']:.1f} ms**, p99 {lat['p99']:.1f} ms, "
         f"max {lat['max']:.1f} ms (min {lat['min']:.1f}, mean {lat['mean']:.1f})",
         f"p50 ≤ {GOAL_P50_MS:.0f} ms: {ok(lat['p50'] <= GOAL_P50_MS)}"),
        ("Outbox drain after an outage",
         f"{out['m']} queued; portal up → depth 0: **{out['rate']:.0f} detections/s** "
         f"({out['drain_s']:.2f} s; median of {n} round(s): "
         f"{', '.join(f'{x:.0f}' for x in rates)}/s); first delivery {out['wait_first_s']:.2f} s after the portal "
         f"was up; once delivering {out['steady_rate']:.0f}/s (median; rounds "
         f"{', '.join(f'{x:.0f}' for x in steadies)}/s)",
         f"≥ {GOAL_DRAIN_PER_S:.0f}/s: {ok(out['rate'] >= GOAL_DRAIN_PER_S)} "
         f"(steady part: {ok(out['steady_rate'] >= GOAL_DRAIN_PER_S)})"),
        (f"Baseline: {CONCURRENCY} concurrent clients → stand-in",
         f"{base['n']} POST /api/pod/detect from {CONCURRENCY} `httpx.AsyncClient`s on uvloop, one keep-alive "
         f"connection each: **{base['concurrent_rate']:.0f} req/s** (median; rounds "
         f"{', '.join(f'{x:.0f}' for x in crates)}); for reference one sequential `httpx.Client` "
         f"{base['rate']:.0f} req/s (rounds {', '.join(f'{x:.0f}' for x in brates)}; p50 {base['p50']:.2f} ms, "
         f"p99 {base['p99']:.2f} ms) and one sequential `httpx.AsyncClient` {base['async_rate']:.0f} req/s",
         f"drain / {CONCURRENCY}-client baseline **{ratio:.2f}×** (steady part "
         f"{out['steady_rate'] / base['concurrent_rate']:.2f}×); drain / sequential "
         f"{out['rate'] / base['rate']:.2f}×"),
        ("Update storm",
         f"{st['msgs']:,} `update` msgs for {st['ids']} ids at {st['rate']:,.0f} msg/s ({st['pub_s']:.1f} s), "
         f"{st['received']:,} received by the pod; pod CPU **{st['cpu_s']:.2f} s** "
         f"({st['cpu_pct']:.0f}% of one core over {st['done_s']:.1f} s, ≈{st['us_per_msg']:.0f} µs/msg above idle "
         f"{st['idle_cpu_s']:.2f} s/{r['args'].storm_seconds:g} s)",
         f"one detection per id: {'yes' if st['exactly_once'] else 'NO ' + json.dumps(st['per_id'])}"),
    ]
    sl = r.get("storm_latency")
    if sl:
        q, w = sl["quiet"], sl["storm"]
        rows.append(
            ("MQTT event → detect POST latency under the update storm",
             f"{w['n']} passages at {w['rate']:.1f}/s while {sl['storm_sent']:,} `update` msgs for "
             f"{STORM_OPEN_IDS} other tracked objects arrived at {sl['storm_rate']:,.0f} msg/s: p50 **{w['p50']:.1f} ms**, "
             f"p99 **{w['p99']:.1f} ms** (max {w['max']:.1f}) — without the storm, same passages and rate just "
             f"before: p50 {q['p50']:.1f} ms, p99 {q['p99']:.1f} ms (max {q['max']:.1f}); storm ÷ quiet: p50 "
             f"{w['p50'] / q['p50']:.2f}×, p99 {w['p99'] / q['p99']:.2f}×; pod CPU {w['pod_cpu_pct']:.0f}% vs "
             f"{q['pod_cpu_pct']:.0f}% of one core",
             f"p50 ≤ {GOAL_P50_MS:.0f} ms under the storm: {ok(w['p50'] <= GOAL_P50_MS)}"))

    out_lines = ["| measurement | result | goal |", "|---|---|---|"]
    out_lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return out_lines


def docs_section(r: dict) -> str:
    """This benchmark's section of docs/benchmarks.md for the run ``r``."""
    a, info = r["args"], r["info"]
    lat, out, base, st = r["latency"], r["outage"], r["baseline"], r["storm"]
    met_lat = lat["p50"] <= GOAL_P50_MS
    met_drain = out["rate"] >= GOAL_DRAIN_PER_S
    L = [
        SECTION_HEADING, "",
        f"**Goals:** MQTT event → detect POST p50 **≤ {GOAL_P50_MS:.0f} ms**, also under a "
        f"{a.storm_rate:,.0f} msg/s Frigate update storm; outbox drain after a portal outage "
        f"**≥ {GOAL_DRAIN_PER_S:.0f} detections/s**.", "",
        f"**Result:** latency goal {'met' if met_lat else 'NOT met'} (p50 {lat['p50']:.1f} ms"
        + (f"; under the storm p50 {r['storm_latency']['storm']['p50']:.1f} ms, p99 "
           f"{r['storm_latency']['storm']['p99']:.1f} ms against {r['storm_latency']['quiet']['p50']:.1f} / "
           f"{r['storm_latency']['quiet']['p99']:.1f} ms without it: "
           f"{'met' if r['storm_latency']['storm']['p50'] <= GOAL_P50_MS else 'NOT met'}"
           if r.get("storm_latency") else "")
        + f"); drain goal {'met' if met_drain else 'NOT met'} ({out['rate']:.0f}/s from portal-up to an empty outbox, "
        f"{out['rate'] / base['concurrent_rate']:.2f}× the {CONCURRENCY}-concurrent-client baseline measured in the same "
        f"run; {out['steady_rate']:.0f}/s once delivery had started).", "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')} with `.venv/bin/python bench/decisions.py --events {a.events} "
        f"--outage {a.outage} --rate {a.rate:g}{f' --hold {a.hold:g}' if a.hold else ''} --storm-rate {a.storm_rate:g} "
        f"--storm-seconds {a.storm_seconds:g} --storm-events {a.storm_events} --storm-latency-rate "
        f"{a.storm_latency_rate:g} --repeat {a.repeat}` ({r['elapsed']:.0f} s). Drain and baseline ran {a.repeat} "
        "times, interleaved; the table gives the median round.",
        "",
        *table(r), "",
        "### Setup", "",
        f"* Machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}; Python {info['python']}; "
        f"SQLite {info['sqlite']}; mosquitto {info['mosquitto']}; {info['packages']}. Work directory (pod outbox and "
        f"stand-in SQLite files) on {info['fs']}: every commit is a real fsync. Load average before the run: "
        f"{r['loadavg']}. The box is shared: CPU used by processes outside the benchmark, in cores of "
        f"{info['nproc']}, during the latency run {lat['other_cores']:.2f}, the drain {out['other_cores']:.2f}, "
        f"the baseline {base['other_cores']:.2f}, the storm {st['other_cores']:.2f} (all parts share the CPUs with "
        "whatever else runs, so compare them within one run).",
        "* Parts: Debian mosquitto (anonymous, loopback), the real pod (`platebridge-pod run`, streaming off, "
        "`record_on_detection: false` — there is no camera, so clip recording is not part of this path — "
        "INFO logging to a file), the portal stand-in (`deploy/dev/portal_standin.py`, uvicorn, SQLite audit log), "
        "started by `deploy/dev/stack.py`; Frigate simulated with paho (QoS 1, each publish waits for the PUBACK). "
        "Everything shares the machine's CPUs.",
        f"* Latency: per passage `new`, `update` with `recognized_license_plate: [\"{PLATE}\", {SCORE}]`, the lpr "
        "`tracked_object_update`, `end`; the clock starts just before the plate-carrying `update` is published and "
        "stops at the stand-in's `received_at` (same host clock). "
        f"{WARMUP} warm-up passages are excluded. All {lat['n']} arrived exactly once "
        f"(repeats: {lat['dup']}, not allow: {lat['not_allow']}).",
        f"* Outage: the stand-in was stopped (connection refused), {out['m']} passages were published "
        f"({out['publish_s']:.2f} s) and the pod had queued all of them after {out['queued_s']:.2f} s "
        f"({out['enqueue_rate']:.0f} enqueues/s, one fsync'ed SQLite transaction each; median round). Then the "
        "stand-in was started again; drain time = stand-in ready → `/health` `outbox.depth` 0 (polled every "
        "20 ms; each poll is a request the pod's event loop serves too); \"once delivering\" = (rows − 1) / "
        "(last − first `received_at`). Every row arrived exactly once (repeats: "
        f"{sum(x['outage']['dup'] for x in r['rounds'])}); the most places a row arrived away from its enqueue "
        f"position: {max(x['outage']['displacement'] for x in r['rounds'])} (the pod keeps up to {CONCURRENCY} in "
        "flight; pod/worker.py documents the order). "
        "Rounds (outage, then baselines, on the same stack):",
        "",
        "  | round | outage | head row failed attempts at portal-ready | next retry due | first delivery after "
        f"| portal up → empty | once delivering | baseline {CONCURRENCY} clients / sync / async | other CPU (drain / "
        "baseline) |",
        "  |---|---|---|---|---|---|---|---|---|",
        *[f"  | {k + 1} | {x['outage']['outage_s']:.1f} s | {x['outage']['head_attempts']} | "
          f"{x['outage']['head_due_in']:.2f} s | {x['outage']['wait_first_s']:.2f} s | "
          f"{x['outage']['drain_s']:.2f} s = {x['outage']['rate']:.0f}/s | {x['outage']['steady_rate']:.0f}/s | "
          f"{x['baseline']['concurrent_rate']:.0f} / {x['baseline']['rate']:.0f} / "
          f"{x['baseline']['async_rate']:.0f} req/s | "
          f"{x['outage']['other_cores']:.2f} / {x['baseline']['other_cores']:.2f} cores |"
          for k, x in enumerate(r["rounds"])],
        "",
        f"* Baselines, right after each drain, each on an emptied stand-in: {CONCURRENCY} concurrent "
        f"`httpx.AsyncClient`s on uvloop (one keep-alive connection each; as many requests in flight as the pod "
        "keeps), then one sequential `httpx.Client` and one sequential `httpx.AsyncClient` (keep-alive), all "
        f"posting the pod's detect body with fresh event ids and the pod's headers; {base['bad']} failures.",
        "* The stand-in's duplicate check (`SELECT … WHERE event_id = ? OR (? IS NOT NULL AND idempotency_key = ?)`, "
        f"{src(*STANDIN_SCAN)}) cannot use the `event_id` index because of the OR and `idempotency_key` has none: "
        f"every POST scans the whole detections table ({r['scan_ms']:.2f} ms per POST at 5,000 rows on this box, "
        "growing linearly). "
        "So the stand-in's audit log is emptied (while it is down) before every drain and every baseline; "
        "each then starts from an empty table and adds ~500 rows. A harness cost, not the pod's.",
        f"* Storm: {st['ids']} ids, every message an `events` `update` carrying the plate (the first one per id "
        "decides, the rest hit the tracker's closed-id check), published at QoS 0 (Frigate's default `mqtt.qos`); "
        "then `end` for each id. CPU = utime + stime of the "
        "pod process from `/proc/<pid>/stat` from the first storm message until the pod's MQTT counter had all "
        f"of them; idle pod CPU over {a.storm_seconds:g} s measured just before. Detections per id: "
        f"{json.dumps(st['per_id'])}.",
    ]
    sl = r.get("storm_latency")
    if sl:
        q, w = sl["quiet"], sl["storm"]
        L += [
            f"* Latency under the storm: {w['n']} passages (as in the latency run, distinct ids) at "
            f"{a.storm_latency_rate:g}/s, first on a quiet broker, then again while a separate publisher process "
            f"(paho, QoS 0) sent `update` messages without a plate for {STORM_OPEN_IDS} other tracked objects on the "
            f"same camera — opened with `new` just before, so each message goes through the passage tracker's update "
            f"path for an open passage — at {sl['storm_rate']:,.0f} msg/s ({sl['storm_sent']:,} messages over "
            f"{sl['storm_seconds']:.1f} s, from 1 s before the first passage to 1 s after the last; `end` for each "
            f"afterwards). The pod received {sl['received']:,} of the {sl['expected']:,} messages published meanwhile "
            f"(storm `new`/`update`/`end` + passages). Quiet run: {q['n']} arrived, repeats {q['dup']}, not allow {q['not_allow']}; storm "
            f"run: repeats {w['dup']}, not allow {w['not_allow']}. Other processes used {q['other_cores']:.2f} / "
            f"{w['other_cores']:.2f} cores (quiet / storm; the storm publisher and mosquitto count as the benchmark's "
            f"own). The storm publisher itself used {sl['storm_pub_cpu_s']:.1f} s of CPU.",
        ]
    L.append("")
    L += where_time_goes(r)
    return "\n".join(L)


def src(path: str, *needles: str) -> str:
    """``path:line[,line…]`` of the lines of ``ROOT/path`` holding each of ``needles`` (computed
    at run time, so the references stay right when the code moves)."""
    lines = (ROOT / path).read_text().splitlines()
    found = [str(i + 1) for i, line in enumerate(lines) if any(n in line for n in needles)]
    return f"{path}:{','.join(found) or '?'}"


def loc(obj) -> str:
    """``path:first-last`` of a function or method."""
    import inspect

    obj = inspect.unwrap(obj)  # e.g. a @contextmanager
    code, start = inspect.getsourcelines(obj)
    path = Path(inspect.getsourcefile(obj)).resolve().relative_to(ROOT)
    return f"{path}:{start}-{start + len(code) - 1}"


def outbox_backoff() -> tuple[float, float, str]:
    """``(initial, cap, "pod/config.py:N")``: the defaults of ``outbox_retry_initial`` and
    ``outbox_retry_max`` (the pause after a failed delivery), read from the code."""
    from pod.config import PodConfig

    defaults = dict(zip(PodConfig.__struct_fields__[-len(PodConfig.__struct_defaults__):],
                        PodConfig.__struct_defaults__, strict=True))
    return (float(defaults["outbox_retry_initial"]), float(defaults["outbox_retry_max"]),
            src("pod/config.py", "outbox_retry_initial: float", "outbox_retry_max: float"))


def backoff_waits(outages=(5, 30, 120, 600), trials: int = 2000) -> list[tuple[float, float, float]]:
    """For each outage length (s): mean and max seconds the outbox stays idle after the portal is
    back when only the retry timer ends the wait (no heartbeat in between), simulated with the
    pod's own pause schedule (:func:`outbox_backoff`'s defaults, 20 % jitter): a probe at t=0 and
    after each pause; the first probe at or after the end of the outage succeeds."""
    import random

    from pod.backoff import Backoff

    initial, cap, _ = outbox_backoff()
    rng = random.Random(7)
    out = []
    for t_out in outages:
        waits = []
        for _ in range(trials):
            b, t = Backoff(initial, cap, rng=rng), 0.0
            while t < t_out:
                t += b.next_delay()
            waits.append(t - t_out)
        out.append((t_out, statistics.fmean(waits), max(waits)))
    return out


def where_time_goes(r: dict) -> list[str]:
    """The "Where the time goes" notes (markdown lines), with source references computed from the code."""
    from pod.outbox import Outbox, OutboxSource
    from pod.portal import PortalClient
    from pod.worker import Worker

    lat, out, base = r["latency"], r["outage"], r["baseline"]
    b_init, b_cap, b_loc = outbox_backoff()
    per_item_ms = 1000 / out["steady_rate"] if out["steady_rate"] else float("nan")
    conc_ms = 1000 / base["concurrent_rate"]
    base_ms = 1000 / base["rate"]
    commit = base["commit"]
    L = ["### Where the time goes", ""]
    if lat["p50"] > GOAL_P50_MS:
        L += [f"* Latency (goal missed, p50 {lat['p50']:.1f} ms): the path is MQTT → `DecisionEngine.handle` → "
              f"`Outbox.put` (fsync'ed commit on the event loop, {loc(Outbox.put)}) → `Worker.wake` → "
              "`post_detect`.", ""]
    else:
        L += [f"* Latency: p50 {lat['p50']:.1f} ms is well inside the goal: one MQTT hop, the decision, one "
              f"fsync'ed outbox commit (`Outbox.put`, {loc(Outbox.put)}) and one HTTP request (the stand-in "
              "commits with fsync too). The p99/max follow the CPU contention on the shared box (other processes "
              f"used {lat['other_cores']:.2f} of {r['info']['nproc']} cores during this part).", ""]
    L += [
        f"* Drain ({'goal met' if out['rate'] >= GOAL_DRAIN_PER_S else 'goal missed'}): of the {out['drain_s']:.2f} s "
        f"from stand-in-ready to an empty outbox, {out['wait_first_s']:.2f} s passed before the first row was "
        f"delivered; the other {out['steady_s']:.2f} s delivered {out['m']} rows at {out['steady_rate']:.0f}/s = "
        f"{per_item_ms:.2f} ms per row, against {conc_ms:.2f} ms per request for {CONCURRENCY} concurrent clients "
        f"and {base_ms:.2f} ms for one sequential client. How the pod gets there (issue 13):",
        "",
        f"  1. **A few requests in flight.** `Worker._dispatch` ({loc(Worker._dispatch)}) starts up to "
        f"`outbox_concurrency` ({CONCURRENCY}) due rows at once, oldest first (`Outbox.due`, {loc(Outbox.due)}), each "
        f"as its own task (`Worker._one`, {loc(Worker._one)}); a finished row wakes the loop, which fills the slot at "
        "once. So the pod's own work per row (the DELETE commit, the body decode, httpx) overlaps the portal's "
        "answer to the others instead of adding to it, and the drain tracks the concurrent baseline rather than a "
        "sequential one. The idempotency key (`Idempotency-Key` header, the Frigate event id) makes the overlap "
        "safe; the order the portal sees is documented in pod/worker.py (up to concurrency − 1 places early or "
        f"late; this run's worst: {max(x['outage']['displacement'] for x in r['rounds'])} places).",
        f"  2. **The delete of a delivered row does not fsync** (`Outbox.delete`, {loc(Outbox.delete)}, "
        "`synchronous=NORMAL` for that one commit: a power cut can only bring a delivered row back, which the "
        "portal deduplicates). A lone fsync'ed commit costs "
        f"{commit['mean']:.2f} ms mean ({commit['p99']:.2f} ms p99) on this disk; enqueues (`Outbox.put`) still "
        "fsync, as a detection must survive a power cut.",
        "  3. **No head-of-line block, no idle wait after an outage.** A failure pauses the whole queue for "
        f"`outbox_retry_initial` doubling to `outbox_retry_max` ({b_init:g} → {b_cap:g} s, {b_loc}) and gives the "
        "failed row its own, longer delay (`Worker._failed`, "
        f"{loc(Worker._failed)}); the first success afterwards makes every row that waited only for the portal due "
        f"again (`OutboxSource.make_due` → `Outbox.make_due`, {loc(Outbox.make_due)}), as does a heartbeat that "
        "succeeds. This benchmark sets `heartbeat_interval: 300`, so only the retry timer ends an outage here: the "
        f"head row had failed {out['head_attempts']} time(s) when the stand-in was ready and the first delivery came "
        f"{out['wait_first_s']:.2f} s later. Without a heartbeat, that idle time depends on the outage (simulated "
        "with the pod's own schedule) and is bounded by the cap:",
        "",
        "     | outage | idle after the portal is back (retry timer only): mean | max |",
        "     |---|---|---|",
    ]
    waits = backoff_waits()
    for t_out, mean, mx in waits:
        L.append(f"     | {t_out:g} s | {mean:.1f} s | {mx:.1f} s |")
    L += [
        "",
        f"  4. What is left per row is the portal round trip through `PortalClient._request` "
        f"({loc(PortalClient._request)}) and the stand-in's own commit: the {CONCURRENCY}-client baseline is the "
        "ceiling a pod with that many requests in flight can reach against this portal, hence the ratio. "
        f"`OutboxSource.process` ({loc(OutboxSource.process)}) is the whole per-row step: send, then delete.",
        "",
    ]
    prof = out.get("profile")
    if prof and prof["total"]:
        tot = prof["total"]
        per_item_ms = 1000 / prof["steady_rate"]
        L += [f"py-spy (`record --idle --nonblocking --rate 250`, {prof['secs']} s, {tot} samples of the pod's event-loop "
              f"thread) while the outbox drained in round {prof['round'] + 1} ({prof['steady_rate']:.0f} rows/s = "
              f"{per_item_ms:.2f} ms per row)"
              + (" (the queue emptied before the sampling window ended, so the idle share is inflated)"
                 if prof["drain_left_after_window_s"] < 0 else "") + ":", "",
              "| share of wall time | ≈ ms per row | where |", "|---|---|---|"]
        for key, label in PROFILE_CATEGORIES:
            n = prof["cats"].get(key, 0)
            if n:
                L.append(f"| {100 * n / tot:.0f}% | {per_item_ms * n / tot:.2f} | {label} |")
        L += ["", "Innermost pod frames:", "", "| share | frame |", "|---|---|"]
        L += [f"| {100 * n / tot:.1f}% | `{f}` |" for f, n in prof["pod"][:6]]
        L.append("")
    elif r["args"].profile:
        L += [f"(No pod profile: {r.get('profile_error') or 'py-spy gave no samples'}.)", ""]
    return L


# ---------------------------------------------------------------------------- main
def main() -> int:
    """Run the benchmark (see module docs); returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=300, help=f"passages for the latency run (max {MAX_EVENTS})")
    ap.add_argument("--rate", type=float, default=20.0, help="passages per second in the latency run")
    ap.add_argument("--outage", type=int, default=500, help=f"passages queued during the outage (max {MAX_OUTAGE})")
    ap.add_argument("--repeat", type=int, default=3,
                    help="outage + baseline rounds; the tables report the median round (max 5)")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="keep the stand-in down this many more seconds once all rows are queued (max 120)")
    ap.add_argument("--storm-rate", type=float, default=1000.0, help="update messages per second in the storm")
    ap.add_argument("--storm-seconds", type=float, default=3.0, help=f"storm length (max {MAX_STORM_SECONDS:g} s)")
    ap.add_argument("--storm-events", type=int, default=100,
                    help=f"passages measured without and with the background storm (max {MAX_STORM_EVENTS}; 0 = skip)")
    ap.add_argument("--storm-latency-rate", type=float, default=5.0,
                    help="passages per second during the background storm")
    ap.add_argument("--storm-child", nargs=5, metavar=("HOST", "PORT", "RATE", "SECONDS", "CAMERA"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the py-spy sample of the pod during the drain")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, SQLite files)")
    args = ap.parse_args()
    if args.storm_child:
        host, port, rate, seconds, camera = args.storm_child
        return storm_child(host, int(port), float(rate), float(seconds), camera)
    args.events = max(10, min(args.events, MAX_EVENTS))
    args.storm_events = max(0, min(args.storm_events, MAX_STORM_EVENTS))
    if args.storm_events:
        args.storm_events = max(10, args.storm_events)
    args.storm_latency_rate = max(1.0, min(args.storm_latency_rate, 50.0))
    args.outage = max(10, min(args.outage, MAX_OUTAGE))
    args.rate = max(1.0, min(args.rate, 200.0))
    args.storm_rate = max(10.0, min(args.storm_rate, 5000.0))
    args.storm_seconds = max(0.5, min(args.storm_seconds, MAX_STORM_SECONDS))
    args.hold = max(0.0, min(args.hold, 120.0))
    args.repeat = max(1, min(args.repeat, 5))
    loadavg = "?"
    with contextlib.suppress(OSError):
        loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="pb-bench-decisions-"))
    t_start = time.monotonic()
    bench = Bench(workdir, args)
    try:
        print(f"starting mosquitto, portal stand-in and pod in {workdir}", flush=True)
        bench.start()
        print(f"1/5 latency: {args.events} passages at {args.rate:g}/s", flush=True)
        lat = bench.run_latency()
        print(f"    p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms", flush=True)
        rounds = []
        for k in range(args.repeat):
            print(f"2/5 outage {k + 1}/{args.repeat}: stand-in down, {args.outage} passages, stand-in up, drain",
                  flush=True)
            o = bench.run_outage(k, profile=args.profile and k == 0)
            print(f"    queued {o['m']} in {o['queued_s']:.2f} s; outage {o['outage_s']:.1f} s; at portal-ready the "
                  f"head row had {o['head_attempts']} failed attempt(s) (had {o['head_attempts_queued']} just before the restart"
                  f"), next retry due {o['head_due_in']:.2f} s later", flush=True)
            print(f"    drained {o['m']} in {o['drain_s']:.2f} s = {o['rate']:.0f}/s (first delivery after "
                  f"{o['wait_first_s']:.2f} s, then {o['steady_rate']:.0f}/s)", flush=True)
            print(f"3/5 baseline {k + 1}/{args.repeat}: {args.outage} POST /api/pod/detect from {CONCURRENCY} concurrent "
                  "clients, then sequential", flush=True)
            template = bench.detections()[f"bench-out{k}-00000"]
            bench.fresh_portal()
            b = bench.run_baseline(args.outage, template, k)
            bench.fresh_portal()
            b["async_rate"] = bench.run_baseline_async(args.outage, template, k)["rate"]
            bench.fresh_portal()
            cb = bench.run_baseline_concurrent(args.outage, template, k, clients=CONCURRENCY)
            b["concurrent_rate"], b["bad"] = cb["rate"], b["bad"] + cb["bad"]
            bench.fresh_portal()
            print(f"    {b['concurrent_rate']:.0f} req/s ({CONCURRENCY} concurrent httpx.AsyncClient), {b['rate']:.0f} req/s "
                  f"(sequential httpx), {b['async_rate']:.0f} req/s (sequential httpx.AsyncClient)", flush=True)
            rounds.append({"outage": o, "baseline": b})
        out = dict(median_by(rounds, lambda x: x["outage"]["rate"])["outage"])
        out["steady_rate"] = statistics.median(x["outage"]["steady_rate"] for x in rounds)
        if rounds[0]["outage"].get("profile"):
            out["profile"] = rounds[0]["outage"]["profile"]
        base = dict(median_by(rounds, lambda x: x["baseline"]["rate"])["baseline"])
        base["async_rate"] = statistics.median(x["baseline"]["async_rate"] for x in rounds)
        base["concurrent_rate"] = statistics.median(x["baseline"]["concurrent_rate"] for x in rounds)
        base["bad"] = sum(x["baseline"]["bad"] for x in rounds)
        base["commit"] = bench.commit_cost()
        scan_ms = bench.standin_scan_cost()
        prof = out.get("profile")
        if prof and prof["total"]:
            print(f"    pod profile during drain 1 ({prof['total']} samples):")
            for key, label in PROFILE_CATEGORIES:
                if prof["cats"].get(key):
                    print(f"      {100 * prof['cats'][key] / prof['total']:5.1f}%  {label}")
        elif args.profile:
            print(f"    no pod profile: {bench.profile_error or 'py-spy gave no samples'}")
        print(f"    medians: drain {out['rate']:.0f}/s (steady {out['steady_rate']:.0f}/s), baseline {base['rate']:.0f} "
              f"req/s sync, {base['async_rate']:.0f} req/s async; one WAL FULL commit {base['commit']['p50']:.2f} ms "
              "p50", flush=True)
        print(f"4/5 storm: {args.storm_rate:g} update msg/s for {args.storm_seconds:g} s, {STORM_IDS} ids", flush=True)
        st = bench.run_storm()
        print(f"    pod CPU {st['cpu_s']:.2f} s, detections per id {st['per_id']}", flush=True)
        sl = None
        if args.storm_events:
            print(f"5/5 latency under the storm: {args.storm_events} passages at {args.storm_latency_rate:g}/s, quiet, "
                  f"then with {args.storm_rate:g} update msg/s for {STORM_OPEN_IDS} other tracked objects", flush=True)
            sl = bench.run_storm_latency()
            print(f"    quiet p50 {sl['quiet']['p50']:.1f} ms, p99 {sl['quiet']['p99']:.1f} ms; storm "
                  f"({sl['storm_rate']:,.0f} msg/s, {sl['received']:,}/{sl['expected']:,} received) p50 "
                  f"{sl['storm']['p50']:.1f} ms, p99 {sl['storm']['p99']:.1f} ms", flush=True)
        health = bench.health()
        if health["outbox"]["failed"] or health["outbox"]["evicted"]:
            print(f"warning: outbox failed={health['outbox']['failed']} evicted={health['outbox']['evicted']}")
        res = {"args": args, "latency": lat, "outage": out, "baseline": base, "storm": st, "info": machine_info(),
               "rounds": rounds, "scan_ms": scan_ms,
               "loadavg": loadavg, "profile_error": bench.profile_error, "storm_latency": sl,
               "elapsed": time.monotonic() - t_start}
        print()
        print("\n".join(table(res)))
        print(f"\nCPU used by other processes (cores): latency {lat['other_cores']:.2f}, drain {out['other_cores']:.2f}, "
              f"baseline {base['other_cores']:.2f}, storm {st['other_cores']:.2f}")
        if sl:
            print(f"latency goal under the storm p50 ≤ {GOAL_P50_MS:.0f} ms: "
                  f"{'MET' if sl['storm']['p50'] <= GOAL_P50_MS else 'NOT MET'}")
        print(f"\nlatency goal p50 ≤ {GOAL_P50_MS:.0f} ms: {'MET' if lat['p50'] <= GOAL_P50_MS else 'NOT MET'}; "
              f"drain goal ≥ {GOAL_DRAIN_PER_S:.0f}/s: {'MET' if out['rate'] >= GOAL_DRAIN_PER_S else 'NOT MET'} "
              f"({out['rate']:.0f}/s; steady {out['steady_rate']:.0f}/s; baseline {base['rate']:.0f} req/s)")
        if not args.no_docs:
            write_section(docs_section(res), SECTION_HEADING)
            print(f"\nwrote {DOCS}")
        return 0
    except Exception as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        for name, proc in bench.stack.procs.items():
            tail = proc.tail(20)
            if tail:
                print(f"--- {name} log ---\n{tail}", file=sys.stderr)
        return 1
    finally:
        bench.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
