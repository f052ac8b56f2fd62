"""The operator-check line format shared by ``platebridge-pod check`` and
``platebridge-gateway check`` (pure: formatting only)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Status = Literal["PASS", "WARN", "FAIL"]


@dataclass
class CheckResult:
    """One check's outcome; :meth:`line` is what the operator sees."""

    status: Status
    name: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        """``PASS name: detail`` / ``FAIL name: detail — fix: how``."""
        text = f"{self.status} {self.name}: {self.detail}"
        if self.fix and self.status != "PASS":
            text += f" — fix: {self.fix}"
        return text


def ms(seconds: float) -> str:
    """Seconds as a whole number of milliseconds (``"12 ms"``)."""
    return f"{seconds * 1000:.0f} ms"


def summary(results: Iterable[CheckResult], extra_passed: int = 0) -> tuple[str, int]:
    """The closing ``OK:``/``FAILED:`` line and the exit code (0, or 1 when a check failed).
    ``extra_passed`` counts checks printed outside ``results`` (the config line)."""
    results = list(results)
    failed = sum(r.status == "FAIL" for r in results)
    warned = sum(r.status == "WARN" for r in results)
    passed = len(results) + extra_passed - failed - warned
    return (f"{'FAILED' if failed else 'OK'}: {passed} passed, {warned} warning(s), {failed} failed",
            1 if failed else 0)
