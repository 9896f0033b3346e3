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

from sqlalchemy import select, update

from galaxy_tasks.context import Context
from galaxy_tasks.lifecycle.launch import LAUNCH_LEASE_S
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, Lease, utcnow
from galaxy_tasks.runners.base import Tracked
from galaxy_tasks.states import ACTIVE, JobState

log = logging.getLogger(__name__)

#: states whose rows reconciliation looks at when their check is due: the active ones, and
#: cancelled ones whose runner may not have stopped them yet
_DUE = ACTIVE | {JobState.DELETED}


@dataclass
class Plan:
    """What the tasks layer must send: whole chains, launches, and batched checks."""

    prepare: list[Job] = field(default_factory=list)  # new jobs whose whole chain is sent again
    launch: list[tuple[str, str]] = field(default_factory=list)  # (job id, destination queue)
    check: dict[str, list[Tracked]] = field(default_factory=lambda: defaultdict(list))
    stop: dict[str, list[Tracked]] = field(default_factory=lambda: defaultdict(list))  # cancelled, maybe alive
    settled: list[str] = field(default_factory=list)  # cancelled before a runner had them: nothing to stop

    @property
    def size(self) -> int:
        return (len(self.prepare) + len(self.launch) + sum(len(v) for v in self.check.values())
                + sum(len(v) for v in self.stop.values()))


def overdue(ctx: Context, now: datetime | None = None) -> Plan:
    """One reconciliation pass over at most RECONCILE_BATCH overdue jobs."""
    now = now or utcnow()
    settings = ctx.settings
    with ctx.store.session() as session:
        jobs = session.scalars(
            select(Job)
            .where(Job.state.in_([s.value for s in _DUE]), Job.check_at <= now)
            .order_by(Job.check_at)
            .limit(settings.reconcile_batch)
        ).all()
        plan = _plan(ctx, jobs, now)
        if plan.settled:
            session.execute(_settle(plan.settled))
        by_checks: dict[int, list[str]] = defaultdict(list)
        for job in jobs:
            if job.id not in plan.settled:
                by_checks[job.checks].append(job.id)
        for checks, ids in by_checks.items():  # one statement per distinct delay
            delay = min(settings.check_after * 2 ** min(checks, 20), settings.check_after_max)
            session.execute(
                update(Job).where(Job.id.in_(ids), Job.check_at <= now)
                .values(check_at=now + timedelta(seconds=delay), checks=checks + 1)
            )
    if plan.size:
        event(log, "reconcile", overdue=len(jobs), prepare=len(plan.prepare), launch=len(plan.launch),
              check=sum(len(v) for v in plan.check.values()), stop=sum(len(v) for v in plan.stop.values()))
    return plan


def stopped(ctx: Context, job_ids: list[str]) -> None:
    """Cancelled jobs known to have nothing left running: no more looks at them."""
    if job_ids:
        with ctx.store.session() as session:
            session.execute(_settle(job_ids))


def _settle(job_ids: list[str]):
    return update(Job).where(Job.id.in_(job_ids), Job.state == JobState.DELETED.value).values(check_at=None)


def startup(ctx: Context) -> Plan:
    """Jobs the steps must drive again after a restart: the broker is transport, not
    storage, so every job not yet handed to a runner is re-sent (duplicates are no-ops)."""
    now = utcnow()
    with ctx.store.session() as session:
        jobs = session.scalars(
            select(Job).where(Job.state.in_([JobState.NEW.value, JobState.QUEUED.value,
                                             JobState.SUBMITTING.value]))
        ).all()
    return _plan(ctx, jobs, now)


def held_by(ctx: Context, destinations: Iterable[str]) -> list[Tracked]:
    """Launched jobs of these destinations: what a starting runner worker follows again."""
    with ctx.store.session() as session:
        jobs = session.scalars(
            select(Job).where(
                Job.destination.in_(list(destinations)),
                Job.state.in_([JobState.SUBMITTING.value, JobState.RUNNING.value]),
                Job.external_id.is_not(None),
            )
        ).all()
    return [_tracked(ctx, job) for job in jobs]


def acquire_lease(ctx: Context, name: str, seconds: float) -> bool:
    """Hold the named lease for `seconds` unless someone else holds it now."""
    now = utcnow()
    holder = f"{socket.gethostname()}:{os.getpid()}"
    until = now + timedelta(seconds=seconds)
    with ctx.store.session() as session:
        taken = session.execute(
            update(Lease).where(Lease.name == name, Lease.until < now).values(holder=holder, until=until)
        ).rowcount
        if taken:
            return True
        if session.get(Lease, name) is None:
            session.add(Lease(name=name, holder=holder, until=until))
            try:
                session.flush()
            except Exception:
                return False
            return True
    return False


def _plan(ctx: Context, jobs: Iterable[Job], now: datetime) -> Plan:
    plan = Plan()
    stale = now - timedelta(seconds=LAUNCH_LEASE_S)
    for job in jobs:
        state = JobState(job.state)
        if state is JobState.DELETED:
            if job.external_id:
                plan.stop[job.destination].append(_tracked(ctx, job))
            else:
                plan.settled.append(job.id)
        elif state is JobState.NEW:
            plan.prepare.append(job)
        elif state is JobState.QUEUED or (state is JobState.SUBMITTING and job.updated_at < stale
                                          and not job.external_id):
            plan.launch.append((job.id, job.queue))
        elif job.external_id:
            plan.check[job.destination].append(_tracked(ctx, job))
    return plan


def _tracked(ctx: Context, job: Job) -> Tracked:
    return Tracked(job.id, job.external_id or "", Path(job.job_dir or ctx.settings.jobs_dir / job.id))
