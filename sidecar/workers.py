"""`--workers N`: one sidecar served by N processes, each with its own event loop.

Layout:

- The **parent** (`Supervisor`) binds nothing and runs no event loop. It starts N workers
  (`python -m sidecar <the same arguments> --worker-index I ...`), waits until every one is ready
  (each writes one byte on a pipe after its listeners are bound), then supervises: a worker that
  exits while the sidecar is not stopping is started again (with a growing pause if it keeps
  dying at once); SIGTERM/SIGINT are passed to every worker, which drains as a single sidecar
  does, and the parent exits 0 once all have exited 0; SIGHUP is passed to every worker (each
  reloads its own Dataplane). If the parent dies, the kernel sends its workers SIGTERM.
- Every **worker** is a whole sidecar (`sidecar.runtime.Sidecar`): it binds every listener with
  SO_REUSEPORT (the kernel spreads new connections over the workers), watches the Dataplane file,
  the mesh directory and its credentials itself, and keeps its own stats.
- **Worker 0** also runs what must exist once: the admin API, the metrics endpoint, the probes,
  the service probes and the health document. It reports the sidecar as a whole: at each read it
  asks every other worker for a snapshot of its stats over a unix socket (a channel per worker,
  in a private directory the parent creates) and shows the sum (`sidecar.observe.aggregate`).
  Admin mutations that concern every worker (`/reset_counters`, `/drain_listeners`, `/logging`)
  are sent to all of them; `/quitquitquit` asks the parent to stop everything. `/workers` lists
  the workers with their own connection counts.

Why pull-on-read over a unix socket rather than shared memory or prometheus-client's multiprocess
files: the data path keeps its plain attribute increments (no locks, no mmap writes per chunk),
reads are exact (no flush interval), a dead worker leaves no file to clean up, and the sum is made
by the same code that renders one process's stats. A read costs one small JSON message per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("sidecar.workers")

READY = b"R"
# Exit statuses of a worker that was asked to stop and did: drained (0), or ended by the stop
# signal itself before its handlers were in place (still starting) or after they were gone.
_STOPPED = (0, None, -signal.SIGTERM, -signal.SIGINT)
RESTART_QUICK = 10.0  # a worker that dies sooner than this after its start is restarted slowly
RESTART_PAUSE_MAX = 30.0
CHANNEL_TIMEOUT = 2.0  # a worker that does not answer a read within this is left out of it


def count_of(value: str) -> int:
    """`--workers`: a positive number, or `auto` (the cores this process may run on)."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise SystemExit(f"pysidecar: --workers expects a positive number or auto, got {value!r}")
    return count


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker process knows of its place among the workers."""

    index: int
    count: int
    run_dir: Path  # the private directory of the workers' unix sockets
    parent: int  # the supervisor's pid

    @property
    def primary(self) -> bool:
        """Worker 0 serves the admin API, metrics, probes and health for the whole sidecar."""
        return self.index == 0

    def socket_path(self, index: int) -> Path:
        return self.run_dir / f"worker-{index}.sock"


def worker_setup(info: WorkerInfo, ready_fd: int | None) -> Callable[[], None]:
    """At a worker's start: die with the parent; returns `ready()`, to call once serving."""
    _die_with_parent(info.parent)

    def ready() -> None:
        if ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(ready_fd, READY)
            os.close(ready_fd)

    return ready


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


# -- the channel between workers --------------------------------------------------------------

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def serve_channel(path: Path, handle: Handler) -> asyncio.AbstractServer:
    """Answer one JSON request per line on a unix socket (each worker but the primary)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await handle(json.loads(line))
                except Exception as exc:  # a bad request must not take the worker down
                    log.exception("event=channel_request_failed")
                    answer = {"error": str(exc)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by the worker this one replaces
    return await asyncio.start_unix_server(serve, path, limit=1 << 24)


class Peers:
    """The primary's view of the other workers: ask each one the same thing at once."""

    def __init__(self, info: WorkerInfo) -> None:
        self.info = info

    async def ask(self, request: dict[str, Any]) -> dict[int, dict[str, Any] | None]:
        """index → answer, or None for a worker that is not there (restarting) or did not answer."""
        others = [i for i in range(self.info.count) if i != self.info.index]
        answers = await asyncio.gather(*(self._ask_one(i, request) for i in others))
        return dict(zip(others, answers, strict=True))

    async def _ask_one(self, index: int, request: dict[str, Any]) -> dict[str, Any] | None:
        writer = None
        try:
            async with asyncio.timeout(CHANNEL_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(
                    self.info.socket_path(index), limit=1 << 24
                )
                writer.write(json.dumps(request).encode() + b"\n")
                answer = json.loads(await reader.readline())
        except (OSError, TimeoutError, ValueError) as exc:
            log.debug("event=worker_unreachable index=%d error=%r", index, str(exc))
            return None
        finally:
            if writer is not None:
                writer.close()
        return answer if isinstance(answer, dict) and "error" not in answer else None


# -- the parent -------------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # the read end of its ready pipe, until it answered
    started: float = 0.0
    ready: bool = False
    quick_deaths: int = 0
    restart_at: float | None = None
    exit_status: int | None = None


class Supervisor:
    """Starts, watches and stops the workers (see the module's docstring)."""

    def __init__(self, argv: list[str], count: int, first_alone: bool = False) -> None:
        self.argv = argv  # the command line as given, `run` included
        self.count = count
        # Start worker 0 alone and the others once it is ready (mTLS dev mode: it issues the
        # certificate that the others read).
        self.first_alone = first_alone
        # Imported here: every sidecar imports this module, only a supervisor needs these two
        # (with `bz2`, `lzma` and `zlib`, which `shutil` imports: ~0.7 MB resident).
        import tempfile

        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self.signals: list[int] = []
        self.run_dir = Path(tempfile.mkdtemp(prefix="pysidecar-workers-"))
        self.selector = selectors.DefaultSelector()

    def run(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            return self._run(wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.workers:  # only after an unexpected error: stop what is left
                if worker.proc is not None and worker.proc.poll() is None:
                    worker.proc.kill()
                    worker.proc.wait()
            os.close(wake_r)
            os.close(wake_w)
            import shutil  # see __init__

            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _run(self, wake_r: int) -> int:
        log.info("event=workers_starting count=%d", self.count)
        for worker in self.workers[:1] if self.first_alone else self.workers:
            self._spawn(worker)
        started = False
        while True:
            timeout = self._next_restart()
            for key, _ in self.selector.select(timeout):
                if key.fileobj == wake_r:
                    with contextlib.suppress(OSError):
                        os.read(wake_r, 4096)
                else:
                    self._ready_pipe(key.data)
            self._handle_signals()
            failed_at_start = self._reap(started)
            if failed_at_start is not None:
                log.error(
                    "event=worker_failed_at_start index=%d status=%s",
                    failed_at_start.index,
                    failed_at_start.exit_status,
                )
                self._stop_all()
                self._wait_all()
                return 1
            if self.first_alone and self.workers[0].ready and not self.stopping:
                self.first_alone = False
                for worker in self.workers[1:]:
                    self._spawn(worker)
            if not started and all(w.ready for w in self.workers):
                started = True
                log.info(
                    "event=ready workers=%d pids=%s",
                    self.count,
                    ",".join(str(w.proc.pid) for w in self.workers if w.proc is not None),
                )
            if self.stopping:
                if all(w.proc is None for w in self.workers):
                    failed = [w for w in self.workers if w.exit_status not in _STOPPED]
                    log.info("event=workers_stopped failed=%d", len(failed))
                    return 1 if failed else 0
                continue
            now = time.monotonic()
            for worker in self.workers:
                due = worker.restart_at
                if worker.proc is None and due is not None and due <= now:
                    self._spawn(worker)

    def _next_restart(self) -> float | None:
        due = [w.restart_at for w in self.workers if w.proc is None and w.restart_at is not None]
        if self.stopping or not due:
            return None if not self.stopping else 0.5
        return max(0.0, min(due) - time.monotonic())

    def _spawn(self, worker: _Worker) -> None:
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
        argv = [
            sys.executable, "-m", "sidecar", *self.argv,
            "--worker-index", str(worker.index),
            "--worker-dir", str(self.run_dir),
            "--worker-of", str(os.getpid()),
            "--worker-ready-fd", str(ready_w),
        ]  # fmt: skip
        try:
            worker.proc = subprocess.Popen(argv, pass_fds=(ready_w,), env=env)
        finally:
            os.close(ready_w)
        worker.ready_fd = ready_r
        worker.ready = False
        worker.started = time.monotonic()
        worker.restart_at = None
        worker.exit_status = None
        self.selector.register(ready_r, selectors.EVENT_READ, worker)
        log.info("event=worker_started index=%d pid=%d", worker.index, worker.proc.pid)

    def _ready_pipe(self, worker: _Worker) -> None:
        fd = worker.ready_fd
        assert fd is not None
        try:
            data = os.read(fd, 16)
        except OSError:
            data = b""
        self._close_ready(worker)
        if data.startswith(READY):
            worker.ready = True
            log.info("event=worker_ready index=%d pid=%d", worker.index, worker.proc.pid)

    def _close_ready(self, worker: _Worker) -> None:
        if worker.ready_fd is not None:
            self.selector.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _handle_signals(self) -> None:
        signals, self.signals = self.signals, []
        for signum in signals:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("event=stopping workers=%d", self.count)
                self.stopping = True
                self._stop_all()
            elif signum == signal.SIGHUP:
                log.info("event=reload_requested workers=%d", self.count)
                self._send_all(signal.SIGHUP)

    def _stop_all(self) -> None:
        self.stopping = True
        self._send_all(signal.SIGTERM)

    def _send_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)

    def _reap(self, started: bool) -> _Worker | None:
        """Collect exited workers; schedule restarts. Returns a worker that failed at start."""
        for worker in self.workers:
            proc = worker.proc
            if proc is None or proc.poll() is None:
                continue
            worker.proc = None
            worker.exit_status = proc.returncode
            if worker.ready_fd is not None:  # it never got ready
                self._close_ready(worker)
            if self.stopping:
                log.info(
                    "event=worker_exited index=%d pid=%d status=%d",
                    worker.index,
                    proc.pid,
                    proc.returncode,
                )
                continue
            if not started and not worker.ready:
                return worker
            lived = time.monotonic() - worker.started
            worker.quick_deaths = worker.quick_deaths + 1 if lived < RESTART_QUICK else 0
            pause = min(RESTART_PAUSE_MAX, 0.5 * 2 ** (worker.quick_deaths - 1))
            if not worker.quick_deaths:
                pause = 0.0
            worker.restart_at = time.monotonic() + pause
            log.error(
                "event=worker_died index=%d pid=%d status=%d restart_in=%.1fs",
                worker.index,
                proc.pid,
                proc.returncode,
                pause,
            )
        return None

    def _wait_all(self) -> None:
        for worker in self.workers:
            if worker.proc is not None:
                worker.proc.wait()
                worker.exit_status = worker.proc.returncode
                worker.proc = None
