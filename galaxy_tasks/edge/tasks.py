"""The Celery tasks: thin wrappers that call the lifecycle and send what it says follows.

Task names and their JSON arguments are the public contract (docs/task-contract.md): a
client that does not import this package submits with
`send_task("galaxy_tasks.submit_job", kwargs=<job spec>)`.
"""
from __future__ import annotations

import logging
from typing import Any

from galaxy_tasks import context, events, lifecycle
from galaxy_tasks.edge import hooks, messages, runtime, security  # noqa: F401 - hooks connect signals
from galaxy_tasks.edge.app import app
from galaxy_tasks.errors import RunnerError, RunnerUnavailable, SpecError
from galaxy_tasks.lifecycle import Effects
from galaxy_tasks.logs import event
from galaxy_tasks.runners.base import Completion, Tracked
from galaxy_tasks.spec import parse
from galaxy_tasks.states import JobState
from galaxy_tasks.store import TRANSIENT_ERRORS
from galaxy_tasks.workflows import control, schedule

log = logging.getLogger(__name__)

#: a step that meets a database that went away (restart, failover, killed connection) is
#: retried on fresh connections instead of being dropped; its state change is idempotent.
#: So is a step whose runner is unavailable for a while (RunnerUnavailable: e.g. the Mesos
#: framework is not connected): that is not the job's fault, and must not fail it.
#: most ids one announce_jobs message may ask about
MAX_ANNOUNCED = 1000

DB_RETRY = dict(autoretry_for=(*TRANSIENT_ERRORS, RunnerUnavailable), retry_backoff=0.5,
                retry_backoff_max=30, retry_jitter=True, max_retries=20)


@app.task(name="galaxy_tasks.submit_job", **DB_RETRY)
def submit_job(**spec: Any) -> str | None:
    """Accept a job spec from a client that does not import this package. A refused spec
    records nothing, and its client hears the refusal as the job's end (a `refused` error
    event to the spec's events queue), never a log line alone."""
    ctx = runtime.context()
    signer = security.signer()
    try:
        accepted = lifecycle.accept(ctx, parse(spec), signer, security.message_job_id(submit_job.request))
    except SpecError as exc:
        told = messages.tell_refused(ctx, spec, signer, str(exc))
        event(log, "submit_refused", level=logging.ERROR, field=exc.field, error=exc.message,
              tool_id=spec.get("tool_id") if isinstance(spec.get("tool_id"), str) else None,
              job_id=told[1] if told else None, told=told[0] if told else None)
        return None
    messages.carry_out(ctx, accepted.effects)
    return accepted.job.id


@app.task(name="galaxy_tasks.submit_workflow", **DB_RETRY)
def submit_workflow(workflow: dict[str, Any]) -> str | None:
    """Accept a workflow document (docs/workflows.md) from a client that does not import
    this package; a refused one is logged with the step it names, and nothing recorded."""
    ctx = runtime.context()
    try:
        record, follows = schedule.submit(ctx, workflow, security.message_job_id(submit_workflow.request))
    except SpecError as exc:
        event(log, "workflow_refused", level=logging.ERROR, field=exc.field, error=exc.message)
        return None
    messages.carry_out(ctx, follows)
    return record.id


@app.task(name="galaxy_tasks.advance_workflow", **DB_RETRY)
def advance_workflow(workflow_id: str) -> int:
    """A workflow's next scheduling pass, sent by a pass that stopped at its bound
    (GALAXY_TASKS_WORKFLOW_PASS_MOST elements) with ready elements left; how many jobs it created. A
    workflow that is not running, or has nothing ready, makes it do nothing."""
    ctx = runtime.context()
    follows = schedule.advance(ctx, workflow_id)
    messages.carry_out(ctx, follows)
    return len(follows.start)


@app.task(name="galaxy_tasks.control_workflow", **DB_RETRY)
def control_workflow(workflow_id: str, action: str) -> bool:
    """pause, resume, cancel or rerun a workflow; False if it is not in a state the action
    applies to (or no such workflow)."""
    ctx = runtime.context()
    try:
        if action == "pause":
            control.pause(ctx, workflow_id)
        elif action == "cancel":
            for cancelled in control.cancel(ctx, workflow_id):
                messages.carry_out(ctx, cancelled.effects)
        elif action in ("resume", "rerun"):
            messages.carry_out(ctx, (control.resume if action == "resume" else control.rerun)(ctx, workflow_id))
        else:
            raise control.NotMoved(f"unknown workflow action {action!r}")
    except (control.NotMoved, LookupError) as exc:
        event(log, "workflow_action_refused", level=logging.WARNING, workflow_id=workflow_id, action=action,
              error=str(exc))
        return False
    return True


@app.task(name="galaxy_tasks.prepare_job", **DB_RETRY)
def prepare_job(job_id: str, tool_id: str | None = None) -> bool:
    ctx = runtime.context()
    prepared = lifecycle.prepare(ctx, job_id)
    messages.carry_out(ctx, prepared.effects)
    return prepared.job is not None


@app.task(name="galaxy_tasks.prepare_jobs", **DB_RETRY)
def prepare_jobs(job_ids: list[str]) -> int:
    """prepare_job for each of a batch of new jobs (messages.start_all), each on its own:
    a job that cannot be prepared fails alone, and a redelivered batch redoes nothing."""
    ctx = runtime.context()
    effects = Effects()
    done = lifecycle.prepare_many(ctx, _batch(job_ids, "prepare_jobs")).values()
    for prepared in done:
        effects += prepared.effects
    messages.carry_out(ctx, effects)
    return sum(map(bool, done))


@app.task(name="galaxy_tasks.launch_jobs", bind=True, **DB_RETRY)
def launch_jobs(self: Any, job_ids: list[str]) -> int:
    """launch_job for each of a batch of prepared jobs, claimed together where nothing is
    shared out (a redelivery of this message takes over the launches it had claimed, as
    launch_job's)."""
    ctx = runtime.context()
    effects = Effects()
    done = lifecycle.launch_all_in_turn(ctx, _batch(job_ids, "launch_jobs"), runtime.runner_for,
                                        owner=self.request.id).values()
    for launched in done:
        effects += launched.effects
    messages.carry_out(ctx, effects)
    return sum(map(bool, done))


def _batch(job_ids: list[str], task: str) -> list[str]:
    """The ids of a batched step's message, at most messages.BATCH of them (a message is
    untrusted: a longer list is cut there, with a log line)."""
    if len(job_ids) > messages.BATCH:
        event(log, "batch_cut", level=logging.WARNING, task=task, ids=len(job_ids), kept=messages.BATCH)
    return job_ids[:messages.BATCH]


@app.task(name="galaxy_tasks.launch_job", bind=True, **DB_RETRY)
def launch_job(self: Any, job_id: str, tool_id: str | None = None) -> bool:
    ctx = runtime.context()
    launched = lifecycle.launch_in_turn(ctx, job_id, runtime.runner_for, owner=self.request.id)
    messages.carry_out(ctx, launched.effects)
    return launched.launched


@app.task(name="galaxy_tasks.finish_job", **DB_RETRY)
def finish_job(job_id: str, completion: dict[str, Any], tool_id: str | None = None) -> str | None:
    finished = runtime.record_end(runtime.context(), Completion.from_json({**completion, "job_id": job_id}))
    return finished.moved.job.state if finished.moved is not None else None


@app.task(name="galaxy_tasks.finish_jobs", **DB_RETRY)
def finish_jobs(completions: list[dict[str, Any]]) -> int:
    """finish_job for each of several ends a runner saw together (messages.ends_sender); one
    that is not a completion is skipped with a log line, the others are recorded."""
    ctx = runtime.context()
    ends = []
    for data in completions[:messages.BATCH]:
        try:
            ends.append(Completion.from_json(data))
        except (TypeError, ValueError) as exc:
            event(log, "end_refused", level=logging.WARNING, error=str(exc)[:200])
    rows = ctx.store.jobs(end.job_id for end in ends)
    return sum(finished.moved is not None
               for finished in runtime.record_ends(ctx, [(end, rows.get(end.job_id)) for end in ends]))


@app.task(name="galaxy_tasks.launch_next", bind=True, **DB_RETRY)
def launch_next(self: Any, destination: str) -> str | None:
    """A slot of the destination was freed: launch the waiting job whose turn it is (fair
    share), if this host has room for it."""
    ctx = runtime.context()
    turn = lifecycle.launch_turn(ctx, destination, runtime.runner_for, owner=self.request.id)
    messages.carry_out(ctx, turn.effects)
    return turn.started


@app.task(name="galaxy_tasks.cancel_job", **DB_RETRY)
def cancel_job(job_id: str) -> str:
    ctx = runtime.context()
    cancelled = lifecycle.cancel(ctx, job_id)
    messages.carry_out(ctx, cancelled.effects)
    return cancelled.before.value


@app.task(name="galaxy_tasks.kill_job", **DB_RETRY)
def kill_job(destination: str, job_id: str) -> bool:
    """Stop a cancelled job's process: only a job its row says is cancelled, only through
    the external id its row recorded (a message names no process of its own choosing)."""
    ctx = runtime.context()
    job = ctx.store.job(job_id)
    if job is None or job.state != JobState.DELETED.value or job.destination != destination or not job.external_id:
        event(log, "kill_refused", level=logging.WARNING, job_id=job_id, destination=destination,
              state=job.state if job else None)
        return False
    runtime.runner_for(destination).cancel(lifecycle.tracked(ctx, job))
    return True


@app.task(name="galaxy_tasks.check_jobs", **DB_RETRY)
def check_jobs(destination: str, job_ids: list[str]) -> int:
    """Ask a runner about overdue jobs in one call, and record the ends it answers here (its
    own answer, in this process: confirmed)."""
    ctx = runtime.context()
    tracked = _launched(ctx, destination, job_ids, _LAUNCHED)
    ended = [c for c in runtime.runner_for(destination).status(tracked).values() if c is not None]
    for completion in ended:
        runtime.record_end(ctx, completion, confirmed=True)
    event(log, "reconcile_check", destination=destination, asked=len(tracked), ended=len(ended))
    return len(ended)


@app.task(name="galaxy_tasks.stop_jobs", **DB_RETRY)
def stop_jobs(destination: str, job_ids: list[str]) -> int:
    """Cancelled jobs looked at again: stop those still running (their kill message may
    have been lost), and stop looking at those that have ended."""
    ctx = runtime.context()
    runner = runtime.runner_for(destination)
    tracked = _launched(ctx, destination, job_ids, frozenset({JobState.DELETED}))
    statuses = runner.status(tracked)
    alive = [t for t in tracked if statuses.get(t.job_id) is None]
    for job in alive:
        try:
            runner.cancel(job)
        except RunnerError as exc:
            event(log, "stop_failed", level=logging.WARNING, job_id=job.job_id, error=str(exc))
    messages.carry_out(ctx, lifecycle.stopped(ctx, [t.job_id for t in tracked if statuses.get(t.job_id) is not None]))
    event(log, "reconcile_stop", destination=destination, asked=len(tracked), still_running=len(alive))
    return len(alive)


@app.task(name="galaxy_tasks.reconcile", **DB_RETRY)
def reconcile() -> int:
    ctx = runtime.context()
    if not lifecycle.acquire_lease(ctx, "reconcile", ctx.settings.reconcile_interval * 0.8):
        return 0
    plan = lifecycle.overdue(ctx)
    unpublished = lifecycle.unpublished(ctx)
    for job in unpublished:
        ctx.announce(job)
    effects = plan.effects + schedule.overdue(ctx)
    messages.carry_out(ctx, effects)
    return effects.size + len(unpublished)


@app.task(name="galaxy_tasks.announce_jobs", **DB_RETRY)
def announce_jobs(job_ids: list[str], queue: str) -> int:
    """A client asks what became of its jobs: each known job's current event goes to its own
    events queue (or, if it has none, to `queue`), and an `unknown` event to `queue` for each
    id no job has (the client then submits it again, with the same id)."""
    ctx = runtime.context()
    found = ctx.store.jobs(job_ids[:MAX_ANNOUNCED])
    for job_id in job_ids[:MAX_ANNOUNCED]:
        job = found.get(job_id)
        if job is None:
            messages.publish_event(queue, events.unknown_event(job_id))
        elif job.events_queue:
            ctx.announce(job)
        else:
            messages.publish_event(queue, events.state_event(job))
    return len(found)


_LAUNCHED = frozenset({JobState.SUBMITTING, JobState.RUNNING})


def _launched(ctx: context.Context, destination: str, job_ids: list[str],
              states: frozenset[JobState]) -> list[Tracked]:
    """The rows of these jobs that are the destination's, launched (an external id) and in
    one of `states`: what a message may ask a runner about."""
    rows = ctx.store.jobs(job_ids[:messages.BATCH])
    return [lifecycle.tracked(ctx, job) for job in rows.values()
            if job.destination == destination and job.external_id and JobState(job.state) in states]
