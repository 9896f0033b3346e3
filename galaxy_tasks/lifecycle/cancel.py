"""Cancel a job: DELETED at once in the database; a launched job is also stopped, and
looked at once more by reconciliation in case the message that stops it is lost."""
from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from galaxy_tasks.context import Context
from galaxy_tasks.errors import UnknownJob
from galaxy_tasks.lifecycle.changes import move
from galaxy_tasks.lifecycle.effects import Effects, ToStop
from galaxy_tasks.lifecycle.limits import pass_on
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.runners.base import Tracked
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)

_HELD = frozenset({JobState.SUBMITTING, JobState.RUNNING})


class Cancelled(NamedTuple):
    """The job's state before the cancel; for a job its runner holds, what the runner must
    stop; and the jobs to launch that a place it was woken for now wakes (id, queue)."""

    before: JobState
    stop: ToStop | None
    woken: list[tuple[str, str]]
    #: the cancelled row (None if the job had already ended)
    job: Job | None = None

    @property
    def effects(self) -> Effects:
        """Stop what runs, launch what a freed place wakes, and run the workflow's pass for a
        workflow's job cancelled on its own (its dependents cannot start; the workflow ends
        when nothing else of it runs)."""
        passes = [self.job] if self.job is not None and self.job.workflow_id is not None else []
        return Effects(stop=[self.stop] if self.stop is not None else [], launch=self.woken, passes=passes)


def cancel(ctx: Context, job_id: str) -> Cancelled:
    """Cancel the job (one that had already ended is left as it is)."""
    # The row stays due for one more look: if the kill message is lost, reconciliation
    # finds the job's process still there and stops it (see reconcile.overdue).
    check_at = utcnow() + timedelta(seconds=ctx.settings.check_after)
    moved = move(ctx, job_id, JobState.DELETED, reason="cancelled", check_at=check_at, checks=0)
    if moved is None:
        current = ctx.store.job(job_id)
        if current is None:
            raise UnknownJob(f"no job {job_id!r}")
        return Cancelled(JobState(current.state), None, [])
    event(log, "state_change", job_id=job_id, to=JobState.DELETED, reason="cancelled")
    job = moved.job
    if job.external_id and moved.before in _HELD:
        job_dir = Path(job.job_dir or ctx.settings.jobs_dir / job.id)
        return Cancelled(moved.before, ToStop(Tracked(job.id, job.external_id, job_dir), job.destination), [], job)
    # a job woken for a freed place, cancelled before it took it: the next one may
    return Cancelled(moved.before, None, pass_on(ctx, job) if moved.before is JobState.QUEUED else [], job)
