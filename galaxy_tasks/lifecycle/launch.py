"""Launch a queued job through its runner, exactly once.

QUEUED -> SUBMITTING is the claim: only one message wins it, and the row records which
(`owner`). If its worker dies in the window between "the runner accepted it" and "we
recorded its id", the redelivery of that same message takes the launch over at once; any
other message waits out the lease (`GALAXY_TASKS_LAUNCH_LEASE`). Either way the runner's
own look-up by job name keeps the takeover from starting a second copy.

A runner with no room (RunnerFull) sends the job back to QUEUED; `launch_next`, sent when a
job of the destination ends, launches the one whose turn it is (turns.py: fair share).
"""
from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from typing import Any, Callable, NamedTuple, Sequence

from galaxy_tasks.context import Context
from galaxy_tasks.errors import RunnerError, RunnerFull
from galaxy_tasks.faults import crash_point
from galaxy_tasks.lifecycle import limits
from galaxy_tasks.lifecycle.changes import move, move_many
from galaxy_tasks.lifecycle.effects import Effects
from galaxy_tasks.lifecycle.limits import move_giving_back
from galaxy_tasks.lifecycle.prepare import launch_for
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.runners.base import Runner, Tracked
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)

#: how long after its walltime a running job is looked at by reconciliation
WALLTIME_MARGIN_S = 30.0
_WAITING = frozenset({JobState.QUEUED, JobState.LIMITED})
_SUBMITTING = frozenset({JobState.SUBMITTING})


class Launched(NamedTuple):
    """Whether this call launched the job, and the jobs a place it gave back wakes."""

    launched: bool
    wake: list[tuple[str, str]]

    def __bool__(self) -> bool:
        return self.launched

    @property
    def effects(self) -> Effects:
        return Effects(launch=self.wake)


def launch(ctx: Context, job_id: str, runner_for: Callable[[str], Runner], owner: str | None = None) -> Launched:
    """Hand the job to the runner of its destination (`runner_for(destination)`); false if
    it was not this call's to launch. `owner` identifies the message (its redelivery
    carries the same one)."""
    job, passed_on = claim(ctx, job_id, owner)
    if job is None:
        return Launched(False, passed_on)
    return launch_claimed(ctx, job, runner_for)


def launch_claimed(ctx: Context, job: Job, runner_for: Callable[[str], Runner]) -> Launched:
    """The rest of `launch`, for a job `claim` gave this call."""
    return _launch_claimed(ctx, [job], runner_for)[job.id]


def launch_many(ctx: Context, jobs: Sequence[Job], runner_for: Callable[[str], Runner],
                owner: str | None = None) -> dict[str, Launched]:
    """`launch` for a batch of QUEUED jobs (their rows as read together) on destinations
    where no limit is counted: one statement claims them all and one records them running;
    each is handed to its runner on its own. A job the batch did not claim (another message
    took it a moment before), or one still to hand over when half the lease has passed (a
    slow runner), goes the way of `launch`, which says whose it is or claims it afresh."""
    lease_s = ctx.settings.launch_lease
    claimed = move_many(ctx, {job.id: {} for job in jobs}, JobState.SUBMITTING, JobState.QUEUED, owner=owner,
                        check_at=utcnow() + timedelta(seconds=lease_s))
    done = _launch_claimed(ctx, [claimed[job.id].job for job in jobs if job.id in claimed], runner_for,
                           until=time.monotonic() + lease_s / 2)
    for job in jobs:
        if job.id not in done:
            done[job.id] = launch(ctx, job.id, runner_for, owner)
    return done


def _launch_claimed(ctx: Context, jobs: Sequence[Job], runner_for: Callable[[str], Runner],
                    until: float = math.inf) -> dict[str, Launched]:
    """Jobs this call claimed (SUBMITTING), each handed to its runner (until the monotonic
    time `until`: the rest are left out of the result); those it started recorded RUNNING
    together."""
    done: dict[str, Launched] = {}
    started: dict[str, dict[str, Any]] = {}
    runners: dict[str, Runner] = {}
    for job in jobs:
        if time.monotonic() > until:
            break
        handed = _hand_over(ctx, job, runner_for)
        if isinstance(handed, Launched):
            done[job.id] = handed
            continue
        external_id, runner, walltime_s = handed
        runners[job.id] = runner
        # a job with a walltime is looked at soon after it, whichever process keeps its deadline
        check_s = min(ctx.settings.check_after, walltime_s + WALLTIME_MARGIN_S) if walltime_s \
            else ctx.settings.check_after
        started[job.id] = {"external_id": external_id, "check_at": utcnow() + timedelta(seconds=check_s)}
    running = move_many(ctx, started, JobState.RUNNING, JobState.SUBMITTING)
    # the others moved on meanwhile: most ended already (a burst's short jobs), some were cancelled
    moved_on = ctx.store.jobs([job_id for job_id in started if job_id not in running])
    for job_id, recorded in started.items():
        if job_id in running:
            event(log, "state_change", job_id=job_id, to=JobState.RUNNING, external_id=recorded["external_id"])
            done[job_id] = Launched(True, [])
            continue
        after = moved_on.get(job_id)
        if after is not None and after.state == JobState.DELETED.value:
            # cancelled while we were launching: stop what we started (its end gives its places back)
            runners[job_id].cancel(Tracked(job_id, recorded["external_id"], launch_for(ctx, after).job_dir))
        done[job_id] = Launched(False, [])
    return done


def _hand_over(ctx: Context, job: Job,
               runner_for: Callable[[str], Runner]) -> Launched | tuple[str, Runner, int | None]:
    """A claimed job to its runner: (its external id, the runner, its walltime), or what
    became of it when the runner did not take it (back in line, or failed)."""
    if job.destination not in ctx.routing.destinations:
        why = f"destination {job.destination!r} is no longer configured"
        _, woken = move_giving_back(ctx, job, JobState.ERROR, reason=why, sources=_SUBMITTING)
        event(log, "state_change", job_id=job.id, to=JobState.ERROR, reason=why)
        return Launched(False, woken)
    runner = runner_for(job.destination)
    launch = launch_for(ctx, job)
    try:
        if launch.run_as is not None and not runner.runs_as_user:
            raise RunnerError(f"job {job.id} runs as {launch.run_as}, but the {runner.name} runner of destination "
                              f"{job.destination!r} cannot start a job as its user")
        external_id = runner.submit(launch)
        crash_point("launch", job.id)
    except RunnerFull as exc:
        # back in line, holding no place; the end of a running job of this destination wakes it
        _, woken = move_giving_back(ctx, job, JobState.QUEUED, sources=_SUBMITTING, waiting_on=None)
        event(log, "launch_deferred", job_id=job.id, destination=job.destination, reason=str(exc))
        return Launched(False, woken)
    except RunnerError as exc:
        _, woken = move_giving_back(ctx, job, JobState.ERROR, reason=str(exc), sources=_SUBMITTING)
        event(log, "state_change", job_id=job.id, to=JobState.ERROR, reason=str(exc))
        return Launched(False, woken)
    return external_id, runner, launch.walltime_s


def claim(ctx: Context, job_id: str, owner: str | None) -> tuple[Job | None, list[tuple[str, str]]]:
    """The job's row if this call now holds its launch (and the jobs a place it gave back
    wakes). The claim itself returns the row, so the usual launch reads nothing before it."""
    lease_s = ctx.settings.launch_lease
    # looked at again once the lease is up, not after CHECK_AFTER: a launch whose worker was
    # killed outright (its message waits out the broker's visibility timeout) is taken over then
    passed_on: list[tuple[str, str]] = []
    if limits.counted(ctx):
        waiting = ctx.store.job(job_id)
        if waiting is None:
            return None, []
        moved = None
        if JobState(waiting.state) in _WAITING:
            moved, passed_on = limits.claim(ctx, waiting, owner, lease_s)
    else:
        # (LIMITED too: a job left waiting when the limits were taken out of the job_conf)
        moved = move(ctx, job_id, JobState.SUBMITTING, sources=_WAITING, owner=owner,
                     check_at=utcnow() + timedelta(seconds=lease_s))
    if moved is not None:
        return moved.job, []
    job = ctx.store.job(job_id)
    if job is None or job.state != JobState.SUBMITTING.value:
        return None, passed_on
    redelivered = owner is not None and job.owner == owner
    if not redelivered and utcnow() - job.updated_at < timedelta(seconds=lease_s):
        return None, []  # another message is launching it right now
    if not ctx.store.claim_stale(job_id, JobState.SUBMITTING, job.updated_at):
        return None, []
    event(log, "launch_takeover", job_id=job_id, level=logging.WARNING)
    return job, []
