"""Job events: what a client hears when a job's state changed (docs/events.md).

A job event is a small JSON object built from the job's row after the database recorded the
change, so it says everything the client needs (the state is in the message: a duplicate is
harmless, and `seq` orders them). This module is the format only; `messages.py` sends them.

`EventModel` (pydantic) describes the message: `galaxy-tasks schema event` prints its JSON
Schema for a consumer in another language. `state_event` builds the dict itself (it runs on
every state change), and tests/unit/test_schemas.py checks that what it builds in every state
is what the model says.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from galaxy_tasks.model import Job
from galaxy_tasks.states import JobState

KIND = "job_state"
VERSION = 1
#: the Celery event type of the broadcast copy (every `galaxy-tasks wait` and `events --follow`)
CELERY_EVENT = "job-state"
#: the event a listener sends itself to know it is listening (docs/events.md)
LISTENER_PROBE = "job-listener-probe"
#: the state of an event that answers a lookup of an id no job has
UNKNOWN = "unknown"


#: why a runner ended a job, in the words of Galaxy's resubmit conditions
RunnerState = Literal["walltime_reached", "memory_limit_reached", "output_size_limit", "unknown_error",
                      "global_walltime_reached"]
RUNNER_STATES = get_args(RunnerState)
StateName = Literal["new", "queued", "limited", "submitting", "running", "ok", "error", "deleted", "unknown"]
assert set(get_args(StateName)) == {s.value for s in JobState} | {UNKNOWN}


class Times(BaseModel):
    """When the job reached each step (ISO 8601, UTC); null: not yet."""

    model_config = ConfigDict(extra="allow", title="JobTimes")

    created_at: datetime | None = Field(None, description="accepted")
    queued_at: datetime | None = Field(None, description="prepared: its job directory is ready")
    running_at: datetime | None = Field(None, description="started by its runner")
    ended_at: datetime | None = Field(None, description="the end of its process, as the runner or job script saw it")
    finished_at: datetime | None = Field(None, description="the end recorded")


class EventModel(BaseModel):
    """A job event (docs/events.md): a job's state after the database recorded a change, or
    `unknown` for an id no job has. Consumers should ignore fields they do not know: a
    version 1 event may gain fields, never change the meaning of one."""

    model_config = ConfigDict(extra="allow", title="JobEvent")

    event: Literal["job_state"] = Field(description="the kind of message")
    version: Literal[1] = Field(description="the format's version")
    job_id: str = Field(description="galaxy-tasks' job id")
    client_id: str | None = Field(description="what the spec's events.client_id said")
    state: StateName = Field(description="the job's state; `unknown` answers a lookup of an id no job has")
    seq: int = Field(ge=0, description="the number of the job's state changes so far: apply an event only if its "
                                       "seq is higher than the last one applied")
    exit_code: int | None = Field(None, description="the job's exit code (the job script's wins over the runner's)")
    signal: int | None = Field(None, description="the signal that ended it")
    reason: str | None = Field(None, description="why it ended as it did, in words")
    runner_state: str | None = Field(
        None, description="why the runner ended it, in the words of Galaxy's resubmit conditions: "
                          f"{', '.join(RUNNER_STATES)}", json_schema_extra={"examples": list(RUNNER_STATES)})
    external_id: str | None = Field(None, description="the runner's id of the job")
    destination: str | None = Field(None, description="the destination it was routed to")
    tool_id: str | None = Field(None, description="the job's tool")
    attempt: int | None = Field(None, ge=1, description="1, or the attempt a destination's resubmit rule started")
    waiting_on: str | None = Field(None, description="while `limited`: the concurrency limit the job waits for a "
                                                     "place under (`user:<name>`, `destination:<id>`, `tag:<tag>`)")
    max_rss_kb: int | None = Field(None, ge=0, description="the job's peak resident memory as its runner measured it "
                                                        "(KiB), once it ended")
    times: Times | None = Field(None, description="absent from an `unknown` and a `refused` event")
    refused: bool | None = Field(None, description="true: galaxy-tasks refused the job's spec and recorded nothing; "
                                                   "the event (state `error`, seq 1) is the job's only one, "
                                                   "`reason` names the field and what is wrong")


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
        "attempt": job.attempt,
        "waiting_on": job.waiting_on,
        "max_rss_kb": job.max_rss_kb,
        "times": {name: _iso(getattr(job, name)) for name in
                  ("created_at", "queued_at", "running_at", "ended_at", "finished_at")},
    }


def unknown_event(job_id: str) -> dict[str, Any]:
    """The answer to a lookup of an id galaxy-tasks has no job for: send it again."""
    return {"event": KIND, "version": VERSION, "job_id": job_id, "client_id": None, "state": UNKNOWN, "seq": 0}


def refused_event(job_id: str, client_id: str | None, reason: str) -> dict[str, Any]:
    """The end of a job galaxy-tasks refused to record: the client hears it as an error with
    the reason, instead of waiting for a job that will never run. seq 1: the first and only
    event of that id (an earlier job's events under the same id, if any, are newer)."""
    return {"event": KIND, "version": VERSION, "job_id": job_id, "client_id": client_id, "state": JobState.ERROR.value,
            "seq": 1, "refused": True, "reason": reason, "exit_code": None, "signal": None, "runner_state": None}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
