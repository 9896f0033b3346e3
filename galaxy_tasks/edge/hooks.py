"""Celery worker signal hooks: a forked pool process opens its own database connections,
a local worker also takes its host's messages, a starting worker drives again what the
database says is unfinished, a stopping one closes its runners."""
from __future__ import annotations

import logging
from typing import Any, Iterable

from celery import signals

from galaxy_tasks import config, lifecycle, logs, store
from galaxy_tasks.edge import consuming, messages, runtime, security
from galaxy_tasks.edge.app import app
from galaxy_tasks.errors import ConfigError
from galaxy_tasks.logs import event

log = logging.getLogger("galaxy_tasks.edge.tasks")


@signals.celeryd_init.connect
def _check_configuration(**_: Any) -> None:
    """A worker whose configuration is wrong (an unknown param, a bad value, a key given
    twice) stops at once, saying why, instead of reporting `ready` and failing each job."""
    try:
        runtime.context()
    except (ConfigError, ValueError) as exc:
        raise SystemExit(f"galaxy-tasks worker: {exc}") from None


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _redact_logs(**_: Any) -> None:
    """Every handler Celery has just installed redacts passwords, whoever logs through it."""
    logs.install(config.load().log_level)


@signals.worker_init.connect
def _close_to_jobs(**_: Any) -> None:
    security.undumpable()


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    store.dispose_after_fork()
    security.undumpable()


@signals.celeryd_after_setup.connect
def _consume_host_queues(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """A worker of a local destination's queue also takes the messages about the jobs of its
    own host (kill, status), which only it can act on."""
    queues = instance.app.amqp.queues
    consumed = list(queues.consume_from or queues)
    for extra in messages.with_host_queues(runtime.context(), consumed)[len(consumed):]:
        queues.select_add(queues[extra])  # declared as a publisher declares it (its queue type too)


@signals.worker_ready.connect
def _recover(sender: Any = None, **_: Any) -> None:
    consuming.remember(consumed_queues())
    recover(consumed_queues())


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    runtime.close_runners()
    messages.flush_broadcasts()


@signals.worker_process_shutdown.connect
def _process_shutdown(**_: Any) -> None:
    """A pool process ends: what its threads still hold to send goes first."""
    runtime.flush_sends()


def consumed_queues() -> set[str]:
    queues = app.amqp.queues
    return set(queues.consume_from or queues)


def recover(queues: Iterable[str]) -> None:
    """Re-drive what this worker serves: unfinished steps, and the runners' launched jobs."""
    ctx = runtime.context()
    queues = set(queues)
    if ctx.settings.steps_queue in queues:
        plan = lifecycle.startup(ctx)
        messages.carry_out(ctx, plan.effects)
        event(log, "recovered_steps", prepare=len(plan.prepare), launch=len(plan.launch))
    for name, destination in ctx.routing.destinations.items():
        if destination.queue in queues:
            jobs = lifecycle.held_by(ctx, [name])
            if jobs:
                runtime.runner_for(name).recover(jobs)
                event(log, "recovered_jobs", destination=name, jobs=len(jobs))
