"""Accept a job: validate, route, record. Nothing is written for a refused spec."""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from galaxy_tasks.context import Context
from galaxy_tasks.errors import SpecError
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.spec import JobSpec
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)


def accept(ctx: Context, spec: JobSpec) -> tuple[Job, bool]:
    """Record a new job. Returns the job and whether it was created now; a spec whose
    client-chosen id is already recorded (a duplicated submit message) returns that job."""
    destination = ctx.routing.route(spec)
    job_id = spec.id or str(uuid.uuid4())
    now = utcnow()
    values = dict(
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
    )
    if not ctx.store.create(values):
        existing = ctx.store.job(job_id)
        if existing is None or existing.command != spec.command:
            raise SpecError("id", f"job id {job_id!r} is already used by another job") from None
        return existing, False
    event(log, "state_change", job_id=job_id, to=JobState.NEW, tool_id=spec.tool_id,
          destination=destination.name)
    return Job.from_row(values), True
