"""Scheduling: a workflow's elements become jobs as soon as their inputs exist.

A pass runs when a workflow is submitted, when one of its jobs ends (in the step that
records the end), from reconciliation for a workflow whose pass is due (one a crash
swallowed), and as a continuation (`advance_workflow`) of a pass that stopped at its bound.
No element is built at submit: a pass finds the ready elements in SQL (each step's elements
are indexes 0 to its size; one without a row is waiting), computes each one's parameters
from its step's `fan` and index, and writes at most GALAXY_TASKS_WORKFLOW_PASS_MOST (1,000)
elements and their jobs in multi-row INSERTs. Each element's job id is derived from (workflow, step, index, run), and
an id that exists is skipped, so however many passes race, a job is created once per
element. A pass that leaves ready elements sends the next one and sets the workflow's
check_at to now, so reconciliation runs it if that message is lost.
"""
from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from sqlalchemy.exc import IntegrityError

from galaxy_tasks.context import Context
from galaxy_tasks.errors import SpecError
from galaxy_tasks.faults import crash_point
from galaxy_tasks.lifecycle.accept import job_values
from galaxy_tasks.lifecycle.cancel import cancel
from galaxy_tasks.lifecycle.effects import NOTHING, Effects
from galaxy_tasks.logs import event
from galaxy_tasks.model import ElementRecord, Job, StepRecord, WorkflowRecord, utcnow
from galaxy_tasks.spec import parse
from galaxy_tasks.states import JobState
from galaxy_tasks.workflows.document import EACH, WorkflowError, params, parse_workflow, render
from galaxy_tasks.workflows.states import WorkflowState, sources

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("5b0f3d4e-8a57-4c39-9d1e-2f6b7a0c9e11")
_OK = JobState.OK.value


def element_job_id(workflow_id: str, step: str, index: int, run: int) -> str:
    """The id of an element's job in one run of it: the same for every pass."""
    return str(uuid.uuid5(_NAMESPACE, f"{workflow_id}/{step}/{index}/{run}"))


def submit(ctx: Context, data: Any, unnamed_id: str | None = None) -> tuple[WorkflowRecord, Effects]:
    """Check and record a workflow and its steps (no element: each step's size was checked
    before anything was built), then run its first pass; what follows it. A refused
    workflow raises WorkflowError and nothing is recorded. `unnamed_id`: the id of a
    workflow without one (see lifecycle.accept), else a new one."""
    workflow = parse_workflow(data, ctx.settings.workflow_max_jobs)
    named = workflow.id or unnamed_id
    workflow_id = named or str(uuid.uuid4())
    if named is not None and (known := _known(ctx, workflow_id, workflow.name)) is not None:
        return known, NOTHING  # a duplicated submission: the workflow is recorded once
    now = utcnow()
    values = dict(id=workflow_id, name=workflow.name, user=workflow.user, state=WorkflowState.RUNNING.value,
                  document=workflow.document, reason=None, created_at=now, updated_at=now,
                  check_at=now + timedelta(seconds=ctx.settings.check_after))
    steps = [dict(workflow_id=workflow_id, name=step.name, position=position, elements=step.size,
                  spec=step.spec, needs=step.needs, fan=step.fan) for position, step in enumerate(workflow.steps)]
    crash_point("workflow-submit", workflow_id)  # checked, not yet recorded
    try:
        ctx.store.create_workflow(values, steps)
    except IntegrityError:
        known = _known(ctx, workflow_id, workflow.name)
        if known is None:
            raise
        return known, NOTHING
    event(log, "workflow_submitted", workflow_id=workflow_id, workflow=workflow.name, steps=len(steps),
          elements=sum(step.size for step in workflow.steps))
    record = ctx.store.workflow(workflow_id)
    assert record is not None
    return record, advance(ctx, workflow_id)


def _known(ctx: Context, workflow_id: str, name: str) -> WorkflowRecord | None:
    known = ctx.store.workflow(workflow_id)
    if known is not None and known.name != name:
        raise WorkflowError("id", f"workflow id {workflow_id!r} is already used by another workflow")
    return known


def after_end(ctx: Context, job: Job) -> Effects:
    """The pass that follows the end of a workflow's job: only the elements that need its
    element (the one of the same index in a `foreach` step, every one in a step that needs
    all of its step)."""
    if job.workflow_id is None:
        return NOTHING
    found = ctx.store.element_of(job.id)
    return advance(ctx, job.workflow_id, (found[1], found[2]) if found is not None else None)


def overdue(ctx: Context) -> Effects:
    """Reconciliation's passes over running workflows whose pass is due: a pass that a crash
    swallowed (a job ended, its dependents never created), or a continuation whose message
    was lost, is made good here."""
    settings = ctx.settings
    follows = NOTHING
    for workflow_id in ctx.store.take_due_workflows([WorkflowState.RUNNING.value], utcnow(),
                                                    settings.reconcile_batch, settings.check_after):
        follows += advance(ctx, workflow_id)
    return follows


def advance(ctx: Context, workflow_id: str, ended: tuple[str, int] | None = None) -> Effects:
    """One scheduling pass, of at most `workflow_pass_most` elements: the jobs it created
    (to be started) and, if ready elements are left, the workflow's next pass. `ended`: the (step,
    index) of the element whose job just ended, to look only at what needs it; a pass that
    finds nothing of the workflow left running looks at every step before it ends the
    workflow."""
    if ctx.store.workflow_state(workflow_id) != WorkflowState.RUNNING.value:
        return NOTHING
    user, steps = _steps(ctx, workflow_id)
    candidates = steps if ended is None else [step for step in steps if ended[0] in step.needs]
    try:
        planned, more = _ready(ctx, workflow_id, steps, candidates, ended)
        created = _create(ctx, workflow_id, user, planned)
    except SpecError as exc:
        ctx.store.move_workflow(workflow_id, WorkflowState.ERROR.value, sources(WorkflowState.ERROR), reason=str(exc))
        event(log, "workflow_refused_step", level=logging.ERROR, workflow_id=workflow_id, error=str(exc))
        return NOTHING
    if more:
        ctx.store.push_check(workflow_id, utcnow())
        return Effects(start=created, advance=[workflow_id])
    if created or ctx.store.has_active_jobs(workflow_id):
        return Effects(start=created)
    if ended is not None:
        return advance(ctx, workflow_id)
    _end(ctx, workflow_id, ctx.store.element_counts(workflow_id))
    return NOTHING


#: the steps of recent workflows, and their users: neither changes once recorded. A step
#: keeps its map's values or its sweep's grid (its `fan`), so the cache is bounded by those
#: values too, not only by workflows.
_STEPS: OrderedDict[tuple[str, str], tuple[str | None, list[StepRecord]]] = OrderedDict()
_STEPS_KEPT = 256
_VALUES_KEPT = 1_000_000
_values: dict[tuple[str, str], int] = {}


def _steps(ctx: Context, workflow_id: str) -> tuple[str | None, list[StepRecord]]:
    key = (ctx.store.url, workflow_id)
    found = _STEPS.get(key)
    if found is None:
        workflow = ctx.store.workflow(workflow_id)
        found = (workflow.user if workflow else None, ctx.store.steps(workflow_id))
        _STEPS[key] = found
        _values[key] = sum(_kept_values(step.fan or {}) for step in found[1])
        while len(_STEPS) > 1 and (len(_STEPS) > _STEPS_KEPT or sum(_values.values()) > _VALUES_KEPT):
            _values.pop(_STEPS.popitem(last=False)[0], None)
    return found


def _kept_values(fan: Mapping[str, Any]) -> int:
    return len(fan.get("map", ())) + sum(len(values) for values in fan.get("sweep", {}).values())


Planned = list[tuple[StepRecord, ElementRecord]]


def _ready(ctx: Context, workflow_id: str, steps: list[StepRecord], candidates: list[StepRecord],
           ended: tuple[str, int] | None) -> tuple[Planned, bool]:
    """The elements of `candidates` whose needs have all ended ok and that have no job yet,
    at most `workflow_pass_most`, and whether more are ready. A step needed whole is done
    when as many of its elements' jobs are ok as it has elements; a step needed element by
    element is looked at in SQL, only at the ended index after an end of its element."""
    size = {step.name: step.elements for step in steps}
    fans = {step.name: step.fan or {} for step in steps}
    planned: Planned = []
    for step in candidates:
        whole = [other for other, how in step.needs.items() if how != EACH]
        if whole and any(ctx.store.ok_elements(workflow_id, other) < size[other] for other in whole):
            continue
        source = next((other for other, how in step.needs.items() if how == EACH), None)
        left = ctx.settings.workflow_pass_most - len(planned)
        if source is None:
            found = ctx.store.waiting_elements(workflow_id, step.name, step.elements, left + 1)
        else:
            only = ended[1] if ended is not None and source == ended[0] else None
            found = ctx.store.waiting_after(workflow_id, step.name, step.elements, left + 1, source, only)
        planned += [(step, element or _unwritten(workflow_id, step, index, fans)) for index, element in found[:left]]
        if len(found) > left:
            return planned, True
    return planned, False


def _unwritten(workflow_id: str, step: StepRecord, index: int, fans: Mapping[str, Mapping[str, Any]]) -> ElementRecord:
    """An element that has no row yet, computed from its step: its first run."""
    fan = fans[step.name]
    computed = params(fans[fan["foreach"]] if "foreach" in fan else fan, index)
    return ElementRecord(step=step.name, index=index, params=computed, run=1,
                         job_id=element_job_id(workflow_id, step.name, index, 1), job_state=None, job_dir=None)


def _create(ctx: Context, workflow_id: str, user: str | None, planned: Planned) -> list[Job]:
    """The planned elements' rows and jobs, each created once (an element or job id that
    exists is skipped): the jobs created now."""
    if not planned:
        return []
    now = utcnow()
    producers = _Producers(ctx, workflow_id, planned)
    elements: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for step, element in planned:
        elements.append(dict(workflow_id=workflow_id, step=step.name, index=element.index, params=element.params,
                             run=element.run, job_id=element.job_id))
        rows.append(_job_row(ctx, workflow_id, user, step, element, producers, now))
    made = ctx.store.create_jobs(rows, elements)
    jobs = [Job.from_row(row) for row in rows if row["id"] in made]
    for job in jobs:
        ctx.announce(job)
    if jobs:
        event(log, "workflow_jobs_created", workflow_id=workflow_id, jobs=len(jobs))
    if ctx.store.workflow_state(workflow_id) == WorkflowState.CANCELLED.value:
        for job in jobs:  # cancelled while this pass created them: they never start
            cancel(ctx, job.id)
        return []
    return jobs


class _Producers:
    """The elements whose outputs a pass's references name, read once per pass and only if
    a spec refers to them: every element of a step needed whole, the planned indexes of a
    step needed element by element."""

    def __init__(self, ctx: Context, workflow_id: str, planned: Planned) -> None:
        self.ctx, self.workflow_id = ctx, workflow_id
        self.indexes = sorted({element.index for _, element in planned})
        self.read: dict[tuple[str, bool], dict[int, ElementRecord]] = {}

    def of(self, step: str, whole: bool) -> dict[int, ElementRecord]:
        if (step, whole) not in self.read:
            found = self.ctx.store.elements(self.workflow_id, [step], indexes=None if whole else self.indexes)
            self.read[(step, whole)] = {element.index: element for element in found}
        return self.read[(step, whole)]


def _job_row(ctx: Context, workflow_id: str, user: str | None, step: StepRecord, element: ElementRecord,
             producers: _Producers, now: Any) -> dict[str, Any]:
    def resolve(other: str, output: str) -> list[str]:
        if step.needs.get(other) == EACH:
            found = [producers.of(other, False)[element.index]]
        else:
            whole = producers.of(other, True)
            found = [whole[index] for index in sorted(whole)]
        return [str(Path(p.job_dir or ctx.settings.jobs_dir / p.job_id) / "working" / output) for p in found]

    filled = render(step.spec, {**element.params, "index": element.index}, resolve)
    if user and not filled.get("user"):
        filled["user"] = user
    try:
        spec = parse(filled)
    except SpecError as exc:
        raise SpecError(f"steps.{step.name}[{element.index}].spec.{exc.field}", exc.message) from None
    return {**job_values(ctx, spec, element.job_id, now), "workflow_id": workflow_id}


def _end(ctx: Context, workflow_id: str, counts: Mapping[str, Mapping[str, int]]) -> None:
    """Nothing is running and nothing more can start: ok if every element is (an element
    without a row yet is `waiting`: not ok), else error."""
    failed = {step: n for step, per in counts.items() if (n := sum(c for s, c in per.items() if s != _OK))}
    target = WorkflowState.ERROR if failed else WorkflowState.OK
    reason = ("steps not completed: " + ", ".join(f"{step} ({n})" for step, n in failed.items())) if failed else None
    if ctx.store.move_workflow(workflow_id, target.value, sources(target), reason=reason, check_at=None):
        event(log, "workflow_ended", workflow_id=workflow_id, state=target, reason=reason)
