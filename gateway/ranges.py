"""The ``Range`` header of a segment request: one byte range, or the whole body.

Pure logic, no I/O. Players ask segments for byte ranges (RFC 9110 §14), and a cached
segment may be answered by either data plane (the gateway's workers, or its nginx with
``max_ranges 1``), so both must give the same answer to the same header. This parser
follows nginx's (``ngx_http_range_parse`` in ``ngx_http_range_filter_module.c``, nginx
1.22) decision for decision:

* **ignored** (the whole body, 200): a header shorter than ``bytes=x`` or whose unit is
  not ``bytes`` (RFC 9110 §14.2: an unknown unit MUST be ignored); more than one
  satisfiable range (a server MAY ignore a ranges-specifier, §14.2; we never send
  ``multipart/byteranges``); a range that starts at 0 of an empty body;
* **416**: a malformed ranges-specifier (anything but ASCII digits, one ``-``, spaces and
  ``,``, so ``+0``, ``1_0`` and non-ASCII digits are malformed), a number beyond 2^63 - 1,
  or no range that overlaps the body;
* **206**: exactly one satisfiable ``first-last``, ``first-`` or ``-suffix`` range, its end
  clamped to the body.
"""

from __future__ import annotations

from gateway.errors import RangeNotSatisfiable

MAX_RANGES = 1  # nginx's max_ranges for the data plane; more ranges: the whole body
_OFF_T_MAX = 2**63 - 1  # the largest offset nginx's off_t parser takes (more: 416)
_OFF_T_DIGITS = len(str(_OFF_T_MAX))  # 19
_DIGITS = frozenset("0123456789")


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable("range not satisfiable", headers=((b"content-range", f"bytes */{size}".encode()),))


def _number(spec: str, i: int, size: int) -> tuple[int, int]:
    """The ASCII decimal at ``spec[i:]`` and the index after it. Raises 416 when there is
    none or it exceeds 2^63 - 1 (checked on the digits before ``int()``, which refuses
    strings of more than 4300 digits; leading zeros count for nothing, as in nginx)."""
    j = i
    while j < len(spec) and spec[j] in _DIGITS:
        j += 1
    if j == i:
        raise _unsatisfiable(size)
    digits = spec[i:j].lstrip("0") or "0"
    if len(digits) > _OFF_T_DIGITS or int(digits) > _OFF_T_MAX:
        raise _unsatisfiable(size)
    return int(digits), j


def _spaces(spec: str, i: int) -> int:
    while i < len(spec) and spec[i] == " ":
        i += 1
    return i


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The byte range to send for a ``Range`` header ``value`` on a body of ``size`` bytes.

    Returns the inclusive ``(first, last)`` byte offsets of one range (answer 206 with
    ``Content-Range: bytes first-last/size``), or None when the header is to be ignored
    (answer 200 with the whole body). Raises :class:`~gateway.errors.RangeNotSatisfiable`
    (416, with ``Content-Range: bytes */size``) for a malformed or unsatisfiable range.
    See the module docstring for which is which (nginx's rules, RFC 9110 §14).
    """
    # nginx trims spaces around a field value, not tabs (RFC 9110 §5.5 allows both): a tab
    # stays part of the value, and a server that passes it on must not answer otherwise
    value = value.strip(" ")
    if len(value) < 7 or value[:6].lower() != "bytes=":
        return None
    spec, i = value[6:], 0
    spans: list[tuple[int, int]] = []
    while True:
        i = _spaces(spec, i)
        suffix = False
        if i < len(spec) and spec[i] == "-":
            suffix, i = True, i + 1
            start = 0
        else:
            start, i = _number(spec, i, size)
            i = _spaces(spec, i)
            if i >= len(spec) or spec[i] != "-":
                raise _unsatisfiable(size)
            i = _spaces(spec, i + 1)
        if not suffix and (i >= len(spec) or spec[i] == ","):
            end = size  # "first-": to the end (exclusive end from here on)
        else:
            end, i = _number(spec, i, size)
            i = _spaces(spec, i)
            if i < len(spec) and spec[i] != ",":
                raise _unsatisfiable(size)
            if suffix:
                start, end = (size - end if end < size else 0), size - 1
            end = size if end >= size else end + 1
        if start < end:
            spans.append((start, end - 1))
            if len(spans) > MAX_RANGES:
                return None
        elif start == 0:
            return None  # "0-" (or "-n") of an empty body: nothing to range over
        if i >= len(spec):
            break
        i += 1  # past the ","
    if not spans:
        raise _unsatisfiable(size)
    return spans[0]
