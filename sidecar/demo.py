"""`pysidecar demo` (being built)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="bring up a small demo mesh on loopback")
    parser.add_argument("--once", action="store_true")
    parser.set_defaults(func=lambda args: 2)
