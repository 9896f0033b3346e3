"""Cancel a job: DELETED at once in the database; a launched job is also stopped."""
from __future__ import annotations

import logging
from pathlib import Path

from galaxy_tasks.context import Context
from galaxy_tasks.logs import event
from galaxy_tasks.runners.base import Tracked
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)


class UnknownJob(LookupError):
    pass


def cancel(ctx: Context, job_id: str) -> tuple[JobState, Tracked | None]:
    """Returns the job's state before the cancel and, for a job its runner holds, what the
    runner must stop. A job that had already ended is left as it is."""
    job = ctx.store.get(job_id)
    if job is None:
        raise UnknownJob(f"no job {job_id!r}")
    with ctx.store.session() as session:
        before = ctx.store.transition(session, job_id, JobState.DELETED, reason="cancelled")
    if before is None:
        current = ctx.store.get(job_id)
        return JobState(current.state if current else job.state), None
    event(log, "state_change", job_id=job_id, to=JobState.DELETED, reason="cancelled")
    job = ctx.store.get(job_id)
    if job is not None and job.external_id and before in (JobState.SUBMITTING, JobState.RUNNING):
        job_dir = Path(job.job_dir or ctx.settings.jobs_dir / job.id)
        return before, Tracked(job.id, job.external_id, job_dir)
    return before, None
