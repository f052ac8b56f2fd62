"""The live process table from /proc, for tests that follow a server's worker processes."""

from __future__ import annotations

import os


def live_processes() -> dict[int, tuple[int, int]]:
    """``pid → (parent pid, process group)`` of every live (not zombie) process, from
    ``/proc/<pid>/stat`` (proc(5)); processes that exit while it is read are left out."""
    table: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] != "Z":
                table[int(d)] = (int(fields[1]), int(fields[2]))
    return table


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    table = live_processes()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += [c for c, (ppid, _) in table.items() if ppid == p]
    return tree
