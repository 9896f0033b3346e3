"""Job events: what a client hears when a job's state changed (docs/events.md).

A job event is a small JSON object built from the job's row after the database recorded the
change, so it says everything the client needs (the state is in the message: a duplicate is
harmless, and `seq` orders them). This module is the format only; `messages.py` sends them.
"""
from __future__ import annotations

from typing import Any

from galaxy_tasks.model import Job

KIND = "job_state"
VERSION = 1
#: the Celery event type of the broadcast copy (every `galaxy-tasks wait` and `events --follow`)
CELERY_EVENT = "job-state"
#: the state of an event that answers a lookup of an id no job has
UNKNOWN = "unknown"


def state_event(job: Job) -> dict[str, Any]:
    """The event of the job's current state."""
    return {
        "event": KIND,
        "version": VERSION,
        "job_id": job.id,
        "client_id": job.client_id,
        "state": job.state,
        "seq": job.event_seq,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "reason": job.reason,
        "runner_state": job.runner_state,
        "external_id": job.external_id,
        "destination": job.destination,
        "tool_id": job.tool_id,
        "times": {name: _iso(getattr(job, name)) for name in
                  ("created_at", "queued_at", "running_at", "ended_at", "finished_at")},
    }


def unknown_event(job_id: str) -> dict[str, Any]:
    """The answer to a lookup of an id galaxy-tasks has no job for: send it again."""
    return {"event": KIND, "version": VERSION, "job_id": job_id, "client_id": None, "state": UNKNOWN, "seq": 0}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
