"""The one place that sends messages. Every message is sent by task name with JSON keyword
arguments, exactly as the documented task contract says a client may send them, so
nothing here imports the task definitions (and no import cycle runs through them)."""
from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

from kombu import Exchange, Queue

from galaxy_tasks import context, events
from galaxy_tasks.celery import app
from galaxy_tasks.config import Settings
from galaxy_tasks.faults import crash_point
from galaxy_tasks.lifecycle import Plan, ToStop
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job
from galaxy_tasks.runners import runner_class
from galaxy_tasks.runners.base import Completion, Tracked
from galaxy_tasks.store import Store

log = logging.getLogger(__name__)

PREFIX = "galaxy_tasks."
#: jobs per check or stop message
BATCH = 200
#: a job event is published twice more at once if the broker refuses it; then the outbox
#: mark on the row leaves it to reconciliation
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}


def send(task: str, queue: str, **kwargs: Any) -> None:
    app.send_task(PREFIX + task, kwargs=kwargs, queue=queue)


def start(job: Job, countdown: float = 0.0) -> None:
    """A new job's chain: prepare on the steps queue, then launch on its destination's
    (after `countdown` seconds: a resubmission's delay)."""
    steps = context.current().settings.steps_queue
    ids = {"job_id": job.id, "tool_id": job.tool_id}
    chain = (app.signature(PREFIX + "prepare_job", kwargs=ids, queue=steps)
             | app.signature(PREFIX + "launch_job", kwargs=ids, queue=job.queue, immutable=True))
    chain.apply_async(countdown=countdown) if countdown > 0 else chain.apply_async()


def launch(job_id: str, queue: str) -> None:
    send("launch_job", queue, job_id=job_id)


def report_end(completion: Completion) -> None:
    """A runner's completion event, for the steps to record."""
    send("finish_job", context.current().settings.steps_queue, job_id=completion.job_id,
         completion=completion.to_json())


def wake_jobs(jobs: Iterable[tuple[str, str]]) -> None:
    """Jobs a freed concurrency-limit place releases: (job id, queue) each."""
    for job_id, queue in jobs:
        launch(job_id, queue)


def wake(destination: str) -> None:
    """The destination's oldest waiting job may start: a slot was freed."""
    send("launch_next", context.current().routing.destinations[destination].queue, destination=destination)


def kill(stop: ToStop) -> None:
    send("kill_job", control_queue(stop.destination, stop.tracked.external_id), destination=stop.destination,
         job_id=stop.tracked.job_id)


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
        try:
            broadcast(body)
        except Exception as exc:  # noqa: BLE001 - a live listener's copy is best effort
            event(log, "event_broadcast_failed", level=logging.WARNING, job_id=job.id, error=str(exc))
        if job.events_queue:
            crash_point(f"publish-{job.state}", job.id)  # recorded, not yet published
            try:
                publish_event(job.events_queue, body)
                self.store.mark_published(job.id, job.event_seq)
            except Exception as exc:  # noqa: BLE001 - the outbox mark stays: reconciliation sends it
                event(log, "event_publish_failed", level=logging.WARNING, job_id=job.id, queue=job.events_queue,
                      seq=job.event_seq, error=str(exc))


def publish_event(queue: str, body: dict[str, Any]) -> None:
    """A job event to a client's durable queue (declared here, so a message sent before the
    client first consumed is kept), persistent, as plain JSON: no Celery needed to read it."""
    with app.producer_or_acquire() as producer:
        producer.publish(body, exchange="", routing_key=queue, serializer="json", delivery_mode=2,
                         declare=[Queue(queue, Exchange(""), routing_key=queue, durable=True)],
                         retry=True, retry_policy=PUBLISH_RETRY)


def broadcast(body: dict[str, Any]) -> None:
    """The same event as a Celery event, fanned out to every live listener (lossy by design:
    a listener reads the database when it starts and on its own slow schedule)."""
    with app.events.default_dispatcher() as dispatcher:
        dispatcher.send(events.CELERY_EVENT, **body)


def probe_listener(token: str) -> None:
    """An event only the listener that sent it looks for: once it hears it, it hears
    every job event sent after (Redis subscribes a listener lazily, after it starts)."""
    with app.events.default_dispatcher() as dispatcher:
        dispatcher.send(events.LISTENER_PROBE, token=token)


def dispatch(plan: Plan) -> None:
    """Everything a reconciliation or recovery plan asks for."""
    for job in plan.prepare:
        start(job)
    for job_id, queue in plan.launch:
        launch(job_id, queue)
    _in_batches("check_jobs", plan.check)
    _in_batches("stop_jobs", plan.stop)
    wake_jobs(plan.wake)


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


def _in_batches(task: str, jobs_by_destination: dict[str, list[Tracked]]) -> None:
    """One message per batch of a destination's jobs, to the queue that can act on them."""
    destinations = context.current().routing.destinations
    for destination, jobs in jobs_by_destination.items():
        if destination not in destinations:
            continue
        by_queue: dict[str, list[Tracked]] = {}
        for job in jobs:
            by_queue.setdefault(control_queue(destination, job.external_id), []).append(job)
        for queue, tracked in by_queue.items():
            for batch in _chunks(tracked, BATCH):
                send(task, queue, destination=destination, job_ids=[t.job_id for t in batch])


def _chunks(items: list[Tracked], size: int) -> Iterator[list[Tracked]]:
    for start_at in range(0, len(items), size):
        yield items[start_at:start_at + size]
