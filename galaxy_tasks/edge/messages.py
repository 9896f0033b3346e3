"""The one place that sends messages. Every message is sent by task name with JSON keyword
arguments, exactly as the documented task contract says a client may send them, so
nothing here imports the task definitions (and no import cycle runs through them)."""
from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from kombu import Exchange, Queue

from galaxy_tasks import events, jobdir, lifecycle
from galaxy_tasks.config import Settings
from galaxy_tasks.context import Context
from galaxy_tasks.edge.app import app
from galaxy_tasks.edge.together import Together
from galaxy_tasks.faults import crash_point
from galaxy_tasks.lifecycle import Effects
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job
from galaxy_tasks.runners import runner_class
from galaxy_tasks.runners.base import Completion, Tracked
from galaxy_tasks.states import JobState
from galaxy_tasks.store import Store
from galaxy_tasks.workflows import schedule

log = logging.getLogger(__name__)

PREFIX = "galaxy_tasks."
#: jobs per check or stop message
BATCH = 200
#: jobs per batched prepare and launch message (messages.start_all); a step takes at most
#: BATCH ids from one message
START_BATCH = 50
#: a job event is published twice more at once if the broker refuses it; then the outbox
#: mark on the row leaves it to reconciliation
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}


def send(task: str, queue: str, **kwargs: Any) -> None:
    app.send_task(PREFIX + task, kwargs=kwargs, queue=queue)


def carry_out(ctx: Context, effects: Effects) -> None:
    """Everything a step's result says must follow, as messages; the one interpreter of
    `Effects`, whoever ran the step (a task, the client, the embedded mode)."""
    start_all(ctx, effects.start)
    for job, delay_s in effects.start_later:
        start(ctx, job, countdown=delay_s)
    for job_id, queue in effects.launch:
        launch(job_id, queue)
    for destination in effects.wake:
        send("launch_next", ctx.routing.destinations[destination].queue, destination=destination)
    for stop in effects.stop:
        send("kill_job", control_queue(ctx, stop.destination, stop.tracked.external_id),
             destination=stop.destination, job_id=stop.tracked.job_id)
    _in_batches(ctx, "check_jobs", effects.check)
    _in_batches(ctx, "stop_jobs", effects.recheck_stopped)
    for ended in effects.passes:
        # a workflow's pass creates each element's job once, whoever runs it: a repeated
        # pass (a redelivered finish) starts nothing twice
        crash_point("workflow-pass", ended.id)  # the end recorded, its dependents not yet created
        carry_out(ctx, schedule.after_end(ctx, ended))
    for workflow_id in effects.advance:
        # lost with its worker, the workflow's check_at (set by the pass) is due: reconciliation
        # runs the next pass instead
        send("advance_workflow", ctx.settings.steps_queue, workflow_id=workflow_id)


def start_all(ctx: Context, jobs: Sequence[Job]) -> None:
    """New jobs' chains. A job started alone moves alone (its own prepare and launch
    messages, the least latency); jobs started together (a client's burst, a workflow's
    pass, reconciliation re-driving) move in batches of up to START_BATCH per destination
    queue: one prepare message and one launch message for the batch, so a busy system sends
    and takes two messages per batch instead of two per job."""
    if len(jobs) == 1:
        start(ctx, jobs[0])
        return
    by_queue: dict[str, list[str]] = {}
    for job in jobs:
        by_queue.setdefault(job.queue, []).append(job.id)
    for queue, job_ids in by_queue.items():
        for at in range(0, len(job_ids), START_BATCH):
            ids = {"job_ids": job_ids[at:at + START_BATCH]}
            (app.signature(PREFIX + "prepare_jobs", kwargs=ids, queue=ctx.settings.steps_queue)
             | app.signature(PREFIX + "launch_jobs", kwargs=ids, queue=queue, immutable=True)).apply_async()


def start(ctx: Context, job: Job, countdown: float = 0.0) -> None:
    """A new job's chain: prepare on the steps queue, then launch on its destination's
    (after `countdown` seconds: a resubmission's delay)."""
    ids = {"job_id": job.id, "tool_id": job.tool_id}
    chain = (app.signature(PREFIX + "prepare_job", kwargs=ids, queue=ctx.settings.steps_queue)
             | app.signature(PREFIX + "launch_job", kwargs=ids, queue=job.queue, immutable=True))
    chain.apply_async(countdown=countdown) if countdown > 0 else chain.apply_async()


def launch(job_id: str, queue: str) -> None:
    send("launch_job", queue, job_id=job_id)


def report_end(settings: Settings, completion: Completion) -> None:
    """A runner's completion event, for the finish step to record: on the ends queue, so it is
    not behind a burst's prepares and launches on the steps queue."""
    send("finish_job", settings.ends_queue, job_id=completion.job_id, completion=completion.to_json())


def report_ends(settings: Settings, completions: Sequence[Completion]) -> None:
    """Several completion events in one message, for the finish step."""
    if len(completions) == 1:
        report_end(settings, completions[0])
    else:
        send("finish_jobs", settings.ends_queue, completions=[c.to_json() for c in completions])


#: an end that comes while ends are flowing waits this long for the next ones (Together): a
#: burst's ends then reach the finish step a few per message instead of one (at 5 ms, an ends
#: worker of one process fell behind a 2,000-job burst by up to 186 messages; at 25 ms, by 31)
ENDS_LINGER_S = 0.025


def ends_sender(settings: Settings) -> Together[Completion]:
    """A process's runner ends, to the finish step from a thread of their own: together
    (finish_jobs) when they come together, and the runner thread that saw them (an exit
    watcher) never waits for the broker. An end lost here (the process killed first) is in
    its job's directory: reconciliation finds it there."""
    return Together(lambda ends: report_ends(settings, ends), "ends", most=BATCH, linger_s=ENDS_LINGER_S)


class Announcer:
    """What a process does after the database recorded a state change: the job event, to the
    client's durable queue if the job has one (then the outbox mark is cleared), and as a
    broadcast Celery event for whoever listens now (`wait`, `events --follow`). Nothing here
    may fail the step: a failed publish leaves the mark, and reconciliation publishes again."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def __call__(self, job: Job) -> None:
        body = events.state_event(job)
        _broadcasts(body)
        if job.events_queue:
            crash_point(f"publish-{job.state}", job.id)  # recorded, not yet published
            try:
                publish_event(job.events_queue, body)
                self.store.mark_published(job.id, job.event_seq)
            except Exception as exc:  # noqa: BLE001 - the outbox mark stays: reconciliation sends it
                event(log, "event_publish_failed", level=logging.WARNING, job_id=job.id, queue=job.events_queue,
                      seq=job.event_seq, error=str(exc))
                return  # not delivered: its directory stays until it is
        self._clean_up(job)

    def _clean_up(self, job: Job) -> None:
        """GALAXY_TASKS_CLEANUP_JOB: the job's directory goes once its end is recorded and
        delivered. Not a cancelled job's (stopping its processes reads the claim in it), a
        workflow's or a reusable one's (later jobs read their outputs)."""
        cleaned = CLEANED_STATES[self.settings.cleanup_job]
        if job.state not in cleaned or job.workflow_id or job.reuse or not job.job_dir:
            return
        try:
            removed = jobdir.remove(Path(job.job_dir), job.token)
        except OSError as exc:
            event(log, "cleanup_failed", level=logging.WARNING, job_id=job.id, error=str(exc))
            return
        if removed:
            event(log, "job_dir_removed", job_id=job.id, state=job.state)


#: the states whose directories each GALAXY_TASKS_CLEANUP_JOB value deletes
CLEANED_STATES: dict[str, frozenset[str]] = {
    "never": frozenset(),
    "onsuccess": frozenset({JobState.OK.value}),
    "always": frozenset({JobState.OK.value, JobState.ERROR.value}),
}


def publish_event(queue: str, body: dict[str, Any]) -> None:
    """A job event to a client's durable queue (declared here, so a message sent before the
    client first consumed is kept), persistent, as plain JSON: no Celery needed to read it.
    With signing on it is signed as every task message is (Celery's `auth`: signed JSON), so
    a client that checks signatures can drop what anyone else put in its queue."""
    serializer = "auth" if app.conf.task_serializer == "auth" else "json"
    with app.producer_or_acquire() as producer:
        producer.publish(body, exchange="", routing_key=queue, serializer=serializer, delivery_mode=2,
                         declare=[Queue(queue, Exchange(""), routing_key=queue, durable=True)],
                         retry=True, retry_policy=PUBLISH_RETRY)


def tell_refused(ctx: Context, spec: Any, signer: str | None, reason: str) -> tuple[str, str] | None:
    """A submit refused or set aside is the client's job lost: the client hears it as the
    job's end (a `refused` error event to the events queue its spec names, if the spec may be
    told at all: `lifecycle.refusal_address`). Where it was told, (queue, job id), or None."""
    address = lifecycle.refusal_address(ctx, spec, signer)
    if address is None:
        return None
    queue, job_id, client_id = address
    publish_event(queue, events.refused_event(job_id, client_id, reason))
    return queue, job_id


def broadcast(bodies: Sequence[dict[str, Any]]) -> None:
    """Job events as Celery events, fanned out to every live listener (lossy by design: a
    listener reads the database when it starts and on its own slow schedule); more than one
    go as one message (`job.multi`, a list, as Celery sends its own task events in groups)."""
    with app.events.default_dispatcher() as dispatcher:
        if len(bodies) > 1:
            dispatcher.buffer_group = frozenset({events.CELERY_EVENT.split("-")[0]})
            dispatcher.buffer_limit = len(bodies) + 1
        for body in bodies:
            dispatcher.send(events.CELERY_EVENT, **body)
        if len(bodies) > 1:
            dispatcher.flush(errors=False)


#: every job event this process announces, broadcast from a thread of its own (together
#: when they come together: one `job.multi` message for a burst's); a listener that misses
#: one reads the rows
_broadcasts: Together[dict[str, Any]] = Together(broadcast, "job-events", most=BATCH)
atexit.register(_broadcasts.flush, 2.0)


def flush_broadcasts() -> None:
    """Send the job events still waiting (a worker process about to end)."""
    _broadcasts.flush()


def probe_listener(token: str) -> None:
    """An event only the listener that sent it looks for: once it hears it, it hears
    every job event sent after (Redis subscribes a listener lazily, after it starts)."""
    with app.events.default_dispatcher() as dispatcher:
        dispatcher.send(events.LISTENER_PROBE, token=token)


def control_queue(ctx: Context, destination: str, external_id: str | None) -> str:
    """The queue of messages about one launched job of `destination` (see Runner.control_queue)."""
    spec = ctx.routing.destinations[destination]
    return runner_class(spec.runner).control_queue(spec.queue, external_id)


def with_host_queues(ctx: Context, queues: Iterable[str]) -> list[str]:
    """`queues` and, for each destination queue among them, the queues this host's worker
    must also consume (a local destination's `<queue>@<host>`); a worker of the steps queue
    also takes the ends queue, so a deployment with no worker of its own for ends leaves none
    unrecorded (a dedicated ends worker still takes them first while the steps are busy: a
    busy worker reserves no more than its pool runs)."""
    result = list(queues)
    if ctx.settings.steps_queue in result and ctx.settings.ends_queue not in result:
        result.append(ctx.settings.ends_queue)
    for destination in ctx.routing.destinations.values():
        if destination.queue in result:
            for extra in runner_class(destination.runner).host_queues(destination.queue, ctx.settings.host):
                if extra not in result:
                    result.append(extra)
    return result


def _in_batches(ctx: Context, task: str, jobs_by_destination: Mapping[str, Sequence[Tracked]]) -> None:
    """One message per batch of a destination's jobs, to the queue that can act on them."""
    for destination, jobs in jobs_by_destination.items():
        if destination not in ctx.routing.destinations:
            continue
        by_queue: dict[str, list[Tracked]] = {}
        for job in jobs:
            by_queue.setdefault(control_queue(ctx, destination, job.external_id), []).append(job)
        for queue, tracked in by_queue.items():
            for batch in _chunks(tracked, BATCH):
                send(task, queue, destination=destination, job_ids=[t.job_id for t in batch])


def _chunks(items: list[Tracked], size: int) -> Iterator[list[Tracked]]:
    for start_at in range(0, len(items), size):
        yield items[start_at:start_at + size]
