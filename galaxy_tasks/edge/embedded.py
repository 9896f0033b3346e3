"""Embedded mode: one process, an in-memory broker, SQLite and the local runner.

`galaxy-tasks run jobs.yml` works on a fresh machine with no server: a Celery worker runs
in a thread of this process and serves every queue. Because the database is the truth, a
run that was interrupted resumes its unfinished jobs when the next one starts.
"""
from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from typing import Iterator

from celery.beat import EmbeddedService

from galaxy_tasks.edge import hooks, messages, runtime, security
from galaxy_tasks.edge.app import app
from galaxy_tasks.store import schema


@contextmanager
def embedded_worker(concurrency: int = 4, reconcile: bool = True) -> Iterator[object]:
    """Run a worker for every queue in this process for the duration of the block."""

    ctx = runtime.context()
    security.undumpable()  # the jobs of this process run as its user
    ctx.settings.home.mkdir(parents=True, exist_ok=True)
    ctx.settings.jobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    schema.upgrade(ctx.settings.database_url)
    queues = messages.with_host_queues(ctx, [ctx.settings.steps_queue] + ctx.routing.queues)
    app.amqp.queues.select(queues)
    ready = threading.Event()
    worker = app.WorkController(
        app=app,
        hostname=f"embedded-{os.getpid()}@{socket.gethostname()}",
        pool_cls="threads",
        concurrency=concurrency,
        queues=queues,
        beat=False,  # Celery's embedded beat is a forked process: see `clock` below
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
        ready_callback=lambda _consumer: ready.set(),
    )
    thread = threading.Thread(target=worker.start, name="galaxy-tasks-embedded-worker", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the embedded worker did not start within 30 s")
    hooks.recover(queues)  # Celery sends worker_ready only from its command-line worker
    # Reconciliation's schedule runs in a thread of this process: a forked beat would send
    # into a copy of the in-memory broker, and outlive this process if it is killed.
    clock = EmbeddedService(app, thread=True, schedule_filename=app.conf.beat_schedule_filename) if reconcile else None
    if clock is not None:
        clock.start()
    try:
        yield worker
    finally:
        if clock is not None:
            clock.stop()
        worker.stop(in_sighandler=False)
        thread.join(timeout=10)
        runtime.close_runners()
