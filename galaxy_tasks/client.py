"""The Python client: what the CLI and embedded runs use to submit and follow jobs."""
from __future__ import annotations

import builtins
import time
from typing import Any, Callable, Iterable, Mapping

from kombu.exceptions import OperationalError

from galaxy_tasks import context, events, lifecycle, messages
from galaxy_tasks.context import Context
from galaxy_tasks.errors import NotSent, UnknownJob
from galaxy_tasks.listen import JobEvents
from galaxy_tasks.model import Job, StateChange
from galaxy_tasks.spec import JobSpec, parse
from galaxy_tasks.states import TERMINAL, JobState

#: what a publish raises when the broker cannot be reached
BROKER_ERRORS = (OSError, OperationalError)

#: seconds between looks at the rows of the jobs a `wait` still waits for, in case an event
#: was lost (the events themselves end a wait at once)
RECHECK_S = 10.0
TERMINAL_NAMES = frozenset(state.value for state in TERMINAL)


class Client:
    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or context.current()

    def submit(self, spec: Mapping[str, object] | JobSpec) -> Job:
        """Validate, record and start a job; a bad spec raises SpecError and records nothing."""
        job, created = lifecycle.accept(self.ctx, spec if isinstance(spec, JobSpec) else parse(spec))
        if created:
            try:
                messages.start(job)
            except BROKER_ERRORS as exc:
                raise NotSent(job, exc) from exc
        return job

    def get(self, job_id: str) -> Job:
        """A job by id, or by an unambiguous prefix of at least 4 characters."""
        job = self.ctx.store.job(job_id)
        if job is not None:
            return job
        if len(job_id) >= 4:
            found = self.ctx.store.with_prefix(job_id)
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise LookupError(f"job id prefix {job_id!r} is ambiguous")
        raise UnknownJob(f"no job {job_id!r}")

    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[Job]:
        return self.ctx.store.recent(JobState(state) if state is not None else None, limit)

    def unfinished(self) -> builtins.list[Job]:
        return self.ctx.store.unfinished()

    def history(self, job_id: str) -> builtins.list[StateChange]:
        return self.ctx.store.history(job_id)

    def last_change_id(self) -> int:
        return self.ctx.store.last_change_id()

    def changes_since(self, after_id: int, job_ids: Iterable[str]) -> builtins.list[StateChange]:
        """State changes of these jobs recorded after the change `after_id`, oldest first."""
        return self.ctx.store.changes_since(after_id, job_ids)

    def cancel(self, job_id: str) -> JobState:
        """Cancel a job; returns the state it was in. The database changes at once; a runner
        that holds the job is told to stop it."""
        before, stop, woken = lifecycle.cancel(self.ctx, self.get(job_id).id)
        if stop is not None:
            messages.kill(stop)
        messages.wake_jobs(woken)
        return before

    def wait(self, job_ids: Iterable[str], timeout: float | None = None,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Job]:
        """Wait until every job has ended (or the timeout passes); returns their rows.

        It hears the jobs' events as they happen (listening before it reads the rows, so
        nothing falls between), and reads the rows of the jobs still pending only every
        RECHECK_S seconds, in case a broadcast event was lost. `on_event` is called with
        each job's event: first the one of its row as the wait begins, then each one heard,
        and the one of its row when a recheck finds it ended unheard."""
        ids = [self.get(job_id).id for job_id in job_ids]
        deadline = None if timeout is None else time.monotonic() + timeout
        with JobEvents() as heard:
            jobs = self.ctx.store.jobs(ids)
            if on_event is not None:
                for job in jobs.values():
                    on_event(events.state_event(job))
            pending = {job_id for job_id, job in jobs.items() if JobState(job.state) not in TERMINAL}
            while pending:
                left = RECHECK_S if deadline is None else min(RECHECK_S, deadline - time.monotonic())
                if left <= 0:
                    break
                got = heard.next(left)
                for item in got:
                    if item.get("job_id") in pending:
                        if on_event is not None:
                            on_event(item)
                        if item.get("state") in TERMINAL_NAMES:
                            pending.discard(item["job_id"])
                if not got:  # quiet for a while: has anything ended that we did not hear of?
                    for job_id, job in self.ctx.store.jobs(pending).items():
                        if JobState(job.state) in TERMINAL:
                            pending.discard(job_id)
                            if on_event is not None:
                                on_event(events.state_event(job))
        return self.ctx.store.jobs(ids)
