"""`pysidecar run`: one sidecar for one Dataplane, until SIGTERM/SIGINT (drain); SIGHUP reloads."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar import collector, defaults, malloc, workers
from sidecar.identity.credentials import DEFAULT_WORKLOAD_VALIDITY
from sidecar.identity.mesh import MODES, MtlsOptions, OptionsError
from sidecar.limits import LimitsError, describe, load_limits

if TYPE_CHECKING:  # imported where used: a --workers supervisor does not load the data path
    from sidecar.runtime import Options

log = logging.getLogger("sidecar")

LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when available (or asked for), plain asyncio otherwise."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise SystemExit("pysidecar: --loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run a sidecar for one Dataplane (the default command)")
    add_run_arguments(parser)
    parser.set_defaults(func=run)
    limits = sub.add_parser("limits", help="list every limit, its default and its meaning")
    limits.set_defaults(func=lambda _args: print(describe(), end="") or 0)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataplane",
        "--dataplane-file",
        required=True,
        type=Path,
        metavar="FILE",
        help="the Kuma Dataplane file (Universal format)",
    )
    parser.add_argument(
        "--dataplane-var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fill {{ KEY }} in the Dataplane file, as kuma-dp does",
    )
    parser.add_argument(
        "--mesh",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory with the mesh's Dataplane files (default: the Dataplane file's directory)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=defaults.DRAIN_TIMEOUT,
        metavar="SECONDS",
        help="how long open connections may finish on SIGTERM",
    )
    parser.add_argument(
        "--access-log",
        default=None,
        metavar="PATH|-",
        help="log one line per connection (Envoy's format) to PATH, or stdout for -; default off",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=defaults.OUTBOUND_REQUEST_TIMEOUT,
        metavar="SECONDS",
        help="outbound HTTP: how long to wait for the response head (default 15, 0 disables); "
        "a response that is flowing is not cut",
    )
    parser.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="HTTP: close a request or tunnel with no bytes either way for this long, both "
        "directions (default: the limits outbound_stream_idle_timeout, 1800, and "
        "inbound_stream_idle_timeout, 3600); 0 disables",
    )
    parser.add_argument(
        "--lb",
        choices=("round_robin", "least_request"),
        default="round_robin",
        help="how each connection or request picks an endpoint (least_request: the less "
        "loaded of two random endpoints, as Envoy does)",
    )
    parser.add_argument(
        "--protocol-detection-timeout",
        type=float,
        default=defaults.PROTOCOL_DETECTION_TIMEOUT,
        metavar="SECONDS",
        help="sniffing of undeclared services: how long to wait for the app's first bytes "
        "(default 0.1; 0 turns sniffing off)",
    )
    dns = parser.add_argument_group(
        "DNS proxy",
        "With networking.transparentProxying in the Dataplane the sidecar answers DNS on "
        f"{defaults.DNS_ADDRESS} (and {defaults.DNS_ADDRESS_V6} with ipFamilyMode DualStack; "
        f"UDP and TCP): <kuma.io/service>.{defaults.DNS_DOMAIN} with "
        "the addresses of the outbounds to that service (their VIPs), every other name from the "
        "upstream resolvers. `pysidecar transparent-proxy --redirect-dns` sends the app's "
        "queries there.",
    )
    dns.add_argument(
        "--dns-port",
        type=int,
        default=defaults.DNS_PORT,
        metavar="PORT",
        help=f"where it listens (default {defaults.DNS_PORT}, Kuma's; 0 turns it off)",
    )
    dns.add_argument(
        "--dns-upstream",
        action="append",
        type=_upstream,
        default=[],
        metavar="ADDRESS[:PORT]",
        help="a resolver for names outside the mesh, tried in the order given (default: the "
        "nameservers of /etc/resolv.conf)",
    )
    mtls = parser.add_argument_group(
        "mesh mTLS",
        "With credentials every hop between sidecars is mTLS with SPIFFE identities (Kuma's "
        "wire conventions) and MeshTrafficPermission files in the mesh directory apply; without, "
        "hops are plaintext. Files are re-read when they change (rotation).",
    )
    mtls.add_argument(
        "--ca",
        type=Path,
        metavar="FILE",
        help="mesh CA bundle (PEM; may hold "
        "several CAs, e.g. the old and the new one during a CA rotation)",
    )
    mtls.add_argument(
        "--cert",
        type=Path,
        metavar="FILE",
        help="this sidecar's workload certificate (chain), as `pysidecar certs issue` writes it",
    )
    mtls.add_argument("--key", type=Path, metavar="FILE", help="its private key")
    mtls.add_argument(
        "--certs-dir",
        type=Path,
        metavar="DIR",
        help="take ca.crt, <dataplane name>.crt and <dataplane name>.key from DIR",
    )
    mtls.add_argument(
        "--ca-key",
        type=Path,
        metavar="FILE",
        help="dev mode: the CA's private key; the sidecar issues its own workload certificate at "
        "start (into --certs-dir, default the CA's directory) and renews it at 80%% of its life",
    )
    mtls.add_argument(
        "--cert-valid-for",
        type=_duration,
        default=DEFAULT_WORKLOAD_VALIDITY,
        metavar="DURATION",
        help="dev mode: validity of the certificates the sidecar issues itself (default 24h)",
    )
    mtls.add_argument(
        "--mtls",
        choices=MODES,
        default=None,
        help="strict (default with credentials): peers must use mTLS; permissive: plaintext is "
        "accepted too, told apart by the first byte",
    )
    parser.add_argument(
        "--tcp-relay",
        choices=("auto", "protocol"),
        default=os.environ.get("PYSIDECAR_TCP_RELAY", "auto"),
        help="auto: plain TCP on both sides is relayed with splice(2), zero-copy (Linux); "
        "protocol: every connection through the asyncio.Protocol relay (env PYSIDECAR_TCP_RELAY)",
    )
    parser.add_argument(
        "--workers",
        default=os.environ.get("PYSIDECAR_WORKERS", "1"),
        metavar="N|auto",
        help="serve with N processes, one event loop each, sharing every listener (SO_REUSEPORT); "
        "auto: one per core. Admin, metrics and probes are served once, for the whole sidecar "
        "(default 1; env PYSIDECAR_WORKERS)",
    )
    # Set by the supervisor on the workers it starts (sidecar.workers).
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--limits",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML file of limit overrides, `name: value` (see `pysidecar limits`); read "
        "again on SIGHUP and when it changes",
    )
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one limit (wins over --limits); repeatable",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=os.environ.get("PYSIDECAR_LOOP", "auto"),
        help="event loop (default: uvloop when installed; env PYSIDECAR_LOOP)",
    )


def _upstream(text: str) -> tuple[str, int]:
    from sidecar.dns.upstreams import parse_upstream

    try:
        return parse_upstream(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> timedelta:
    from sidecar.identity.certs_cli import parse_duration

    return parse_duration(text)


def mtls_options(args: argparse.Namespace) -> MtlsOptions:
    """The credential flags, checked for combinations that cannot work (SystemExit, status 1)."""
    options = MtlsOptions(
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        certs_dir=args.certs_dir,
        ca_key=args.ca_key,
        mode=args.mtls,
        valid_for=args.cert_valid_for,
    )
    try:
        options.check()
    except OptionsError as exc:
        raise SystemExit(f"pysidecar: {exc}") from None
    return options


def options_from(args: argparse.Namespace) -> Options:
    from sidecar.cli import parse_variables
    from sidecar.listener import StackOptions
    from sidecar.plan import Timeouts
    from sidecar.runtime import Options

    try:
        limits_file = args.limits.resolve() if args.limits is not None else None
        limits = load_limits(limits_file, args.limit)
    except LimitsError as exc:
        raise SystemExit(f"pysidecar: {exc}") from None
    if not 0 <= args.dns_port <= 65535:
        raise SystemExit(f"pysidecar: --dns-port must be 0..65535 (0: off), got {args.dns_port}")
    return Options(
        dataplane=args.dataplane,
        variables=parse_variables(args.dataplane_var),
        mesh_dir=args.mesh,
        drain_timeout=args.drain_timeout,
        timeouts=Timeouts(
            args.request_timeout,
            args.stream_idle_timeout,
            limits.inbound_stream_idle_timeout,
            limits.outbound_stream_idle_timeout,
        ),
        lb=args.lb,
        stack=StackOptions(
            detection_timeout=args.protocol_detection_timeout,
            splice=args.tcp_relay == "auto",
            limits=limits,
        ),
        limits_file=limits_file,
        limit_flags=tuple(args.limit),
        access_log=args.access_log,
        mtls=mtls_options(args),
        dns_port=args.dns_port,
        dns_upstreams=tuple(args.dns_upstream),
    )


def run(args: argparse.Namespace) -> int:
    count = workers.count_of(str(args.workers))
    worker = None
    if args.worker_index is not None:
        worker = workers.WorkerInfo(args.worker_index, count, args.worker_dir, args.worker_of)
    elif count > 1:
        loop_factory(args.loop)  # a bad --loop fails here, once, rather than in every worker
        from sidecar.cli import parse_variables

        parse_variables(args.dataplane_var)  # likewise; the Dataplane is the workers' to load
        dev_mode = mtls_options(args).ca_key is not None
        return workers.Supervisor(list(args.argv), count, first_alone=dev_mode).run()
    options = options_from(args)
    malloc.tune()  # large TLS buffers stay in the heap (see sidecar/malloc.py)
    ready: Callable[[], None] | None = None
    if worker is not None:
        options.worker = worker
        options.reuse_port = True
        # A reload asked for while this worker starts must not end it (SIGHUP's default): the
        # loop's handler takes over once serving; the Dataplane is read fresh at start anyway.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        ready = workers.worker_setup(worker, args.worker_ready_fd)
        for handler in logging.root.handlers:
            handler.setFormatter(
                logging.Formatter(
                    f"%(asctime)s %(levelname)s %(name)s worker={worker.index} %(message)s"
                )
            )
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        return runner.run(serve(options, ready))


async def serve(options: Options, ready: Callable[[], None] | None = None) -> int:
    from sidecar.config.dataplane import ConfigError
    from sidecar.identity.credentials import CredentialsError
    from sidecar.runtime import BindError, Sidecar

    sidecar = Sidecar(options)
    # The handlers are in place before the sidecar starts (and says `event=ready`): a SIGHUP or
    # SIGTERM that follows the ready line at once must not meet the default action, which ends
    # the process. One that comes during the start is acted on once it has started.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    started = False
    reload_asked = False

    def on_reload() -> None:
        nonlocal reload_asked
        if started:
            loop.create_task(sidecar.reload())
        else:
            reload_asked = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    try:
        await sidecar.start()
    except (ConfigError, BindError) as exc:
        print(f"pysidecar: {exc}", file=sys.stderr)
        return 1
    except CredentialsError as exc:
        print(f"pysidecar: mesh credentials: {exc}", file=sys.stderr)
        return 1
    started = True
    collector.settle()  # what start-up built lives on: out of the collector's walks
    malloc.release()  # and what it freed goes back to the kernel (see sidecar/malloc.py)
    if reload_asked:
        loop.create_task(sidecar.reload())
    if ready is not None:
        ready()
    await stop.wait()
    log.info("event=stopping")
    await sidecar.drain()
    if options.worker is not None:
        # Drained. A second stop signal may still come (the supervisor passes SIGTERM on, and a
        # terminal sends SIGINT to the whole group): it must not kill the exiting worker, so the
        # loop's handlers give way to "ignore" rather than to the defaults at its close.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    return 0
