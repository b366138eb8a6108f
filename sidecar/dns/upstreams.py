"""Where the DNS proxy forwards the names that are not the mesh's: the host's resolvers, or the
ones given with `--dns-upstream`. Light on imports: the command line checks the flag with it."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

Upstream = tuple[str, int]  # (IP address, port)


def upstreams_from_resolv_conf(path: Path = Path("/etc/resolv.conf")) -> tuple[Upstream, ...]:
    """The `nameserver` lines of resolv.conf, port 53; glibc's default (127.0.0.1) when none."""
    found: list[Upstream] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    found.append((str(ipaddress.ip_address(fields[1].split("%")[0])), 53))
    return tuple(found) or (("127.0.0.1", 53),)


def parse_upstream(text: str) -> Upstream:
    """`10.0.0.10`, `10.0.0.10:5353`, `::1` or `[::1]:5353`; ValueError otherwise."""
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [address]:port")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: {port!r} is not a port (1..65535)")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return str(address), int(port)
