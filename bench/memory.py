#!/usr/bin/env python3
"""Benchmark: memory — gateway RSS with many viewers, pod agent RSS with 1 and 4 cameras.

    .venv/bin/python bench/memory.py [--viewers 500] [--cameras 20] [--hold 20] [--pod-cameras 1,4]
                                     [--settle 10] [--no-gateway] [--no-pod] [--no-docs] [--keep]

1. **Gateway.** ``bench/synthetic_pod.py`` (the real pod HLS app, 127.0.0.2) plays ``--cameras``
   synthetic live cameras (2 s segments of 128,000 bytes); the real ``platebridge-gateway``
   proxies them. RSS (``/proc/<pid>/statm``) is read fresh, then "idle" after one viewer warmed
   the code paths and left, then with a fifth of ``--viewers`` and with all of them
   (``bench/viewers.py``: hls.js-like, distinct users, spread evenly over the cameras, holding
   their sessions and fetching every segment), each step held ``--hold`` s. The gateway's segment
   cache (``platebridge_gateway_cache_bytes``) grows with time, not with viewers, so it is
   subtracted: per-viewer cost = (RSS growth − cache growth) ÷ viewers, and the marginal cost
   between the two viewer counts.
2. **Pod agent.** The GStreamer dev camera (640x360, 15 fps), mosquitto, the portal stand-in
   and the real pod (``platebridge-pod run`` via ``deploy/dev/stack.py``) with 1, then 4 camera
   entries pointing at that camera (its RTSP server runs one pipeline per client). After
   ``--settle`` s of streaming, RSS is sampled for 10 s: the agent process alone (its ffmpeg
   children are reported separately).

Prints tables and replaces the "## Memory" section of ``docs/benchmarks.md`` (unless
``--no-docs``). Every child process is stopped on exit, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    DOCS,
    Procs,
    child_pids,
    install_signal_exit,
    loadavg,
    machine_info,
    machine_line,
    memory_detail,
    proc_name,
    rss_bytes,
    start_camera,
    tree_memory_detail,
    tree_rss_bytes,
    wait_for,
    write_section,
)
from bench.synthetic_pod import SyntheticSetup
from bench.viewers import ViewerStats, watch

HEADING = "## Memory (gateway and pod agent RSS)"
GOAL_PER_VIEWER = 50_000  # bytes
GOAL_POD = 80e6  # bytes
TARGET = 2.0
SEGMENT_BYTES = 128_000
SAMPLE_S = 10.0
JOIN_RATE = 100.0  # viewers joining per second at most


def mb(n: float) -> str:
    """Bytes as MB (10^6), one decimal."""
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------- 1. gateway
def gateway_metric(setup: SyntheticSetup, name: str) -> float:
    """One unlabelled sample from the gateway's /metrics."""
    text = setup.http.get(f"{setup.gateway_url}/metrics").text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else float("nan")


def run_gateway(args, workdir: Path) -> dict:
    """Part 1 (see module docs)."""
    setup = SyntheticSetup(workdir / "gateway", cameras=args.cameras, target=TARGET, segment_bytes=SEGMENT_BYTES)
    setup.workdir.mkdir(parents=True, exist_ok=True)
    try:
        setup.start()
        pid = setup.procs.items["gateway"].pid
        time.sleep(1.0)
        res: dict = {"fresh": tree_rss_bytes(pid)}
        cams = setup.cameras
        first_users = 0

        def add_urls(n: int) -> list[str]:
            nonlocal first_users
            out = []
            for i in range(n):
                cam = cams[(first_users + i) % len(cams)]
                tok = setup.tokens(1, cam, first=first_users + i)[0]
                out.append(f"{setup.gateway_url}/streams/{cam}/index.m3u8?token={tok}")
            first_users += n
            return out

        async def phase(new_urls: list[str], stats: ViewerStats, stop: asyncio.Event, tasks: list) -> float:
            spread = max(TARGET, len(new_urls) / JOIN_RATE)
            tasks += await watch(new_urls, stats, stop, spread=spread, seed=len(tasks) + 1)
            return spread

        async def sample_rss(seconds: float, into: list[int]) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                into.append(tree_rss_bytes(pid))
                await asyncio.sleep(0.5)

        async def session() -> None:
            # warm-up: one viewer on one camera, then nobody
            stats = ViewerStats()
            stop = asyncio.Event()
            tasks: list = []
            await phase(add_urls(1), stats, stop, tasks)
            await asyncio.sleep(2 * TARGET + 1)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(1.0)
            res["idle"] = tree_rss_bytes(pid)
            res["idle_cache"] = await asyncio.to_thread(gateway_metric, setup, "platebridge_gateway_cache_bytes")
            # the viewers
            stats = ViewerStats()
            stop = asyncio.Event()
            tasks = []
            steps = sorted({max(1, args.viewers // 5), args.viewers})
            res["steps"] = []
            have = 0
            try:
                for n in steps:
                    spread = await phase(add_urls(n - have), stats, stop, tasks)
                    have = n
                    await asyncio.sleep(spread + TARGET + 1.0)  # all joined
                    samples: list[int] = []
                    await sample_rss(args.hold, samples)
                    cache = await asyncio.to_thread(gateway_metric, setup, "platebridge_gateway_cache_bytes")
                    active = await asyncio.to_thread(gateway_metric, setup, "platebridge_gateway_active_viewers")
                    res["steps"].append({"viewers": n, "rss_end": samples[-1], "rss_max": max(samples),
                                         "rss_mean": statistics.fmean(samples), "cache": cache, "active": active,
                                         "detail": tree_memory_detail(pid), "segments": stats.segments,
                                         "errors": stats.errors, "missed": stats.missed, "sessions": stats.sessions})
                    print(f"    {n} viewers: gateway RSS {mb(samples[-1])} (max {mb(max(samples))}), cache "
                          f"{mb(cache)}, active viewers {active:.0f}, viewer errors {stats.errors}", flush=True)
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
            res["viewer_errors"] = stats.error_samples
            await asyncio.sleep(3.0)
            res["after"] = tree_rss_bytes(pid)

        try:
            import uvloop

            uvloop.run(session())
        except ImportError:
            asyncio.run(session())
        top = res["steps"][-1]
        low = res["steps"][0]
        res["growth"] = top["rss_end"] - res["idle"]
        res["cache_growth"] = top["cache"] - res["idle_cache"]
        res["per_viewer"] = (res["growth"] - res["cache_growth"]) / top["viewers"]
        if len(res["steps"]) > 1:
            res["marginal"] = ((top["rss_end"] - low["rss_end"]) - (top["cache"] - low["cache"])) / (
                top["viewers"] - low["viewers"])
        return res
    finally:
        setup.stop()


# ---------------------------------------------------------------------------- 2. pod agent
def run_pod(args, workdir: Path) -> list[dict]:
    """Part 2 (see module docs)."""
    from deploy.dev.stack import Stack

    workdir.mkdir(parents=True, exist_ok=True)
    procs = Procs(workdir)
    stack = None
    out = []
    try:
        _cam, rtsp = start_camera(procs, width=640, height=360, fps=15)
        stack = Stack(workdir=workdir / "stack", camera_id="cam-1", streaming=True)
        stack.start_mosquitto()
        stack.start_portal([])
        for n in args.pod_cameras:
            cams = [{"camera_id": f"cam-{i + 1}", "rtsp_url": rtsp, "frigate_camera": f"cam_{i + 1}"} for i in range(n)]
            stack.pod_overrides = {"camera_id": None, "camera_rtsp_url": None, "frigate_camera": None,
                                   "cameras": cams, "log_level": "WARNING"}
            print(f"    pod agent with {n} camera(s): starting", flush=True)
            stack.start_pod(timeout=60)
            pid = stack.procs["pod"].popen.pid

            def all_running(cams=cams) -> bool:
                h = stack.pod_health()
                return all(h["cameras"][c["camera_id"]]["state"] == "running" for c in cams)

            wait_for(all_running, 60, 0.5, f"{n} camera(s) running")
            time.sleep(args.settle)
            agent, ffmpeg, agent_detail = [], [], {}
            end = time.monotonic() + SAMPLE_S
            while time.monotonic() < end:
                agent.append(rss_bytes(pid))
                kids = [k for k in child_pids(pid) if proc_name(k) == "ffmpeg"]
                ffmpeg.append([rss_bytes(k) for k in kids])
                time.sleep(0.5)
            agent_detail = memory_detail(pid)
            ff_pss = sum(memory_detail(k).get("Pss", 0) for k in child_pids(pid) if proc_name(k) == "ffmpeg")
            h = stack.pod_health()
            restarts = sum(c["restarts"] for c in h["cameras"].values())
            row = {"cameras": n, "agent_max": max(agent), "agent_mean": statistics.fmean(agent),
                   "agent_pss": agent_detail.get("Pss", 0), "agent_private": agent_detail.get("Private", 0),
                   "ffmpeg_n": len(ffmpeg[-1]), "ffmpeg_each_max": max((max(s) for s in ffmpeg if s), default=0),
                   "ffmpeg_sum_max": max((sum(s) for s in ffmpeg), default=0), "ffmpeg_pss": ff_pss,
                   "restarts": restarts}
            out.append(row)
            print(f"    agent RSS max {mb(row['agent_max'])} (PSS {mb(row['agent_pss'])}, private "
                  f"{mb(row['agent_private'])}); {row['ffmpeg_n']} ffmpeg, each ≤ {mb(row['ffmpeg_each_max'])}, "
                  f"together ≤ {mb(row['ffmpeg_sum_max'])}; restarts {restarts}", flush=True)
            stack.procs["pod"].stop()
        return out
    finally:
        if stack is not None:
            stack.stop()
        procs.stop_all()


# ---------------------------------------------------------------------------- output
def gateway_table(g: dict, args) -> list[str]:
    """Markdown rows for part 1."""
    L = ["| gateway state | RSS | segment cache | sessions seen in the last 30 s (gauge; warm-up viewer included) |",
         "|---|---|---|---|",
         f"| fresh (started, no request yet) | {mb(g['fresh'])} | – | 0 |",
         f"| idle (after one warm-up viewer left) | {mb(g['idle'])} | {mb(g['idle_cache'])} | 0 |"]
    for s in g["steps"]:
        L.append(f"| {s['viewers']} viewers on {args.cameras} cameras, after {args.hold:g} s | {mb(s['rss_end'])} "
                 f"(max {mb(s['rss_max'])}) | {mb(s['cache'])} | {s['active']:.0f} |")
    L.append(f"| 3 s after the viewers left | {mb(g['after'])} | – | – |")
    L += ["", "| derived | value | goal |", "|---|---|---|",
          f"| growth idle → {g['steps'][-1]['viewers']} viewers | {mb(g['growth'])} | – |",
          f"| of which segment cache | {mb(g['cache_growth'])} | bounded by `cache_max_bytes` (256 MiB) |",
          f"| (growth − cache) ÷ viewers | **{g['per_viewer'] / 1000:.1f} KB per viewer** | < 50 KB: "
          f"{'met' if g['per_viewer'] < GOAL_PER_VIEWER else 'NOT met'} |"]
    if "marginal" in g:
        lo, hi = g["steps"][0]["viewers"], g["steps"][-1]["viewers"]
        L.append(f"| marginal, {lo} → {hi} viewers (cache growth subtracted) | {g['marginal'] / 1000:.1f} KB per "
                 f"viewer | < 50 KB: {'met' if g['marginal'] < GOAL_PER_VIEWER else 'NOT met'} |")
    return L


def pod_table(rows: list[dict]) -> list[str]:
    """Markdown rows for part 2."""
    L = ["| cameras | agent RSS (max of 20 samples) | agent PSS / private | ffmpeg processes | ffmpeg RSS each (max) "
         "| ffmpeg RSS together (max) / PSS together | goal agent ≤ 80 MB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['cameras']} | **{mb(r['agent_max'])}** | {mb(r['agent_pss'])} / {mb(r['agent_private'])} "
                 f"| {r['ffmpeg_n']} | {mb(r['ffmpeg_each_max'])} | {mb(r['ffmpeg_sum_max'])} / {mb(r['ffmpeg_pss'])} "
                 f"| {'met' if r['agent_max'] <= GOAL_POD else 'NOT met'} |")
    return L


def docs_section(g: dict | None, pod: list[dict] | None, args, info: dict, load: str, elapsed: float) -> str:
    """The docs/benchmarks.md section."""
    res = []
    if g:
        res.append(f"gateway {'met' if g['per_viewer'] < GOAL_PER_VIEWER else 'NOT met'} "
                   f"({g['per_viewer'] / 1000:.1f} KB per viewer beyond the segment cache)")
    if pod:
        worst = max(r["agent_max"] for r in pod)
        res.append(f"pod agent {'met' if worst <= GOAL_POD else 'NOT met'} ({mb(worst)} RSS at most)")
    cmd = (f".venv/bin/python bench/memory.py --viewers {args.viewers} --cameras {args.cameras} --hold {args.hold:g} "
           f"--pod-cameras {','.join(str(n) for n in args.pod_cameras)} --settle {args.settle:g}")
    L = [HEADING, "",
         "**Goals:** gateway RSS bounded by the segment cache plus **< 50 KB per viewer**; pod agent "
         "(`platebridge-pod run`, without its ffmpeg children) **≤ 80 MB** RSS (issue 6).", "",
         f"**Result:** {'; '.join(res)}.", "",
         f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')} with `{cmd}` ({elapsed:.0f} s).", ""]
    if g:
        L += [f"### Gateway: {args.viewers} viewers on {args.cameras} cameras", "", *gateway_table(g, args), ""]
    if pod:
        L += ["### Pod agent: 1 and 4 cameras", "", *pod_table(pod), ""]
    L += ["### Setup", "",
          f"* {machine_line(info, extra='ffmpeg ' + info['ffmpeg'] + '; ')} Load average before the run: {load}.",
          "* RSS = `/proc/<pid>/statm` resident pages (shared library pages included); PSS and private (USS) from "
          "`/proc/<pid>/smaps_rollup` show how much of it is the process's own.",
          ]
    if g:
        errs = sum(s["errors"] for s in g["steps"][-1:])
        L += [f"* Gateway: `platebridge-gateway` (granian: a supervisor and its worker processes, one per CPU, RSS summed over them; their host store on /dev/shm is page cache, not RSS; access log off, `cache_max_bytes` 256 MiB) in front of "
              f"`bench/synthetic_pod.py` (the real pod HLS app on 127.0.0.2) playing {args.cameras} live cameras, "
              f"{TARGET:g} s segments of {SEGMENT_BYTES:,} bytes (≈ 0.5 Mbit/s each). Viewers: `bench/viewers.py` in "
              "the benchmark process (hls.js-like: JWT → 302 → grant, the init segment, then every segment, playlist "
              f"reload every target duration), a distinct user each, spread evenly over the cameras, joining at most "
              f"{JOIN_RATE:g} per second; each step held "
              f"{args.hold:g} s after everyone joined, RSS sampled every 0.5 s. Viewer errors at the last step: {errs}"
              + (f" (first: {'; '.join(g['viewer_errors'][:2])})" if g.get("viewer_errors") else "") + ".",
              "* The segment cache is the only thing meant to grow with time (every segment of every camera is kept "
              "until the 256 MiB bound evicts the oldest); it is subtracted, and what is left is per-viewer state "
              "(sessions in `_viewers`, memoised grants — up to 10,000, then cleared — connections and uvicorn "
              "protocol objects) plus allocator slack (freed memory CPython/glibc keep for reuse, which is why RSS "
              "does not drop when the viewers leave).",
              ]
    if pod:
        L += ["* Pod agent: the real `platebridge-pod run` (via `deploy/dev/stack.py`: mosquitto, the portal "
              "stand-in, MQTT connected, HLS on 127.0.0.2, log level WARNING) with `cameras:` entries that all point "
              "at one GStreamer dev camera (640x360, 15 fps, H.264, 1 s GOP); each camera is one `ffmpeg -c copy` "
              f"child writing fMP4 HLS. Sampled every 0.5 s for {SAMPLE_S:g} s after {args.settle:g} s of "
              "streaming. No viewers, no plate traffic. ffmpeg restarts during the run: "
              + ", ".join(f"{r['cameras']} camera(s): {r['restarts']}" for r in pod) + "."]
    return "\n".join(L)


def main() -> int:
    """Run the benchmark (see module docs)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--viewers", type=int, default=500, help="gateway viewers (max 2000)")
    ap.add_argument("--cameras", type=int, default=20, help="synthetic cameras behind the gateway (max 100)")
    ap.add_argument("--hold", type=float, default=20.0, help="seconds each viewer step is held (max 120)")
    ap.add_argument("--pod-cameras", default="1,4", help="camera counts for the pod agent")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds of streaming before the pod is sampled")
    ap.add_argument("--no-gateway", action="store_true", help="skip part 1")
    ap.add_argument("--no-pod", action="store_true", help="skip part 2")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    args.viewers = max(2, min(args.viewers, 2000))
    args.cameras = max(1, min(args.cameras, 100))
    args.hold = max(3.0, min(args.hold, 120.0))
    args.settle = max(0.0, min(args.settle, 120.0))
    args.pod_cameras = [max(1, min(int(x), 16)) for x in args.pod_cameras.split(",") if x.strip()]
    install_signal_exit()
    load = loadavg()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pb-bench-mem-"))
    g = pod = None
    try:
        if not args.no_gateway:
            print(f"1/2 gateway: {args.viewers} viewers on {args.cameras} synthetic cameras ({workdir})", flush=True)
            g = run_gateway(args, workdir)
        if not args.no_pod:
            print(f"2/2 pod agent with {', '.join(str(n) for n in args.pod_cameras)} camera(s)", flush=True)
            pod = run_pod(args, workdir / "pod")
        elapsed = time.monotonic() - t0
        print()
        if g:
            print("\n".join(gateway_table(g, args)))
            print()
        if pod:
            print("\n".join(pod_table(pod)))
        print(f"\n({elapsed:.0f} s)")
        if not args.no_docs:
            info = machine_info(("litestar", "uvicorn", "uvloop", "httpx", "aiomqtt", "prometheus_client"))
            write_section(docs_section(g, pod, args, info, load, elapsed), HEADING)
            print(f"wrote {DOCS}")
        return 0
    except Exception as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        for log in sorted(workdir.rglob("*.log")):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            if tail:
                print(f"--- {log.relative_to(workdir)} ---\n{tail}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
