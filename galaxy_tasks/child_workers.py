"""The holding workers a plain `galaxy-tasks worker` starts for the queues it cannot serve.

A DRMAA session or a Mesos framework must live in one process of its own (a forking pool
would open one per child, and a crashing DRM library must not take the steps down with
it). So `galaxy-tasks worker` without `--queues` serves the steps and local queues itself and
runs `celery -A workers.<runner> worker` as a child process per runner kind, restarting a
child that dies and stopping them all when it stops. A child also stops if this process is
killed outright (workers/holding.py asks the kernel for SIGTERM on its parent's death).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from galaxy_tasks.logs import event
from galaxy_tasks.runners import runner_class

log = logging.getLogger(__name__)
#: set in a child's environment: the pid of the process supervising it
SUPERVISOR_ENV = "GALAXY_TASKS_SUPERVISOR_PID"

RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 60.0
STOP_TIMEOUT_S = 60.0


def holder_app(runner: str) -> str | None:
    """The Celery app of the worker that holds `runner` in a process of its own, if any."""
    return runner_class(runner).holder


def command(runner: str, queues: list[str], node: str, loglevel: str | None) -> list[str]:
    """The child's command line: the documented way to start that worker."""
    argv = [sys.executable, "-m", "celery", "-A", str(holder_app(runner)), "worker", "-Q", ",".join(queues),
            "-n", node]
    if loglevel:
        argv += ["--loglevel", loglevel]
    return argv


def node_name(parent: str | None, runner: str) -> str:
    """`drmaa@%h` by default; `<name>-drmaa@<host>` next to a parent named `-n <name>@<host>`.
    Stable across restarts, so a restarted DRMAA worker re-attaches to its session."""
    if not parent:
        return f"{runner}@%h"
    name, at, host = parent.partition("@")
    return f"{name}-{runner}{at}{host}"


@dataclass
class Child:
    runner: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)


class Supervisor:
    """Starts the children, restarts one that exits (backing off to a minute), stops them."""

    def __init__(self, children: dict[str, list[str]]) -> None:
        self.children = [Child(runner, argv) for runner, argv in children.items()]
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        for child in self.children:
            child.thread = threading.Thread(target=self._keep, args=(child,), name=f"holder-{child.runner}",
                                            daemon=True)
            child.thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Warm shutdown of every child (SIGTERM), then SIGKILL for one that outlives `timeout`."""
        self._stopping.set()
        with self._lock:
            running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for child in self.children:
            if child.thread is not None:
                child.thread.join(timeout=5)

    def _keep(self, child: Child) -> None:
        delay = RESTART_DELAY_S
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                # its own session: a Ctrl-C at the terminal reaches this process, which
                # then stops the children itself (instead of restarting them)
                child.proc = subprocess.Popen(child.argv, env=env, start_new_session=True)
            started = time.monotonic()
            event(log, "holder_started", runner=child.runner, pid=child.proc.pid, restarts=child.restarts)
            code = child.proc.wait()
            if self._stopping.is_set():
                return
            delay = RESTART_DELAY_S if time.monotonic() - started > RESTART_DELAY_MAX_S else delay
            event(log, "holder_exited", level=logging.WARNING, runner=child.runner, pid=child.proc.pid,
                  exit_code=code, restart_in_s=delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_DELAY_MAX_S)
            child.restarts += 1


def stop_with_supervisor() -> None:
    """In a child: end with a SIGTERM (a warm shutdown) when the supervising process dies,
    even by SIGKILL; and stop at once if it is already gone."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        event(log, "parent_death_signal_unavailable", level=logging.WARNING, errno=ctypes.get_errno())
        return
    if os.getppid() != int(supervisor):
        raise SystemExit("the supervising galaxy-tasks worker has gone")
