"""The slow safety net: find jobs whose expected event is overdue, and recovery at start-up.

Reconciliation reads only rows whose `check_at` has passed (an index range scan), at most a
batch per pass, and pushes each one's next check out by a doubling delay. A healthy
long-running job therefore costs one look per `CHECK_AFTER_MAX`, and the work per pass is
bounded by the batch, not by how many jobs are running.
"""
from __future__ import annotations

import logging
import os
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable

from galaxy_tasks.context import Context
from galaxy_tasks.lifecycle.effects import Effects
from galaxy_tasks.lifecycle.limits import given_back
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.runners.base import Tracked
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What the tasks layer must send: whole chains, launches, and batched checks."""

    prepare: list[Job] = field(default_factory=list)  # new jobs whose whole chain is sent again
    launch: list[tuple[str, str]] = field(default_factory=list)  # (job id, destination queue)
    check: dict[str, list[Tracked]] = field(default_factory=lambda: defaultdict(list))
    stop: dict[str, list[Tracked]] = field(default_factory=lambda: defaultdict(list))  # cancelled, maybe alive
    settled: list[str] = field(default_factory=list)  # cancelled before a runner had them: nothing to stop
    release: list[str] = field(default_factory=list)  # ended, still holding concurrency places
    wake: list[tuple[str, str]] = field(default_factory=list)  # (job id, queue) a freed place releases

    @property
    def effects(self) -> Effects:
        return Effects(start=self.prepare, launch=[*self.launch, *self.wake], check=self.check,
                       recheck_stopped=self.stop)

    @property
    def size(self) -> int:
        return (len(self.prepare) + len(self.launch) + sum(len(v) for v in self.check.values())
                + sum(len(v) for v in self.stop.values()) + len(self.wake))


def overdue(ctx: Context, now: datetime | None = None) -> Plan:
    """One reconciliation pass over at most RECONCILE_BATCH overdue jobs."""
    now = now or utcnow()
    settings = ctx.settings

    def delay(checks: int) -> float:
        return min(settings.check_after * 2 ** min(checks, 20), settings.check_after_max)

    jobs = ctx.store.take_due(now, settings.reconcile_batch, delay)
    plan = _plan(ctx, jobs, now)
    for job_id in plan.settled + plan.release:  # places first: a crash after them leaves the row due
        plan.wake += given_back(ctx, job_id)
    ctx.store.settle(plan.settled)
    if plan.size:
        event(log, "reconcile", overdue=len(jobs), prepare=len(plan.prepare), launch=len(plan.launch),
              check=sum(len(v) for v in plan.check.values()), stop=sum(len(v) for v in plan.stop.values()))
    return plan


def unpublished(ctx: Context, now: datetime | None = None) -> list[Job]:
    """Jobs whose latest event a client must hear but that was never published (its step
    died between recording the change and publishing it), unpublished for a whole pass."""
    before = (now or utcnow()) - timedelta(seconds=ctx.settings.reconcile_interval)
    return ctx.store.unpublished(before, ctx.settings.reconcile_batch)


def stopped(ctx: Context, job_ids: list[str]) -> Effects:
    """Cancelled jobs known to have nothing left running: no more looks at them, and the
    places they held are free (the jobs those release are launched)."""
    woken = [waiting for job_id in job_ids for waiting in given_back(ctx, job_id)]
    ctx.store.settle(job_ids)
    return Effects(launch=woken)


def startup(ctx: Context) -> Plan:
    """Jobs the steps must drive again after a restart: the broker is transport, not
    storage, so every job not yet handed to a runner is re-sent (duplicates are no-ops)."""
    now = utcnow()
    # a resubmission waiting out its rule's delay starts when the delay is over, not now
    due = [j for j in ctx.store.startup()
                   if not (j.state == JobState.NEW.value and j.attempt > 1 and j.check_at and j.check_at > now)]
    return _plan(ctx, due, now)


def held_by(ctx: Context, destinations: Iterable[str]) -> list[Tracked]:
    """Launched jobs of these destinations: what a starting runner worker follows again."""
    return [tracked(ctx, job) for job in ctx.store.held_by(destinations)]


def acquire_lease(ctx: Context, name: str, seconds: float) -> bool:
    """Hold the named lease for `seconds` unless someone else holds it now."""
    return ctx.store.acquire_lease(name, f"{socket.gethostname()}:{os.getpid()}", seconds)


def _plan(ctx: Context, jobs: Iterable[Job], now: datetime) -> Plan:
    plan = Plan()
    stale = now - timedelta(seconds=ctx.settings.launch_lease)
    for job in jobs:
        state = JobState(job.state)
        if state is JobState.DELETED:
            if job.external_id:
                plan.stop[job.destination].append(tracked(ctx, job))
            else:
                plan.settled.append(job.id)
        elif state in (JobState.OK, JobState.ERROR):
            plan.release.append(job.id)  # its end was recorded, not the return of its places
        elif state is JobState.NEW:
            plan.prepare.append(job)
        elif state in (JobState.QUEUED, JobState.LIMITED) or (state is JobState.SUBMITTING
                                                              and job.updated_at < stale and not job.external_id):
            plan.launch.append((job.id, job.queue))
        elif job.external_id:
            plan.check[job.destination].append(tracked(ctx, job))
    return plan


def tracked(ctx: Context, job: Job) -> Tracked:
    """What a runner is asked about a job: from its row, never from a message."""
    return Tracked(job.id, job.external_id or "", Path(job.job_dir or ctx.settings.jobs_dir / job.id),
                   ctx.routing.walltime_s(job.destination, job.walltime_s),
                   job.running_at.timestamp() if job.running_at else None, job.attempt)
