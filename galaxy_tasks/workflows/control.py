"""What a user does to a workflow: pause, resume, cancel, rerun. Each is a compare-and-set
move of the workflow's row; what follows (jobs to start, processes to stop) is returned for
the tasks layer or the client to send."""
from __future__ import annotations

import logging

from galaxy_tasks.context import Context
from galaxy_tasks.errors import UnknownJob
from galaxy_tasks.lifecycle.cancel import Cancelled
from galaxy_tasks.lifecycle.cancel import cancel as cancel_job
from galaxy_tasks.lifecycle.effects import Effects
from galaxy_tasks.logs import event
from galaxy_tasks.model import WorkflowRecord, utcnow
from galaxy_tasks.states import JobState
from galaxy_tasks.workflows.schedule import advance, element_job_id
from galaxy_tasks.workflows.states import WorkflowState, sources

log = logging.getLogger(__name__)

#: the states of an element's job that a rerun runs again
RERUN = frozenset({JobState.ERROR.value, JobState.DELETED.value})


class NotMoved(ValueError):
    """The workflow is not in a state this action applies to."""


def find(ctx: Context, workflow_id: str) -> WorkflowRecord:
    """A workflow by id, or by an unambiguous prefix of at least 4 characters."""
    found = ctx.store.workflow(workflow_id)
    if found is not None:
        return found
    if len(workflow_id) >= 4:
        matches = ctx.store.workflow_with_prefix(workflow_id)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise LookupError(f"workflow id prefix {workflow_id!r} is ambiguous")
    raise UnknownJob(f"no workflow {workflow_id!r}")


def pause(ctx: Context, workflow_id: str) -> None:
    """No new job of the workflow starts; the ones created already run to their end."""
    _move(ctx, workflow_id, WorkflowState.PAUSED, "paused")


def resume(ctx: Context, workflow_id: str) -> Effects:
    """Back to running, and a pass over every step: what follows it."""
    return advance(ctx, _move(ctx, workflow_id, WorkflowState.RUNNING, "resumed", only_from=WorkflowState.PAUSED))


def cancel(ctx: Context, workflow_id: str) -> list[Cancelled]:
    """Cancel the workflow and, through the job cancel, each of its jobs not yet ended."""
    found = _move(ctx, workflow_id, WorkflowState.CANCELLED, "cancelled", check_at=None)
    return [cancel_job(ctx, job_id) for job_id in ctx.store.active_workflow_jobs(found)]


def rerun(ctx: Context, workflow_id: str) -> Effects:
    """Run again the elements whose job failed or was cancelled (each gets a new job, in
    the next run of the element), and so what depends on them; elements that ended ok
    keep their jobs and outputs, elements never created are created by the passes as for
    a first run. What follows its first pass."""
    workflow = find(ctx, workflow_id)
    if workflow.state not in (WorkflowState.ERROR.value, WorkflowState.CANCELLED.value):
        raise NotMoved(f"workflow {workflow.id} is {workflow.state}: only a failed or cancelled workflow is rerun")
    again = [(e.step, e.index, e.run + 1, element_job_id(workflow.id, e.step, e.index, e.run + 1))
             for e in ctx.store.elements(workflow.id) if e.job_state in RERUN]
    ctx.store.renew_elements(workflow.id, again)
    _move(ctx, workflow.id, WorkflowState.RUNNING, f"rerun of {len(again)} elements", check_at=utcnow())
    event(log, "workflow_rerun", workflow_id=workflow.id, elements=len(again))
    return advance(ctx, workflow.id)


def _move(ctx: Context, workflow_id: str, target: WorkflowState, reason: str,
          only_from: WorkflowState | None = None, **values: object) -> str:
    workflow = find(ctx, workflow_id)
    allowed = [only_from.value] if only_from is not None else sources(target)
    if not ctx.store.move_workflow(workflow.id, target.value, allowed, reason=reason, **values):
        now = ctx.store.workflow(workflow.id)
        raise NotMoved(f"workflow {workflow.id} is {now.state if now else 'gone'}: cannot be {reason}")
    event(log, "workflow_state_change", workflow_id=workflow.id, to=target, reason=reason)
    return workflow.id
