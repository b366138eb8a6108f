"""What every user of mesh credentials needs without the `cryptography` package loaded.

`cryptography` costs a sidecar 7 to 12 MB of RSS and a tenth of a second at start, so a running
sidecar does not load it unless it makes certificates: the names it needs from the identity code
(the error type, the validity defaults) live here; credentials from files (`--ca/--cert/--key`,
`--certs-dir`) are read with `sidecar.identity.certinfo` (a small DER reader) and checked by
OpenSSL (`sidecar.identity.tls`); and `sidecar.identity.ca` (which issues certificates with
`cryptography`) is imported only in dev mode (`--ca-key`: the sidecar issues its own), by the CA
tooling (`pysidecar certs`) and the demo. tests/test_mtls.py checks that a sidecar with
credentials from files has no `cryptography` code mapped.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

# Kuma's DefaultAllowedClockSkew: certificates start this long before they are issued.
CLOCK_SKEW = timedelta(seconds=10)
DEFAULT_WORKLOAD_VALIDITY = timedelta(hours=24)
DEFAULT_CA_VALIDITY_DAYS = 3650


class CredentialsError(Exception):
    """A certificate or key file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_credential_file(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CredentialsError(path, f"{what} file not found") from None
    except IsADirectoryError:
        raise CredentialsError(path, f"is a directory, expected a {what} file") from None
    except OSError as exc:
        raise CredentialsError(path, f"cannot read {what} file: {exc.strerror}") from None
