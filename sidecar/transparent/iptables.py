"""`pysidecar transparent-proxy`: the iptables rules that send an app's TCP through its sidecar.

The rules of kumactl's `install transparent-proxy` (TCP), printed in `iptables-restore`'s format
for the nat table (and the raw table: DNS's conntrack zones), to be applied in the app's network
namespace:

    pysidecar transparent-proxy --dataplane dp.yaml --gid 1337 | iptables-restore --noflush
    pysidecar transparent-proxy --dataplane dp.yaml --gid 1337 --ipv6 | ip6tables-restore --noflush

`--ipv6` prints the same rules for ip6tables (::1 for 127.0.0.1, ::6 for 127.0.0.6, the inbound
on `redirectPortInboundV6` where the Dataplane has one), for a Dataplane whose IPv6 connections
the sidecar takes (`ipFamilyMode: DualStack`). The sidecar's connections to an IPv6 app leave
from ::6, which must be given to the loopback interface first: `ip -6 addr add ::6/128 dev lo`.

- Incoming TCP (PREROUTING) goes to `redirectPortInbound`, but for `--exclude-inbound-ports`.
- Outgoing TCP (OUTPUT) goes to `redirectPortOutbound`, but for the sidecar's own connections
  (its user or group: `--uid`/`--gid`), loopback traffic of other processes, 127.0.0.1, and
  `--exclude-outbound-ports`. The sidecar's connections over loopback to a local address other
  than 127.0.0.1 (its own pod address) go to the inbound redirect, as peers' connections do,
  except those from 127.0.0.6: the sidecar's connections to its app (`sidecar.plan`).

- With `--redirect-dns`, UDP queries to the nameservers of /etc/resolv.conf (of the family
  printed; with `--redirect-all-dns-traffic`, to any address) go to the sidecar's DNS proxy on
  `--redirect-dns-port` (`sidecar.dns`), but for the sidecar's own, which it forwards there.
- With DNS redirected, the raw table puts the two kinds of query in conntrack zones apart, as
  Kuma's rules do (`--skip-dns-conntrack-zone-split` leaves them out): the sidecar's queries
  and the answers they get in zone 1, the app's redirected queries and the DNS proxy's answers
  to them in zone 2. In one zone, a query of the sidecar's leaving from a port that an app
  query used a moment before (its conntrack entry outlives its socket by 30 s or more) is
  taken for that query and redirected to the sidecar's own DNS proxy, not to the resolver.

`--uninstall` prints the rules that take them out again. The redirect ports come from the
Dataplane's `networking.transparentProxying` (else kumactl's 15001 and 15006); the sidecar
listens on them when the Dataplane has them.
"""

from __future__ import annotations

import argparse
import grp
import ipaddress
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from sidecar import defaults
from sidecar.dns.upstreams import upstreams_from_resolv_conf

_CHAIN = "PYSIDECAR"
INBOUND, INBOUND_REDIRECT = f"{_CHAIN}_INBOUND", f"{_CHAIN}_INBOUND_REDIRECT"
OUTPUT, OUTBOUND_REDIRECT = f"{_CHAIN}_OUTPUT", f"{_CHAIN}_OUTBOUND_REDIRECT"
DNS = f"{_CHAIN}_DNS"  # always made (empty without DNS redirection): one way to uninstall
CHAINS = (INBOUND, INBOUND_REDIRECT, OUTPUT, OUTBOUND_REDIRECT, DNS)
# The raw table's, always made too. Two, not one: the owner match is not allowed in a chain
# that PREROUTING jumps to. (iptables takes chain names of up to 28 characters.)
ZONES_OUTPUT, ZONES_PREROUTING = f"{_CHAIN}_DNS_CT_OUTPUT", f"{_CHAIN}_DNS_CT_PREROUTING"
RAW_CHAINS = (ZONES_OUTPUT, ZONES_PREROUTING)
SIDECAR_ZONE, APP_ZONE = 1, 2  # Kuma's numbers
ALL_ADDRESSES = ("0.0.0.0/0",)  # --redirect-all-dns-traffic (and ::/0: no address matched)
_LOOPBACK = {False: "127.0.0.1/32", True: "::1/128"}
_SOURCE = {
    False: f"{defaults.TRANSPARENT_SOURCE_ADDRESS}/32",
    True: f"{defaults.TRANSPARENT_SOURCE_ADDRESS_V6}/128",
}


@dataclass(frozen=True)
class Redirection:
    """What to redirect where, and whose connections are the sidecar's own."""

    owner: str  # iptables' owner match for the sidecar: "--uid-owner 5678", "--gid-owner 1337"
    outbound_port: int | None = defaults.REDIRECT_PORT_OUTBOUND  # None: outgoing TCP untouched
    inbound_port: int | None = defaults.REDIRECT_PORT_INBOUND  # None: incoming TCP untouched
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    # DNS queries to these nameservers go to `dns_port` (the DNS proxy); none: untouched.
    dns_servers: tuple[str, ...] = ()
    dns_port: int = defaults.DNS_PORT
    dns_conntrack_zones: bool = True  # with DNS redirected: the zone split in the raw table
    ipv6: bool = False  # the rules for ip6tables-restore


def install_rules(r: Redirection) -> str:
    """The nat table's chains and rules, in `iptables-restore --noflush` format (in
    `ip6tables-restore`'s with `r.ipv6`: the same but for the addresses)."""
    source, loopback = _SOURCE[r.ipv6], _LOOPBACK[r.ipv6]
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in CHAINS)]
    if r.inbound_port is not None:
        lines.append(f"-A PREROUTING -p tcp -j {INBOUND}")
        lines += [f"-A {INBOUND} -p tcp --dport {p} -j RETURN" for p in r.exclude_inbound_ports]
        lines.append(f"-A {INBOUND} -p tcp -j {INBOUND_REDIRECT}")
        lines.append(f"-A {INBOUND_REDIRECT} -p tcp -j REDIRECT --to-ports {r.inbound_port}")
    lines.append(f"-A OUTPUT -p tcp -j {OUTPUT}")
    lines.append(f"-A {OUTPUT} -s {source} -o lo -j RETURN")
    if r.inbound_port is not None:
        lines.append(f"-A {OUTPUT} ! -d {loopback} -o lo -m owner {r.owner} -j {INBOUND_REDIRECT}")
    lines.append(f"-A {OUTPUT} -o lo -m owner ! {r.owner} -j RETURN")
    lines.append(f"-A {OUTPUT} -m owner {r.owner} -j RETURN")
    lines.append(f"-A {OUTPUT} -d {loopback} -j RETURN")
    if r.outbound_port is not None:
        lines += [f"-A {OUTPUT} -p tcp --dport {p} -j RETURN" for p in r.exclude_outbound_ports]
        lines.append(f"-A {OUTPUT} -j {OUTBOUND_REDIRECT}")
        lines.append(f"-A {OUTBOUND_REDIRECT} -p tcp -j REDIRECT --to-ports {r.outbound_port}")
    lines.append(f"-A OUTPUT -p udp --dport 53 -j {DNS}")
    if r.dns_servers:
        lines.append(f"-A {DNS} -m owner {r.owner} -j RETURN")
        for server in r.dns_servers:
            destination = "" if server in ALL_ADDRESSES else f"-d {server}/{128 if r.ipv6 else 32} "
            lines.append(f"-A {DNS} {destination}-p udp -j REDIRECT --to-ports {r.dns_port}")
    lines.append("COMMIT")
    lines += _conntrack_zones(r)
    return "\n".join(lines) + "\n"


def _conntrack_zones(r: Redirection) -> list[str]:
    """The raw table: each DNS packet's conntrack zone, Kuma's split (the first CT target that
    a packet meets sets its zone)."""
    lines = ["*raw", *(f":{chain} - [0:0]" for chain in RAW_CHAINS)]
    lines.append(f"-A OUTPUT -p udp -j {ZONES_OUTPUT}")
    lines.append(f"-A PREROUTING -p udp -j {ZONES_PREROUTING}")
    if r.dns_servers and r.dns_conntrack_zones:
        own, app = f"-j CT --zone {SIDECAR_ZONE}", f"-j CT --zone {APP_ZONE}"
        lines.append(f"-A {ZONES_OUTPUT} -p udp --dport 53 -m owner {r.owner} {own}")
        lines.append(f"-A {ZONES_OUTPUT} -p udp --sport {r.dns_port} -m owner {r.owner} {app}")
        bits = 128 if r.ipv6 else 32
        for server in r.dns_servers:
            if server in ALL_ADDRESSES:
                lines.append(f"-A {ZONES_OUTPUT} -p udp --dport 53 {app}")
                lines.append(f"-A {ZONES_PREROUTING} -p udp --sport 53 {own}")
                continue
            lines.append(f"-A {ZONES_OUTPUT} -d {server}/{bits} -p udp --dport 53 {app}")
            if ipaddress.ip_address(server).is_loopback:
                # A resolver on loopback answers from this host: its answers to the sidecar
                # pass OUTPUT, not PREROUTING (Kuma's rule for Docker's 127.0.0.11).
                lines.append(
                    f"-A {ZONES_OUTPUT} -s {server}/{bits} -d {_LOOPBACK[r.ipv6]} -p udp {own}"
                )
            lines.append(f"-A {ZONES_PREROUTING} -s {server}/{bits} -p udp --sport 53 {own}")
    lines.append("COMMIT")
    return lines


def uninstall_rules(inbound: bool = True) -> str:
    """What takes `install_rules`' chains out again (`iptables-restore --noflush`)."""
    lines = ["*nat"]
    if inbound:
        lines.append(f"-D PREROUTING -p tcp -j {INBOUND}")
    lines.append(f"-D OUTPUT -p tcp -j {OUTPUT}")
    lines.append(f"-D OUTPUT -p udp --dport 53 -j {DNS}")
    lines += [f"-F {chain}" for chain in CHAINS]
    lines += [f"-X {chain}" for chain in CHAINS]
    lines.append("COMMIT")
    lines += [
        "*raw",
        f"-D OUTPUT -p udp -j {ZONES_OUTPUT}",
        f"-D PREROUTING -p udp -j {ZONES_PREROUTING}",
    ]
    lines += [f"-F {chain}" for chain in RAW_CHAINS]
    lines += [f"-X {chain}" for chain in RAW_CHAINS]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _ports(text: str) -> tuple[int, ...]:
    ports = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise argparse.ArgumentTypeError(f"{part!r} is not a port (1..65535)")
        ports.append(int(part))
    return tuple(ports)


def _owner(args: argparse.Namespace) -> str:
    """The owner match for --uid or --gid, each a number or a name."""
    if args.uid is not None:
        uid = args.uid if args.uid.isdigit() else str(pwd.getpwnam(args.uid).pw_uid)
        return f"--uid-owner {uid}"
    gid = args.gid if args.gid.isdigit() else str(grp.getgrnam(args.gid).gr_gid)
    return f"--gid-owner {gid}"


def run(args: argparse.Namespace) -> int:
    from sidecar.config.dataplane import ConfigError, load_dataplane
    from sidecar.plan import redirects_ipv6

    outbound, inbound = args.redirect_outbound_port, args.redirect_inbound_port
    if args.dataplane is not None:
        try:
            dataplane = load_dataplane(Path(args.dataplane), {})
        except ConfigError as exc:
            print(f"pysidecar transparent-proxy: {exc}", file=sys.stderr)
            return 1
        tp = dataplane.networking.transparent_proxying
        if tp is None:
            print(
                f"pysidecar transparent-proxy: {args.dataplane}: networking.transparentProxying "
                "is not set: the sidecar would not listen on the redirect ports",
                file=sys.stderr,
            )
            return 1
        if args.ipv6 and not args.uninstall and not redirects_ipv6(tp):
            print(
                f"pysidecar transparent-proxy: --ipv6: {args.dataplane}: "
                f"networking.transparentProxying.ipFamilyMode is {tp.ip_family_mode}: the "
                "sidecar would not listen for IPv6 connections (set it to DualStack)",
                file=sys.stderr,
            )
            return 1
        outbound = outbound or tp.redirect_port_outbound
        inbound_v6 = tp.redirect_port_inbound_v6 if args.ipv6 else None
        inbound = inbound or inbound_v6 or tp.redirect_port_inbound
    elif outbound is None and inbound is None:
        outbound, inbound = defaults.REDIRECT_PORT_OUTBOUND, defaults.REDIRECT_PORT_INBOUND
    if args.uninstall:
        sys.stdout.write(uninstall_rules(inbound=inbound is not None))
        return 0
    if args.uid is None and args.gid is None:
        print(
            "pysidecar transparent-proxy: --uid or --gid is required: the user or group the "
            "sidecar runs as, whose connections are not redirected",
            file=sys.stderr,
        )
        return 2
    try:
        owner = _owner(args)
    except KeyError as exc:
        print(f"pysidecar transparent-proxy: no such user or group: {exc}", file=sys.stderr)
        return 2
    dns_servers: tuple[str, ...] = ()
    if args.redirect_all_dns_traffic:
        dns_servers = ALL_ADDRESSES
    elif args.redirect_dns:
        dns_servers = tuple(h for h, _ in upstreams_from_resolv_conf() if (":" in h) == args.ipv6)
        if not dns_servers and not args.ipv6:
            print(
                "pysidecar transparent-proxy: --redirect-dns: /etc/resolv.conf names no IPv4 "
                "nameserver (use --redirect-all-dns-traffic)",
                file=sys.stderr,
            )
            return 2
    redirection = Redirection(
        owner,
        outbound,
        inbound,
        args.exclude_inbound_ports,
        args.exclude_outbound_ports,
        dns_servers,
        args.redirect_dns_port,
        not args.skip_dns_conntrack_zone_split,
        args.ipv6,
    )
    sys.stdout.write(install_rules(redirection))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "transparent-proxy",
        help="print the iptables rules that redirect an app's TCP to its sidecar",
        description=(
            "Print the rules of transparent proxying (the nat table, and the raw table's"
            " conntrack zones for DNS, as kumactl install transparent-proxy applies them) for"
            " iptables-restore --noflush, to run in the app's network"
            " namespace. The sidecar listens on the redirect ports its Dataplane names in"
            " networking.transparentProxying."
        ),
    )
    parser.add_argument("--dataplane", metavar="FILE", help="take the redirect ports from it")
    parser.add_argument("--redirect-outbound-port", type=int, metavar="PORT")
    parser.add_argument("--redirect-inbound-port", type=int, metavar="PORT")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--uid", metavar="USER", help="the user the sidecar runs as")
    who.add_argument("--gid", metavar="GROUP", help="the group the sidecar runs as")
    parser.add_argument(
        "--exclude-inbound-ports", type=_ports, default=(), metavar="P,P", help="e.g. 22"
    )
    parser.add_argument("--exclude-outbound-ports", type=_ports, default=(), metavar="P,P")
    dns = parser.add_mutually_exclusive_group()
    dns.add_argument(
        "--redirect-dns",
        action="store_true",
        help="send the app's DNS queries to the nameservers of /etc/resolv.conf to the "
        "sidecar's DNS proxy (<service>.mesh names)",
    )
    dns.add_argument(
        "--redirect-all-dns-traffic",
        action="store_true",
        help="send every DNS query over UDP to the sidecar's DNS proxy, whatever its address",
    )
    parser.add_argument(
        "--redirect-dns-port",
        type=int,
        default=defaults.DNS_PORT,
        metavar="PORT",
        help=f"the DNS proxy's port (the sidecar's --dns-port; default {defaults.DNS_PORT})",
    )
    parser.add_argument(
        "--skip-dns-conntrack-zone-split",
        action="store_true",
        help="leave out the raw table's rules that put the sidecar's DNS queries and the app's "
        "redirected ones in conntrack zones apart",
    )
    parser.add_argument(
        "--ipv6",
        action="store_true",
        help="print the rules for ip6tables-restore (a Dataplane with ipFamilyMode DualStack)",
    )
    parser.add_argument("--uninstall", action="store_true", help="print the rules' removal")
    parser.set_defaults(func=run)
