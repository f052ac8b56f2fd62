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


MIN_SECRET_BYTES = 32
# advice text, not a secret (ruff S105 looks at the name)
SECRET_FIX = ("generate one with `openssl rand -base64 48` and set it on both sides of that key (the "  # noqa: S105
              "portal and the gateway for user_token_secret)")


def secret_length_result(label: str, secret: str) -> CheckResult:
    """PASS when ``secret`` has at least 32 bytes (UTF-8), else FAIL with the fix.
    ``label`` names where the secret came from; the secret itself is never printed."""
    n = len(secret.encode())
    if n < MIN_SECRET_BYTES:
        return CheckResult("FAIL", "secret", f"{label} is {n} bytes; at least {MIN_SECRET_BYTES} are required",
                           SECRET_FIX)
    return CheckResult("PASS", "secret", f"{label} is {n} bytes")
