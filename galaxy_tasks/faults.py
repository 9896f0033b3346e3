"""Named crash points for the fault-injection tests: a step dies exactly where a real crash
would hurt most (between an external effect and the database write that records it).

Off unless GALAXY_TASKS_CRASH_POINTS names the point; then the process SIGKILLs itself the
first time it passes the point for a job (a marker in GALAXY_TASKS_CRASH_DIR makes it once),
so the retried step finds the world exactly as the crash left it.
"""
from __future__ import annotations

import os
import signal

_POINTS = frozenset(filter(None, os.environ.get("GALAXY_TASKS_CRASH_POINTS", "").split(",")))


def crash_point(name: str, job_id: str) -> None:
    if name not in _POINTS:
        return
    marker = os.path.join(os.environ.get("GALAXY_TASKS_CRASH_DIR", "/tmp"), f"crashed-{name}-{job_id}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
