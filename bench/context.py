"""What every scenario and path of one run shares: its processes, CPU placement, loop, folders."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Processes

REPO_ROOT = Path(__file__).resolve().parent.parent


class Pinning:
    """Which CPUs each role runs on, when `--pin` asks for it.

    Roles: `proxy0`, `proxy1`, ... (the proxies of a path, in order), `client`, `server`. Each
    proxy gets a core of its own; the client and the server get one each too when there are enough
    cores, and otherwise float over all of them (the kernel's choice). With a single core nothing
    is pinned. `description` says what was done; it goes into the report.
    """

    def __init__(self, enabled: bool, proxies: int = 2) -> None:
        self.cpus = sorted(os.sched_getaffinity(0))
        self.assignment: dict[str, set[int]] = {}
        if not enabled:
            self.description = "not pinned (the kernel places every process)"
            return
        n = len(self.cpus)
        if n < 2:
            self.description = "--pin asked for, but only 1 core is available: nothing pinned"
            return
        roles = [f"proxy{i}" for i in range(proxies)]
        if n >= proxies + 2:
            roles += ["client", "server"]
        for role, cpu in zip(roles, self.cpus, strict=False):
            self.assignment[role] = {cpu}
        placed = ", ".join(f"{role} on CPU {min(c)}" for role, c in self.assignment.items())
        floating = [r for r in ("client", "server") if r not in self.assignment]
        self.description = f"pinned: {placed}"
        if floating:
            self.description += (
                f"; {' and '.join(floating)} not pinned ({n} cores are too few "
                f"for one each beside the proxies)"
            )

    def cpus_for(self, role: str) -> set[int] | None:
        return self.assignment.get(role)


@dataclass
class Context:
    procs: Processes
    pinning: Pinning
    loop: str  # the sidecars' --loop
    out: Path
    work: Path  # temporary files: mesh directories, configurations
    profile: str | None = None  # "perf" | "py-spy": attach it to the proxies while measuring
    # The interpreter of the sidecars and the Python tools: this one, or BENCH_PYTHON (e.g. a
    # wrapper running `python3 -S`, where the machine's site loads modules into every process).
    python: str = field(default_factory=lambda: os.environ.get("BENCH_PYTHON", sys.executable))
    notes: list[str] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.procs.log_dir


def child_env() -> dict[str, str]:
    """The environment of every child: this checkout's `sidecar` and `bench` come first."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
