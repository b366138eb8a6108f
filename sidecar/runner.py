"""`pysidecar run` (being built)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run a sidecar for one Dataplane (the default command)")
    parser.add_argument("--dataplane", required=True)
    parser.set_defaults(func=lambda args: 2)
