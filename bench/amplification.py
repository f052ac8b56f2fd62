#!/usr/bin/env python3
"""Benchmark: upstream amplification — pod fetches per segment and per playlist period for
N simulated viewers, through the gateway and through a naive pass-through proxy.

    .venv/bin/python bench/amplification.py [--viewers 1,10,100,500] [--window 20] [--target 2]
                                            [--segment-bytes 128000] [--no-docs] [--keep]

Real processes on loopback:

* pod      — ``bench/synthetic_pod.py``: the real ``pod.hls_server`` app (token checks
             included) on 127.0.0.2, one synthetic live camera whose playlist advances every
             ``--target`` seconds, and a counting wrapper that logs every request with its
             source address;
* gateway  — ``platebridge-gateway`` (static discovery → the pod, access log off);
* baseline — ``bench/naive_proxy.py``: forwards every request to the pod with httpx, no
             cache; it connects from 127.0.0.3 so the pod's log tells the two apart.

For each N, N hls.js-like viewers (``bench/viewers.py``: JWT → 302 → grant URL, reload the
playlist every target duration, each new segment fetched once) watch through the gateway,
then the same N through the baseline, against the same pod. Counted over a ``--window`` of
steady state: pod fetches of each segment published in the window, and pod playlist fetches
per half target duration (the gateway's shared-fetch period). Prints a table and replaces the
"## Upstream amplification" section of ``docs/benchmarks.md`` (unless ``--no-docs``). Every
child process is stopped on exit, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
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
    cpu_seconds,
    install_signal_exit,
    loadavg,
    machine_info,
    machine_line,
    pct,
    system_busy,
    tree_cpu_seconds,
    write_section,
)
from bench.synthetic_pod import GW_HOST, NAIVE_SOURCE, POD_HOST, SyntheticSetup
from bench.viewers import ViewerStats, watch

HEADING = "## Upstream amplification (gateway vs naive proxy)"
MAX_VIEWERS = 2000
JOIN_RATE = 100.0  # viewers joining per second at most
MAX_WINDOW = 60.0
_SEG = re.compile(r"/seg_(\d+)\.m4s$")


def join_seconds(n: int, td: float) -> float:
    """How long the N viewers take to join: over one target duration, at most 100 per second
    (a crowd of 500 arriving within 2 s is not what a gate site sees, and it would only measure
    the join burst)."""
    return max(td, n / JOIN_RATE)


def run_pass(setup: SyntheticSetup, args, which: str, n: int) -> dict:
    """N viewers through ``which`` ("gateway" or "naive") for one window; the pod's view of it."""
    a = args
    td = a.target
    port = setup.gw_port if which == "gateway" else setup.naive_port
    source = GW_HOST if which == "gateway" else NAIVE_SOURCE
    proxy_pid = setup.procs.items[which].pid
    pod_pid = setup.procs.items["pod"].pid
    cam = setup.cameras[0]
    urls = [f"http://{GW_HOST}:{port}/streams/{cam}/index.m3u8?token={t}" for t in setup.tokens(n, cam)]
    stats = ViewerStats()
    mark: dict[str, float] = {}
    join_s = join_seconds(n, td)

    async def session() -> None:
        stop = asyncio.Event()
        tasks = await watch(urls, stats, stop, spread=join_s, seed=n)
        try:
            await asyncio.sleep(join_s + td + 1.0)  # every viewer has joined and settled into its reload cycle
            mark["w0"], mark["cpu_proxy0"], mark["cpu_pod0"] = time.time(), tree_cpu_seconds(proxy_pid), cpu_seconds(pod_pid)
            t = os.times()
            mark["own0"], mark["busy0"] = t.user + t.system, system_busy()
            seg0, pl0 = stats.segments, stats.playlists
            await asyncio.sleep(a.window)
            mark["w1"], mark["cpu_proxy1"], mark["cpu_pod1"] = time.time(), tree_cpu_seconds(proxy_pid), cpu_seconds(pod_pid)
            t = os.times()
            mark["own1"], mark["busy1"] = t.user + t.system, system_busy()
            mark["viewer_segments"], mark["viewer_playlists"] = stats.segments - seg0, stats.playlists - pl0
            await asyncio.sleep(td + 1.0)  # segments published just before w1 are fetched too
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        import uvloop

        uvloop.run(session())
    except ImportError:
        asyncio.run(session())
    log = setup.pod_log()
    w0, w1 = mark["w0"], mark["w1"]
    wall = w1 - w0
    published = [(s, t) for s, t in log["published"] if w0 <= t < w1]
    seg_counts: collections.Counter[int] = collections.Counter()
    playlist_times, inits, other_status = [], 0, collections.Counter()
    for t, client, path, status in log["requests"]:
        if client != source:
            continue
        if status not in (200, 304):
            other_status[status] += 1
        m = _SEG.search(path)
        if m and status == 200:
            seg_counts[int(m.group(1))] += 1
        elif path.endswith("/index.m3u8") and status == 200 and w0 <= t < w1:
            playlist_times.append(t)
        elif path.endswith("/init.mp4"):
            inits += 1
    per_seg = [seg_counts[s] for s, _ in published]
    served = [stats.by_seq[s] for s, _ in published]
    playlist_times.sort()
    gaps = [b - a_ for a_, b in itertools.pairwise(playlist_times)]
    # rate between the first and the last fetch inside the window (no ±1 edge effect from where the window starts)
    if len(playlist_times) >= 2:
        per_half = (len(playlist_times) - 1) * (td / 2) / (playlist_times[-1] - playlist_times[0])
    else:
        per_half = len(playlist_times) / (wall / (td / 2))
    busy = mark["busy1"] - mark["busy0"]
    own = mark["own1"] - mark["own0"]
    proxy_cpu = mark["cpu_proxy1"] - mark["cpu_proxy0"]
    pod_cpu = mark["cpu_pod1"] - mark["cpu_pod0"]
    return {
        "which": which, "n": n, "window_s": wall, "segments_published": len(published),
        "fetches_per_segment": statistics.fmean(per_seg) if per_seg else float("nan"),
        "fetches_min": min(per_seg, default=0), "fetches_max": max(per_seg, default=0),
        "playlist_fetches": len(playlist_times),
        "playlist_per_half_td": per_half,
        "served_per_segment": statistics.fmean(served) if served else float("nan"),
        "playlist_min_gap_s": min(gaps) if gaps else float("nan"),
        "inits": inits, "bad_status": dict(other_status),
        "viewer_segments": mark["viewer_segments"], "viewer_playlists": mark["viewer_playlists"],
        "sessions": stats.sessions, "errors": stats.errors, "error_samples": stats.error_samples,
        "missed": stats.missed,
        "seg_p50": pct(stats.segment_ms, 50) if stats.segment_ms else float("nan"),
        "seg_p99": pct(stats.segment_ms, 99) if stats.segment_ms else float("nan"),
        "proxy_cpu_pct": 100 * proxy_cpu / wall, "pod_cpu_pct": 100 * pod_cpu / wall,
        "viewers_cpu_pct": 100 * own / wall,
        "other_cores": max(0.0, busy - proxy_cpu - pod_cpu - own) / wall,
    }


def playlist_ok(r: dict, td: float) -> bool:
    """At most one pod playlist fetch per half target duration: every two fetches at least
    ``td / 2`` apart (so the rate cannot exceed 1)."""
    gap = r["playlist_min_gap_s"]
    return r["playlist_fetches"] <= 1 or (gap == gap and gap >= td / 2)


# ---------------------------------------------------------------------------- output
def _r(x: float) -> str:
    return "–" if x != x else f"{x:.2f}"


def table(rows: list[dict]) -> list[str]:
    """The main table (pod fetches) as markdown lines."""
    by = {(r["n"], r["which"]): r for r in rows}
    L = ["| viewers N | gateway: pod fetches / segment | gateway: pod playlist fetches / half target duration "
         "| naive: pod fetches / segment | naive: pod playlist fetches / half target duration "
         "| naive ÷ gateway (segments / playlists) |",
         "|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in rows}):
        if (n, "gateway") not in by or (n, "naive") not in by:
            continue
        g, v = by[(n, "gateway")], by[(n, "naive")]
        L.append(f"| {n} | **{g['fetches_per_segment']:.2f}** (min {g['fetches_min']}, max {g['fetches_max']}) "
                 f"| **{g['playlist_per_half_td']:.2f}** | {v['fetches_per_segment']:.2f} | {v['playlist_per_half_td']:.2f} "
                 f"| {v['fetches_per_segment'] / g['fetches_per_segment']:.1f}× / "
                 f"{v['playlist_per_half_td'] / g['playlist_per_half_td']:.1f}× |")
    return L


def side_table(rows: list[dict]) -> list[str]:
    """Viewer experience and CPU, same passes."""
    L = ["| viewers N | through | segments in window | segments served to viewers / segment | viewer segment GET "
         "p50 / p99 (ms) | viewer errors / missed segments | proxy CPU | pod CPU | viewers' CPU | other load |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['n']} | {r['which']} | {r['segments_published']} | {r['served_per_segment']:.1f} "
                 f"| {_r(r['seg_p50'])} / {_r(r['seg_p99'])} "
                 f"| {r['errors']} / {r['missed']} | {r['proxy_cpu_pct']:.0f}% | {r['pod_cpu_pct']:.0f}% "
                 f"| {r['viewers_cpu_pct']:.0f}% | {r['other_cores']:.2f} cores |")
    return L


def docs_section(rows: list[dict], args, info: dict, load: str, elapsed: float) -> str:
    """The docs/benchmarks.md section."""
    gw = [r for r in rows if r["which"] == "gateway"]
    seg_ok = all(abs(r["fetches_per_segment"] - 1.0) < 1e-9 for r in gw)
    pl_ok = all(playlist_ok(r, args.target) for r in gw)
    worst_seg = max(r["fetches_per_segment"] for r in gw)
    worst_pl = max(r["playlist_per_half_td"] for r in gw)
    big = max(rows, key=lambda r: (r["n"], r["which"] == "naive"))
    big_g = next(r for r in gw if r["n"] == big["n"])
    L = [
        HEADING, "",
        "**Goals:** **1.0** pod fetch per segment and **≤ 1** pod playlist fetch per half target duration, "
        "whatever the number of viewers (issue 6).", "",
        f"**Result:** {'met' if seg_ok and pl_ok else 'NOT met'} — through the gateway the pod served each segment "
        f"{worst_seg:.2f} time(s) at most (mean over the segments of the window) and at most {worst_pl:.2f} playlist "
        f"fetches per half target duration, for every N. Through the naive proxy, both grow with N: at N = "
        f"{big['n']} the pod served each segment {big['fetches_per_segment']:.0f} times and "
        f"{big['playlist_per_half_td']:.0f} playlists per half target duration"
        + (" (a lower bound: the naive proxy itself was overloaded, see below)." if big["errors"] else "."), "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')} with `.venv/bin/python bench/amplification.py --viewers "
        f"{','.join(str(n) for n in args.viewers)} --window {args.window:g} --target {args.target:g} "
        f"--segment-bytes {args.segment_bytes}` ({elapsed:.0f} s).", "",
        *table(rows), "",
        "Same passes, what the viewers saw and what it cost (CPU as % of one core over the window; the "
        "viewers run in the benchmark process):", "",
        *side_table(rows), "",
        "### Setup", "",
        f"* {machine_line(info)} Load average before the run: {load}. Everything shares the 2 CPUs: "
        "compare the two proxies within a row, not across runs.",
        f"* Pod: `bench/synthetic_pod.py` — the real `pod.hls_server.create_hls_app` (gateway→pod token "
        f"checked on every request) under uvicorn on {POD_HOST}, one synthetic live camera: every "
        f"{args.target:g} s a new {args.segment_bytes:,}-byte `seg_<n>.m4s` and a new `index.m3u8` (6 segments, "
        f"`EXT-X-TARGETDURATION:{args.target:g}`, fMP4 with `EXT-X-MAP`), written atomically. A wrapper logs every "
        "`/cameras/…` request (time, source address, path, status); that log is what is counted.",
        "* Gateway: `platebridge-gateway`, static discovery, access log off, defaults otherwise (shared playlist "
        "fetch per half target duration, single-flight segment cache 256 MiB).",
        f"* Naive baseline: `bench/naive_proxy.py` (~40 lines of plain ASGI under the same uvicorn + uvloop + "
        "httptools): checks the JWT once (302 like the gateway), then forwards every request to the pod with "
        f"one shared `httpx.AsyncClient`, no cache; it connects from {NAIVE_SOURCE} so the pod's log separates it.",
        f"* Viewers: `bench/viewers.py`, asyncio on uvloop in the benchmark process, one keep-alive connection "
        f"each, a distinct user and JWT each, joining at random times over max({args.target:g} s, N ÷ "
        f"{JOIN_RATE:g}/s) (N = 500: {join_seconds(500, args.target):g} s): "
        "`index.m3u8?token=` → 302 → `index.m3u8?pb_grant=…` (the naive proxy: `?session=1`), the init segment "
        "once, then like hls.js on a live stream: start 3 segments from the live edge, reload the playlist every "
        "target duration (half of it when nothing changed, minus the time the load took), fetch each new segment "
        "once, in order.",
        f"* Counting: once everyone has joined and one more target duration + 1 s has passed, a "
        f"{args.window:g} s window. \"Pod fetches / segment\" "
        "= mean over the segments published inside the window of the pod's 200 responses for that segment "
        "(viewers keep watching one more target duration + 1 s so late fetches are counted; \"served to viewers\" "
        "is the same count on the viewers' side); \"playlist fetches / half target duration\" = the rate of the "
        "pod's playlist responses inside the window, (fetches − 1) ÷ (last − first) × (target duration ÷ 2); the "
        "goal is checked on the smallest gap between two fetches (≥ half a target duration). Init segments (fetched once per viewer through the naive proxy; revalidated with "
        "`If-None-Match` at most once a second by the gateway) are not in the table: "
        + ", ".join(f"N={r['n']} {r['which']} {r['inits']}" for r in rows) + " init requests per pass.",
        "",
        "### Reading the numbers", "",
        "* Through the gateway the pod's load does not depend on the number of viewers: one fetch per segment "
        "(`SegmentCache` single-flight: concurrent viewers share the one upstream transfer, later ones hit the "
        "cache) and one playlist fetch per half target duration (`PlaylistCache`: the TTL starts when a fetch "
        "completes, so two fetches are always more than half a target duration apart — smallest gap seen: "
        f"{min(r['playlist_min_gap_s'] for r in gw if r['playlist_fetches'] > 1):.2f} s). Below 1.0 playlist per "
        "half target duration means some periods had no viewer reload at all (N = 1 reloads once per target "
        "duration).",
        "* Through the naive proxy the pod does N times the work: every viewer's reload and segment reaches it. "
        f"At N = {big['n']} the pod used {big['pod_cpu_pct']:.0f}% of a core behind the naive proxy against "
        f"{big_g['pod_cpu_pct']:.0f}% behind the gateway, and each segment crossed the tailnet once per viewer "
        "fetch instead of once (a pod's uplink is usually the scarcest resource).",
        "* Viewer errors or missed segments at large N mean the box (2 CPUs shared by viewers, proxy and pod) "
        "could not keep up, not a protocol failure; the pod fetch counts stay exact either way.",
    ]
    for r in rows:
        if r["which"] == "naive" and (r["errors"] or r["missed"]):
            L.append(f"* At N = {r['n']} the naive proxy itself could not keep up ({r['errors']} viewer errors, "
                     f"{r['missed']} segments skipped, its single process at {r['proxy_cpu_pct']:.0f}% of a core — "
                     "one httpx request per viewer request, and httpcore's connection-pool bookkeeping grows with "
                     "the number of requests in flight): the viewers asked for "
                     f"{r['n']} fetches per segment and about {r['n'] / 2:g} playlists per half target duration, the "
                     f"pod saw {r['fetches_per_segment']:.1f} and {r['playlist_per_half_td']:.1f}. The naive "
                     "figures are therefore a lower bound of its amplification.")
    samples = [f"N={r['n']} {r['which']}: {'; '.join(r['error_samples'][:2])}" for r in rows if r["error_samples"]]
    if samples:
        L.append("* First viewer errors: " + " | ".join(samples) + ".")
    return "\n".join(L)


def main() -> int:
    """Run the benchmark (see module docs)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--viewers", default="1,10,100,500", help="comma-separated viewer counts")
    ap.add_argument("--window", type=float, default=20.0, help=f"counted seconds per pass (max {MAX_WINDOW:g})")
    ap.add_argument("--target", type=float, default=2.0, help="target duration of the synthetic stream (s)")
    ap.add_argument("--segment-bytes", type=int, default=128_000, help="size of each synthetic segment")
    ap.add_argument("--through", default="gateway,naive", help=argparse.SUPPRESS)  # debugging: one proxy only
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    args.viewers = [max(1, min(int(x), MAX_VIEWERS)) for x in args.viewers.split(",") if x.strip()]
    args.window = max(4.0, min(args.window, MAX_WINDOW))
    args.target = max(1.0, min(args.target, 6.0))
    args.segment_bytes = max(1000, min(args.segment_bytes, 4_000_000))
    install_signal_exit()
    load = loadavg()
    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pb-bench-amp-"))
    setup = SyntheticSetup(workdir, cameras=1, target=args.target, segment_bytes=args.segment_bytes, naive=True)
    try:
        print(f"starting synthetic pod, gateway and naive proxy in {workdir}", flush=True)
        setup.start()
        rows = []
        for n in args.viewers:
            for which in [w for w in ("gateway", "naive") if w in args.through.split(",")]:
                print(f"N={n} through {which}: {args.window:g} s window …", flush=True)
                r = run_pass(setup, args, which, n)
                rows.append(r)
                print(f"    pod fetches/segment {r['fetches_per_segment']:.2f} (over {r['segments_published']} "
                      f"segments), playlist fetches per half TD {r['playlist_per_half_td']:.2f}; viewers: "
                      f"{r['sessions']} sessions, {r['errors']} errors, {r['missed']} missed; CPU proxy "
                      f"{r['proxy_cpu_pct']:.0f}%, pod {r['pod_cpu_pct']:.0f}%", flush=True)
                if r["error_samples"]:
                    print(f"    first errors: {r['error_samples'][:3]}", flush=True)
        elapsed = time.monotonic() - t_start
        print()
        print("\n".join(table(rows)))
        print()
        print("\n".join(side_table(rows)))
        gw = [r for r in rows if r["which"] == "gateway"]
        ok = all(abs(r["fetches_per_segment"] - 1.0) < 1e-9 and playlist_ok(r, args.target) for r in gw)
        print(f"\ngoal 1.0 pod fetch/segment and ≤ 1 playlist fetch per half TD: {'MET' if ok else 'NOT MET'} "
              f"({elapsed:.0f} s)")
        if not args.no_docs:
            info = machine_info(("litestar", "uvicorn", "uvloop", "httptools", "httpx"))
            write_section(docs_section(rows, args, info, load, elapsed), HEADING)
            print(f"wrote {DOCS}")
        return 0
    except Exception as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        for name in list(setup.procs.items):
            tail = setup.procs.log_tail(name)
            if tail:
                print(f"--- {name} log ---\n{tail}", file=sys.stderr)
        return 1
    finally:
        setup.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
