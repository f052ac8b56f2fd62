"""Every core, one fetch (issue 15, point 2), end to end: one gateway with W worker processes
(granian, the default server) in front of one real pod with two cameras; 20 light HLS players,
10 per camera, each request on a connection of its own, as browsers may send a player's
playlist and segment requests, so the requests of every player land on every worker.

* The workers share one host store: the pod sees exactly one fetch per new segment, counted
  at the pod's ``/metrics`` between two moments when no player request is in flight.
* Playlists too: at most one pod fetch per half target duration per camera, however many
  workers answer the players' reloads.
* Any worker serves any player's granted URIs: no 4xx, no failed load.
* Every worker served players (read from each worker's own prometheus_client multiprocess
  file), so the single fetch really was shared across processes.
* ``/metrics``, whichever worker answers it, counts the requests of all of them.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from protocol.tokens import Keyring, mint_user_token
from tests.e2e.conftest import make_stack, pod_metric, wait_until
from tests.e2e.test_gateway_balancer import Players, new_segments

pytestmark = pytest.mark.e2e

VIEWERS_PER_CAMERA = 10
WINDOW = 10.0  # s: the counting window


class SplitPlayers(Players):
    """The balancer test's players, each request on a new plain-HTTP connection."""

    async def _get(self, conn: list, target: str) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode("latin-1"))
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            body = await reader.read()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = _dechunk(body)
            return status, headers, body
        finally:
            writer.close()


def _dechunk(raw: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[end + 2:end + 2 + size])
        pos = end + 2 + size + 2


def requests_per_worker(metrics_dir: Path) -> dict[int, float]:
    """pid → /streams/ requests that worker answered, from its prometheus_client multiprocess file."""
    out: dict[int, float] = {}
    for f in metrics_dir.glob("counter_*.db"):
        pid = int(f.stem.split("_")[1])
        out[pid] = sum(value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(f))
                       if "platebridge_gateway_requests_total" in key)
    return out


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_share_one_pod_fetch_per_segment_with_split_connections(tmp_path, figure, monkeypatch, workers):
    s = make_stack(tmp_path / "stack")
    cams = ["gate-camera-1", "gate-camera-2"]
    s.pod_overrides = {
        "camera_id": None, "camera_rtsp_url": None, "heartbeat_interval": 300,
        "cameras": [{"camera_id": c, "rtsp_url": s.rtsp_url, "frigate_camera": f"cam_{i}"} for i, c in enumerate(cams)]}
    # the workers alone (no nginx data plane in front): every player request is theirs to answer
    # and count, which is what this test measures (tests/e2e/test_nginx_data_plane.py runs nginx)
    s.gateway_overrides = {"workers": workers, "access_log": False, "data_plane": "gateway"}
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))  # the gateway's workers write here
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    players: SplitPlayers | None = None
    runner = None
    try:
        s.start_camera(args=("--width", "320", "--height", "240"))
        s.start_pod(timeout=60, wait_segments=False)
        wait_until(lambda: all(s.pod_health()["cameras"][c]["state"] == "running" for c in cams), 60,
                   what="both cameras running")
        s.start_gateway()
        wait_until(lambda: len(list(metrics_dir.glob("counter_*.db"))) >= workers, 20, what="every worker up")
        tokens = {cam: [mint_user_token(Keyring.single(s.secret), user_id=f"viewer-{cam}-{j}", camera_id=cam,
                                        pod_id=s.pod_id, ttl=600) for j in range(VIEWERS_PER_CAMERA)]
                  for cam in cams}
        players = SplitPlayers("127.0.0.1", s.gateway_port, None)  # type: ignore[arg-type]
        thread.start()
        runner = asyncio.run_coroutine_threadsafe(players.run(tokens), loop)

        def call(coro):
            return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

        t_start = time.time()
        wait_until(lambda: len({(e.viewer, e.seq) for e in list(players.events)
                                if e.kind == "segment" and e.status == 200 and e.t > t_start}) >= 40, 40, 0.2,
                   what="players receiving segments")
        q0 = call(players.quiesce())
        fetched0, playlists0 = pod_metric(s, "segment"), pod_metric(s, "playlist")
        call(players.resume())
        time.sleep(WINDOW)
        q1 = call(players.quiesce())
        fetched1, playlists1 = pod_metric(s, "segment"), pod_metric(s, "playlist")
        metrics = httpx.get(s.gateway_metrics_url, timeout=5).text
        loop.call_soon_threadsafe(players.stop.set)  # type: ignore[union-attr]
        call(players.resume())
        runner.result(30)
    finally:
        if players is not None and players.stop is not None and runner is not None and not runner.done():
            loop.call_soon_threadsafe(players.stop.set)
            loop.call_soon_threadsafe(players.go.set)  # type: ignore[union-attr]
            runner.result(30)
        loop.call_soon_threadsafe(loop.stop)
        s.stop()
    events = list(players.events)
    new, fetches = new_segments(events, q0, q1), fetched1 - fetched0
    figure(f"pod fetches per new segment, {workers} workers, 20 viewers on 2 cameras, split connections "
           f"({fetches:.0f} fetches, {new} new segments in {q1 - q0:.0f} s)", fetches / max(new, 1), "fetches",
           "== 1.00", fetches == new)
    # each camera's playlist: at most one pod fetch per half target duration (1 s segments) per host
    reloads = len([e for e in events if e.kind == "playlist" and q0 < e.t <= q1])
    bound = len(cams) * ((q1 - q0) / 0.5 + 1)
    figure(f"pod playlist fetches, {workers} workers ({reloads} player reloads of 2 cameras in {q1 - q0:.0f} s)",
           playlists1 - playlists0, "fetches", f"<= {bound:.0f} (1 per half target duration per camera)",
           playlists1 - playlists0 <= bound)
    assert playlists1 - playlists0 <= bound, (playlists1 - playlists0, bound, reloads)
    refused = [e for e in events if 400 <= e.status < 500]
    failed = [e for e in events if e.status not in (200, 302)]
    figure(f"refused split-connection requests, {workers} workers", len(refused), "requests", "== 0", not refused)
    assert new >= WINDOW  # both cameras advanced (1 s segments)
    assert fetches == new, (fetches, new)
    assert not refused and not failed, (refused[:5], failed[:5])
    per_worker = requests_per_worker(metrics_dir)
    serving = {pid: n for pid, n in per_worker.items() if n > 0}
    assert len(serving) == workers, per_worker  # every worker answered players
    answered = sum(float(v) for v in re.findall(
        r'^platebridge_gateway_requests_total\{kind="(?:playlist|segment)"[^}]*\} ([0-9.e+]+)$', metrics,
        re.MULTILINE))
    assert answered >= 0.9 * len([e for e in events if e.t <= q1]), (answered, len(events))
