"""Processes the harness starts: spawn, pin, measure, and always stop.

Every process runs in its own process group so that stopping it also stops anything it started.
All of them are registered in one `Processes` object whose `stop_all` runs in a `finally`: a run
that fails, times out or is interrupted still leaves nothing behind.

CPU time and peak memory come from /proc (utime+stime of /proc/PID/stat, VmHWM of
/proc/PID/status) for processes that outlive the measurement (servers, proxies), and from
`wait4`'s resource usage for clients that exit at the end of it.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A measurement could not be made; the message says which and why."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL_LOW, _ = _ephemeral_range()
_ports = random.Random(os.getpid() ^ time.monotonic_ns())
_handed_out: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 for a listener bound later, below the kernel's ephemeral range,
    never the same one twice in a process (the harness and the tests share this).

    The kernel's pick for `bind(0)` may come again on the next call (a set-up that asked for a
    Dataplane's admin and inbound ports got the same one twice), and is a candidate source port
    for every outgoing `connect()` on the machine: between this call and the sidecar's bind, some
    connection (a load generator) can take it. Ports below the ephemeral range are never taken
    that way, and a random pick keeps processes running side by side apart.
    """
    low = max(1024, _EPHEMERAL_LOW - 12000)
    for _ in range(200):
        port = _ports.randrange(low, _EPHEMERAL_LOW)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    # A machine whose low ports are all taken: fall back to the kernel's pick.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE (inherited by what it starts) to at least `needed` where
    the hard limit allows, or root may raise that too; the soft limit it ends with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):  # not root: the hard limit stays
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (or any address), read from /proc/net/tcp.

    Reading the table instead of connecting keeps the probe invisible to servers that would take a
    connection as a client (iperf3 does).
    """
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "0A" and parts[1].endswith(wanted):
                        return True
        except OSError:
            continue
    return False


@dataclass
class Usage:
    """CPU seconds (user + system, all threads) and peak resident memory of one process."""

    cpu_s: float
    peak_rss_kb: int


def sample(pid: int) -> Usage | None:
    """What a live process has used so far; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/status") as fh:
            status = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it start at the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    hwm = 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
            break
    return Usage((utime + stime) / CLOCK_TICKS, hwm)


def memory_map(pid: int, top: int = 8) -> dict | None:
    """Where a live process's resident memory is, to explain a peak RSS measured elsewhere.

    `status`: RssAnon, RssFile and Threads; `rollup`: smaps_rollup's Anonymous and AnonHugePages
    (transparent huge pages: a machine with THP "always" rounds anonymous regions up to 2 MB);
    `mappings`: the `top` largest by RSS, [name, rss_kb, anonymous_kb], where name is the file
    mapped, or `[heap]` (glibc's main heap), `[anon]` (CPython's object arenas, thread arenas and
    stacks, large buffers), `[stack]`. In kB; None when the process is gone.
    """
    try:
        with open(f"/proc/{pid}/status") as fh:
            status_text = fh.read()
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            rollup_text = fh.read()
        with open(f"/proc/{pid}/smaps") as fh:
            smaps_text = fh.read()
    except OSError:
        return None

    def fields(text: str, names: tuple[str, ...]) -> dict[str, int]:
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name in names:
                out[name] = int(value.split()[0])
        return out

    by_name: dict[str, list[int]] = {}
    current: list[int] | None = None
    for line in smaps_text.splitlines():
        parts = line.split()
        # a mapping's header: range perms offset dev inode [name]; then "Field: value kB" lines
        if parts and not parts[0].endswith(":"):
            name = " ".join(parts[5:]) if len(parts) > 5 else "[anon]"
            current = by_name.setdefault(name, [0, 0])
        elif current is not None and parts[0] == "Rss:":
            current[0] += int(parts[1])
        elif current is not None and parts[0] == "Anonymous:":
            current[1] += int(parts[1])
    largest = sorted(by_name.items(), key=lambda item: -item[1][0])[:top]
    return {
        "status": fields(status_text, ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")),
        "rollup": fields(rollup_text, ("Rss", "Anonymous", "AnonHugePages")),
        "mappings": [[name, rss, anon] for name, (rss, anon) in largest],
    }


@dataclass
class Proc:
    role: str  # "server", "client", "sidecar-a", ...
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path | None
    cpus: set[int] | None
    rusage: resource.struct_rusage | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def usage(self) -> Usage | None:
        if self.rusage is not None:
            ru = self.rusage
            return Usage(ru.ru_utime + ru.ru_stime, ru.ru_maxrss)
        return sample(self.pid)

    def reap(self, timeout: float) -> int | None:
        """Wait up to `timeout` for the process to exit, keeping its resource usage."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                self.popen.poll()
                return self.popen.returncode
            if pid:
                self.rusage = ru
                self.popen.returncode = os.waitstatus_to_exitcode(status)
                return self.popen.returncode
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def log_tail(self, lines: int = 20) -> str:
        if self.log is None:
            return ""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Every process of one run, so that all of them can be stopped whatever happens."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.started: list[Proc] = []

    def spawn(
        self,
        role: str,
        argv: list[str],
        *,
        log_name: str,
        cpus: set[int] | None = None,
        stdout_pipe: bool = False,
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{log_name}.log"
        with open(log, "wb") as log_fh:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log_fh,
                stderr=log_fh,
                env=self.env,
                process_group=0,  # its own group: stopping it stops its children too
            )
        if cpus:
            # Right after exec the process has a single thread; threads it starts inherit this.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(popen.pid, cpus)
        proc = Proc(role, argv, popen, log, cpus)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 3.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `grace` seconds."""
        if proc.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            if proc.reap(grace) is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.reap(5.0)
        # A process that exited by itself may have left children in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)

    def describe(self) -> list[dict[str, object]]:
        return [
            {
                "role": p.role,
                "pid": p.pid,
                "argv": p.argv,
                "cpus": sorted(p.cpus) if p.cpus else None,
                "returncode": p.popen.returncode,
            }
            for p in self.started
        ]


def wait_until(condition, timeout: float, what: str, proc: Proc | None = None) -> None:
    """Poll `condition` until it holds; fail naming `what` (and the process's log) otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not condition():
        if proc is not None and proc.popen.poll() is not None:
            raise BenchError(
                f"{proc.role} exited with {proc.popen.returncode} before {what}:\n{proc.log_tail()}"
            )
        if time.monotonic() >= deadline:
            tail = f":\n{proc.log_tail()}" if proc is not None else ""
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def collect_output(proc: Proc, timeout: float) -> bytes:
    """Read a client's stdout to its end and reap it (keeping its resource usage).

    Past `timeout` the client is killed and the measurement fails: no run waits forever.
    """
    assert proc.popen.stdout is not None
    fd = proc.popen.stdout.fileno()
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
        if not ready:
            raise BenchError(f"{proc.role} ran past its {timeout:.0f} s limit:\n{proc.log_tail()}")
        data = os.read(fd, 1 << 16)
        if not data:
            break
        chunks.append(data)
    if proc.reap(max(1.0, deadline - time.monotonic())) is None:
        raise BenchError(f"{proc.role} closed its output but did not exit")
    return b"".join(chunks)


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds the machine has spent busy since boot (all cores, /proc/stat): in all, and of
    that in interrupts and softirqs, which the kernel charges to no process (loopback TCP's
    receive work is mostly softirq)."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()[1:]
    # user nice system idle iowait irq softirq steal (guest time is already within user)
    values = [int(v) for v in fields[:8]]
    busy = sum(values) - values[3] - values[4]
    return busy / CLOCK_TICKS, (values[5] + values[6]) / CLOCK_TICKS
