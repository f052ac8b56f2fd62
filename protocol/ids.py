"""Identifier rules shared by pod, gateway and portal.

``pod_id`` doubles as the pod's tailnet host name, so it must be a DNS label
(RFC 1123 §2.1: 1-63 characters of ``a-z0-9-``, not starting or ending with a
hyphen). ``camera_id`` appears in URL paths and file names, so it is limited to
a conservative, traversal-free alphabet.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")  # \Z: "$" would accept a trailing newline
_CAMERA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def is_dns_label(value: object) -> bool:
    """Return True when ``value`` is a lower-case RFC 1123 DNS label (1-63 chars)."""
    return isinstance(value, str) and bool(_DNS_LABEL.match(value))


def is_camera_id(value: object) -> bool:
    """Return True when ``value`` is a safe camera id: 1-64 chars of ``A-Za-z0-9_.-``,
    starting with a letter or digit, and never ``.``/``..``-only."""
    return isinstance(value, str) and bool(_CAMERA_ID.match(value)) and ".." not in value


# RFC 6598 shared address space, which Tailscale uses for tailnet IPv4 addresses,
# and Tailscale's ULA prefix for tailnet IPv6 addresses.
TAILNET_V4 = ipaddress.ip_network("100.64.0.0/10")
TAILNET_V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")


def pick_tailnet_ipv4(addresses: Iterable[object] | None) -> str | None:
    """First address in 100.64.0.0/10 from IP strings (``"100.64.1.2"`` or CIDR
    ``"100.64.1.2/32"``); anything else is ignored. None when there is none."""
    for a in addresses or ():
        try:
            ip = ipaddress.ip_address(str(a).split("/")[0])
        except ValueError:
            continue
        if ip.version == 4 and ip in TAILNET_V4:
            return str(ip)
    return None
