"""The Python client: what the CLI and a Galaxy plugin use to submit and follow jobs."""
from __future__ import annotations

import time
from typing import Iterable, Mapping

from sqlalchemy import func, select

from galaxy_tasks import context, lifecycle
from galaxy_tasks.context import Context
from galaxy_tasks.model import Job, JobStateChange
from galaxy_tasks.spec import JobSpec, parse
from galaxy_tasks.states import TERMINAL, JobState


class Client:
    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or context.current()

    def submit(self, spec: Mapping | JobSpec) -> Job:
        """Validate, record and start a job; a bad spec raises SpecError and records nothing."""
        from galaxy_tasks import tasks

        job, created = lifecycle.accept(self.ctx, spec if isinstance(spec, JobSpec) else parse(spec))
        if created:
            tasks.start(job)
        return job

    def get(self, job_id: str) -> Job:
        """A job by id, or by an unambiguous prefix of at least 4 characters."""
        job = self.ctx.store.get(job_id)
        if job is not None:
            return job
        if len(job_id) >= 4:
            with self.ctx.store.session() as session:
                found = session.scalars(select(Job).where(Job.id.startswith(job_id, autoescape=True)).limit(2)).all()
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise LookupError(f"job id prefix {job_id!r} is ambiguous")
        raise lifecycle.UnknownJob(f"no job {job_id!r}")

    def list(self, state: str | None = None, limit: int = 100) -> list[Job]:
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(Job.state == JobState(state).value)
        with self.ctx.store.session() as session:
            return list(session.scalars(query).all())

    def unfinished(self) -> list[Job]:
        with self.ctx.store.session() as session:
            return list(session.scalars(
                select(Job).where(Job.state.not_in([s.value for s in TERMINAL])).order_by(Job.created_at)
            ).all())

    def history(self, job_id: str) -> list[JobStateChange]:
        with self.ctx.store.session() as session:
            return list(session.scalars(
                select(JobStateChange).where(JobStateChange.job_id == job_id).order_by(JobStateChange.id)
            ).all())

    def last_change_id(self) -> int:
        with self.ctx.store.session() as session:
            return session.scalar(select(func.max(JobStateChange.id))) or 0

    def changes_since(self, after_id: int, job_ids: Iterable[str]) -> list[JobStateChange]:
        """State changes of these jobs recorded after the change `after_id`, oldest first."""
        with self.ctx.store.session() as session:
            return list(session.scalars(
                select(JobStateChange)
                .where(JobStateChange.id > after_id, JobStateChange.job_id.in_(list(job_ids)))
                .order_by(JobStateChange.id)
            ).all())

    def cancel(self, job_id: str) -> JobState:
        """Cancel a job; returns the state it was in. The database changes at once; a runner
        that holds the job is told to stop it."""
        from galaxy_tasks import tasks

        return JobState(tasks.cancel_job(self.get(job_id).id))

    def wait(self, job_ids: Iterable[str], timeout: float | None = None, interval: float = 0.2) -> dict[str, Job]:
        """Wait until every job has ended (or the timeout passes); returns their rows."""
        ids = [self.get(job_id).id for job_id in job_ids]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.ctx.store.session() as session:
                jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids))).all()}
            if all(JobState(job.state) in TERMINAL for job in jobs.values()):
                return jobs
            if deadline is not None and time.monotonic() >= deadline:
                return jobs
            time.sleep(interval)
