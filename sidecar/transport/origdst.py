"""Where a redirected connection was going: netfilter's SO_ORIGINAL_DST.

iptables' REDIRECT rewrites a connection's destination to the sidecar's redirect port; the
kernel's connection tracking keeps the address the client asked for, which `getsockopt` returns
(Envoy's `original_dst` listener filter reads the same option). A connection that was not
redirected reports its own local address, or nothing when the kernel tracks no connections.
"""

from __future__ import annotations

import socket

# linux/netfilter_ipv4.h SO_ORIGINAL_DST and linux/netfilter_ipv6/ip6_tables.h
# IP6T_SO_ORIGINAL_DST: the same number, at the IPv4 and the IPv6 level.
SO_ORIGINAL_DST = 80
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The (address, port) the client connected to before any redirection, or None when the
    kernel does not know it (no connection tracking, not TCP over IP)."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
            address = socket.inet_ntop(socket.AF_INET, raw[4:8])
        elif sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, _SOCKADDR_IN6)
            address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        else:
            return None
    except OSError:
        return None
    return address, int.from_bytes(raw[2:4], "big")
