"""Galaxy's concurrency limits, held exactly in the database (store/limits.py): a launch takes
a place under each limit that applies to its job, or waits LIMITED; the job gives its places
back when its process has ended, and that end wakes the oldest job waiting on each freed
place. No loop looks at waiting jobs: the end of another job releases them (reconciliation
looks at one only if its wake-up was lost)."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from galaxy_tasks.context import Context
from galaxy_tasks.lifecycle.changes import move
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.states import JobState
from galaxy_tasks.store import Moved, Refused
from galaxy_tasks.store.limits import PASSED_ON, Released

log = logging.getLogger(__name__)

_WAITING = frozenset({JobState.QUEUED, JobState.LIMITED})


def claim(ctx: Context, job: Job, owner: str | None, lease_s: float) -> tuple[Moved | None, list[tuple[str, str]]]:
    """The launch claim of a job that counts under concurrency limits: SUBMITTING with its
    places, or LIMITED (no move returned then, as for a job past its launch). A job woken
    for one key and now refused for another passes its wake-up on to the next job waiting
    on the first (returned, to be sent), once: a job woken that way passes nothing on, so
    one end costs a bounded number of launches however many jobs wait."""
    keys = ctx.routing.limit_keys(job.user, job.destination)
    now = utcnow()
    outcome = ctx.store.claim_places(job.id, keys, _WAITING, check_at=now + timedelta(seconds=lease_s),
                                     limited_check_at=now + timedelta(seconds=ctx.settings.check_after), owner=owner)
    if isinstance(outcome, Refused):
        passed_on: list[tuple[str, str]] = []
        if outcome.moved is not None:
            ctx.announce(outcome.moved.job)
            event(log, "limited", job_id=job.id, key=outcome.key, used=outcome.used, limit=outcome.limit)
            woken_for = job.waiting_on if job.state == JobState.QUEUED.value else None
            if woken_for and woken_for != outcome.key and not (job.reason or "").startswith(PASSED_ON):
                passed_on = _wake(ctx, woken_for, passed=True)
        return None, passed_on
    if outcome is not None:
        ctx.announce(outcome.job)
    return outcome, []


def counted(ctx: Context) -> bool:
    """Whether any concurrency limit is configured (without one, the launch claim is the
    usual single statement)."""
    return bool(ctx.routing.limits.concurrency)


def move_giving_back(ctx: Context, job: Job, target: JobState, *, sources: frozenset[JobState],
                     reason: str | None = None, **values: Any) -> tuple[Moved | None, list[tuple[str, str]]]:
    """Move a job on (to its end, back in line, to its next attempt) giving back, in the
    same transaction, every place it holds; the (id, queue) of each job that woke."""
    if not counted(ctx) and not job.limit_keys:
        return move(ctx, job.id, target, reason=reason, sources=sources, **values), []
    moved, released = ctx.store.move_giving_back(job.id, target, sources=sources, reason=reason, **values)
    if moved is not None:
        ctx.announce(moved.job)
    return moved, _woken(ctx, job.id, released)


def release(ctx: Context, job: Job) -> list[tuple[str, str]]:
    """Give back the places the job holds, if any; the (id, queue) of each job to wake."""
    if not job.limit_keys:
        return []
    return given_back(ctx, job.id)


def given_back(ctx: Context, job_id: str) -> list[tuple[str, str]]:
    """Give back the places of a job (if it still holds any); the (id, queue) of each job
    that woke."""
    return _woken(ctx, job_id, ctx.store.release_places(job_id))


def pass_on(ctx: Context, job: Job) -> list[tuple[str, str]]:
    """A job woken for a place that will not take it (cancelled, failed before its launch)
    passes the wake-up on to the next job waiting on that place."""
    if job.waiting_on and counted(ctx):
        return _wake(ctx, job.waiting_on, passed=False)
    return []


def _wake(ctx: Context, key: str, passed: bool) -> list[tuple[str, str]]:
    woken = ctx.store.wake_oldest(key, PASSED_ON if passed else None)
    if woken is None:
        return []
    ctx.announce(woken.job)
    return [(woken.job.id, woken.job.queue)]


def _woken(ctx: Context, job_id: str, released: Released) -> list[tuple[str, str]]:
    for woken in released.woken:
        ctx.announce(woken.job)
    if released.keys:
        event(log, "released", job_id=job_id, keys=",".join(released.keys),
              wake=",".join(woken_id for woken_id, _ in released.waiting) or None)
    return list(dict.fromkeys(released.waiting))
