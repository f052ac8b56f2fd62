"""Range headers: the gateway's parser against a table, and against Debian's nginx itself.

A cached segment may be answered by the gateway's nginx (``max_ranges 1``) or by a gateway
worker, so the two must agree on every header. The table's answers were measured on nginx
1.22 with a 5000-byte file; the differential test asks a real nginx the same questions,
and more, generated.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from gateway.dataplane import free_loopback_port
from gateway.errors import RangeNotSatisfiable
from gateway.ranges import parse_range

SIZE = 5000

# header -> (status, Content-Range) as nginx answers it for a 5000-byte body
TABLE: dict[str, tuple[int, str | None]] = {
    "bytes=10-19": (206, "bytes 10-19/5000"),
    "bytes=-100": (206, "bytes 4900-4999/5000"),
    "bytes=-6000": (206, "bytes 0-4999/5000"),
    "bytes=4999-": (206, "bytes 4999-4999/5000"),
    "bytes=0-4999": (206, "bytes 0-4999/5000"),
    "bytes=0-99999": (206, "bytes 0-4999/5000"),
    "Bytes=0-9": (206, "bytes 0-9/5000"),
    "bytes= 0-9": (206, "bytes 0-9/5000"),
    "bytes=0 -9": (206, "bytes 0-9/5000"),
    "bytes=0-9 ": (206, "bytes 0-9/5000"),
    "bytes=0-9,6000-7000": (206, "bytes 0-9/5000"),  # the second overlaps nothing: one range left
    # ignored: the whole body
    "bytes=0-0,5-5": (200, None),  # several ranges (RFC 9110 §14.2 MAY ignore; never multipart)
    "bytes=0-9,0-9": (200, None),
    "items=0-1": (200, None),  # an unknown unit MUST be ignored (RFC 9110 §14.2)
    "bytes=": (200, None),
    "": (200, None),
    # malformed or unsatisfiable
    "bytes=9999-": (416, "bytes */5000"),
    "bytes=5000-": (416, "bytes */5000"),
    "bytes=5-2": (416, "bytes */5000"),
    "bytes=-0": (416, "bytes */5000"),
    "bytes=+0-+9": (416, "bytes */5000"),  # int() took these; nginx takes ASCII digits only
    "bytes=0-1_0": (416, "bytes */5000"),
    "bytes=0-\u0669": (416, "bytes */5000"),  # ARABIC-INDIC DIGIT NINE
    "bytes=0-9223372036854775807": (206, "bytes 0-4999/5000"),  # 2^63 - 1, the largest off_t
    "bytes=0-9223372036854775808": (416, "bytes */5000"),  # beyond off_t
    "bytes=0-99999999999999999999": (416, "bytes */5000"),
    "bytes=99999999999999999999-": (416, "bytes */5000"),
    "bytes=abc": (416, "bytes */5000"),
    "bytes=-": (416, "bytes */5000"),
    "bytes=0-9,": (416, "bytes */5000"),
    "bytes=,0-9": (416, "bytes */5000"),
    "bytes=0-9;x": (416, "bytes */5000"),
    # from an attack run: int() refuses more than 4300 digits (a 500), and nginx trims spaces
    # around a value but not tabs
    "bytes=0-" + "9" * 4301: (416, "bytes */5000"),
    "bytes=" + "0" * 4400 + "1-2": (206, "bytes 1-2/5000"),
    "\tbytes=0-9": (200, None),
    "bytes=0-9\t": (416, "bytes */5000"),
    "bytes=0-9 \t": (416, "bytes */5000"),
    " bytes=0-9 ": (206, "bytes 0-9/5000"),
}


def answer(header: str, size: int = SIZE) -> tuple[int, str | None]:
    """(status, Content-Range) the gateway sends for ``header`` on a ``size``-byte body."""
    try:
        span = parse_range(header, size)
    except RangeNotSatisfiable as exc:
        return 416, dict(exc.headers)[b"content-range"].decode()
    if span is None:
        return 200, None
    return 206, f"bytes {span[0]}-{span[1]}/{size}"


@pytest.mark.parametrize("header", list(TABLE))
def test_the_gateway_answers_as_nginx_does(header):
    assert answer(header) == TABLE[header]


@pytest.mark.parametrize("header,expected", [
    ("bytes=0-", (200, None)),  # nothing to range over: the (empty) whole body
    ("bytes=-5", (200, None)),
    ("bytes=1-", (416, "bytes */0")),
])
def test_an_empty_body(header, expected):
    assert answer(header, 0) == expected


def test_a_one_byte_range_at_the_last_byte():
    assert parse_range("bytes=4999-4999", SIZE) == (4999, 4999)
    assert parse_range("bytes=-1", SIZE) == (4999, 4999)


def _generated(n: int, seed: int = 8216) -> list[str]:
    """``n`` Range headers built from the pieces parsers disagree on."""
    rnd = random.Random(seed)
    pieces = ["0", "9", "10", "4999", "5000", "99999999999999999999", "-", "-", ",", " ", "+", "_", "a",
              "\u0669", "007", "\t", "0" * 30]
    out = []
    for _ in range(n):
        unit = rnd.choice(["bytes=", "bytes=", "bytes=", "BYTES=", "byte=", "bytes ="])
        out.append(unit + "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 6))))
    return out


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    """Debian's nginx serving a 5000-byte file with the data plane's ``max_ranges 1``."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("nginx is missing: run ./run setup (nginx-extras)")
    d = tmp_path_factory.mktemp("ranges-nginx")
    (d / "html").mkdir()
    (d / "html" / "seg.m4s").write_bytes(bytes(range(250)) * 20)
    port = free_loopback_port()
    temp = " ".join(f"{k}_temp_path {d};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(
        # as root, nginx's workers would be nobody, who cannot read pytest's 0700 tmp dirs
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; max_ranges 1; {temp}\n"
        f"  server {{ listen 127.0.0.1:{port}; root {d}/html; }} }}\n")
    p = subprocess.Popen([binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/seg.m4s"
    deadline = time.monotonic() + 15
    while True:
        assert p.poll() is None, p.stderr.read().decode() if p.stderr else ""
        try:
            httpx.get(url, timeout=1, trust_env=False)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "nginx did not come up"
            time.sleep(0.05)
    try:
        yield port
    finally:
        p.terminate()
        p.wait(10)


def _ask(port: int, header: str) -> tuple[int, str | None, bytes]:
    """GET /seg.m4s with ``Range: header`` over a raw socket (httpx refuses some of these
    values before sending them): status, Content-Range and body."""
    request = (f"GET /seg.m4s HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: {header}\r\nConnection: close\r\n\r\n"
               .encode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), fields.get("content-range"), body


def test_the_gateway_and_a_real_nginx_agree_on_every_header(nginx):
    """Differential: the table and 2000 generated headers, each asked of nginx and the gateway."""
    whole = bytes(range(250)) * 20
    disagreements = []
    for header in [*TABLE, *_generated(2000)]:
        if not header.strip():
            continue  # no value at all is no Range header
        status, content_range, body = _ask(nginx, header)
        if status == 206:
            start, end = map(int, content_range.split(" ")[1].split("/")[0].split("-"))
            assert body == whole[start:end + 1]
        if answer(header) != (status, content_range):
            disagreements.append((header, (status, content_range), answer(header)))
    assert disagreements == []
