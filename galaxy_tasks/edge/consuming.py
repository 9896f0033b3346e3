"""The worker's side of `galaxy-tasks health`: the queues it was started to consume, and
those it consumes now.

A worker answers `ping` from its main process whatever it consumes, so a worker whose
consumer of the steps queue was cancelled (`cancel_consumer`, a remote control message)
would look healthy while no step runs. Health asks this command instead: one round trip
that proves the worker is alive and names every queue it no longer takes."""
from __future__ import annotations

from typing import Any, Iterable

from celery.worker.control import inspect_command

#: the name health sends; a worker of an older version does not answer it
COMMAND = "galaxy_tasks_consuming"

_started_with: set[str] = set()


def remember(queues: Iterable[str]) -> None:
    """The queues this worker consumes once ready: what health expects from now on."""
    _started_with.update(queues)


@inspect_command(name=COMMAND)
def consuming(state: Any, **_: Any) -> dict[str, list[str]]:
    """What this worker was started to consume, and what it consumes now."""
    consumer = state.consumer.task_consumer
    now = sorted(queue.name for queue in consumer.queues) if consumer is not None else []
    return {"expected": sorted(_started_with), "consumed": now}
