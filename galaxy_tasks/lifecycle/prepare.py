"""Prepare a job: its private working directory and job script, then QUEUED."""
from __future__ import annotations

import logging
from pathlib import Path

from galaxy_tasks import jobdir
from galaxy_tasks.context import Context
from galaxy_tasks.faults import crash_point
from galaxy_tasks.lifecycle import reuse
from galaxy_tasks.lifecycle.changes import move
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job
from galaxy_tasks.routing import Destination
from galaxy_tasks.runners.base import Launch
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)

_NEW = frozenset({JobState.NEW})


def prepare(ctx: Context, job_id: str) -> Job | None:
    """Write the job directory and move NEW -> QUEUED (or, a job that allows reuse whose
    result an earlier job computed, NEW -> OK: see `reuse`); the row as the move left it,
    None if the job is past this step."""
    job = ctx.store.job(job_id)
    if job is None or job.state != JobState.NEW.value:
        return None
    destination = ctx.routing.destinations.get(job.destination)
    root = ctx.settings.jobs_dir / job.id
    try:
        if destination is None:
            raise LookupError(f"destination {job.destination!r} is no longer configured")
        jobdir.create(root, job.command, environment(ctx, job, destination, jobdir.JobDir(root)),
                      job.environment_setup_file, token=job.token)
    except (OSError, LookupError) as exc:
        move(ctx, job_id, JobState.ERROR, reason=f"prepare failed: {exc}", sources=_NEW)
        event(log, "state_change", job_id=job_id, to=JobState.ERROR, reason=str(exc))
        return None
    crash_point("prepare", job_id)
    key = reuse.provenance_key(ctx, job) if job.reuse else None
    if key is not None and (reused := reuse.reuse_earlier(ctx, job, jobdir.JobDir(root), key)) is not None:
        return reused
    moved = move(ctx, job_id, JobState.QUEUED, sources=_NEW, job_dir=str(root), provenance=key)
    if moved:
        event(log, "state_change", job_id=job_id, to=JobState.QUEUED, queue=job.queue)
    return moved.job if moved is not None else None


def environment(ctx: Context, job: Job, destination: Destination, job_dir: jobdir.JobDir) -> dict[str, str]:
    return jobdir.job_environment(
        job_dir,
        cores=job.cores,
        memory_mb=job.memory_mb,
        spec_env=job.environment or {},
        destination_env=destination.env,
        mesos_url=ctx.settings.mesos_url,
        job_id=job.id,
    )


def launch_for(ctx: Context, job: Job) -> Launch:
    """What the runner is handed for a prepared job."""
    job_dir = jobdir.JobDir(Path(job.job_dir or ctx.settings.jobs_dir / job.id))
    return Launch(
        job_id=job.id,
        job_dir=job_dir.root,
        script=job_dir.script,
        cores=job.cores,
        memory_mb=job.memory_mb,
        walltime_s=ctx.routing.walltime_s(job.destination, job.walltime_s),
        output_size_bytes=ctx.routing.output_size_bytes(job.destination),
        attempt=job.attempt,
    )
