"""The Python client: what the CLI and embedded runs use to submit and follow jobs."""
from __future__ import annotations

import builtins
import logging
import time
from typing import Any, Callable, Iterable, Mapping

from kombu.exceptions import OperationalError

from galaxy_tasks import events, lifecycle
from galaxy_tasks.context import Context
from galaxy_tasks.edge import messages, runtime
from galaxy_tasks.edge.listen import JobEvents
from galaxy_tasks.errors import NotSent, SpecError, UnknownJob
from galaxy_tasks.lifecycle import Effects
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, StateChange, WorkflowRecord
from galaxy_tasks.spec import JobSpec, parse
from galaxy_tasks.states import TERMINAL, JobState
from galaxy_tasks.workflows import control, schedule
from galaxy_tasks.workflows.states import ENDED

log = logging.getLogger(__name__)

#: what a publish raises when the broker cannot be reached
BROKER_ERRORS = (OSError, OperationalError)

#: seconds between looks at the rows of the jobs a `wait` still waits for, in case an event
#: was lost (the events themselves end a wait at once)
RECHECK_S = 10.0
TERMINAL_NAMES = frozenset(state.value for state in TERMINAL)
#: the shortest time between two reads of a workflow's element states while waiting
REFRESH_S = 0.2


class Client:
    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or runtime.context()

    def submit(self, spec: Mapping[str, object] | JobSpec) -> Job:
        """Validate, record and start a job; a bad spec raises SpecError and records nothing."""
        accepted = lifecycle.accept(self.ctx, spec if isinstance(spec, JobSpec) else parse(spec))
        try:
            messages.carry_out(self.ctx, accepted.effects)
        except BROKER_ERRORS as exc:
            raise NotSent(accepted.job, exc) from exc
        return accepted.job

    def submit_many(self, specs: Iterable[Mapping[str, object] | JobSpec]) -> builtins.list[Job]:
        """Validate, record and start many jobs at once (one INSERT and, on the workers, one
        prepare and one launch message per batch of them); every spec is checked before
        anything is recorded: a bad one raises SpecError naming its place in the list."""
        parsed = []
        for at, spec in enumerate(specs):
            try:
                parsed.append(spec if isinstance(spec, JobSpec) else parse(spec))
            except SpecError as exc:
                raise SpecError(f"specs[{at}].{exc.field}", exc.message) from None
        accepted = lifecycle.accept_many(self.ctx, parsed)
        created = [item.job for item in accepted if item.created]
        self._start(created)
        return [item.job for item in accepted]

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
        cancelled = lifecycle.cancel(self.ctx, self.get(job_id).id)
        messages.carry_out(self.ctx, cancelled.effects)
        return cancelled.before

    def wait(self, job_ids: Iterable[str], timeout: float | None = None,
             on_event: Callable[[dict[str, Any]], None] | None = None,
             on_listening: Callable[[int], None] | None = None) -> dict[str, Job]:
        """Wait until every job has ended (or the timeout passes); returns their rows.

        It hears the jobs' events as they happen (listening before it reads the rows, so
        nothing falls between), and reads the rows of the jobs still pending only every
        RECHECK_S seconds, in case a broadcast event was lost. `on_event` is called with
        each job's event: first the one of its row as the wait begins, then each one heard,
        and the one of its row when a recheck finds it ended unheard. `on_listening` is called
        with the number of jobs still pending once the events are heard and the rows read."""
        ids = [self.get(job_id).id for job_id in job_ids]
        deadline = None if timeout is None else time.monotonic() + timeout
        with JobEvents() as heard:
            jobs = self.ctx.store.jobs(ids)
            if on_event is not None:
                for job in jobs.values():
                    on_event(events.state_event(job))
            pending = {job_id for job_id, job in jobs.items() if JobState(job.state) not in TERMINAL}
            if on_listening is not None:
                on_listening(len(pending))
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

    # -- workflows (docs/workflows.md) ---------------------------------------------------

    def submit_workflow(self, document: Mapping[str, Any]) -> WorkflowRecord:
        """Check, record and start a workflow; a refused one raises WorkflowError (a
        SpecError naming the step) and records nothing."""
        workflow, follows = schedule.submit(self.ctx, document)
        self._follow(follows)
        return workflow

    def workflow(self, workflow_id: str) -> WorkflowRecord:
        """A workflow by id, or by an unambiguous prefix of at least 4 characters."""
        return control.find(self.ctx, workflow_id)

    def workflows(self, limit: int = 100) -> builtins.list[WorkflowRecord]:
        return self.ctx.store.recent_workflows(limit)

    def workflow_status(self, workflow_id: str) -> dict[str, Any]:
        """The workflow, each step with its element count and the count in each state
        (`waiting`: no job yet), and its history."""
        workflow = self.workflow(workflow_id)
        counts = self.ctx.store.element_counts(workflow.id)
        steps = [{"name": step.name, "elements": step.elements, "needs": step.needs,
                  "states": counts.get(step.name, {})} for step in self.ctx.store.steps(workflow.id)]
        total: dict[str, int] = {}
        for per_step in counts.values():
            for state, count in per_step.items():
                total[state] = total.get(state, 0) + count
        return {"id": workflow.id, "name": workflow.name, "state": workflow.state, "reason": workflow.reason,
                "user": workflow.user, "created_at": workflow.created_at.isoformat(), "states": total, "steps": steps,
                "history": [{**change, "at": change["at"].isoformat()}
                            for change in self.ctx.store.workflow_history(workflow.id)]}

    def element_states(self, workflow_id: str) -> dict[str, str]:
        """`step[index]` -> the state of its job (`waiting`: not yet created)."""
        states = {f"{e.step}[{e.index}]": e.job_state or "waiting" for e in self.ctx.store.elements(workflow_id)}
        for step in self.ctx.store.steps(workflow_id):
            for index in range(step.elements):
                states.setdefault(f"{step.name}[{index}]", "waiting")
        return states

    def pause_workflow(self, workflow_id: str) -> None:
        control.pause(self.ctx, workflow_id)

    def resume_workflow(self, workflow_id: str) -> None:
        self._follow(control.resume(self.ctx, workflow_id))

    def rerun_workflow(self, workflow_id: str) -> int:
        """Rerun what failed or was cancelled; returns how many jobs started at once."""
        follows = control.rerun(self.ctx, workflow_id)
        self._follow(follows)
        return len(follows.start)

    def cancel_workflow(self, workflow_id: str) -> int:
        """Cancel the workflow and its jobs not yet ended; returns how many were cancelled."""
        cancelled = control.cancel(self.ctx, workflow_id)
        for each in cancelled:
            messages.carry_out(self.ctx, each.effects)
        return len(cancelled)

    def wait_workflow(self, workflow_id: str, timeout: float | None = None,
                      on_states: Callable[[dict[str, str]], None] | None = None) -> WorkflowRecord:
        """Wait until the workflow has ended (or is paused, or the timeout passes). The
        elements' states are read again when one of its jobs' events is heard (at most
        every REFRESH_S), a second after the last event heard (the workflow's own end is
        recorded just after its last job's), or after RECHECK_S of quiet in case an event
        was lost."""
        workflow = self.workflow(workflow_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        quiet = RECHECK_S
        with JobEvents() as heard:
            while True:
                if on_states is not None:
                    on_states(self.element_states(workflow.id))
                workflow = self.workflow(workflow.id)
                if workflow.state in ENDED or workflow.state == "paused":
                    return workflow
                left = quiet if deadline is None else min(quiet, deadline - time.monotonic())
                if left <= 0:
                    return workflow
                got = heard.next(left)
                quiet = 1.0 if got else RECHECK_S
                if got:
                    time.sleep(REFRESH_S)

    def _follow(self, follows: Effects) -> None:
        """A workflow pass's jobs started, and its next pass sent if it left ready elements
        (a next pass not sent is reconciliation's: the pass made the workflow due)."""
        self._start(builtins.list(follows.start))
        try:
            messages.carry_out(self.ctx, Effects(advance=follows.advance))
        except BROKER_ERRORS as exc:
            event(log, "workflow_pass_not_sent", level=logging.WARNING, workflow_id=follows.advance[0], error=str(exc))

    def _start(self, created: builtins.list[Job]) -> None:
        try:
            messages.start_all(self.ctx, created)
        except BROKER_ERRORS as exc:  # recorded: a starting steps worker or reconciliation sends it
            raise NotSent(created[0], exc) from exc
