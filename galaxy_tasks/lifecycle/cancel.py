"""Cancel a job: DELETED at once in the database; a launched job is also stopped."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from galaxy_tasks.context import Context
from galaxy_tasks.logs import event
from galaxy_tasks.runners.base import Tracked
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)

_HELD = frozenset({JobState.SUBMITTING, JobState.RUNNING})


class UnknownJob(LookupError):
    pass


class ToStop(NamedTuple):
    """A cancelled job its runner still holds: what to stop, and where that runner listens."""

    tracked: Tracked
    destination: str
    queue: str


def cancel(ctx: Context, job_id: str) -> tuple[JobState, ToStop | None]:
    """Returns the job's state before the cancel and, for a job its runner holds, what the
    runner must stop. A job that had already ended is left
    as it is."""
    moved = ctx.store.move(job_id, JobState.DELETED, reason="cancelled")
    if moved is None:
        current = ctx.store.row(job_id)
        if current is None:
            raise UnknownJob(f"no job {job_id!r}")
        return JobState(current.state), None
    event(log, "state_change", job_id=job_id, to=JobState.DELETED, reason="cancelled")
    job = moved.job
    if job.external_id and moved.before in _HELD:
        job_dir = Path(job.job_dir or ctx.settings.jobs_dir / job.id)
        return moved.before, ToStop(Tracked(job.id, job.external_id, job_dir), job.destination, job.queue)
    return moved.before, None
