"""Accept a job: validate, route, record. Nothing is written for a refused spec."""
from __future__ import annotations

import logging
import uuid
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any, Mapping, NamedTuple, Sequence

from galaxy_tasks.context import Context
from galaxy_tasks.errors import SpecError
from galaxy_tasks.jobdir import new_token
from galaxy_tasks.lifecycle.effects import Effects
from galaxy_tasks.lifecycle.turns import load_of
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.names import JOB_ID
from galaxy_tasks.spec import FIELDS, MAX_TEXT, QUEUE_NAME, Events, JobSpec
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)


class Accepted(NamedTuple):
    """The job, and whether this call created it (a duplicated submit finds it recorded)."""

    job: Job
    created: bool

    @property
    def effects(self) -> Effects:
        return Effects(start=[self.job] if self.created else [])


def accept(ctx: Context, spec: JobSpec, signer: str | None = None, unnamed_id: str | None = None) -> Accepted:
    """Record a new job; a spec whose client-chosen id is already recorded (a duplicated
    submit message) returns that job, not created. `signer`: the certificate that signed the
    submit message; an id or events queue of another client's is refused
    (galaxy_tasks/clients.py). `unnamed_id`: the id of a spec without one (derived from its
    signed message, so that every copy of the message is one job), else a new one."""
    job_id = spec.id or unnamed_id or str(uuid.uuid4())
    values = job_values(ctx, spec, job_id, utcnow())
    intrusion = ctx.routing.clients.intrusion(signer, spec.id, values["events_queue"])
    if intrusion is not None:
        raise SpecError(*intrusion)
    destination = values["destination"]
    if not ctx.store.create(values):
        existing = ctx.store.job(job_id)
        if existing is None or existing.command != spec.command:
            raise SpecError("id", f"job id {job_id!r} is already used by another job") from None
        return Accepted(existing, False)
    event(log, "state_change", job_id=job_id, to=JobState.NEW, tool_id=spec.tool_id,
          destination=destination)
    job = Job.from_row(values)
    ctx.announce(job)
    return Accepted(job, True)


def accept_many(ctx: Context, specs: Sequence[JobSpec]) -> list[Accepted]:
    """Record many new jobs at once (a client's burst: one INSERT per few hundred jobs), each
    as `accept` would; a spec whose id is recorded with the same command is that job, not
    created. Nothing is written if a spec's id is recorded for another command, or appears
    twice here: the SpecError names it."""
    now = utcnow()
    rows = [job_values(ctx, spec, spec.id or str(uuid.uuid4()), now) for spec in specs]
    specs_by_id: dict[str, int] = {}
    for at, row in enumerate(rows):
        if row["id"] in specs_by_id:
            raise SpecError("id", f"job id {row['id']!r} is given to more than one job")
        specs_by_id[row["id"]] = at
    given = [spec.id for spec in specs if spec.id]
    recorded = ctx.store.jobs(given) if given else {}
    for job_id, job in recorded.items():
        if job.command != rows[specs_by_id[job_id]]["command"]:
            raise SpecError("id", f"job id {job_id!r} is already used by another job")
    created = ctx.store.create_jobs([row for row in rows if row["id"] not in recorded])
    accepted = []
    for row in rows:
        if row["id"] in created:
            job = Job.from_row(row)
            event(log, "state_change", job_id=job.id, to=JobState.NEW, tool_id=job.tool_id,
                  destination=job.destination)
            ctx.announce(job)
            accepted.append(Accepted(job, True))
        else:  # recorded before, or by a submit that raced this one
            existing = recorded.get(row["id"]) or ctx.store.job(row["id"])
            if existing is None or existing.command != row["command"]:
                raise SpecError("id", f"job id {row['id']!r} is already used by another job")
            accepted.append(Accepted(existing, False))
    return accepted


#: what a job's row takes from its spec as it is: the fields of the same name in both, but
#: the id (chosen here when the spec has none) and the destination (the spec's is a hint)
FROM_SPEC = tuple(sorted((FIELDS & {item.name for item in fields(Job)}) - {"id", "destination"}))


def job_values(ctx: Context, spec: JobSpec, job_id: str, now: datetime) -> dict[str, Any]:
    """A new job's row, routed (a workflow creates many of them at once)."""
    destination = ctx.routing.route(spec, lambda d: load_of(ctx, d))
    events = _events(ctx, spec)
    return dict(
        id=job_id,
        **{name: getattr(spec, name) for name in FROM_SPEC},
        destination_hint=spec.destination,
        destination=destination.name,
        queue=destination.queue,
        state=JobState.NEW.value,
        created_at=now,
        updated_at=now,
        check_at=now + timedelta(seconds=ctx.settings.check_after),
        checks=0,
        token=new_token(),
        events_queue=events.queue if events else None,
        client_id=events.client_id if events else None,
        event_seq=1,
        unpublished_at=now if events else None,
    )


def _events(ctx: Context, spec: JobSpec) -> Events | None:
    """The spec's events, or the configured default; never one of the queues the steps and
    runners consume (an event there would be a message no worker can run)."""
    events = spec.events or (Events(ctx.settings.events_queue) if ctx.settings.events_queue else None)
    if events is None:
        return None
    if _reserved(ctx, events.queue):
        raise SpecError("events.queue", f"{events.queue!r} is a queue galaxy-tasks itself consumes or reserves")
    return events


def _reserved(ctx: Context, queue: str) -> bool:
    """Whether `queue` is one the steps or runners consume, or Celery's and kombu's own."""
    ours = {ctx.settings.steps_queue, ctx.settings.ends_queue, *ctx.routing.queues}
    return (queue in ours or any(queue.startswith(name + "@") for name in ours)
            or queue.startswith(("celery", "_kombu", "unacked")))


def refusal_address(ctx: Context, data: Any, signer: str | None = None) -> tuple[str, str, str | None] | None:
    """Where a client hears that its spec was refused: (events queue, job id, client id) read
    from the refused spec itself, each checked as accept checks them (another client's id or
    queue is never told), or None when the spec names no id or no queue a refusal may go to
    (then the log line is all there is)."""
    if not isinstance(data, Mapping):
        return None
    job_id, events = data.get("id"), data.get("events")
    if events is None and ctx.settings.events_queue:
        events = {"queue": ctx.settings.events_queue}
    if not isinstance(job_id, str) or not JOB_ID.match(job_id) or not isinstance(events, Mapping):
        return None
    queue, client_id = events.get("queue"), events.get("client_id")
    if not isinstance(queue, str) or not QUEUE_NAME.match(queue) or _reserved(ctx, queue):
        return None
    if ctx.routing.clients.intrusion(signer, job_id, queue) is not None:
        return None
    if not isinstance(client_id, str) or len(client_id) > MAX_TEXT:
        client_id = None
    return queue, job_id, client_id
