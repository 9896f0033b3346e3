"""Whose turn it is on a destination with slots, and why a waiting job waits.

On a destination whose runner has slots (the local runner's `max_jobs`), a launch message
does not start its own job when others wait: it starts the job whose turn it is by fair
share (fairshare.py), or, with no slot free, leaves its job QUEUED and says why (no claim,
no state change: a burst of launches on a full destination costs one cheap statement each,
and the end of a running job starts the next turn). Nothing is lost: every job stays QUEUED
in the database until a turn starts it, and reconciliation launches any whose wake-up was
lost.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple, Sequence

from galaxy_tasks.context import Context
from galaxy_tasks.lifecycle import limits
from galaxy_tasks.lifecycle.effects import Effects
from galaxy_tasks.lifecycle.launch import Launched, claim, launch, launch_claimed, launch_many
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job
from galaxy_tasks.routing import Destination, Load
from galaxy_tasks.runners.base import Runner
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)

#: how often one turn may be lost to another message that took the same job a moment before
TRIES = 3


def next_queued(ctx: Context, destination: str) -> str | None:
    """The waiting job whose turn it is on `destination`: the oldest job of the user (or
    group) with the fewest running there for its share."""
    line = ctx.store.line(destination)
    turn = ctx.routing.shares.turn(line.running, line.waiting)
    return ctx.store.oldest_of(destination, turn.user) if turn is not None else None


class Turn(NamedTuple):
    """The job a turn started (None: none), and the jobs a place it gave back wakes."""

    started: str | None
    wake: list[tuple[str, str]]

    @property
    def effects(self) -> Effects:
        return Effects(launch=self.wake)


def launch_turn(ctx: Context, destination: str, runner_for: Callable[[str], Runner],
                owner: str | None = None) -> Turn:
    """Launch the job whose turn it is, if this host has room."""
    runner = runner_for(destination)
    wake: list[tuple[str, str]] = []
    for _ in range(TRIES):
        if not runner.has_room():
            return Turn(None, wake)
        with ctx.store.turn(destination):  # the next turn counts the claim this one made
            job_id = next_queued(ctx, destination)
            if job_id is None:
                return Turn(None, wake)
            job, passed_on = claim(ctx, job_id, owner)
        wake += passed_on
        if job is None:
            continue
        launched = launch_claimed(ctx, job, runner_for)
        wake += launched.wake
        if launched:
            return Turn(job_id, wake)
    return Turn(None, wake)


def launch_in_turn(ctx: Context, job_id: str, runner_for: Callable[[str], Runner],
                   owner: str | None = None) -> Launched:
    """A job's launch message. On a destination with slots it starts whichever waiting job's
    turn it is (perhaps not its own: then its own waits for a later turn), or, with no slot
    free, records why its job waits; elsewhere it launches its own job."""
    if not ctx.routing.limited:
        return launch(ctx, job_id, runner_for, owner)
    job = ctx.store.job(job_id)
    if job is None or job.destination not in ctx.routing.limited or job.state != JobState.QUEUED.value:
        return launch(ctx, job_id, runner_for, owner)
    runner = runner_for(job.destination)
    if not runner.has_room():
        _no_slot(ctx, job)
        return Launched(False, [])
    turn = launch_turn(ctx, job.destination, runner_for, owner)
    return Launched(turn.started == job_id, turn.wake)


def launch_all_in_turn(ctx: Context, job_ids: Sequence[str], runner_for: Callable[[str], Runner],
                       owner: str | None = None) -> dict[str, Launched]:
    """`launch_in_turn` for each job of a batch's message; the QUEUED jobs of destinations
    with no slots to share and no limit to count are claimed and recorded running together
    (launch_many), the others each on its own."""
    together: list[Job] = []
    if not limits.counted(ctx):
        rows = ctx.store.jobs(job_ids)
        together = [job for job_id in dict.fromkeys(job_ids) if (job := rows.get(job_id)) is not None
                    and job.state == JobState.QUEUED.value and job.destination not in ctx.routing.limited]
    done = launch_many(ctx, together, runner_for, owner) if together else {}
    for job_id in dict.fromkeys(job_ids):
        if job_id not in done:
            done[job_id] = launch_in_turn(ctx, job_id, runner_for, owner)
    return done


def _no_slot(ctx: Context, job: Job) -> None:
    slots = ctx.routing.destinations[job.destination].slots
    reason = f"waiting for a slot: all {slots} slots of destination {job.destination} on {ctx.settings.host} are taken"
    noted = ctx.store.note_waiting(job.id, reason)
    if noted is not None:
        ctx.announce(noted)
        event(log, "waiting", job_id=job.id, destination=job.destination, why="slot")


@dataclass(frozen=True)
class Wait:
    """Why a job waits, for `status`, the job events and Galaxy's job info."""

    #: what it waits for: "slot" (its destination is full), "share" (other users' jobs go
    #: first by fair share), "limit" (a concurrency limit), "launch" (its launch is on its way)
    waits_for: str
    detail: str
    #: how many jobs start before it (an estimate under fair share)
    place: int
    #: seconds until it starts, from the destination's recent run times (None: no run yet)
    estimated_start_s: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        start = f"; estimated start in {_duration(self.estimated_start_s)}" if self.estimated_start_s is not None \
            else "; no estimate yet (no job of its destination has ended recently)"
        return f"{self.waits_for}: {self.detail}; {self.place} job(s) start before it{start}"


def why_waiting(ctx: Context, job: Job) -> Wait | None:
    """Why a QUEUED or LIMITED job has not started, its place in line and an estimate of
    its start; None for a job that does not wait."""
    if job.state == JobState.LIMITED.value and job.waiting_on:
        limit = ctx.routing.limit_keys(job.user, job.destination).get(job.waiting_on)
        place = ctx.store.ahead_of(job, [])
        used = ctx.store.limit_usage([job.waiting_on]).get(job.waiting_on, 0)
        detail = f"{job.waiting_on} has {used} of {limit if limit is not None else '?'} places taken"
        return Wait("limit", detail, place, _estimate(ctx, job.destination, place, limit or 1))
    if job.state != JobState.QUEUED.value:
        return None
    destination = ctx.routing.destinations.get(job.destination)
    slots = destination.slots if destination is not None else None
    if slots is None:
        return Wait("launch", f"its launch on destination {job.destination} is on its way", 0, None)
    line = ctx.store.line(job.destination)
    shares = ctx.routing.shares
    party = shares.party(job.user)
    mates = [w.user for w in line.waiting if shares.party(w.user) == party] or [job.user]
    ahead = ctx.store.ahead_of(job, mates)
    place = shares.place(job.user, ahead, line.running, line.waiting)
    running = sum(line.running.values())
    turn = shares.turn(line.running, line.waiting)
    if turn is not None and shares.party(turn.user) != party and place > ahead:
        held = sum(n for u, n in line.running.items() if shares.party(u) == party)
        detail = (f"fair share puts {place - ahead} job(s) of other users first ({party} has {held} running "
                  f"on {job.destination}, share {shares.share(party):g})")
        return Wait("share", detail, place, _estimate(ctx, job.destination, place, slots))
    detail = f"destination {job.destination} has {running} running, {slots} slots per host"
    return Wait("slot", detail, place, _estimate(ctx, job.destination, place, slots))


def load_of(ctx: Context, destination: Destination) -> Load:
    """A destination's live figures, for a rule that sends a job where it waits least."""
    running, waiting = ctx.store.load(destination.name)
    return Load(running, waiting, destination.slots, ctx.store.mean_run_s(destination.name))


def _estimate(ctx: Context, destination: str, place: int, at_once: int) -> float | None:
    """Seconds until a job with `place` jobs before it starts, when `at_once` run together
    and each takes the destination's recent mean run time."""
    mean = ctx.store.mean_run_s(destination)
    if mean is None:
        return None
    return round(mean * math.ceil((place + 1) / max(1, at_once)), 1)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:g} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
