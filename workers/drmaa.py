"""The DRMAA worker: a Celery worker whose process holds one DRMAA session.

    celery -A workers.drmaa worker -n drmaa1@%h [-Q drmaa,drmaa.sge_big] [--concurrency 4]

- It starts itself again with GLIBC_TUNABLES set if it is not (libdrmaa needs more static
  TLS than glibc reserves; see galaxy_tasks/runners/drmaa/tls.py).
- Pool: threads (the default here) or solo. A DRMAA session does not survive fork(), so
  prefork, and the green pools that a blocking C call would stall, are refused.
- Queues: without `-Q`, the queues of every drmaa destination of the job_conf.
- The session is opened when the worker starts (`worker_init`, before any message is
  taken) and its contact is kept in `$GALAXY_TASKS_HOME/drmaa/<node name>.contact`. A
  worker restarted under the same node name (`-n`) re-attaches to that session and follows
  its running jobs by wait-any again; jobs that ended while no worker was attached are
  finished from Grid Engine's accounting (`recover` at `worker_ready`, in hooks.py).
- The session is closed on shutdown (hooks.py's `worker_shutdown`); jobs keep running.
- `celery -A workers.drmaa inspect drmaa_calls` shows the process's DRM calls by kind.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.worker.control import inspect_command

from galaxy_tasks.edge.app import app
from galaxy_tasks.logs import event
from galaxy_tasks.runners.drmaa import DrmaaRunner
from galaxy_tasks.runners.drmaa.tls import restart_with_static_tls
from workers.holding import open_runners, serve_own_queues_by_default

__all__ = ["app"]

restart_with_static_tls()  # before libdrmaa is loaded: see galaxy_tasks/runners/drmaa/tls.py

log = logging.getLogger("galaxy_tasks.workers.drmaa")

app.conf.worker_pool = "threads"

_runners: dict[str, DrmaaRunner] = {}

serve_own_queues_by_default("drmaa")


@signals.worker_init.connect
def open_session(sender: Any = None, **_: Any) -> None:
    """Check the pool and the queues, then open the session (or re-attach to it)."""
    _runners.update(open_runners(sender, "drmaa", DrmaaRunner, "a DRMAA session does not survive fork() and blocks "
                                 "green threads", ("contact_file", ".contact"), "the DRMAA session"))


@signals.worker_ready.connect
def log_session(**_: Any) -> None:
    """(Logging is set up after worker_init.)"""
    for runner in _runners.values():
        event(log, "drmaa_session", contact=runner.contact, reattached=runner.reattached,
              contact_file=runner.params.contact_file, destinations=",".join(_runners))
        return


@signals.worker_shutdown.connect
def log_calls(**_: Any) -> None:
    """hooks.py closes the runners, and with the last of them the session; say what it cost."""
    if _runners:
        event(log, "drmaa_session_closed", **calls())
        _runners.clear()


def calls() -> dict[str, int]:
    """DRM calls of this process by kind (one session: every runner shares the counter)."""
    for runner in _runners.values():
        return dict(runner.calls)
    return {}


@inspect_command()
def drmaa_calls(state: Any, **_: Any) -> dict[str, int]:
    """DRM calls of this worker process by kind: runJob, wait, control, qstat, accounting."""
    return calls()
