"""What one process holds: its context (settings, store, routing, the announcer of job
events), built once from the environment, and its runner instances, one per destination,
built on first use.

A worker entry point in `workers/` may add params of its own process (where a DRMAA
worker keeps its session's contact) before the first runner of a kind is built.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Sequence

from galaxy_tasks import config, lifecycle, routing
from galaxy_tasks.context import Context
from galaxy_tasks.edge import messages
from galaxy_tasks.lifecycle import Effects, Finished
from galaxy_tasks.model import Job
from galaxy_tasks.runners import Runner
from galaxy_tasks.runners.base import Completion, Report
from galaxy_tasks.staging.runner import StagedRunner
from galaxy_tasks.store import Store


class Runners:
    """This process's runner instances, keyed by destination."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._runners: dict[str, Runner] = {}
        self._params: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._ends = messages.ends_sender(ctx.settings)

    def add_params(self, runner: str, **params: Any) -> None:
        """Params of this process, given over the destination's to every runner of this kind
        built from now on."""
        with self._lock:
            self._params.setdefault(runner, {}).update(params)

    def runner_for(self, destination: str) -> Runner:
        with self._lock:
            if destination not in self._runners:
                spec = self.ctx.routing.destinations[destination]
                params = dataclasses.replace(spec.params, **self._params.get(spec.runner, {}))
                cls = spec.runner_class
                report = self._record_durably if cls.durable_report else self._report

                def build(told: Report) -> Runner:
                    return cls(params, told, destination=destination, host=self.ctx.settings.host)

                self._runners[destination] = build(report) if spec.staging is None else \
                    StagedRunner(build, report, spec.staging)
            return self._runners[destination]

    def flush_ends(self) -> None:
        self._ends.flush()

    def close(self) -> None:
        self.flush_ends()
        with self._lock:
            for runner in self._runners.values():
                runner.close()
            self._runners.clear()

    def _report(self, completion: Completion) -> None:
        self._ends(completion)

    def _record_durably(self, completion: Completion) -> None:
        record_end(self.ctx, completion, confirmed=True)


_built: tuple[Context, Runners] | None = None
_build_lock = threading.Lock()


def _process() -> tuple[Context, Runners]:
    global _built
    with _build_lock:
        if _built is None:
            settings = config.load()
            store = Store(settings.database_url, settings.check_after)
            destinations = routing.load(settings.job_conf, (settings.steps_queue, settings.ends_queue))
            ctx = Context(settings, store, destinations, messages.Announcer(store, settings))
            _built = (ctx, Runners(ctx))
        return _built


def context() -> Context:
    """This process's context, built from the environment on first use."""
    return _process()[0]


def runners() -> Runners:
    return _process()[1]


def reset() -> None:
    """Forget this process's context and close its runners (tests and the embedded mode
    change the environment)."""
    global _built
    with _build_lock:
        built, _built = _built, None
    if built is not None:
        built[1].close()


def runner_for(destination: str) -> Runner:
    """This process's runner for a destination."""
    return runners().runner_for(destination)


def add_runner_params(runner: str, **params: Any) -> None:
    runners().add_params(runner, **params)


def close_runners() -> None:
    runners().close()


def flush_sends() -> None:
    """Send what this process's sending threads still hold (the runners' ends, job events)."""
    if _built is not None:
        _built[1].flush_ends()
    messages.flush_broadcasts()


def record_end(ctx: Context, completion: Completion, confirmed: bool = False, job: Job | None = None) -> Finished:
    """Record a job's end, then send what follows from it. The finish step runs this (its
    message a hint, checked against the job's directory); so does a runner's own answer in
    this process (`confirmed`): a reconciliation check, a runner whose events are durable."""
    finished = lifecycle.finish(ctx, completion, confirmed, job)
    messages.carry_out(ctx, finished.effects)
    return finished


def record_ends(ctx: Context, ends: Sequence[tuple[Completion, Job | None]]) -> list[Finished]:
    """`record_end` for several ends heard together (the finish step's batch), each with its
    row as read together; what follows from them all is sent together."""
    finished = lifecycle.finish_many(ctx, ends)
    effects = Effects()
    for each in finished:
        effects += each.effects
    messages.carry_out(ctx, effects)
    return finished
