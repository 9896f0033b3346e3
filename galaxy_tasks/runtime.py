"""What one process holds: its runner instances, one per destination, built on first use.

A worker entry point in `workers/` may add params of its own process (where a DRMAA
worker keeps its session's contact) before the first runner of a kind is built.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

from galaxy_tasks import context, lifecycle, messages
from galaxy_tasks.context import Context
from galaxy_tasks.faults import crash_point
from galaxy_tasks.lifecycle import Finished
from galaxy_tasks.model import Job
from galaxy_tasks.runners import Runner
from galaxy_tasks.runners.base import Completion
from galaxy_tasks.states import JobState
from galaxy_tasks.workflows import schedule

_runners: dict[str, Runner] = {}
_lock = threading.Lock()
_process_params: dict[str, dict[str, Any]] = {}


def add_runner_params(runner: str, **params: Any) -> None:
    """Params of this process, given over the destination's to every runner of this kind
    built from now on."""
    with _lock:
        _process_params.setdefault(runner, {}).update(params)


def runner_for(destination: str) -> Runner:
    """This process's runner for a destination."""
    with _lock:
        if destination not in _runners:
            ctx = context.current()
            spec = ctx.routing.destinations[destination]
            params = dataclasses.replace(spec.params, **_process_params.get(spec.runner, {}))
            cls = spec.runner_class
            report = _record_durably if cls.durable_report else messages.report_end
            _runners[destination] = cls(params, report, destination=destination, host=ctx.settings.host)
        return _runners[destination]


def record_end(completion: Completion, confirmed: bool = False) -> Finished:
    """Record a job's end, then send what follows from it. The finish step runs this (its
    message a hint, checked against the job's directory); so does a runner's own answer in
    this process (`confirmed`): a reconciliation check, a runner whose events are durable."""
    ctx = context.current()
    finished = lifecycle.finish(ctx, completion, confirmed)
    ended = finished.moved.job if finished.moved is not None else finished.ended_before
    if ended is not None and ended.workflow_id is not None:
        # a repeated end passes again: the pass of the first may have died before it created
        # the dependents (a pass creates each element's job once, whoever runs it)
        crash_point("workflow-pass", ended.id)  # the end recorded, its dependents not yet created
        after_end(ctx, ended)
    if finished.wake is not None:
        messages.wake(finished.wake)
    messages.wake_jobs(finished.waiting)
    if finished.resubmitted is not None:
        messages.start(finished.resubmitted, countdown=finished.delay_s)
    return finished


def after_end(ctx: Context, job: Job) -> None:
    """Start what a workflow's job ending (or being cancelled) lets start."""
    for created in schedule.after_end(ctx, job):
        messages.start(created)


def after_cancel(ctx: Context, job_id: str) -> None:
    """A workflow's job cancelled on its own: the pass decides what that leaves of the
    workflow (its dependents cannot start; the workflow ends when nothing else runs)."""
    job = ctx.store.job(job_id)
    if job is not None and job.workflow_id is not None and job.state == JobState.DELETED.value:
        after_end(ctx, job)


def _record_durably(completion: Completion) -> None:
    record_end(completion, confirmed=True)


def close_runners() -> None:
    with _lock:
        for runner in _runners.values():
            runner.close()
        _runners.clear()
