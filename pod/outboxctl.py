"""``platebridge-pod outbox list|retry|drop``: the operator's view of the pod's queues.

Works on the state file of a pod (``outbox_path`` of its config, default
``<state_dir>/outbox.sqlite3``) while the agent runs: SQLite in WAL mode lets this read
while the agent writes, every change is one short transaction (``busy_timeout`` waits for
the agent's), and the running agent sees re-queued rows within ``queue_idle_poll`` seconds.
Run it as the user the agent runs as (the file is mode 0600), e.g.
``sudo -u platebridge platebridge-pod outbox list --config /etc/platebridge/config.yaml``.

Rows (``--kind``): ``detect`` — detections for ``POST /api/pod/detect`` (the outbox);
``clip`` — clips to upload (the upload queue); ``clip-job`` — clips still to be built, or
that ended ``failed``/``lost`` with their reason (listed only).

* ``list`` — pending and parked rows (``--state``), with the park reason, attempts, age
  and last error; ``--json`` for one JSON object per row.
* ``retry`` — parked rows go back in the queue in their old place (``KEY…``, ``--reason``
  or ``--all``); a pending row named by key is made due now.
* ``drop`` — rows named by key, or every row parked for ``--reason``, are deleted for good
  (a dropped clip's file too); each is logged and counted (``platebridge_pod_dropped_total``
  with reason ``operator``).

Exit codes: 0 done (rows listed, re-queued or dropped); 1 nothing matched; 2 bad usage or
config (the message names the key path); 3 the state file cannot be read (missing, not
readable by this user, or damaged — the agent heals a damaged file when it starts).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import msgspec

from pod import clipjobs
from pod.clipjobs import ClipJobs
from pod.config import load_config
from pod.db import StateDB
from pod.errors import ConfigError
from pod.outbox import TABLE as OUTBOX_TABLE
from pod.outbox import Item, Outbox
from pod.uploads import TABLE as UPLOADS_TABLE
from pod.uploads import Upload, UploadQueue

log = logging.getLogger("platebridge.pod.outboxctl")

EXIT_OK, EXIT_NONE, EXIT_USAGE, EXIT_STATE = 0, 1, 2, 3
KINDS = ("detect", "clip", "clip-job")


def add_parser(sub: Any) -> None:
    """Add ``outbox`` with its three commands to an argparse subparsers object."""
    p = sub.add_parser("outbox", help="list, retry or drop queued detections and clips (works while the agent runs)")
    cmds = p.add_subparsers(dest="outbox_command", required=True)
    for name, text in (("list", "list pending and parked rows"),
                       ("retry", "put parked rows back in the queue (a pending row named by key: due now)"),
                       ("drop", "delete rows for good (logged and counted)")):
        c = cmds.add_parser(name, help=text)
        c.add_argument("--config", "-c", required=True, help="path to config.yaml")
        c.add_argument("--kind", choices=("detect", "clip", "all") if name != "list" else (*KINDS, "all"),
                       default="all", help="which queue (default: all)")
        if name == "list":
            c.add_argument("--state", choices=("pending", "parked", "all"), default="all")
            c.add_argument("--reason", help="only rows parked for this reason (auth, rejected, attempts, …)")
            c.add_argument("--limit", type=_positive_int, default=200,
                           help="at most this many rows per kind (default 200)")
            c.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            c.add_argument("keys", nargs="*", metavar="KEY", help="event ids (idempotency keys)")
            c.add_argument("--reason", help="every row parked for this reason")
            if name == "retry":
                c.add_argument("--all", action="store_true", help="every parked row")


def main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``outbox <command>`` for parsed ``args``, writing to ``out``/``err`` (default: the
    process's stdout/stderr at call time); returns the exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        cfg, _ = load_config(args.config)
    except ConfigError as exc:
        print(f"platebridge-pod: config error: {exc}", file=err)
        return EXIT_USAGE
    path = Path(cfg.outbox_path or Path(cfg.state_dir) / "outbox.sqlite3")
    if not path.exists():
        print(f"platebridge-pod: no state file at {path} (has the agent run with this config?)", file=err)
        return EXIT_STATE
    cmd = args.outbox_command
    if cmd != "list" and not (args.keys or args.reason or getattr(args, "all", False)):
        print(f"platebridge-pod outbox {cmd}: name rows: KEY…, --reason R" + (" or --all" if cmd == "retry" else ""),
              file=err)
        return EXIT_USAGE
    foreign = _not_state_file(path)
    if foreign:
        print(f"platebridge-pod: {path}: not a PlateBridge state file ({foreign}); nothing changed", file=err)
        return EXIT_STATE
    try:
        db = StateDB(path, [OUTBOX_TABLE, UPLOADS_TABLE, clipjobs.TABLE], name="state", heal=False)
    except (sqlite3.Error, OSError) as exc:
        print(f"platebridge-pod: cannot read {path}: {exc} (run as the agent's user; a damaged file is healed "
              "by the agent when it starts)", file=err)
        return EXIT_STATE
    try:
        outbox, uploads, jobs = Outbox(db), UploadQueue(db), ClipJobs(db)
        if cmd == "list":
            return _list(args, outbox, uploads, jobs, out)
        if cmd == "retry":
            return _retry(args, outbox, uploads, out)
        return _drop(args, outbox, uploads, out)
    except sqlite3.Error as exc:
        print(f"platebridge-pod: {path}: {exc}", file=err)
        return EXIT_STATE
    finally:
        db.close()


def _not_state_file(path: Path) -> str | None:
    """Why the file at ``path`` is not an agent's state file (opened read-only: an empty or
    another program's SQLite file must not get our tables), or None. A damaged file is left
    to :class:`~pod.db.StateDB`'s own error."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        finally:
            con.close()
    except sqlite3.Error:
        return None
    if "outbox" in tables:
        return None
    return f"tables: {', '.join(tables[:8])}" if tables else "an empty file"


def _wants(args: argparse.Namespace, kind: str) -> bool:
    return bool(args.kind in ("all", kind))


def _plate(item: Item) -> str | None:
    with contextlib.suppress(msgspec.DecodeError, AttributeError):
        body = msgspec.json.decode(item.body)
        if isinstance(body, dict):
            plate = body.get("plate")
            return str(plate) if plate is not None else None
    return None


def _age(now: float, then: float) -> str:
    s = max(0.0, now - then)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.0f}{unit}"
    return f"{s:.0f}s"


def _list(args: argparse.Namespace, outbox: Outbox, uploads: UploadQueue, jobs: ClipJobs, out: TextIO) -> int:
    now = time.time()
    rows: list[dict[str, Any]] = []
    states = {"pending": ["pending"], "parked": ["failed"], "all": ["pending", "failed"]}[args.state]
    if _wants(args, "detect"):
        for st in states:
            if args.reason and st == "pending":
                continue
            for it in outbox.items(st, reason=args.reason, limit=args.limit):
                rows.append({"kind": "detect", "key": it.key, "state": "parked" if st == "failed" else "pending",
                             "reason": it.park_reason or ("rejected" if st == "failed" else None),
                             "attempts": it.attempts, "created": it.created, "next_attempt": it.next_attempt,
                             "plate": _plate(it), "last_error": it.last_error})
    if _wants(args, "clip"):
        ustates = {"pending": ("recorded", "url", "uploaded"), "parked": ("failed",),
                   "all": ("recorded", "url", "uploaded", "failed")}[args.state]
        for u in uploads.rows(ustates)[:args.limit]:
            if args.reason and (u.state != "failed" or (u.park_reason or "rejected") != args.reason):
                continue
            rows.append({"kind": "clip", "key": u.event_id, "state": "parked" if u.state == "failed" else u.state,
                         "reason": (u.park_reason or "rejected") if u.state == "failed" else None,
                         "attempts": u.attempts, "created": u.created, "next_attempt": u.next_attempt,
                         "plate": u.plate, "last_error": u.last_error, "file": u.filename, "on_disk": u.on_disk})
    if _wants(args, "clip-job") and not args.reason:
        jstates = {"pending": ("waiting",), "parked": ("failed", "lost"), "all": ("waiting", "failed", "lost")}
        for j in jobs.rows(jstates[args.state], limit=args.limit):
            rows.append({"kind": "clip-job", "key": j.event_id, "state": j.state, "reason": None,
                         "attempts": j.restarts, "created": j.detected_at, "next_attempt": None, "plate": j.plate,
                         "last_error": j.reason, "file": j.filename})
    if args.json:
        out.writelines(msgspec.json.encode(r).decode() + "\n" for r in rows)
        return EXIT_OK if rows else EXIT_NONE
    parked = outbox.parked_by_reason()
    cparked = uploads.parked_by_reason()
    counts = jobs.counts()
    out.write(f"detections: {outbox.depth()} pending, {sum(parked.values())} parked"
              + (f" ({', '.join(f'{k} {v}' for k, v in sorted(parked.items()))})" if parked else "") + "\n")
    ucounts = uploads.counts()
    out.write(f"clips: {sum(ucounts[s] for s in ('recorded', 'url', 'uploaded'))} to upload, "
              f"{sum(cparked.values())} parked"
              + (f" ({', '.join(f'{k} {v}' for k, v in sorted(cparked.items()))})" if cparked else "")
              + f"; clip jobs: {counts['waiting']} waiting, {counts['failed']} failed, {counts['lost']} lost\n")
    dropped = outbox.dropped()
    if dropped:
        out.write("dropped so far: " + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) + "\n")
    if rows:
        out.write(f"\n{'KIND':<9} {'KEY':<40} {'STATE':<9} {'REASON':<16} {'TRIES':>5} {'AGE':>5}  "
                  f"{'PLATE':<10} LAST ERROR\n")
        out.writelines(f"{r['kind']:<9} {r['key'][:40]:<40} {r['state']:<9} {(r['reason'] or '-'):<16} "
                       f"{r['attempts']:>5} {_age(now, r['created']):>5}  {(r['plate'] or '-')[:10]:<10} "
                       f"{(r['last_error'] or '-')[:120]}\n" for r in rows)
    return EXIT_OK if rows else EXIT_NONE


def _retry(args: argparse.Namespace, outbox: Outbox, uploads: UploadQueue, out: TextIO) -> int:
    now = time.time()
    keys = list(args.keys) or None
    reason = args.reason
    n_det = n_clip = n_due = 0
    if _wants(args, "detect"):
        n_det = outbox.requeue(now, reason=reason, keys=keys)
        if keys:
            n_due = outbox.make_due(now, keys=keys)
    if _wants(args, "clip"):
        n_clip = uploads.requeue(now, reason=reason, keys=keys)
    total = n_det + n_clip + n_due
    out.write(f"re-queued {n_det} detection(s) and {n_clip} clip(s)" + (f"; {n_due} pending made due now" if n_due
                                                                          else "")
              + ("" if total else " — nothing matched") + "\n")
    if total:
        log.warning("outbox retry by operator: %d detection(s), %d clip(s) re-queued, %d made due", n_det, n_clip,
                    n_due)
    return EXIT_OK if total else EXIT_NONE


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (raises :class:`argparse.ArgumentTypeError` otherwise)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _drop(args: argparse.Namespace, outbox: Outbox, uploads: UploadQueue, out: TextIO) -> int:
    keys = list(args.keys) or None
    dropped_det: list[Item] = []
    dropped_clip: list[Upload] = []
    if _wants(args, "detect"):
        dropped_det = outbox.drop(keys=keys, reason=args.reason, state="failed" if args.reason else None)
    if _wants(args, "clip"):
        if args.reason is None:
            ckeys = keys or []
        else:  # as for detections: only parked rows, parked for that reason (among ``keys`` if given)
            ckeys = [u.event_id for u in uploads.rows(("failed",))
                     if (u.park_reason or "rejected") == args.reason and (keys is None or u.event_id in keys)]
        dropped_clip = uploads.drop(ckeys)
    out.writelines(f"dropped detect {it.key} ("
                   f"{'parked ' + (it.park_reason or 'rejected') if it.state == 'failed' else 'pending'})\n"
                   for it in dropped_det)
    out.writelines(f"dropped clip {u.event_id} ({u.state}{' ' + u.park_reason if u.park_reason else ''})\n"
                   for u in dropped_clip)
    if not dropped_det and not dropped_clip:
        out.write("nothing matched\n")
        return EXIT_NONE
    return EXIT_OK
