"""Finish a job from its completion event: exit code, output tails, outputs, metrics."""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from galaxy_tasks.context import Context
from galaxy_tasks.faults import crash_point
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.lifecycle.changes import move
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job
from galaxy_tasks.runners.base import Completion, signal_name
from galaxy_tasks.states import JobState
from galaxy_tasks.store import Moved

log = logging.getLogger(__name__)

_LAUNCHED = frozenset({JobState.SUBMITTING, JobState.RUNNING})
COMMAND_NOT_FOUND = 127


class Finished(NamedTuple):
    """What a completion event led to: the recorded end (None if the job had already
    ended: a duplicate or late event), and the destination whose oldest waiting job may
    start now because this job's slot is free (None if it has no slots)."""

    moved: Moved | None
    wake: str | None


def finish(ctx: Context, completion: Completion) -> Finished:
    """Record the job's end; the returned row has its terminal state."""
    job = ctx.store.job(completion.job_id)
    if job is None:
        return Finished(None, None)
    # the process of a destination with job slots ended (a cancelled job's too, whose
    # finish records nothing): its slot is free, so the oldest waiting job may start
    wake = job.destination if job.destination in ctx.routing.limited else None
    if JobState(job.state) not in _LAUNCHED:
        return Finished(None, wake)
    return Finished(_record(ctx, job, completion), wake)


def _record(ctx: Context, job: Job, completion: Completion) -> Moved | None:
    job_dir = JobDir(Path(job.job_dir or ctx.settings.jobs_dir / job.id))
    recorded = job_dir.recorded_exit_code()
    exit_code = recorded if recorded is not None else completion.exit_code
    stdout, stderr = job_dir.tail("stdout"), job_dir.tail("stderr")
    state, reason = _verdict(job, job_dir, completion, exit_code, stderr)
    ended_at = datetime.fromtimestamp(completion.ended_at, UTC)
    values = dict(
        exit_code=exit_code,
        signal=completion.signal,
        stdout_tail=stdout,
        stderr_tail=stderr,
        wall_time_s=completion.wall_time_s,
        max_rss_kb=completion.max_rss_kb,
        ended_at=ended_at,
        runner_state=completion.runner_state,
    )
    if job.external_id is None and completion.external_id:
        values["external_id"] = completion.external_id
    if job.running_at is None:
        values["running_at"] = job.updated_at  # it ended before its launch was recorded
    moved = move(ctx, job.id, state, reason=reason, sources=_LAUNCHED, **values)
    if moved is None:
        return None
    crash_point("finish", job.id)  # recorded, but the message not yet acknowledged
    event(log, "state_change", job_id=job.id, to=state, exit_code=exit_code, reason=reason,
          tool_id=job.tool_id, destination=job.destination)
    return moved


def _verdict(job: Job, job_dir: JobDir, completion: Completion, exit_code: int | None,
             stderr: str) -> tuple[JobState, str | None]:
    if completion.signal is not None:
        name = signal_name(completion.signal)
        return JobState.ERROR, completion.reason or f"killed by signal {name}"
    if exit_code is None:
        return JobState.ERROR, completion.reason or "the job ended without an exit code"
    if exit_code == COMMAND_NOT_FOUND and "not found" in stderr:
        line = next(line for line in stderr.splitlines() if "not found" in line)
        # sh says "<script>: <line>: <name>: not found"
        name = line.rsplit(": not found", 1)[0].rsplit(": ", 1)[-1]
        return JobState.ERROR, f"command not found: {name.strip()}"
    if exit_code != 0:
        return JobState.ERROR, completion.reason or f"exit code {exit_code}"
    missing = [path for path in job.outputs or [] if not (job_dir.working / path).exists()]
    if missing:
        return JobState.ERROR, f"declared output not produced: {', '.join(missing)}"
    return JobState.OK, None
