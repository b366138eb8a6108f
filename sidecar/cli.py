"""`pysidecar`: run (the default) | validate | certs | demo | stat | limits | transparent-proxy.

`pysidecar --dataplane dp.yaml` runs a sidecar, as `kuma-dp run --dataplane-file` would. Each
subcommand lives with the code it drives and registers itself here through `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from sidecar import __version__
from sidecar.observe.throttle import PeerEventFilter

# The module that registers each subcommand (`register(subparsers)`), in `--help`'s order. A
# sidecar (`run`) imports only its own: `stat` alone pulled in urllib.request, http.client and the
# `email` package, `demo` and `certs` their helpers — 28 modules and ~1.4 MB of resident memory
# that every running sidecar kept and never used (issue 8: <= 40 MB per sidecar; bench/README.md).
_REGISTRARS = {
    "run": "sidecar.runner",
    "limits": "sidecar.runner",
    "validate": __name__,
    "certs": "sidecar.identity.certs_cli",
    "demo": "sidecar.demo",
    "stat": "sidecar.observe.stat",
    "transparent-proxy": "sidecar.transparent.iptables",
}
SUBCOMMANDS = tuple(_REGISTRARS)


def parse_variables(pairs: list[str]) -> dict[str, str]:
    variables = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"pysidecar: --dataplane-var expects KEY=VALUE, got {pair!r}")
        variables[key] = value
    return variables


def _columns() -> int:
    """The terminal's width as `shutil.get_terminal_size()` gives it (COLUMNS, stdout, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, told the width rather than asking `shutil` for it.

    argparse builds a formatter for every `add_argument` and, without a width, imports `shutil`
    for the terminal's, and `shutil` imports `bz2`, `lzma` and `zlib`: ~0.4 MB that a running
    sidecar kept for its command line's sake.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _columns() - 2 if width is None else width
        )


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose formatter is `_HelpFormatter` unless told otherwise; the
    subcommands' parsers are of this class too (`add_subparsers` makes them of the parent's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand or, given `command`, of that one (and its module's others).

    The other subcommands' modules are not imported then (`_REGISTRARS`); the top-level `--help`,
    which lists them all, is built without `command`.
    """
    parser = _ArgumentParser(
        prog="pysidecar", description="A sidecar proxy for a Kuma-style service mesh."
    )
    parser.add_argument("--version", action="version", version=f"pysidecar {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None if command is None else _REGISTRARS[command]
    for module in dict.fromkeys(_REGISTRARS.values()):
        if wanted is None or module == wanted:
            importlib.import_module(module).register(sub)
    return parser


def register(sub: argparse._SubParsersAction) -> None:
    """`validate`: defined here, as it needs nothing the other subcommands' modules bring."""
    validate = sub.add_parser("validate", help="check Dataplane files and print their errors")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--dataplane-var", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(func=run_validate)


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
    command = argv[at] if at < len(argv) and argv[at] in SUBCOMMANDS else None
    parser = build_parser(command)
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
