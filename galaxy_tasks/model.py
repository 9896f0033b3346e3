"""The job tables, and `Job`, the one type a job's row travels as.

The row is the source of truth; the broker only carries work. The tables are SQLAlchemy
Core definitions read and written only by `galaxy_tasks.store`; everything else sees the
frozen `Job` record the store returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Mapping

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as naive UTC and read back as aware UTC, the same on SQLite
    (which keeps no zone) and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


metadata = MetaData()

jobs = Table(
    "gt_job", metadata,
    Column("id", String(36), primary_key=True),
    # the job spec, as validated at submission
    Column("tool_id", String(255), nullable=False, index=True),
    Column("tool_version", String(64)),
    Column("user", String(255), index=True),
    Column("command", Text, nullable=False),
    Column("environment", JSON, nullable=False, default=dict),
    Column("inputs", JSON, nullable=False, default=list),
    Column("outputs", JSON, nullable=False, default=list),
    Column("cores", Integer, nullable=False, default=1),
    Column("memory_mb", Integer),
    Column("walltime_s", Integer),
    Column("destination_hint", String(255)),
    Column("environment_setup_file", Text),
    # where it went and what happened
    Column("destination", String(255), nullable=False, index=True),
    Column("queue", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("job_dir", Text),
    # written into the job directory at prepare: what the directory holds is this row's only
    # if it carries this token (a directory left by an earlier job with the same id does not)
    Column("token", String(64)),
    Column("external_id", String(255)),
    # the message (task id) that holds the SUBMITTING claim: its own redelivery after a
    # crash may take the launch over at once, any other message must wait out the lease
    Column("owner", String(255)),
    Column("exit_code", Integer),
    Column("signal", Integer),
    Column("reason", Text),
    Column("stdout_tail", Text),
    Column("stderr_tail", Text),
    Column("wall_time_s", Float),
    Column("max_rss_kb", Integer),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("queued_at", UTCDateTime()),
    Column("running_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Column("ended_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
    # reconciliation looks only at rows whose next check is due (an indexed range scan)
    Column("check_at", UTCDateTime()),
    Column("checks", Integer, nullable=False, default=0),
    # why the runner ended the job, in Galaxy's words (walltime_reached, memory_limit_reached)
    Column("runner_state", String(64)),
    # job events: the client's queue and id, the number of the job's state changes, and the
    # outbox mark: when a change not yet published was recorded (None: all published)
    Column("events_queue", String(255)),
    Column("client_id", String(255)),
    Column("event_seq", Integer, nullable=False, default=0, server_default="0"),
    Column("unpublished_at", UTCDateTime()),
    # policies: the attempt (a resubmission is the next one), every earlier attempt, the
    # concurrency-limit keys this job holds a place under, and the key it waits on
    Column("attempt", Integer, nullable=False, default=1, server_default="1"),
    Column("attempts", JSON),
    Column("limit_keys", JSON(none_as_null=True)),
    Column("waiting_on", String(255)),
    # the workflow whose step element this job is (None: a job submitted on its own)
    Column("workflow_id", String(36)),
    # provenance: whether the spec allows reuse of an earlier job's result; the key of what
    # the job computes (tool, version, command, environment, its inputs' content hashes),
    # set at prepare for a job that allows reuse; the size and sha256 of each declared output,
    # recorded at finish; the job whose outputs this one reused instead of running
    Column("reuse", Boolean, nullable=False, default=False, server_default=false()),
    Column("provenance", String(64), index=True),
    Column("output_files", JSON(none_as_null=True)),
    Column("reused_from", String(36)),
    Index("ix_gt_job_state_check_at", "state", "check_at"),
    Index("ix_gt_job_waiting", "state", "waiting_on", "created_at"),
    Index("ix_gt_job_created_at", "created_at"),
    Index("ix_gt_job_unpublished_at", "unpublished_at"),
    Index("ix_gt_job_workflow_id", "workflow_id", "state"),
)

#: one row per transition: the job's history, and the audit that it was legal
state_changes = Table(
    "gt_job_state_change", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("gt_job.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("at", UTCDateTime(), nullable=False, default=utcnow),
    Column("reason", Text),
)

#: how many jobs hold a place under each concurrency-limit key now (a user's jobs, a
#: destination's): changed only with the move of the job that takes or gives back a place
limit_usage = Table(
    "gt_limit_usage", metadata,
    Column("key", String(255), primary_key=True),
    Column("used", Integer, nullable=False, default=0),
)

#: a named, expiring lock: one reconciliation pass at a time, however many workers or beat
#: processes try to start one
leases = Table(
    "gt_lease", metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("until", UTCDateTime(), nullable=False),
)


#: a workflow: a named DAG of job specs (docs/workflows.md), its document as submitted, and
#: its own state; `check_at` is when reconciliation next runs a scheduling pass over it
workflows = Table(
    "gt_workflow", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("user", String(255)),
    Column("state", String(16), nullable=False),
    Column("document", JSON, nullable=False),
    Column("reason", Text),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("check_at", UTCDateTime()),
    Index("ix_gt_workflow_state_check_at", "state", "check_at"),
    Index("ix_gt_workflow_created_at", "created_at"),
)

workflow_changes = Table(
    "gt_workflow_state_change", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("workflow_id", String(36), ForeignKey("gt_workflow.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("at", UTCDateTime(), nullable=False, default=utcnow),
    Column("reason", Text),
)

#: a step: its job spec template, how many elements it has, and the steps it needs
#: (`needs`: step name -> "each" (the element of the same index) or "all")
workflow_steps = Table(
    "gt_workflow_step", metadata,
    Column("workflow_id", String(36), ForeignKey("gt_workflow.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("elements", Integer, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("needs", JSON, nullable=False),
)

#: one element of a step: its parameters and the id its job has (or will have) in this run
#: of it; the job's row, once it exists, is the element's state. The primary key is the
#: element, and the job id is derived from it: a job is never created twice for one element.
workflow_elements = Table(
    "gt_workflow_element", metadata,
    Column("workflow_id", String(36), ForeignKey("gt_workflow.id", ondelete="CASCADE"), primary_key=True),
    Column("step", String(64), primary_key=True),
    Column("index", Integer, primary_key=True),
    Column("params", JSON, nullable=False),
    Column("run", Integer, nullable=False),
    Column("job_id", String(36), nullable=False),
    Index("ix_gt_workflow_element_job_id", "job_id", unique=True),
)


@dataclass(frozen=True, slots=True)
class Job:
    """A job's row as the store read it (or, for a job just created, as it was written)."""

    id: str
    tool_id: str
    command: str
    destination: str
    queue: str
    state: str
    tool_version: str | None = None
    user: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    cores: int = 1
    memory_mb: int | None = None
    walltime_s: int | None = None
    destination_hint: str | None = None
    environment_setup_file: str | None = None
    job_dir: str | None = None
    token: str | None = None
    external_id: str | None = None
    owner: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    stdout_tail: str | None = None
    stderr_tail: str | None = None
    wall_time_s: float | None = None
    max_rss_kb: int | None = None
    created_at: datetime = field(default_factory=utcnow)
    queued_at: datetime | None = None
    running_at: datetime | None = None
    finished_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime = field(default_factory=utcnow)
    check_at: datetime | None = None
    checks: int = 0
    runner_state: str | None = None
    events_queue: str | None = None
    client_id: str | None = None
    event_seq: int = 0
    unpublished_at: datetime | None = None
    attempt: int = 1
    attempts: list[dict[str, Any]] | None = None
    limit_keys: list[str] | None = None
    waiting_on: str | None = None
    workflow_id: str | None = None
    reuse: bool = False
    provenance: str | None = None
    output_files: dict[str, dict[str, Any]] | None = None
    reused_from: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        return cls(**row)

    def to_json(self) -> dict[str, Any]:
        """The job as clients see it (`status --json`, `list --json`)."""
        return {
            "id": self.id,
            "state": self.state,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "reason": self.reason,
            "runner_state": self.runner_state,
            "attempt": self.attempt,
            "attempts": self.attempts or [],
            "waiting_on": self.waiting_on,
            "workflow_id": self.workflow_id,
            "reused_from": self.reused_from,
            "output_files": self.output_files,
            "tool_id": self.tool_id,
            "tool_version": self.tool_version,
            "user": self.user,
            "destination": self.destination,
            "external_id": self.external_id,
            "cores": self.cores,
            "memory_mb": self.memory_mb,
            "walltime_s": self.walltime_s,
            "wall_time_s": self.wall_time_s,
            "max_rss_kb": self.max_rss_kb,
            "job_dir": self.job_dir,
            "created_at": _iso(self.created_at),
            "queued_at": _iso(self.queued_at),
            "running_at": _iso(self.running_at),
            "finished_at": _iso(self.finished_at),
            "stdout": self.stdout_tail,
            "stderr": self.stderr_tail,
        }


JOB_COLUMNS = frozenset(f.name for f in fields(Job))
assert JOB_COLUMNS == set(jobs.c.keys()), "Job and gt_job must name the same columns"


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition of a job's history."""

    id: int
    job_id: str
    from_state: str | None
    to_state: str
    at: datetime
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_state, "to": self.to_state, "at": _iso(self.at), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """A workflow's row as the store read it."""

    id: str
    name: str
    state: str
    document: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    user: str | None = None
    reason: str | None = None
    check_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> WorkflowRecord:
        return cls(**row)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """A step's row: its spec template, its number of elements, the steps it needs."""

    workflow_id: str
    name: str
    position: int
    elements: int
    spec: dict[str, Any]
    needs: dict[str, str]

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> StepRecord:
        return cls(**row)


@dataclass(frozen=True, slots=True)
class ElementRecord:
    """One element of a step, with the state and directory of its job in this run of it
    (`job_state` None: its job has not been created)."""

    step: str
    index: int
    params: dict[str, Any]
    run: int
    job_id: str
    job_state: str | None
    job_dir: str | None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
