"""The runners' side of jobs run as their real user: the one way a runner calls the
privileged helper (what the two share on disk is `galaxy_tasks.runas`)."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.runas import REFUSED
from galaxy_tasks.runners.params import param


def run_as_command_param() -> Any:
    """The `run_as_command` param of every runner that can run a job as its user."""
    return param(None, check=lambda value: None if shlex.split(value) else "is empty",
                 doc="how a job with run_as is started as its user: the privileged helper and its configuration, "
                     "e.g. `sudo -n /usr/local/bin/galaxy-tasks-run-as /etc/galaxy-tasks/run-as.yml` "
                     "(docs/security.md); none: such jobs are refused")


def call_helper(command: str, action: str, job_id: str, *, timeout_s: float = 60) -> str:
    """Run the helper (`command`: the destination's run_as_command) for one job; its
    standard output. RunnerError names the action and the helper's own words on failure."""
    argv = [*shlex.split(command), action, job_id]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RunnerError(f"the privileged helper could not {action} job {job_id}: {exc}") from exc
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip())[-500:]
        what = "refused" if proc.returncode == REFUSED else f"failed (exit code {proc.returncode})"
        raise RunnerError(f"the privileged helper {what} to {action} job {job_id}: {said}")
    return proc.stdout


def give_back(command: str | None, job_id: str, job_dir: Path) -> None:
    """The job's directory back to the worker if its user holds it (the helper checks that
    the job is one whose directory may come back)."""
    if command and handed_over(job_dir):
        call_helper(command, "reclaim", job_id)


def handed_over(job_dir: Path) -> bool:
    """Whether the job's directory is another user's now (the helper handed it to the job's
    user): the worker must then ask the helper to act on the job."""
    try:
        return os.lstat(job_dir).st_uid != os.geteuid()
    except FileNotFoundError:
        return False
