"""Prometheus metrics of the gateway (own registry).

With several worker processes (``--workers``), :func:`gateway.server.serve` points env
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start, so every worker
writes its samples there (prometheus_client's multiprocess mode) and ``/metrics`` reports
the sums over the host's workers whichever worker answers (:func:`exposition`). Gauges are
then each worker's value summed over the live workers (``livesum``), written every
:data:`GAUGE_REFRESH` seconds by :func:`gauge_refresher` (``set_function`` works within one
process only). A viewer whose requests reach two workers counts once in each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: s: how often each worker writes its gauges in multiprocess mode
GAUGE_REFRESH = 2.0

REGISTRY = CollectorRegistry()
REQUESTS = Counter("platebridge_gateway_requests_total", "Requests by route kind and status", ["kind", "status"],
                   registry=REGISTRY)
CACHE = Counter("platebridge_gateway_cache_total", "Segment cache lookups", ["result"], registry=REGISTRY)
PLAYLISTS = Counter("platebridge_gateway_playlist_responses_total",
                    "Playlist responses by source: the channel's newest playlist (a fresh reload or an LL-HLS "
                    "generation already answered), a fetch already running (joined) or a new upstream fetch",
                    ["source"], registry=REGISTRY)
UPSTREAM = Counter("platebridge_gateway_upstream_fetches_total", "Fetches from pods", ["kind"], registry=REGISTRY)
BYTES_OUT = Counter("platebridge_gateway_bytes_out_total", "Body bytes sent to viewers", registry=REGISTRY)
VIEWERS = Gauge("platebridge_gateway_active_viewers", "Distinct viewer sessions seen in the last 30 s",
                registry=REGISTRY, multiprocess_mode="livesum")
CACHE_BYTES = Gauge("platebridge_gateway_cache_bytes", "Bytes of pod bodies held in the workers' memory",
                    registry=REGISTRY, multiprocess_mode="livesum")
CACHE_PEAK = Gauge("platebridge_gateway_cache_peak_bytes",
                   "Most bytes of pod bodies each worker held in memory at once since it started, summed",
                   registry=REGISTRY, multiprocess_mode="livesum")
DISCOVERY_CONFLICTS = Gauge("platebridge_gateway_discovery_conflicts",
                            "pod_ids claimed by more than one tailnet device (routed to none)", registry=REGISTRY,
                            multiprocess_mode="max")

# the series every gateway has, present (at 0) from the start: with several workers a family
# with no sample yet would be missing from /metrics altogether
for _kind in ("playlist", "segment"):
    REQUESTS.labels(_kind, "200")
for _result in ("hit", "miss"):
    CACHE.labels(_result)
for _source in ("newest", "joined", "fetched"):
    PLAYLISTS.labels(_source)
for _upstream in ("playlist", "segment", "init"):
    UPSTREAM.labels(_upstream)


def multiprocess() -> bool:
    """Whether this process writes its samples to ``$PROMETHEUS_MULTIPROC_DIR`` (several workers)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition() -> bytes:
    """The Prometheus text exposition of ``/metrics``: this process's registry, or with several
    workers the sums over all of them."""
    if not multiprocess():
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)


def live_gauge(gauge: Gauge, value: Callable[[], float]) -> None:
    """Report ``value()`` as ``gauge``: read at each scrape in one process (``set_function``);
    written by :func:`gauge_refresher` with several workers."""
    gauge.set_function(value)
    _LIVE.append((gauge, value))


_LIVE: list[tuple[Gauge, Callable[[], float]]] = []


async def gauge_refresher() -> None:
    """With several workers: write this worker's live gauges every :data:`GAUGE_REFRESH` s until
    cancelled, then drop its gauge files (the worker is gone). Returns at once otherwise."""
    if not multiprocess():
        return
    try:
        while True:
            for gauge, value in _LIVE:
                gauge.set(value())
            _forget_dead_workers()
            await asyncio.sleep(GAUGE_REFRESH)
    finally:
        mark_process_dead(os.getpid())


def _forget_dead_workers() -> None:
    """Drop the live gauges of workers that died without saying so (killed, then respawned by
    the server): their last values would otherwise stay in the sums for ever."""
    directory = os.environ.get(MULTIPROC_ENV, "")
    pids: set[int] = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.startswith("gauge_live") and name.endswith(".db"):
                digits = name[:-3].rpartition("_")[2]
                if digits.isdigit():
                    pids.add(int(digits))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid)
        except PermissionError:
            pass
