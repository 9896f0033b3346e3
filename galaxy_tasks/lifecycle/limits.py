"""Galaxy's concurrency limits, held exactly in the database (store/limits.py): a launch takes
a place under each limit that applies to its job, or waits LIMITED; the job gives its places
back when its process has ended, and that end wakes the oldest job waiting on each freed
place. No loop looks at waiting jobs: the end of another job releases them (reconciliation
looks at one only if its wake-up was lost)."""
from __future__ import annotations

import logging
from datetime import timedelta

from galaxy_tasks.context import Context
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.states import JobState
from galaxy_tasks.store import Moved, Refused

log = logging.getLogger(__name__)

_WAITING = frozenset({JobState.QUEUED, JobState.LIMITED})


def claim(ctx: Context, job: Job, owner: str | None, lease_s: float) -> tuple[Moved | None, list[tuple[str, str]]]:
    """The launch claim of a job that counts under concurrency limits: SUBMITTING with its
    places, or LIMITED (no move returned then, as for a job past its launch). A job woken
    for one key and now refused for another passes its wake-up on to the next job waiting
    on the first (returned, to be sent)."""
    keys = ctx.routing.limit_keys(job.user, job.destination)
    now = utcnow()
    outcome = ctx.store.claim_places(job.id, keys, _WAITING, check_at=now + timedelta(seconds=lease_s),
                                     limited_check_at=now + timedelta(seconds=ctx.settings.check_after), owner=owner)
    if isinstance(outcome, Refused):
        passed_on: list[tuple[str, str]] = []
        if outcome.moved is not None:
            ctx.announce(outcome.moved.job)
            event(log, "limited", job_id=job.id, key=outcome.key, used=outcome.used, limit=outcome.limit)
            if job.waiting_on and job.waiting_on != outcome.key:
                nxt = ctx.store.wake_oldest(job.waiting_on)
                if nxt is not None:
                    ctx.announce(nxt.job)
                    passed_on = [(nxt.job.id, nxt.job.queue)]
        return None, passed_on
    if outcome is not None:
        ctx.announce(outcome.job)
    return outcome, []


def counted(ctx: Context) -> bool:
    """Whether any concurrency limit is configured (without one, the launch claim is the
    usual single statement)."""
    return bool(ctx.routing.limits.concurrency)


def release(ctx: Context, job: Job) -> list[tuple[str, str]]:
    """Give back the places the job holds, if any; the (id, queue) of each job to wake."""
    if not job.limit_keys:
        return []
    return given_back(ctx, job.id)


def given_back(ctx: Context, job_id: str) -> list[tuple[str, str]]:
    """Give back the places of a job (if it still holds any); the (id, queue) of each job
    that woke."""
    released = ctx.store.release_places(job_id)
    for moved in released.woken:
        ctx.announce(moved.job)
    if released.keys:
        event(log, "released", job_id=job_id, keys=",".join(released.keys),
              wake=",".join(job_id for job_id, _ in released.waiting) or None)
    return list(dict.fromkeys(released.waiting))


def keep_checking(ctx: Context, job: Job) -> dict[str, object]:
    """Values for a job's end that gives places back: its row stays due for reconciliation
    until the places are given back (so a crash between the two loses no place)."""
    if not job.limit_keys:
        return {}
    return {"check_at": utcnow() + timedelta(seconds=ctx.settings.check_after)}
