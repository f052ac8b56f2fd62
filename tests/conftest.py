"""Suite-wide test helpers.

``figure``: fault and security tests report the number they check (seconds to
recover, requests that reached the pod, bytes of memory, …). Each figure is
printed at the end of the run in one table, so ``.ci/run`` shows them even when
every test passes (pytest hides ``print`` output of passing tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Figure:
    """One measured figure: ``value`` in ``unit`` against the ``limit`` the test asserts."""

    test: str
    name: str
    value: float
    unit: str
    limit: str
    ok: bool


_FIGURES: list[Figure] = []


@pytest.fixture
def figure(request):
    """``figure(name, value, unit, limit, ok)`` records a measured figure for the
    end-of-run table and returns ``value``. ``limit`` is the bound as text
    (e.g. ``"<= 5 s"``); ``ok`` says whether the value met it. The caller still
    asserts: this only reports."""

    def record(name: str, value: float, unit: str, limit: str, ok: bool) -> float:
        _FIGURES.append(Figure(request.node.nodeid, name, float(value), unit, limit, bool(ok)))
        return value

    return record


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    tr = terminalreporter
    tr.section("figures (fault and security suites)")
    for f in _FIGURES:
        value = f"{f.value:,.3f}".rstrip("0").rstrip(".") if f.value != int(f.value) else f"{int(f.value):,}"
        tr.write_line(f"{'ok ' if f.ok else 'BAD'} {f.name}: {value} {f.unit} (limit {f.limit})  [{f.test}]")
