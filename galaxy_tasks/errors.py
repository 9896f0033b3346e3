"""Every exception a caller of galaxy-tasks may have to handle, in one place.

A client submitting jobs meets `SpecError` and `UnknownJob`; an operator loading a job_conf
meets `ConfigError`; the steps meet the runner errors, which decide a job's fate: a
`RunnerError` fails the job, `RunnerFull` puts it back in line, `RunnerUnavailable` retries
the step without blaming the job.
"""
from __future__ import annotations

from typing import Any


class GalaxyTasksError(Exception):
    """Base of the errors below."""


class SpecError(GalaxyTasksError, ValueError):
    """A refused job spec; `field` names what is wrong so a client can fix it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class ConfigError(GalaxyTasksError, ValueError):
    """The configuration (job_conf YAML or an environment variable) is wrong; the message
    names the file, the line where there is one, and the key."""


class UnknownJob(GalaxyTasksError, LookupError):
    """No job has this id."""


class RunnerError(GalaxyTasksError):
    """A runner refused or failed a job (after any retries of its own); the message is
    kept as the job's reason."""


class StagingError(RunnerError):
    """Files could not travel between the submitter's host and a worker that shares no
    filesystem with it: the transfer failed, or a file arrived other than it left."""


class RunnerFull(GalaxyTasksError):
    """The runner has no room for another job right now (every slot of a limited local
    host is taken): the job goes back in line, and the end of a running job wakes it."""


class RunnerUnavailable(GalaxyTasksError, RuntimeError):
    """The runner cannot act right now (e.g. not connected to its master), through no fault
    of the job: the step is retried, and the job is not failed."""


class StagingUnreachable(RunnerUnavailable):
    """The submitter's host cannot be reached for now (connection refused, timed out, reset):
    a stage-in is retried as any step whose runner is unavailable, and a stage-out by the
    next status check; the job is not failed for the network's fault."""


class NotSent(GalaxyTasksError):
    """A job was recorded but its first message could not be sent (the broker is down): it
    is sent from the database later (a starting steps worker, reconciliation), so the
    client must not submit it again."""

    def __init__(self, job: Any, cause: BaseException) -> None:
        super().__init__(f"job {job.id} recorded, not sent: {cause}")
        self.job = job
        self.cause = cause
