"""Scheduling: a workflow's elements become jobs as soon as their inputs exist.

A pass runs when a workflow is submitted, when one of its jobs ends (in the step that
records the end), and from reconciliation for a workflow whose pass is due (one a crash
swallowed). A pass reads the elements with their jobs' states and creates the jobs of the
ready ones in multi-row INSERTs; each element's job id is derived from (workflow, step,
index, run), and an id that exists is skipped, so however many passes race, a job is
created once per element.
"""
from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Mapping

from sqlalchemy.exc import IntegrityError

from galaxy_tasks.context import Context
from galaxy_tasks.errors import SpecError
from galaxy_tasks.lifecycle.accept import job_values
from galaxy_tasks.lifecycle.cancel import cancel
from galaxy_tasks.logs import event
from galaxy_tasks.model import ElementRecord, Job, StepRecord, WorkflowRecord, utcnow
from galaxy_tasks.spec import parse
from galaxy_tasks.states import ACTIVE, JobState
from galaxy_tasks.workflows.document import EACH, WorkflowError, parse_workflow, render
from galaxy_tasks.workflows.states import WorkflowState, sources

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("5b0f3d4e-8a57-4c39-9d1e-2f6b7a0c9e11")
_ACTIVE = frozenset(state.value for state in ACTIVE)
_OK = JobState.OK.value


def element_job_id(workflow_id: str, step: str, index: int, run: int) -> str:
    """The id of an element's job in one run of it: the same for every pass."""
    return str(uuid.uuid5(_NAMESPACE, f"{workflow_id}/{step}/{index}/{run}"))


def submit(ctx: Context, data: Any, unnamed_id: str | None = None) -> tuple[WorkflowRecord, list[Job]]:
    """Check and record a workflow, then create the jobs of the steps that need nothing.
    A refused workflow raises WorkflowError and nothing is recorded. `unnamed_id`: the id
    of a workflow without one (see lifecycle.accept), else a new one."""
    workflow = parse_workflow(data, ctx.settings.workflow_max_jobs)
    named = workflow.id or unnamed_id
    workflow_id = named or str(uuid.uuid4())
    if named is not None and (known := _known(ctx, workflow_id, workflow.name)) is not None:
        return known, []  # a duplicated submission: the workflow is recorded once
    now = utcnow()
    values = dict(id=workflow_id, name=workflow.name, user=workflow.user, state=WorkflowState.RUNNING.value,
                  document=workflow.document, reason=None, created_at=now, updated_at=now,
                  check_at=now + timedelta(seconds=ctx.settings.check_after))
    steps = [dict(workflow_id=workflow_id, name=step.name, position=position, elements=len(step.elements),
                  spec=step.spec, needs=step.needs) for position, step in enumerate(workflow.steps)]

    def elements() -> Iterator[dict[str, Any]]:
        for step in workflow.steps:
            for index, params in enumerate(step.elements):
                yield dict(workflow_id=workflow_id, step=step.name, index=index, run=1,
                           params={k: v for k, v in params.items() if k != "fanned"},
                           job_id=element_job_id(workflow_id, step.name, index, 1))

    try:
        ctx.store.create_workflow(values, steps, elements())
    except IntegrityError:
        known = _known(ctx, workflow_id, workflow.name)
        if known is None:
            raise
        return known, []
    event(log, "workflow_submitted", workflow_id=workflow_id, workflow=workflow.name, steps=len(steps))
    record = ctx.store.workflow(workflow_id)
    assert record is not None
    return record, advance(ctx, workflow_id)


def _known(ctx: Context, workflow_id: str, name: str) -> WorkflowRecord | None:
    known = ctx.store.workflow(workflow_id)
    if known is not None and known.name != name:
        raise WorkflowError("id", f"workflow id {workflow_id!r} is already used by another workflow")
    return known


def after_end(ctx: Context, job: Job) -> list[Job]:
    """The pass that follows the end of a workflow's job: only the elements that need its
    element (the one of the same index in a `foreach` step, every one in a step that needs
    all of its step)."""
    if job.workflow_id is None:
        return []
    found = ctx.store.element_of(job.id)
    return advance(ctx, job.workflow_id, (found[1], found[2]) if found is not None else None)


def overdue(ctx: Context) -> list[Job]:
    """Reconciliation's passes over running workflows whose pass is due: a pass that a crash
    swallowed (a job ended, its dependents never created) is made good here."""
    settings = ctx.settings
    created: list[Job] = []
    for workflow_id in ctx.store.take_due_workflows([WorkflowState.RUNNING.value], utcnow(),
                                                    settings.reconcile_batch, settings.check_after):
        created += advance(ctx, workflow_id)
    return created


def advance(ctx: Context, workflow_id: str, ended: tuple[str, int] | None = None) -> list[Job]:
    """One scheduling pass: the jobs it created (to be started). `ended`: the (step, index)
    of the element whose job just ended, to look only at what needs it; a pass that finds
    nothing of the workflow left running looks at every step before it ends the workflow."""
    if ctx.store.workflow_state(workflow_id) != WorkflowState.RUNNING.value:
        return []
    user, steps = _steps(ctx, workflow_id)
    created: list[Job] = []
    try:
        if ended is None:
            created = _create_ready(ctx, workflow_id, user, steps, _by_step(ctx.store.elements(workflow_id)))
        else:
            for step in steps:
                if ended[0] in step.needs:
                    created += _create_ready(ctx, workflow_id, user, [step], _needed(ctx, workflow_id, step, ended))
    except SpecError as exc:
        ctx.store.move_workflow(workflow_id, WorkflowState.ERROR.value, sources(WorkflowState.ERROR), reason=str(exc))
        event(log, "workflow_refused_step", level=logging.ERROR, workflow_id=workflow_id, error=str(exc))
        return []
    if created or ctx.store.has_active_jobs(workflow_id):
        return created
    if ended is not None:
        return advance(ctx, workflow_id)
    _end(ctx, workflow_id, ctx.store.element_counts(workflow_id))
    return []


#: the steps of recent workflows, and their users: neither changes once recorded
_STEPS: OrderedDict[tuple[str, str], tuple[str | None, list[StepRecord]]] = OrderedDict()
_STEPS_KEPT = 256


def _steps(ctx: Context, workflow_id: str) -> tuple[str | None, list[StepRecord]]:
    key = (ctx.store.url, workflow_id)
    found = _STEPS.get(key)
    if found is None:
        workflow = ctx.store.workflow(workflow_id)
        found = (workflow.user if workflow else None, ctx.store.steps(workflow_id))
        _STEPS[key] = found
        while len(_STEPS) > _STEPS_KEPT:
            _STEPS.popitem(last=False)
    return found


def _needed(ctx: Context, workflow_id: str, step: StepRecord, ended: tuple[str, int]) -> Grouped:
    """The elements a pass after `ended` must read for `step`: the one of the same index
    (and of the steps it needs each of) if it needs the ended step element by element,
    else all of them; every element of the steps it needs all of."""
    each = [step.name] + [name for name, how in step.needs.items() if how == EACH]
    whole = [name for name, how in step.needs.items() if how != EACH]
    if step.needs[ended[0]] == EACH:
        rows = ctx.store.elements(workflow_id, each, ended[1])
    else:
        rows = ctx.store.elements(workflow_id, each)
    return _by_step(rows + (ctx.store.elements(workflow_id, whole) if whole else []))


Grouped = dict[str, dict[int, ElementRecord]]


def _by_step(elements: list[ElementRecord]) -> Grouped:
    grouped: Grouped = {}
    for element in elements:
        grouped.setdefault(element.step, {})[element.index] = element
    return grouped


def _create_ready(ctx: Context, workflow_id: str, user: str | None, candidates: list[StepRecord],
                  grouped: Grouped) -> list[Job]:
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for step in candidates:
        if not all(all(e.job_state == _OK for e in grouped.get(other, {}).values())
                   for other, how in step.needs.items() if how != EACH):
            continue
        for element in grouped.get(step.name, {}).values():
            if element.job_state is not None:
                continue
            if not all(grouped[other][element.index].job_state == _OK
                       for other, how in step.needs.items() if how == EACH):
                continue
            rows.append(_job_row(ctx, workflow_id, user, step, element, grouped, now))
    if not rows:
        return []
    made = ctx.store.create_jobs(rows)
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


def _job_row(ctx: Context, workflow_id: str, user: str | None, step: StepRecord, element: ElementRecord,
             grouped: Grouped, now: Any) -> dict[str, Any]:
    def resolve(other: str, output: str) -> list[str]:
        if step.needs.get(other) == EACH:
            producers = [grouped[other][element.index]]
        else:
            producers = [grouped[other][index] for index in sorted(grouped[other])]
        return [str(Path(p.job_dir or ctx.settings.jobs_dir / p.job_id) / "working" / output) for p in producers]

    filled = render(step.spec, {**element.params, "index": element.index}, resolve)
    if user and not filled.get("user"):
        filled["user"] = user
    try:
        spec = parse(filled)
    except SpecError as exc:
        raise SpecError(f"steps.{step.name}[{element.index}].spec.{exc.field}", exc.message) from None
    return {**job_values(ctx, spec, element.job_id, now), "workflow_id": workflow_id}


def _end(ctx: Context, workflow_id: str, counts: Mapping[str, Mapping[str, int]]) -> None:
    """Nothing is running and nothing more can start: ok if every element is, else error."""
    failed = {step: n for step, per in counts.items() if (n := sum(c for s, c in per.items() if s != _OK))}
    target = WorkflowState.ERROR if failed else WorkflowState.OK
    reason = ("steps not completed: " + ", ".join(f"{step} ({n})" for step, n in failed.items())) if failed else None
    if ctx.store.move_workflow(workflow_id, target.value, sources(target), reason=reason, check_at=None):
        event(log, "workflow_ended", workflow_id=workflow_id, state=target, reason=reason)
