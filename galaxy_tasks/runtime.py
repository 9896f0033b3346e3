"""What one process holds: its runner instances, one per destination, built on first use.

A worker entry point in `workers/` may add params of its own process (where a DRMAA
worker keeps its session's contact) before the first runner of a kind is built.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

from galaxy_tasks import context, lifecycle, messages
from galaxy_tasks.faults import crash_point
from galaxy_tasks.lifecycle import Finished
from galaxy_tasks.runners import Runner
from galaxy_tasks.runners.base import Completion
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
    if finished.moved is not None and finished.moved.job.workflow_id is not None:
        crash_point("workflow-pass", finished.moved.job.id)  # the end recorded, its dependents not yet created
        for job in schedule.after_end(ctx, finished.moved.job):
            messages.start(job)
    if finished.wake is not None:
        messages.wake(finished.wake)
    messages.wake_jobs(finished.waiting)
    if finished.resubmitted is not None:
        messages.start(finished.resubmitted, countdown=finished.delay_s)
    return finished


def _record_durably(completion: Completion) -> None:
    record_end(completion, confirmed=True)


def close_runners() -> None:
    with _lock:
        for runner in _runners.values():
            runner.close()
        _runners.clear()
