"""IP addresses as text, one way for every module: how one is written beside a port, and its one
canonical spelling (an IPv6 address has many: `FD00:0::1`, `fd00::1`)."""

from __future__ import annotations

import ipaddress


def host_port(host: str, port: int) -> str:
    """`10.0.0.1:80`, `[fd00::1]:80`: an IPv6 address in brackets, as Envoy and URLs write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical(address: str) -> str:
    """The kernel's spelling of an IP address (`socket.inet_ntop`'s, what a socket reports), or
    the text as it is when it is no IP address."""
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address
