"""The Slurm worker: a Celery worker whose process holds the Slurm runner's listener.

    celery -A workers.slurm worker -n slurm1@%h [-Q slurm,slurm.big] [--concurrency 4]

- Pool: threads (the default here) or solo. The listener (a TCP port, a selector thread
  and a confirmation thread) belongs to the process: prefork would leave the pool's
  children without it, so forking pools are refused.
- Queues: without `-Q`, the queues of every slurm destination of the job_conf. A plain
  `galaxy-tasks worker` starts this worker itself for them (galaxy_tasks/child_workers.py).
- The listener is opened when the worker starts (`worker_init`, before any message is
  taken). Its port and secret are kept in `$GALAXY_TASKS_HOME/slurm/<node name>.listener`,
  so a worker restarted under the same node name (`-n`) listens on the same port again and
  still hears the jobs submitted before it; hooks.py's `recover` (at `worker_ready`)
  follows them again and finishes those that ended while no worker listened.
- The listener is closed on shutdown (hooks.py's `worker_shutdown` closes the runners);
  jobs keep running.
- `celery -A workers.slurm inspect slurm_calls` shows the Slurm commands the process ran,
  by kind, and the announcements it heard, by outcome.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.worker.control import inspect_command

from galaxy_tasks.edge.app import app
from galaxy_tasks.logs import event
from galaxy_tasks.runners.slurm import SlurmRunner
from workers.holding import open_runners, serve_own_queues_by_default

__all__ = ["app"]

log = logging.getLogger("galaxy_tasks.workers.slurm")

app.conf.worker_pool = "threads"

_runners: dict[str, SlurmRunner] = {}

serve_own_queues_by_default("slurm")


@signals.worker_init.connect
def open_listener(sender: Any = None, **_: Any) -> None:
    """Check the pool and the queues, then open the listener (on its earlier port)."""
    _runners.update(open_runners(sender, "slurm", SlurmRunner, "the Slurm runner's listener (a port and two "
                                 "threads) does not survive fork()", ("state_file", ".listener"), "the Slurm listener"))


@signals.worker_ready.connect
def log_listener(**_: Any) -> None:
    """(Logging is set up after worker_init.)"""
    for runner in _runners.values():
        host, port = runner.address
        event(log, "slurm_listener", host=host, port=port, state_file=runner.params.state_file,
              destinations=",".join(_runners))
        return


@signals.worker_shutdown.connect
def log_calls(**_: Any) -> None:
    """hooks.py closes the runners, and with the last of them the listener; say what it cost."""
    if _runners:
        event(log, "slurm_listener_closed", **calls())
        _runners.clear()


def calls() -> dict[str, int]:
    """Slurm commands of this process by kind, summed over its runners, and announcements
    heard by outcome (prefixed `heard_`; one listener per process, shared by the runners)."""
    total: dict[str, int] = {}
    for runner in _runners.values():
        for kind, count in runner.calls.items():
            total[kind] = total.get(kind, 0) + count
    for runner in _runners.values():
        total.update({f"heard_{k}": v for k, v in runner.listener_stats.items()})
        break
    return total


@inspect_command()
def slurm_calls(state: Any, **_: Any) -> dict[str, int]:
    """Slurm commands of this worker process by kind (sbatch, squeue, scancel, scontrol,
    jobcomp reads) and announcements heard by outcome."""
    return calls()
