"""Launch a queued job through its runner, exactly once.

QUEUED -> SUBMITTING is the claim: only one message wins it, and the row records which
(`owner`). If its worker dies in the window between "the runner accepted it" and "we
recorded its id", the redelivery of that same message takes the launch over at once; any
other message waits out the lease (`GALAXY_TASKS_LAUNCH_LEASE`). Either way the runner's
own look-up by job name keeps the takeover from starting a second copy.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta

from sqlalchemy.engine import Row

from galaxy_tasks.context import Context
from galaxy_tasks.faults import crash_point
from galaxy_tasks.lifecycle.prepare import launch_for
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.runners.base import Runner, RunnerError, Tracked
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)

LAUNCH_LEASE_S = float(os.environ.get("GALAXY_TASKS_LAUNCH_LEASE", "60"))
_SUBMITTING = frozenset({JobState.SUBMITTING})


def launch(ctx: Context, job: Job | Row, runner: Runner, owner: str | None = None,
           lease_s: float = LAUNCH_LEASE_S) -> bool:
    """Hand the job to `runner`; False if it was not this call's to launch. `job` is the
    row as read by the caller: only its immutable spec is used after the claim. `owner`
    identifies the message (its redelivery carries the same one)."""
    job_id = job.id
    if not _claim(ctx, job, owner, lease_s):
        return False
    try:
        external_id = runner.submit(launch_for(ctx, job))
        crash_point("launch", job_id)
    except RunnerError as exc:
        with ctx.store.transaction() as session:
            ctx.store.transition(session, job_id, JobState.ERROR, reason=str(exc), sources=_SUBMITTING)
        event(log, "state_change", job_id=job_id, to=JobState.ERROR, reason=str(exc))
        return False
    with ctx.store.transaction() as session:
        moved = ctx.store.transition(session, job_id, JobState.RUNNING, sources=_SUBMITTING,
                                     external_id=external_id)
    if moved:
        event(log, "state_change", job_id=job_id, to=JobState.RUNNING, external_id=external_id)
        return True
    after = ctx.store.row(job_id)
    if after is not None and after.state == JobState.DELETED.value:
        # cancelled while we were launching: stop what we started
        runner.cancel(Tracked(job_id, external_id, launch_for(ctx, after).job_dir))
    return False


def _claim(ctx: Context, job: Job | Row, owner: str | None, lease_s: float) -> bool:
    job_id = job.id
    if job.state == JobState.QUEUED.value:
        with ctx.store.transaction() as session:
            if ctx.store.transition(session, job_id, JobState.SUBMITTING, sources=frozenset({JobState.QUEUED}),
                                    owner=owner):
                return True
        job = ctx.store.row(job_id)
    if job is None or job.state != JobState.SUBMITTING.value:
        return False
    redelivered = owner is not None and job.owner == owner
    if not redelivered and utcnow() - job.updated_at < timedelta(seconds=lease_s):
        return False  # another message is launching it right now
    with ctx.store.transaction() as session:
        taken = ctx.store.claim_stale(session, job_id, JobState.SUBMITTING, job.updated_at)
    if taken:
        event(log, "launch_takeover", job_id=job_id, level=logging.WARNING)
    return taken
