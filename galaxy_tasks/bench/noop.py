"""The bare-chain baseline's task: does nothing, and the last task of a chain announces its
end on a queue of its own (so the benchmark waits on messages, not on polling), with the
time it started (so a latency excludes the announcing)."""
from __future__ import annotations

import time

from kombu.simple import SimpleQueue

from galaxy_tasks.edge.app import app

DONE_QUEUE = "galaxy_tasks.bench.done"


@app.task(name="galaxy_tasks.noop")
def noop(token: str | None = None) -> None:
    if token is not None:
        started = time.time()
        with app.connection_for_write() as connection:
            with SimpleQueue(connection, DONE_QUEUE) as done:
                done.put({"token": token, "started": started})
