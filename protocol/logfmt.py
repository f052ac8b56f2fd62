"""Logging for pod and gateway: JSON lines when not on a TTY, text on a TTY, always redacted."""

from __future__ import annotations

import json
import logging
import sys
import time

from protocol.redact import redact


class RedactingFormatter(logging.Formatter):
    """Formats records as JSON lines (``json=True``) or human-readable text; the
    message and any exception text pass through :func:`protocol.redact.redact`."""

    def __init__(self, json_lines: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        msg = redact(record.getMessage())
        exc = redact(self.formatException(record.exc_info)) if record.exc_info else None
        if self.json_lines:
            out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name, "msg": msg}
            if exc:
                out["exc"] = exc
            return json.dumps(out, ensure_ascii=False)
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{t} {record.levelname:<7} {record.name}: {msg}" + (f"\n{exc}" if exc else "")


def setup_logging(level: str = "INFO") -> None:
    """Install the redacting formatter on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(json_lines=not sys.stderr.isatty()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # per-request lines duplicate our access log
