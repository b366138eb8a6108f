"""`pysidecar certs`: make a mesh CA, issue workload certificates, read certificates.

    pysidecar certs init --mesh default [--rsa] [--dir certs] [--force] [--valid-days 3650]
    pysidecar certs issue --dataplane dp.yaml [--dir certs] [--valid-for 24h] [--out-dir DIR]
    pysidecar certs inspect certs/web-1.crt

The CA lives in `<dir>/ca.crt` and `<dir>/ca.key` (`certs/` by default); `issue` writes
`<out-dir>/<dataplane name>.crt` and `.key` (out-dir defaults to the CA's dir). Private keys are
written with mode 0600. Errors a user can fix exit with status 1 and a message naming the file.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.identity import spiffe
from sidecar.identity.credentials import (
    DEFAULT_CA_VALIDITY_DAYS,
    DEFAULT_WORKLOAD_VALIDITY,
    CredentialsError,
)

if TYPE_CHECKING:
    from cryptography import x509

# `register` runs for every `pysidecar` command line (it builds the parser): the commands import
# `cryptography` and the CA code themselves (see sidecar.identity.credentials).

DEFAULT_DIR = "certs"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Go-style durations as Kuma writes them (`24h`, `90m`, `1h30m`, `30s`), plus days (`7d`)."""
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    else:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(value) or not value:
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r} (use e.g. 24h, 90m, 1h30m, 7d)"
            )
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "certs",
        help="mesh CA and workload certificates",
        description="Make a mesh CA, issue workload certificates as Kuma does, inspect them.",
    )
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    certs = parser.add_subparsers(dest="certs_command", metavar="ACTION")

    init = certs.add_parser("init", help="create the mesh CA (ca.crt, ca.key)")
    init.add_argument("--mesh", required=True, help="mesh name (the SPIFFE trust domain)")
    init.add_argument(
        "--rsa", action="store_true", help="RSA 2048 (as Kuma) instead of ECDSA P-256"
    )
    init.add_argument("--dir", default=DEFAULT_DIR, help="where to write (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="overwrite an existing CA")
    init.add_argument(
        "--valid-days", type=int, default=DEFAULT_CA_VALIDITY_DAYS, help="default: %(default)s"
    )
    init.set_defaults(func=run_init)

    issue = certs.add_parser("issue", help="issue a workload certificate for a Dataplane file")
    issue.add_argument("--dataplane", required=True, metavar="FILE", help="Dataplane YAML file")
    issue.add_argument("--dataplane-var", action="append", default=[], metavar="KEY=VALUE")
    issue.add_argument(
        "--dir", default=DEFAULT_DIR, help="the CA's directory (default: %(default)s)"
    )
    issue.add_argument(
        "--out-dir", default=None, help="where to write <name>.crt/.key (default: --dir)"
    )
    issue.add_argument(
        "--valid-for",
        type=parse_duration,
        default=DEFAULT_WORKLOAD_VALIDITY,
        metavar="DURATION",
        help="validity, e.g. 24h (default), 90m, 7d",
    )
    issue.add_argument("--rsa", action="store_true", help="RSA 2048 key instead of ECDSA P-256")
    issue.set_defaults(func=run_issue)

    inspect = certs.add_parser("inspect", help="show a certificate's identities and validity")
    inspect.add_argument("file", metavar="FILE")
    inspect.set_defaults(func=run_inspect)


def _fail(action: str, message: str) -> int:
    print(f"pysidecar certs {action}: {message}", file=sys.stderr)
    return 1


def run_init(args: argparse.Namespace) -> int:
    from sidecar.identity import ca

    directory = Path(args.dir)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    existing = [str(p) for p in (cert_path, key_path) if p.exists()]
    if existing and not args.force:
        return _fail(
            "init",
            f"a CA already exists ({', '.join(existing)}); use --force to replace it "
            "(every workload certificate it issued will stop being trusted)",
        )
    if args.valid_days <= 0:
        return _fail("init", f"--valid-days must be positive, got {args.valid_days}")
    try:
        made = ca.create_ca(args.mesh, rsa=args.rsa, valid_days=args.valid_days)
    except ca.IssueError as exc:
        return _fail("init", str(exc))
    try:
        ca.write_private_key(key_path, made.key)
        ca.write_certificate(cert_path, made.cert)
    except OSError as exc:
        return _fail("init", f"cannot write to {directory}: {exc}")
    print(
        f"created the CA of mesh {args.mesh!r}: {cert_path} and {key_path} (0600), "
        f"{key_description(made.cert)}, valid until {made.cert.not_valid_after_utc:%Y-%m-%d}"
    )
    return 0


def run_issue(args: argparse.Namespace) -> int:
    from sidecar.cli import parse_variables
    from sidecar.config.dataplane import ConfigError, load_dataplane
    from sidecar.identity import ca

    directory = Path(args.dir)
    out_dir = Path(args.out_dir) if args.out_dir else directory
    try:
        dataplane = load_dataplane(args.dataplane, parse_variables(args.dataplane_var))
    except ConfigError as exc:
        return _fail("issue", str(exc))
    try:
        ca_cert, ca_key = ca.load_ca(directory / CA_CERT, directory / CA_KEY)
    except CredentialsError as exc:
        hint = (
            " (run `pysidecar certs init --mesh NAME` first)" if "not found" in exc.reason else ""
        )
        return _fail("issue", f"{exc}{hint}")
    mesh = ca.ca_mesh(ca_cert)
    if mesh is not None and mesh != dataplane.mesh:
        return _fail(
            "issue",
            f"{directory / CA_CERT} is the CA of mesh {mesh!r} but {args.dataplane} is in mesh "
            f"{dataplane.mesh!r}",
        )
    try:
        issued = ca.issue_workload(
            ca_cert, ca_key, dataplane, valid_for=args.valid_for, rsa=args.rsa
        )
    except ca.IssueError as exc:
        return _fail("issue", str(exc))
    cert_path = out_dir / f"{dataplane.name}.crt"
    key_path = out_dir / f"{dataplane.name}.key"
    try:
        ca.write_cert_key(cert_path, key_path, issued)
    except OSError as exc:
        return _fail("issue", f"cannot write to {out_dir}: {exc}")
    print(
        f"issued {cert_path} and {key_path} (0600) for dataplane {dataplane.name!r}, valid until "
        f"{issued.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    )
    for uri in spiffe.identities_of(issued.cert):
        print(f"  {uri}")
    return 0


def key_description(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {curve.get(key.curve.name, key.curve.name)}"
    return type(key).__name__


def _usages(cert: x509.Certificate) -> list[str]:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out = []
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None:
        names = [
            ("digital_signature", "digitalSignature"),
            ("content_commitment", "contentCommitment"),
            ("key_encipherment", "keyEncipherment"),
            ("data_encipherment", "dataEncipherment"),
            ("key_agreement", "keyAgreement"),
            ("key_cert_sign", "keyCertSign"),
            ("crl_sign", "cRLSign"),
        ]
        out += [label for attr, label in names if getattr(ku, attr)]
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None:
        known = {
            ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
            ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
        }
        out += [known.get(oid, oid.dotted_string) for oid in eku]
    return out


def describe_certificate(cert: x509.Certificate, now: datetime | None = None) -> list[str]:
    """Human-readable lines for one certificate (what `certs inspect` prints)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = now or datetime.now(UTC)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        state = f"NOT YET VALID (starts in {format_duration(not_before - now)})"
    elif now >= not_after:
        state = f"EXPIRED ({format_duration(now - not_after)} ago)"
    else:
        state = f"valid, {format_duration(not_after - now)} left"
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    subject = cert.subject.rfc4514_string() or "(empty)"
    identities = spiffe.identities_of(cert)
    lines = [
        f"  subject:    {subject}",
        f"  issuer:     {cert.issuer.rfc4514_string() or '(empty)'}",
        f"  serial:     {cert.serial_number:x}",
        f"  key:        {key_description(cert)}",
        f"  CA:         {'yes' if is_ca else 'no'}",
        f"  not before: {not_before:%Y-%m-%dT%H:%M:%SZ}",
        f"  not after:  {not_after:%Y-%m-%dT%H:%M:%SZ}",
        f"  status:     {state}",
        f"  usage:      {', '.join(_usages(cert)) or '(none)'}",
        f"  sha256:     {cert.fingerprint(hashes.SHA256()).hex(':')}",
    ]
    if identities:
        lines.append(f"  identities: {identities[0]}")
        lines += [f"              {uri}" for uri in identities[1:]]
    else:
        lines.append("  identities: (none)")
    return lines


def run_inspect(args: argparse.Namespace) -> int:
    from sidecar.identity import ca

    try:
        certs = ca.load_certificates(args.file)
    except CredentialsError as exc:
        return _fail("inspect", str(exc))
    for index, cert in enumerate(certs):
        header = args.file if len(certs) == 1 else f"{args.file} [{index}]"
        print(header)
        print("\n".join(describe_certificate(cert)))
    return 0
