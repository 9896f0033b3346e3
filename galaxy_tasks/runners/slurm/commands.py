"""Slurm's commands (sbatch, squeue, scancel, scontrol), run so that Slurm can never hang a
worker: no Slurm DRMAA library exists in Debian or PyPI, so the runner drives the commands.

Each command runs in a process group of its own with a timeout; on timeout the whole group
is killed, so a grandchild holding the pipes cannot keep the worker waiting. Failures that
may pass (the controller restarting or busy, a command that hangs) are retried with
exponential back-off and, when they do not pass, raise RunnerUnavailable: the step is
retried later and the job is not failed. The commands get a small, fixed environment: no
SQUEUE_FORMAT or SLURM_TIME_FORMAT of the worker's that would change their output.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from typing import Mapping, Sequence

from galaxy_tasks.errors import RunnerError, RunnerUnavailable

log = logging.getLogger(__name__)

#: refusals that no retry will cure (the job or the destination is wrong)
PERMANENT = re.compile(r"invalid|unrecognized|not available|can not be satisfied|cannot be satisfied|"
                       r"unknown|not allowed|no such|not specified|denied|exceed|must be", re.I)
#: failures that may pass (the controller restarting, busy, or out of reach for a while)
TRANSIENT = re.compile(r"unable to contact|connect failure|timed out|zero bytes|try again|temporarily|"
                       r"connection refused|resource temporarily unavailable|slurm_receive_msg|"
                       r"communication|busy|not responding", re.I)
#: what squeue and scancel say of a job id the controller no longer knows
INVALID_JOB = "Invalid job id specified"
#: variables of the worker's environment that the commands get
PASSED_ON = ("PATH", "HOME", "SLURM_CONF")


class CommandTimeout(RunnerUnavailable):
    """A Slurm command did not answer within its timeout (its process group was killed)."""


def tail(text: str | None, limit: int = 500) -> str:
    """The end of a command's output, for a message."""
    return (text or "").strip()[-limit:]


class Commands:
    """The Slurm commands of one runner: where they are, how long each may take, how often
    a failure that may pass is retried; `calls` counts every attempt by kind."""

    def __init__(self, paths: Mapping[str, str], *, timeout_s: float, retries: int, backoff_s: float,
                 slurm_conf: str | None) -> None:
        self.paths = dict(paths)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.env = {"LANG": "C", **{key: os.environ[key] for key in PASSED_ON if key in os.environ}}
        self.env.setdefault("PATH", "/usr/bin:/bin")
        if slurm_conf:
            self.env["SLURM_CONF"] = slurm_conf
        self._calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def calls(self) -> Counter[str]:
        with self._lock:
            return Counter(self._calls)

    def count(self, kind: str) -> None:
        with self._lock:
            self._calls[kind] += 1

    def run(self, kind: str, args: Sequence[str], *, retries: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run one command; retry a hang or a failure that may pass. Returns an attempt that
        succeeded or failed for good (the caller judges its exit code); raises
        RunnerUnavailable (CommandTimeout if the last attempt hung) when every attempt
        failed in a way that may pass, RunnerError if the command cannot be run at all."""
        retries = self.retries if retries is None else retries
        command = [self.paths.get(kind, kind), *args]
        delay = self.backoff_s
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(delay)
                delay *= 2
            self.count(kind)
            try:
                proc = run_bounded(command, self.timeout_s, self.env)
            except CommandTimeout as exc:
                if attempt == retries:
                    raise
                log.warning("%s; retrying", exc)
                continue
            except OSError as exc:
                raise RunnerError(f"cannot run {command[0]}: {exc}") from exc
            if proc.returncode == 0 or not TRANSIENT.search(proc.stderr):
                return proc
            if attempt == retries:
                raise RunnerUnavailable(f"{kind} failed ({proc.returncode}): {tail(proc.stderr)}")
            log.warning("%s failed (%s); retrying", kind, tail(proc.stderr))
        raise AssertionError("unreachable")


def run_bounded(command: list[str], timeout: float, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command in a process group of its own; on timeout kill the whole group and
    raise CommandTimeout."""
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(env), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a descendant left the group and holds the pipes
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait(timeout=5)
        raise CommandTimeout(f"{command[0]} {' '.join(command[1:3])} ... did not end within {timeout:g}s "
                             "(killed)") from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)
