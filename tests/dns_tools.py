"""Real DNS parts for the tests: dnsmasq as an upstream resolver, dig as the client."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sidecar.dns import message
from tests.support import wait_for

# What the upstream answers itself; every other name it refuses (no upstream of its own).
UPSTREAM_NAME, UPSTREAM_ADDRESS = "www.example.test", "10.99.0.7"


def query_bytes(
    name: str, qtype: int = message.A, flags: int = message.RD, qid: int = 4660
) -> bytes:
    """A query for `name` as a stub resolver writes it (one question, class IN)."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p)
    header = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0)
    return header + labels + b"\0" + struct.pack("!HH", qtype, message.IN)


def require_tools() -> None:
    """dig and dnsmasq come with `./dev test` and CI (bind9-dnsutils, dnsmasq-base)."""
    missing = [t for t in ("dig", "dnsmasq") if shutil.which(t) is None]
    assert not missing, (
        f"not installed: {', '.join(missing)} (apt-get install bind9-dnsutils dnsmasq-base)"
    )


@dataclass
class Dig:
    status: str  # NOERROR, NXDOMAIN, SERVFAIL, …
    flags: set[str]
    answers: list[tuple[str, int, str, str]]  # (name, ttl, type, data)
    text: str


def dig(
    server: str, port: int, name: str, qtype: str = "A", *extra: str, prefix: tuple[str, ...] = ()
) -> Dig:
    """One query with dig, parsed from its full output."""
    out = subprocess.run(
        [*prefix, "dig", f"@{server}", "-p", str(port), name, qtype, "+time=5", "+tries=1", *extra],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    text = out.stdout
    status, flags, answers = "", set(), []
    section = ""
    for line in text.splitlines():
        if "status:" in line:
            status = line.split("status:")[1].split(",")[0].strip()
        elif line.startswith(";; flags:"):
            flags = set(line.split(";")[2].replace("flags:", "").split())
        elif line.startswith(";; ") and "SECTION:" in line:
            section = line.split()[1]
        elif section == "ANSWER" and line and not line.startswith(";"):
            fields = line.split()
            answers.append((fields[0], int(fields[1]), fields[3], fields[4]))
    return Dig(status, flags, answers, text + out.stderr)


@contextmanager
def dnsmasq(address: str, port: int, prefix: tuple[str, ...] = ()) -> Iterator[None]:
    """dnsmasq on `address`:`port`, answering UPSTREAM_NAME and refusing the rest."""
    proc = subprocess.Popen(
        [*prefix, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
         f"--listen-address={address}", "--bind-interfaces", f"--port={port}",
         f"--address=/example.test/{UPSTREAM_ADDRESS}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"dnsmasq exited: {proc.stderr.read() if proc.stderr else ''}")
            found = dig(address, port, UPSTREAM_NAME, "A", "+time=1", prefix=prefix)
            return [a[3] for a in found.answers] == [UPSTREAM_ADDRESS]

        wait_for(answers, 15, "dnsmasq to answer")
        yield
    finally:
        proc.terminate()
        proc.wait(10)
