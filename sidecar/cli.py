"""`pysidecar`: run (the default) | validate | certs | demo | stat | limits.

`pysidecar --dataplane dp.yaml` runs a sidecar, as `kuma-dp run --dataplane-file` would. Each
subcommand lives with the code it drives and registers itself here through `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sidecar import __version__
from sidecar.observe.throttle import PeerEventFilter

SUBCOMMANDS = ("run", "validate", "certs", "demo", "stat", "limits")


def parse_variables(pairs: list[str]) -> dict[str, str]:
    variables = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"pysidecar: --dataplane-var expects KEY=VALUE, got {pair!r}")
        variables[key] = value
    return variables


def build_parser() -> argparse.ArgumentParser:
    from sidecar import demo, runner
    from sidecar.identity import certs_cli
    from sidecar.observe import stat

    parser = argparse.ArgumentParser(
        prog="pysidecar", description="A sidecar proxy for a Kuma-style service mesh."
    )
    parser.add_argument("--version", action="version", version=f"pysidecar {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runner.register(sub)
    validate = sub.add_parser("validate", help="check Dataplane files and print their errors")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--dataplane-var", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(func=run_validate)
    certs_cli.register(sub)
    demo.register(sub)
    stat.register(sub)
    return parser


def run_validate(args: argparse.Namespace) -> int:
    from sidecar.config.dataplane import ConfigError, load_dataplane

    variables = parse_variables(args.dataplane_var)
    failed = False
    for path in args.files:
        try:
            load_dataplane(path, variables)
        except ConfigError as exc:
            failed = True
            print(str(exc))
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `pysidecar --dataplane dp.yaml` means `pysidecar run --dataplane dp.yaml`, as kuma-dp users
    # type it: insert `run` after the global options unless a subcommand or help is asked for.
    at = _after_global_options(argv)
    rest = argv[at:]
    if rest and rest[0] not in SUBCOMMANDS and rest[0] not in ("-h", "--help", "--version"):
        argv.insert(at, "run")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # as given, `run` inserted: what --workers starts its workers with
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for noisy in ("hpack", "h2"):  # per-frame debug output from the protocol libraries
        logging.getLogger(noisy).setLevel(logging.WARNING)
    peer_events = PeerEventFilter()  # one line a second per kind of bad request, not thousands
    for handler in logging.getLogger().handlers:
        handler.addFilter(peer_events)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


def _after_global_options(argv: list[str]) -> int:
    """Index after leading global options (--log-level X), where an implied `run` goes."""
    i = 0
    while i < len(argv) and argv[i] in ("--log-level",):
        i += 2
    while i < len(argv) and argv[i].startswith("--log-level="):
        i += 1
    return i
