"""What a running sidecar imports: its command line must not load the other subcommands' modules.

Every module a sidecar imports stays resident for its life (issue 8: <= 40 MB per sidecar at
1,000 req/s). `stat` brought urllib.request, http.client and the `email` package; `demo` and
`certs` their helpers; argparse's default formatter and `ctypes.util` brought `shutil` and
`tempfile` (with `bz2`, `lzma`, `zlib`): ~2 MB in all, used by none of a running sidecar's code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sidecar
from sidecar import cli

REPO = Path(sidecar.__file__).resolve().parent.parent

# Loaded by none of `run`'s code: a test fails when one comes back (say, through a new import).
NOT_FOR_RUN = (
    "sidecar.demo",
    "sidecar.demoapps",
    "sidecar.observe.stat",
    "sidecar.identity.certs_cli",
    "sidecar.transparent.iptables",
    "email",
    "http.client",
    "urllib.request",
    "shutil",
    "tempfile",
    "bz2",
    "lzma",
)

# The command line of `run` as `python -m sidecar` parses it, the data path imported, the glibc
# settings applied; then which of NOT_FOR_RUN are loaded.
PROBE = """
import json, sys
from sidecar import cli, malloc, runner
import sidecar.runtime
args = cli.build_parser("run").parse_args(["run", "--dataplane", "dp.yaml"])
runner.options_from(args)
malloc.tune()
malloc.release()
print(json.dumps(sorted(m for m in NOT_FOR_RUN if m in sys.modules)))
"""


def test_run_loads_no_other_subcommand_and_no_archive_modules() -> None:
    code = f"NOT_FOR_RUN = {NOT_FOR_RUN!r}\n{PROBE}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_full_parser_lists_every_subcommand() -> None:
    """`pysidecar --help` is built without a command: every subcommand is there."""
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert list(subparsers.choices) == list(cli.SUBCOMMANDS)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--dataplane", "dp.yaml"],
        ["limits"],
        ["validate", "dp.yaml"],
        ["certs", "init", "--mesh", "default", "--dir", "."],
        ["stat", "--once"],
        ["demo", "--once"],
    ],
)
def test_each_subcommand_parses_with_its_own_parser(argv: list[str]) -> None:
    """`main` builds only the chosen subcommand's parser; it parses that command as before."""
    assert argv[0] in cli.SUBCOMMANDS
    alone = vars(cli.build_parser(argv[0]).parse_args(argv))
    full = vars(cli.build_parser().parse_args(argv))
    # `func` may be a lambda made by each `register` call: the same code, not the same object
    assert alone.pop("func").__qualname__ == full.pop("func").__qualname__
    assert alone == full


@pytest.mark.parametrize("columns", ["50", "132", "not a number", "0", None])
def test_help_width_is_argparse_own(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    """The formatter's width is the one argparse's would take from `shutil.get_terminal_size`."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert cli._HelpFormatter("pysidecar")._width == argparse.HelpFormatter("pysidecar")._width
