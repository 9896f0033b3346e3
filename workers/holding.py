"""What the workers that hold something per process (a DRMAA session, a Mesos framework)
share: which queues are theirs, where their state files live, and the refusal of pools that
would fork what they hold."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, TypeVar

from celery import concurrency, signals

from galaxy_tasks.child_workers import stop_with_supervisor
from galaxy_tasks.edge import runtime
from galaxy_tasks.runners.base import Runner

R = TypeVar("R", bound=Runner)

#: pools whose tasks run in the process that holds the session or framework
POOLS = {"threads": "celery.concurrency.thread", "solo": "celery.concurrency.solo"}


def destinations_by_queue(runner: str) -> dict[str, list[str]]:
    """The job_conf's destinations of one runner, by queue."""
    found: dict[str, list[str]] = {}
    for name, destination in runtime.context().routing.destinations.items():
        if destination.runner == runner:
            found.setdefault(destination.queue, []).append(name)
    return found


def state_file(home: Path, kind: str, name: str, suffix: str) -> Path:
    """`$GALAXY_TASKS_HOME/<kind>/<name><suffix>`, with the name made safe for a file."""
    return home / kind / (re.sub(r"[^A-Za-z0-9@._-]", "_", name) + suffix)


def serve_own_queues_by_default(runner: str) -> Callable[..., None]:
    """Without -Q, the worker serves its runner's destinations' queues, not Celery's default."""

    def default_queues(options: dict | None = None, instance: Any = None, **_: Any) -> None:
        if not (options or {}).get("queues"):
            known = destinations_by_queue(runner)
            if not known:
                raise SystemExit(f"workers.{runner}: the job_conf (GALAXY_TASKS_JOB_CONF) has no {runner} destination")
            instance.app.amqp.queues.select(sorted(known))

    signals.celeryd_init.connect(default_queues, weak=False)
    # started by a plain `galaxy-tasks worker` (galaxy_tasks/child_workers.py): end with it
    signals.celeryd_init.connect(lambda **_: stop_with_supervisor(), weak=False)
    return default_queues


def served_destinations(sender: Any, runner: str, why: str) -> list[str]:
    """At worker_init: refuse a pool that forks (`why` says what would break), and return the
    destinations of `runner` whose queues this worker consumes (none is an error)."""
    pool = concurrency.get_implementation(sender.pool_cls)
    if pool.__module__ not in POOLS.values():
        raise SystemExit(f"workers.{runner}: the {pool.__module__.rsplit('.', 1)[-1]} pool is refused: {why}; "
                         f"use --pool threads (the default) or --pool solo")
    known = destinations_by_queue(runner)
    consumed = sorted(sender.app.amqp.queues.consume_from)
    served = [name for queue in consumed for name in known.get(queue, [])]
    if not served:
        raise SystemExit(f"workers.{runner}: -Q {','.join(consumed)} names no {runner} destination's "
                         f"queue (known: {', '.join(sorted(known)) or 'none'})")
    return served


def open_runners(sender: Any, runner: str, cls: type[R], why: str, state: tuple[str, str], what: str) -> dict[str, R]:
    """At worker_init: check the pool and the queues (`why`: what a forking pool would
    break), give the runner its state file (`state`: the param and the file's suffix),
    then open one runner per served destination (`what` it holds, for the error)."""
    served = served_destinations(sender, runner, why)
    param, suffix = state
    path = state_file(runtime.context().settings.home, runner, sender.hostname, suffix)
    runtime.add_runner_params(runner, **{param: str(path)})
    opened: dict[str, R] = {}
    try:
        for name in served:
            held = runtime.runner_for(name)
            assert isinstance(held, cls)
            opened[name] = held
    except Exception as exc:  # a signal handler's Exception would only be logged: stop here
        raise SystemExit(f"workers.{runner}: cannot open {what}: {exc}") from exc
    return opened
