"""`pysidecar certs`: the mesh CA and workload certificates (being built)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("certs", help="mesh CA and workload certificates")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
