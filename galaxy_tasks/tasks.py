"""The Celery tasks: thin wrappers that call the lifecycle and send the next message.

Task names and their JSON arguments are the public contract (see README, "Task contract"):
a client that does not import this package submits with
`send_task("galaxy_tasks.submit_job", kwargs=<job spec>)`.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Iterable

from celery import chain, signals
from sqlalchemy.exc import InterfaceError, OperationalError

from galaxy_tasks import context, lifecycle, store
from galaxy_tasks.celery import app
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job
from galaxy_tasks.runners import Completion, Runner, Tracked, runner_class
from galaxy_tasks.runners.base import RunnerError, RunnerUnavailable
from galaxy_tasks.spec import SpecError, parse

log = logging.getLogger(__name__)

#: a step that meets a database that went away (restart, failover, killed connection) is
#: retried on fresh connections instead of being dropped; its state change is idempotent.
#: So is a step whose runner is unavailable for a while (RunnerUnavailable: e.g. the Mesos
#: framework is not connected): that is not the job's fault, and must not fail it.
DB_RETRY = dict(autoretry_for=(OperationalError, InterfaceError, RunnerUnavailable), retry_backoff=0.5,
                retry_backoff_max=30, retry_jitter=True, max_retries=20)


# -- sending ---------------------------------------------------------------------------

def start(job: Job) -> None:
    """Send a new job's chain: prepare on the steps queue, then launch on its destination's."""
    steps = context.current().settings.steps_queue
    chain(
        prepare_job.si(job_id=job.id, tool_id=job.tool_id).set(queue=steps),
        launch_job.si(job_id=job.id, tool_id=job.tool_id).set(queue=job.queue),
    ).apply_async()


def dispatch(plan: lifecycle.Plan) -> None:
    for job in plan.prepare:
        start(job)
    for job_id, queue in plan.launch:
        launch_job.apply_async(kwargs={"job_id": job_id}, queue=queue)
    _send_in_batches(check_jobs, plan.check)
    _send_in_batches(stop_jobs, plan.stop)


def _send_in_batches(task: Any, jobs_by_destination: dict[str, list[Tracked]]) -> None:
    """One message per batch of a destination's jobs, to the queue that can act on them."""
    destinations = context.current().routing.destinations
    for destination, jobs in jobs_by_destination.items():
        if destination not in destinations:
            continue
        by_queue: dict[str, list[Tracked]] = {}
        for job in jobs:
            by_queue.setdefault(control_queue(destination, job.external_id), []).append(job)
        for queue, tracked in by_queue.items():
            for batch in _chunks(tracked, 200):
                task.apply_async(kwargs={"destination": destination, "jobs": [_tracked_json(t) for t in batch]},
                                 queue=queue)


def control_queue(destination: str, external_id: str | None) -> str:
    """The queue of messages about one launched job of `destination` (see Runner.control_queue)."""
    spec = context.current().routing.destinations[destination]
    return runner_class(spec.runner).control_queue(spec.queue, external_id)


def with_host_queues(queues: Iterable[str]) -> list[str]:
    """`queues` and, for each destination queue among them, the queues this host's worker
    must also consume (a local destination's `<queue>@<host>`)."""
    ctx = context.current()
    result = list(queues)
    for destination in ctx.routing.destinations.values():
        if destination.queue in result:
            for extra in runner_class(destination.runner).host_queues(destination.queue, ctx.settings.host):
                if extra not in result:
                    result.append(extra)
    return result


def _report(completion: Completion) -> None:
    finish_job.apply_async(
        kwargs={"job_id": completion.job_id, "completion": completion.to_json()},
        queue=context.current().settings.steps_queue,
    )


def _report_durably(completion: Completion) -> None:
    lifecycle.finish(context.current(), completion)


# -- the runners of this process --------------------------------------------------------

_runners: dict[str, Runner] = {}
_runners_lock = threading.Lock()
_process_params: dict[str, dict[str, Any]] = {}


def add_runner_params(runner: str, **params: Any) -> None:
    """Params of this process (set by a worker entry point in `workers/`, e.g. where a DRMAA
    worker keeps its session's contact), given over the destination's to every runner of
    this kind built from now on."""
    with _runners_lock:
        _process_params.setdefault(runner, {}).update(params)


def runner_for(destination: str) -> Runner:
    """This process's runner for a destination, built on first use."""
    with _runners_lock:
        if destination not in _runners:
            spec = context.current().routing.destinations[destination]
            cls = runner_class(spec.runner)
            params = {**spec.params, **_process_params.get(spec.runner, {}), "destination": destination,
                      "host": context.current().settings.host}
            _runners[destination] = cls(params, _report_durably if cls.durable_report else _report)
        return _runners[destination]


def close_runners() -> None:
    with _runners_lock:
        for runner in _runners.values():
            runner.close()
        _runners.clear()


# -- the tasks --------------------------------------------------------------------------

@app.task(name="galaxy_tasks.submit_job", **DB_RETRY)
def submit_job(**spec: Any) -> str | None:
    """Accept a job spec from a client that does not import this package."""
    try:
        job, created = lifecycle.accept(context.current(), parse(spec))
    except SpecError as exc:
        event(log, "submit_refused", level=logging.ERROR, field=exc.field, error=exc.message,
              tool_id=spec.get("tool_id") if isinstance(spec.get("tool_id"), str) else None)
        return None
    if created:
        start(job)
    return job.id


@app.task(name="galaxy_tasks.prepare_job", **DB_RETRY)
def prepare_job(job_id: str, tool_id: str | None = None) -> bool:
    return lifecycle.prepare(context.current(), job_id)


@app.task(name="galaxy_tasks.launch_job", bind=True, **DB_RETRY)
def launch_job(self, job_id: str, tool_id: str | None = None) -> bool:
    return lifecycle.launch(context.current(), job_id, runner_for, owner=self.request.id)


@app.task(name="galaxy_tasks.finish_job", **DB_RETRY)
def finish_job(job_id: str, completion: dict, tool_id: str | None = None) -> str | None:
    ctx = context.current()
    moved = lifecycle.finish(ctx, Completion.from_json({**completion, "job_id": job_id}))
    if ctx.routing.limited:
        # a process of a destination with job slots ended (a cancelled job's too, whose
        # finish is a no-op): its slot is free, so the oldest waiting job may start
        job = moved.job if moved is not None else ctx.store.row(job_id)
        if job is not None and job.destination in ctx.routing.limited:
            launch_next.apply_async(kwargs={"destination": job.destination},
                                    queue=ctx.routing.destinations[job.destination].queue)
    return moved.job.state if moved is not None else None


@app.task(name="galaxy_tasks.launch_next", bind=True, **DB_RETRY)
def launch_next(self, destination: str) -> str | None:
    """Launch the destination's oldest queued job if this host has room for it (a few
    tries: another wake-up may have taken the same job a moment before)."""
    ctx = context.current()
    runner = runner_for(destination)
    for _ in range(3):
        if not runner.has_room():
            return None
        job_id = lifecycle.next_queued(ctx, destination)
        if job_id is None:
            return None
        if lifecycle.launch(ctx, job_id, runner_for, owner=self.request.id):
            return job_id
    return None


@app.task(name="galaxy_tasks.cancel_job", **DB_RETRY)
def cancel_job(job_id: str) -> str:
    before, stop = lifecycle.cancel(context.current(), job_id)
    if stop is not None:
        kill_job.apply_async(kwargs={"destination": stop.destination, "job": _tracked_json(stop.tracked)},
                             queue=control_queue(stop.destination, stop.tracked.external_id))
    return before.value


@app.task(name="galaxy_tasks.kill_job", **DB_RETRY)
def kill_job(destination: str, job: dict) -> None:
    runner_for(destination).cancel(_tracked_from(job))


@app.task(name="galaxy_tasks.check_jobs", **DB_RETRY)
def check_jobs(destination: str, jobs: list[dict]) -> int:
    """Ask a runner about overdue jobs in one call; report those that ended."""
    runner = runner_for(destination)
    ended = [c for c in runner.status([_tracked_from(j) for j in jobs]).values() if c is not None]
    for completion in ended:
        runner.report(completion)
    event(log, "reconcile_check", destination=destination, asked=len(jobs), ended=len(ended))
    return len(ended)


@app.task(name="galaxy_tasks.stop_jobs", **DB_RETRY)
def stop_jobs(destination: str, jobs: list[dict]) -> int:
    """Cancelled jobs looked at again: stop those still running (their kill message may
    have been lost), and stop looking at those that have ended."""
    runner = runner_for(destination)
    tracked = [_tracked_from(j) for j in jobs]
    statuses = runner.status(tracked)
    alive = [t for t in tracked if statuses.get(t.job_id) is None]
    for job in alive:
        try:
            runner.cancel(job)
        except RunnerError as exc:
            event(log, "stop_failed", level=logging.WARNING, job_id=job.job_id, error=str(exc))
    lifecycle.stopped(context.current(), [t.job_id for t in tracked if statuses.get(t.job_id) is not None])
    event(log, "reconcile_stop", destination=destination, asked=len(tracked), still_running=len(alive))
    return len(alive)


@app.task(name="galaxy_tasks.reconcile", **DB_RETRY)
def reconcile() -> int:
    ctx = context.current()
    if not lifecycle.acquire_lease(ctx, "reconcile", ctx.settings.reconcile_interval * 0.8):
        return 0
    plan = lifecycle.overdue(ctx)
    dispatch(plan)
    return plan.size


@app.task(name="galaxy_tasks.noop")
def noop(token: str | None = None) -> None:
    """Does nothing: the bare-chain baseline of `galaxy-tasks bench` (the last task of a
    chain announces its end on a queue of its own)."""
    if token is not None:
        from kombu.simple import SimpleQueue

        from galaxy_tasks.bench import DONE_QUEUE

        with app.connection_for_write() as connection:
            with SimpleQueue(connection, DONE_QUEUE) as done:
                done.put({"token": token})


# -- worker start-up: the database, not the broker, says what is unfinished ---------------

@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    store.dispose_after_fork()


@signals.celeryd_after_setup.connect
def _consume_host_queues(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """A worker of a local destination's queue also takes the messages about the jobs of its
    own host (kill, status), which only it can act on."""
    queues = instance.app.amqp.queues
    consumed = list(queues.consume_from or queues)
    for extra in with_host_queues(consumed)[len(consumed):]:
        queues.select_add(extra)


@signals.worker_ready.connect
def _recover(sender: Any = None, **_: Any) -> None:
    recover(consumed_queues())


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    close_runners()


def consumed_queues() -> set[str]:
    queues = app.amqp.queues
    return set(queues.consume_from or queues)


def recover(queues: Iterable[str]) -> None:
    """Re-drive what this worker serves: unfinished steps, and the runners' launched jobs."""
    ctx = context.current()
    queues = set(queues)
    if ctx.settings.steps_queue in queues:
        plan = lifecycle.startup(ctx)
        dispatch(plan)
        event(log, "recovered_steps", prepare=len(plan.prepare), launch=len(plan.launch))
    for name, destination in ctx.routing.destinations.items():
        if destination.queue in queues:
            jobs = lifecycle.held_by(ctx, [name])
            if jobs:
                runner_for(name).recover(jobs)
                event(log, "recovered_jobs", destination=name, jobs=len(jobs))


def _tracked_json(tracked: Tracked) -> dict:
    return {"job_id": tracked.job_id, "external_id": tracked.external_id, "job_dir": str(tracked.job_dir)}


def _tracked_from(data: dict) -> Tracked:
    return Tracked(data["job_id"], data["external_id"], Path(data["job_dir"]))


def _chunks(items: list, size: int) -> Iterable[list]:
    for start_at in range(0, len(items), size):
        yield items[start_at:start_at + size]
