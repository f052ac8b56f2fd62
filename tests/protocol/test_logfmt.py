"""Logs: JSON lines off a TTY, text on a TTY, always redacted."""

import json
import logging

from protocol.logfmt import RedactingFormatter


def record(msg, *args):
    return logging.LogRecord("platebridge.test", logging.INFO, __file__, 1, msg, args, None)


def test_json_lines_and_redaction():
    line = RedactingFormatter(json_lines=True).format(
        record("fetch %s failed", "rtsp://admin:hunter2@10.0.0.5/s?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"))
    doc = json.loads(line)
    assert doc["level"] == "INFO" and doc["logger"] == "platebridge.test"
    assert "hunter2" not in line and "eyJhbGci" not in line and "rtsp://***@10.0.0.5/s" in doc["msg"]


def test_text_on_a_tty_is_redacted_too():
    line = RedactingFormatter(json_lines=False).format(record("Authorization: Bearer abc.def.ghi"))
    assert "INFO" in line and "abc.def" not in line and not line.startswith("{")


def test_exception_text_redacted():
    try:
        raise RuntimeError("password=swordfish")
    except RuntimeError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    out = RedactingFormatter(json_lines=True).format(rec)
    assert "swordfish" not in out and "RuntimeError" in out
