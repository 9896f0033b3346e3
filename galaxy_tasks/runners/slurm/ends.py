"""A job's end as Slurm tells it (a squeue row or a jobcomp record), as a Completion.

The exit code the job script recorded wins over Slurm's. Slurm's own kills get a signal
(SIGTERM at the time limit, SIGKILL for memory), so that finish never takes them for
success. The reason says what happened in plain words; `runner_state` says it in Galaxy's
(the words its resubmit conditions match): walltime_reached, memory_limit_reached, and
unknown_error for the ends that are the cluster's doing rather than the job's (a failed
node, preemption, a job Slurm could not run or lost), which a resubmission may cure. A job
cancelled, by us or by an administrator, has no runner_state: nothing should run it again.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from galaxy_tasks.jobdir import CLAIMED_EXIT_CODE, JobDir
from galaxy_tasks.runners.base import Completion, Tracked, signal_name
from galaxy_tasks.runners.slurm.files import over_memory
from galaxy_tasks.runners.slurm.records import TERMINAL, SlurmJob, real_signal
from galaxy_tasks.runners.slurm.script import STOOD_DOWN_PREFIX

WALLTIME_REACHED = "walltime_reached"
MEMORY_LIMIT_REACHED = "memory_limit_reached"
UNKNOWN_ERROR = "unknown_error"

#: written in the job directory before this runner cancels the job, so the end is known as ours
CANCEL_MARKER = "slurm_cancel"


class StoodDown:
    """The verdict on a copy of the job that found it claimed by another and ran nothing:
    its end is not the job's."""


STOOD_DOWN = StoodDown()

#: how long after a SIGKILL that Slurm reports as FAILED the end stays undecided: slurmstepd
#: writes that it killed the job for its memory a moment after the state changes
KILL_SETTLES_S = 5.0


def completion(job: Tracked, info: SlurmJob, source: str) -> Completion | StoodDown | None:
    """The end of a job that Slurm says has ended (`info.state` in TERMINAL); None while it
    cannot be told yet (asked again, as for a job still running)."""
    job_dir = JobDir(Path(job.job_dir))
    if stood_down(info, job_dir.root):
        return STOOD_DOWN
    recorded = job_dir.recorded_exit_code()
    # slurmstepd's SIGKILL takes the batch script too, or lets it record job.sh's 137 first
    killed = info.signal == signal.SIGKILL or 128 + signal.SIGKILL in (recorded, info.exit_code)
    if (info.state == "FAILED" and killed and info.end_time
            and time.time() - info.end_time < KILL_SETTLES_S and not over_memory(job_dir)):
        return None
    wall = (info.end_time - info.start_time) if info.start_time and info.end_time else None
    signum = info.signal
    if signum is None and recorded is None and info.exit_code is not None and info.exit_code > 128:
        signum = real_signal(info.exit_code - 128)  # the batch script saw job.sh die of it
    exit_code = recorded if recorded is not None else info.exit_code
    reason = runner_state = None
    # an end that is the cluster's doing is its runner_state only if the command did not finish
    cluster = None if recorded is not None else UNKNOWN_ERROR
    state = info.state
    if state == "TIMEOUT":
        limit = f" ({info.time_limit})" if info.time_limit not in ("UNLIMITED", "") else ""
        reason = f"Slurm killed the job when it reached its walltime limit{limit}"
        signum, runner_state = signal.SIGTERM, WALLTIME_REACHED
    elif state == "OUT_OF_MEMORY":
        reason = "the job went over its memory limit and was killed (out of memory)"
        signum, runner_state = signal.SIGKILL, MEMORY_LIMIT_REACHED
    elif state == "FAILED" and killed and over_memory(job_dir):
        # jobacct_gather's OverMemoryKill (no cgroups): Slurm says FAILED, slurmstepd wrote why
        reason = "the job went over its memory limit and was killed (Slurm's memory polling)"
        signum, runner_state = signal.SIGKILL, MEMORY_LIMIT_REACHED
    elif state == "NODE_FAIL":
        reason = "the node running the job failed (Slurm NODE_FAIL)"
        exit_code, runner_state = recorded, cluster
    elif state == "CANCELLED":
        if os.path.lexists(job_dir.root / CANCEL_MARKER):
            reason = "the job was cancelled (scancel by galaxy-tasks)"
        else:
            reason = (f"Slurm job {job.external_id} was cancelled outside galaxy-tasks "
                      "(scancel by an administrator or its owner)")
        exit_code, signum = recorded, None
    elif state == "PREEMPTED":
        reason = "Slurm preempted the job for another one (Slurm PREEMPTED)"
        exit_code, runner_state = recorded, cluster
    elif state == "BOOT_FAIL":
        reason = "the node allocated to the job failed to boot (Slurm BOOT_FAIL)"
        exit_code, runner_state = recorded, cluster
    elif state == "DEADLINE":
        reason = "the job reached its deadline (--deadline) before it could end"
        exit_code = recorded
    elif state == "FAILED" and recorded is None and not signum and (
            info.exit_code in (None, 0) or info.reason not in ("", "None", "NonZeroExitCode")):
        reason = f"Slurm could not run the job ({info.reason or 'no reason given'})"
        exit_code, runner_state = None, UNKNOWN_ERROR
    if signum and recorded is None:
        exit_code = None  # killed: whatever Slurm says the batch script returned is not the job's
    if reason is None and signum:
        reason = f"killed by signal {signal_name(signum)}"
    return Completion(job.job_id, exit_code=exit_code, signal=signum, reason=reason, wall_time_s=wall,
                      ended_at=info.end_time or time.time(), external_id=job.external_id, source=source,
                      runner_state=runner_state)


def stood_down(info: SlurmJob, job_dir: Path) -> bool:
    """Whether this Slurm job was a copy that found the job claimed and ran nothing (it
    ended with 75, and its batch script said so; or no copy recorded an exit code although
    one claimed the job). A command's own exit code 75 is not taken for that."""
    if info.state not in TERMINAL or info.exit_code != CLAIMED_EXIT_CODE:
        return False
    root = JobDir(Path(job_dir))
    return os.path.lexists(root.root / f"{STOOD_DOWN_PREFIX}{info.external_id}") or (
        root.recorded_exit_code() is None and root.claimed())


def without_record(job: Tracked) -> Completion:
    """A job neither squeue nor the jobcomp record knows: its recorded exit code, if any."""
    recorded = JobDir(Path(job.job_dir)).recorded_exit_code()
    if recorded is not None:
        return Completion(job.job_id, exit_code=recorded, external_id=job.external_id, source="job_dir")
    return Completion(job.job_id, external_id=job.external_id, source="reconcile", runner_state=UNKNOWN_ERROR,
                      reason=f"Slurm has no record of job {job.external_id} (neither squeue nor the jobcomp "
                             "record knows it: lost by the controller, or purged)")


def requeued(job: Tracked) -> Completion:
    """The tracked copy stood down and no other copy ran the job to its end."""
    return Completion(job.job_id, external_id=job.external_id, source="reconcile", runner_state=UNKNOWN_ERROR,
                      reason="the job's command started once and did not record an exit code; a later run "
                             "of its batch script (requeued?) did not run it again")
