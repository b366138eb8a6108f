"""The mesh's names and how each query is answered (pure).

Kuma gives every service a VIP and answers `<kuma.io/service>.mesh` with it (and, for a service
name with underscores, which is not a host name, the same name with dots: `backend_ns_svc_80.mesh`
and `backend.ns.svc.80.mesh`). Here the VIPs are the outbounds' addresses in the Dataplane file:
an outbound on 10.251.0.1:80 for `backend` makes `backend.mesh` resolve to 10.251.0.1, where the
redirection rules hand the app's connection to that outbound.

The zone is ours: a name under it that no outbound has is NXDOMAIN at once, and a name it has
with no address of the asked type is an empty NOERROR (NODATA), so that an A and AAAA lookup
pair gets the A answer. Names outside the zone are not ours to answer: `answer` returns None and
the server forwards the query as it is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar import defaults
from sidecar.config import model
from sidecar.dns import message
from sidecar.dns.message import Query


@dataclass(frozen=True)
class DnsTable:
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # name → addresses
    domain: str = defaults.DNS_DOMAIN
    ttl: int = defaults.DNS_TTL

    def owns(self, name: str) -> bool:
        return name == self.domain or name.endswith("." + self.domain)

    def answer(self, query: Query, limit: int = message.UDP_LIMIT) -> bytes | None:
        """Our answer to `query` in at most `limit` bytes, or None when its name is not in our
        zone (forward it)."""
        if query.opcode != 0:
            return message.reply(query, message.NOTIMP)
        if not self.owns(query.name):
            return None
        addresses = self.names.get(query.name)
        if addresses is None and query.name != self.domain:
            return message.reply(query, message.NXDOMAIN, authoritative=True)
        return message.reply(
            query,
            addresses=addresses_of_type(addresses or (), query),
            ttl=self.ttl,
            authoritative=True,
            limit=limit,
        )


def addresses_of_type(addresses: tuple[str, ...], query: Query) -> tuple[str, ...]:
    """What of `addresses` answers the query's type: A the IPv4 ones, AAAA the IPv6 ones, ANY
    both; other types (MX, TXT, …) and classes nothing."""
    if query.klass not in (message.IN, message.ANY):
        return ()
    if query.type == message.ANY:
        return addresses
    version = {message.A: 4, message.AAAA: 6}.get(query.type)
    return tuple(a for a in addresses if ipaddress.ip_address(a).version == version)


def dns_table(dataplane: model.Dataplane, domain: str = defaults.DNS_DOMAIN) -> DnsTable:
    """The names of the Dataplane's outbounds: every service it reaches, at the addresses of its
    outbounds (in the file's order). Loopback outbounds are left out: redirection never takes
    loopback traffic, and a name that also led to 127.0.0.1 would send some connections to a
    port nothing listens on there."""
    names: dict[str, list[str]] = {}
    for outbound in dataplane.networking.outbound:
        if ipaddress.ip_address(outbound.address).is_loopback:
            continue
        service = outbound.service.lower()
        for name in dict.fromkeys((service, service.replace("_", "."))):
            addresses = names.setdefault(f"{name}.{domain}", [])
            if outbound.address not in addresses:
                addresses.append(outbound.address)
    return DnsTable({n: tuple(a) for n, a in names.items()}, domain)
