"""Accept a job: validate, route, record. Nothing is written for a refused spec."""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from galaxy_tasks.context import Context
from galaxy_tasks.errors import SpecError
from galaxy_tasks.jobdir import new_token
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.spec import Events, JobSpec
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)


def accept(ctx: Context, spec: JobSpec) -> tuple[Job, bool]:
    """Record a new job. Returns the job and whether it was created now; a spec whose
    client-chosen id is already recorded (a duplicated submit message) returns that job."""
    job_id = spec.id or str(uuid.uuid4())
    values = job_values(ctx, spec, job_id, utcnow())
    destination = values["destination"]
    if not ctx.store.create(values):
        existing = ctx.store.job(job_id)
        if existing is None or existing.command != spec.command:
            raise SpecError("id", f"job id {job_id!r} is already used by another job") from None
        return existing, False
    event(log, "state_change", job_id=job_id, to=JobState.NEW, tool_id=spec.tool_id,
          destination=destination)
    job = Job.from_row(values)
    ctx.announce(job)
    return job, True


def job_values(ctx: Context, spec: JobSpec, job_id: str, now: datetime) -> dict[str, Any]:
    """A new job's row, routed (a workflow creates many of them at once)."""
    destination = ctx.routing.route(spec)
    events = _events(ctx, spec)
    return dict(
        id=job_id,
        tool_id=spec.tool_id,
        tool_version=spec.tool_version,
        user=spec.user,
        command=spec.command,
        environment=spec.environment,
        inputs=spec.inputs,
        outputs=spec.outputs,
        cores=spec.cores,
        memory_mb=spec.memory_mb,
        walltime_s=spec.walltime_s,
        destination_hint=spec.destination,
        destination=destination.name,
        queue=destination.queue,
        state=JobState.NEW.value,
        created_at=now,
        updated_at=now,
        check_at=now + timedelta(seconds=ctx.settings.check_after),
        checks=0,
        environment_setup_file=spec.environment_setup_file,
        token=new_token(),
        events_queue=events.queue if events else None,
        client_id=events.client_id if events else None,
        event_seq=1,
        unpublished_at=now if events else None,
        reuse=spec.reuse,
    )


def _events(ctx: Context, spec: JobSpec) -> Events | None:
    """The spec's events, or the configured default; never one of the queues the steps and
    runners consume (an event there would be a message no worker can run)."""
    events = spec.events or (Events(ctx.settings.events_queue) if ctx.settings.events_queue else None)
    if events is None:
        return None
    ours = {ctx.settings.steps_queue, *ctx.routing.queues}
    if (events.queue in ours or any(events.queue.startswith(queue + "@") for queue in ours)
            or events.queue.startswith(("celery", "_kombu", "unacked"))):
        raise SpecError("events.queue", f"{events.queue!r} is a queue galaxy-tasks itself consumes or reserves")
    return events
