"""Prepare a job: its private working directory and job script, then QUEUED."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from galaxy_tasks import jobdir
from galaxy_tasks.context import Context
from galaxy_tasks.errors import ConfigError
from galaxy_tasks.faults import crash_point
from galaxy_tasks.lifecycle import reuse
from galaxy_tasks.lifecycle.changes import move, move_many
from galaxy_tasks.lifecycle.effects import Effects
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job
from galaxy_tasks.routing import Destination
from galaxy_tasks.runners.base import Launch, Rebuild
from galaxy_tasks.staging import tokens
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)

_NEW = frozenset({JobState.NEW})


class Prepared(NamedTuple):
    """The row as the step left it (None if the job is not to launch: past this step, or
    failed here, then `failed` holds its row)."""

    job: Job | None
    failed: Job | None = None

    def __bool__(self) -> bool:
        return self.job is not None

    @property
    def effects(self) -> Effects:
        """A workflow's job that ended here (reused, or failed to prepare) runs its pass."""
        ended = self.failed or (self.job if self.job is not None and self.job.state == JobState.OK.value else None)
        return Effects(passes=[ended] if ended is not None and ended.workflow_id is not None else [])


def prepare(ctx: Context, job_id: str, job: Job | None = None) -> Prepared:
    """Write the job directory and move NEW -> QUEUED (or, a job that allows reuse whose
    result an earlier job computed, NEW -> OK: see `reuse`). `job`: its row as a batch read
    it (the move checks the state again)."""
    return prepare_many(ctx, [job_id], {job_id: job} if job is not None and job.id == job_id else None)[job_id]


def prepare_many(ctx: Context, job_ids: Sequence[str], rows: Mapping[str, Job] | None = None) -> dict[str, Prepared]:
    """`prepare` for a batch of new jobs, each on its own (one that cannot be prepared fails
    alone) up to the move, which is one statement for all (`rows`: theirs, read together)."""
    found = rows if rows is not None else ctx.store.jobs(job_ids)
    done: dict[str, Prepared] = {}
    ready: dict[str, dict[str, Any]] = {}
    for job_id in dict.fromkeys(job_ids):
        job = found.get(job_id)
        if job is None or job.state != JobState.NEW.value:
            done[job_id] = Prepared(None)
            continue
        written = _write(ctx, job)
        if isinstance(written, Prepared):
            done[job_id] = written
        else:
            ready[job_id] = written
    moved = move_many(ctx, ready, JobState.QUEUED, JobState.NEW)
    for job_id in ready:
        got = moved.get(job_id)
        if got is not None:
            event(log, "state_change", job_id=job_id, to=JobState.QUEUED, queue=got.job.queue)
        done[job_id] = Prepared(got.job if got is not None else None)
    return done


def _write(ctx: Context, job: Job) -> Prepared | dict[str, Any]:
    """The job's directory; then what its move to QUEUED records, or, for a job that ends
    here (reused, or failed to prepare), what became of it."""
    destination = ctx.routing.destinations.get(job.destination)
    root = ctx.settings.jobs_dir / job.id
    try:
        if destination is None:
            raise LookupError(f"destination {job.destination!r} is no longer configured")
        jobdir.create(root, job.command, environment(ctx, job, destination, jobdir.JobDir(root)),
                      job.environment_setup_file, token=job.token)
        staging_tokens = _staging_tokens(ctx, job, destination)
    except (OSError, LookupError, ConfigError) as exc:
        failed = move(ctx, job.id, JobState.ERROR, reason=f"prepare failed: {exc}", sources=_NEW)
        event(log, "state_change", job_id=job.id, to=JobState.ERROR, reason=str(exc))
        return Prepared(None, failed.job if failed is not None else None)
    crash_point("prepare", job.id)
    key = reuse.provenance_key(ctx, job) if job.reuse else None
    if key is not None and (reused := reuse.reuse_earlier(ctx, job, jobdir.JobDir(root), key)) is not None:
        return Prepared(reused)
    return {"job_dir": str(root), "provenance": key, "staging_tokens": staging_tokens}


def _staging_tokens(ctx: Context, job: Job, destination: Destination) -> str | None:
    """The http transfer's tokens (JSON) for a job of a destination that uses it, minted here
    on the submitter's side (the far worker, which reads them with the row, holds no secret)."""
    if destination.staging is None or destination.staging.transfer != "http":
        return None
    settings = ctx.settings
    return tokens.for_job(settings.staging_secret, job.id, job.token or "", settings.staging_token_ttl_in,
                          settings.staging_token_ttl_out)


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
        output_size_bytes=min(filter(None, (ctx.routing.output_size_bytes(job.destination), job.output_size_bytes)),
                              default=None),
        attempt=job.attempt,
        run_as=job.run_as,
        gpus=job.gpus,
        native_specification=job.native_specification,
        rebuild=_rebuild(ctx, job),
    )


def _rebuild(ctx: Context, job: Job) -> Rebuild | None:
    """For a destination that shares no filesystem with the submitter: the job as its worker
    rebuilds it, its environment naming the worker's own copy of the job directory."""
    destination = ctx.routing.destinations.get(job.destination)
    if destination is None or destination.staging is None:
        return None
    local = jobdir.JobDir(Path(destination.staging.root) / job.id)
    return Rebuild(command=job.command, environment=environment(ctx, job, destination, local),
                   setup_file=job.environment_setup_file, token=job.token or "",
                   inputs=tuple(job.inputs or ()), outputs=tuple(job.outputs or ()),
                   returns=tuple(job.returns or ()), rewrite=tuple(job.rewrite or ()),
                   credentials=tokens.parse(job.staging_tokens))
