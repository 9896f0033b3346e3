"""Every state change of the lifecycle goes through `move`: the compare-and-set on the row,
then the job event, announced after the database recorded the change (and for a job whose
events go to a client, marked in the row until it was published: the outbox)."""
from __future__ import annotations

from typing import Any, Mapping

from galaxy_tasks.context import Context
from galaxy_tasks.states import JobState
from galaxy_tasks.store import Moved


def move(ctx: Context, job_id: str, target: JobState, *, reason: str | None = None,
         sources: frozenset[JobState] | None = None, **values: Any) -> Moved | None:
    moved = ctx.store.move(job_id, target, reason=reason, sources=sources, **values)
    if moved is not None:
        ctx.announce(moved.job)
    return moved


def move_many(ctx: Context, moves: Mapping[str, Mapping[str, Any]], target: JobState, source: JobState,
              **values: Any) -> dict[str, Moved]:
    """`move` for a batch of jobs from one state (store.move_many: one statement)."""
    moved = ctx.store.move_many(moves, target, source, **values)
    for done in moved.values():
        ctx.announce(done.job)
    return moved
