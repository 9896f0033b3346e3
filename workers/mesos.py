"""The Mesos worker: a Celery worker whose process runs one pymesos framework per mesos
destination it serves.

    celery -A workers.mesos worker -n mesos@%h [-Q mesos,mesos.big] [--concurrency 4]

- Pool: threads (the default here) or solo. The framework's driver thread lives in this
  process and would not survive fork(), so prefork (and the green pools) are refused.
- Queues: without `-Q`, the queues of every mesos destination of the job_conf.
- At start (`worker_init`, before any message is taken) each served destination gets its
  MesosRunner: the framework id is kept in `$GALAXY_TASKS_HOME/mesos/<destination>.framework_id`
  (unless the destination sets `framework_id_file`), so a restarted worker re-subscribes as
  the same framework and finds its tasks. The worker waits for the registration (at most
  the destination's `register_timeout_s`, default 30 s; the driver keeps trying after
  that), then follows every launched job of the destination again (`lifecycle.held_by`):
  a job whose script started is reconciled with Mesos, one that never started is queued
  for an offer again (a copy Mesos still holds makes that a no-op: same task id).
- Run ONE such worker per destination (scale it with --concurrency): a framework has one
  scheduler. A second worker with the same framework id takes the framework over, and the
  first one, fenced, stops (exit code 0) instead of fighting for it.
- A normal stop (SIGTERM, SIGINT) stops the driver with failover: Mesos keeps the framework
  and its running tasks for `failover_timeout`. The framework is never torn down. If the
  driver gives up on the master (`connect_timeout_s`), pymesos interrupts the main thread
  and the worker stops with exit code 1, for its supervisor to restart it.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals
from celery.platforms import EX_FAILURE, EX_OK
from celery.worker import state as worker_state

from galaxy_tasks import lifecycle
from galaxy_tasks.edge import runtime
from galaxy_tasks.edge.app import app
from galaxy_tasks.logs import event
from galaxy_tasks.runners.mesos import MesosRunner, import_pymesos
from workers.holding import serve_own_queues_by_default, served_destinations, state_file

__all__ = ["app"]

import_pymesos()  # now, in the main thread: pymesos installs a SIGINT handler on import

log = logging.getLogger("galaxy_tasks.workers.mesos")

app.conf.worker_pool = "threads"

_runners: dict[str, MesosRunner] = {}
_started: list[dict[str, Any]] = []  # what happened at worker_init, logged once logging is up


serve_own_queues_by_default("mesos")


@signals.worker_init.connect
def start_frameworks(sender: Any = None, **_: Any) -> None:
    """Check the pool and the queues, then start, register and recover each framework."""
    served = served_destinations(sender, "mesos", "the Mesos framework's driver thread does not survive fork()")
    try:
        for name in served:  # every framework subscribes at once ...
            _runners[name] = _build(name)
        for name in served:  # ... then each is waited for, and its jobs followed again
            _ready(name, _runners[name])
    except SystemExit:
        raise
    except Exception as exc:  # a signal handler's Exception would only be logged: stop here
        raise SystemExit(f"workers.mesos: cannot start the Mesos framework: {exc}") from exc


def _build(name: str) -> MesosRunner:
    ctx = runtime.context()
    destination = ctx.routing.destinations[name]
    id_file = (destination.params.framework_id_file
               or state_file(ctx.settings.home, "mesos", name, ".framework_id"))
    # process params apply to the runners built from now on: this destination's, next
    runtime.add_runner_params("mesos", framework_id_file=str(id_file))
    runner = runtime.runner_for(name)
    assert isinstance(runner, MesosRunner)
    return runner


def _ready(name: str, runner: MesosRunner) -> None:
    registered = runner.wait_registered(runner.params.register_timeout_s)
    followed, queued = recover(name, runner)
    threading.Thread(target=_watch, args=(name, runner), name=f"mesos-watch-{name}", daemon=True).start()
    _started.append(dict(destination=name, master=runner.master, framework_id=runner.framework_id,
                         framework_id_file=str(runner.framework_id_file), registered=registered,
                         followed=followed, queued=queued))


def recover(name: str, runner: MesosRunner) -> tuple[int, int]:
    """Follow the destination's launched jobs again, with everything needed to launch again
    those that never started. Runs before hooks.py's generic recovery (worker_ready), which
    then finds every job known."""
    ctx = runtime.context()
    ids = []
    for tracked in lifecycle.held_by(ctx, [name]):
        job = ctx.store.job(tracked.job_id)
        if job is not None:  # idempotent: a started job is reconciled, another one queued
            ids.append(runner.submit(lifecycle.launch_for(ctx, job)))
    pending = set(runner.pending_ids())
    queued = sum(1 for tid in ids if tid in pending)
    return len(ids) - queued, queued


def _watch(name: str, runner: MesosRunner) -> None:
    """Wait (no polling: a join) for the driver thread to end. After close() that is the
    normal stop; fenced, the worker has nothing left to do; otherwise pymesos gave up on the
    master and the worker must stop so that its supervisor restarts it."""
    runner.wait_stopped()
    if runner.closed:
        return
    if runner.fenced:
        event(log, "mesos_fenced", level=logging.CRITICAL, destination=name, reason=runner.fenced)
        worker_state.should_stop = EX_OK
    else:
        event(log, "mesos_driver_died", level=logging.CRITICAL, destination=name)
        worker_state.should_stop = EX_FAILURE


@signals.worker_ready.connect
def log_frameworks(**_: Any) -> None:
    """(Logging is set up after worker_init.)"""
    for started in _started:
        level = logging.INFO if started["registered"] else logging.WARNING
        event(log, "mesos_framework", level=level, **started)
    _started.clear()


@signals.worker_shutdown.connect
def forget_runners(**_: Any) -> None:
    """hooks.py closes the runners (with failover: never a teardown)."""
    _runners.clear()
