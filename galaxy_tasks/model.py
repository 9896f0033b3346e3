"""The job tables, and `Job`, the one type a job's row travels as.

The row is the source of truth; the broker only carries work. The tables are SQLAlchemy
Core definitions read and written only by `galaxy_tasks.store`; everything else sees the
frozen `Job` record the store returns. A table whose rows travel as a record is built from
the record's fields (`sql(...)`, `columns`), so each column is written once, where mypy
checks what reads it; tests/unit/test_store.py checks the migrations make the same tables.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Mapping, get_args, get_type_hints

from sqlalchemy import (
    JSON,
    BigInteger,
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


def sql(kind: Any, *constraints: Any, **options: Any) -> dict[str, Any]:
    """A record field's column: its SQL type, constraints (a foreign key) and options (index,
    primary_key, server_default). Whether it may be NULL and what an insert puts in it when
    it is not given are the field's own: whether its type allows None, its default."""
    return {"sql": (kind, constraints, options)}


def columns(record: type) -> list[Column[Any]]:
    """The columns of a dataclass whose fields carry `sql(...)`: NOT NULL unless the field's
    type allows None, and the field's default as the insert default."""
    hints = get_type_hints(record)
    made = []
    for item in fields(record):
        kind, constraints, options = item.metadata["sql"]
        default = item.default_factory if item.default_factory is not MISSING else item.default
        made.append(Column(item.name, kind, *constraints, nullable=type(None) in get_args(hints[item.name]),
                           default=None if default is MISSING else default, **options))
    return made


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A job's row as the store read it (or, for a job just created, as it was written).

    Each field is a column of `gt_job` (the table below is built from these fields, in
    their order), so a column is declared once, with the type the rest of the code reads."""

    id: str = field(metadata=sql(String(36), primary_key=True))
    # the job spec, as validated at submission
    tool_id: str = field(metadata=sql(String(255), index=True))
    tool_version: str | None = field(default=None, metadata=sql(String(64)))
    user: str | None = field(default=None, metadata=sql(String(255), index=True))
    command: str = field(metadata=sql(Text))
    environment: dict[str, str] = field(default_factory=dict, metadata=sql(JSON))
    inputs: list[str] = field(default_factory=list, metadata=sql(JSON))
    outputs: list[str] = field(default_factory=list, metadata=sql(JSON))
    cores: int = field(default=1, metadata=sql(Integer))
    memory_mb: int | None = field(default=None, metadata=sql(Integer))
    walltime_s: int | None = field(default=None, metadata=sql(Integer))
    destination_hint: str | None = field(default=None, metadata=sql(String(255)))
    environment_setup_file: str | None = field(default=None, metadata=sql(Text))
    # where it went and what happened
    destination: str = field(metadata=sql(String(255), index=True))
    queue: str = field(metadata=sql(String(255)))
    state: str = field(metadata=sql(String(16)))
    job_dir: str | None = field(default=None, metadata=sql(Text))
    # written into the job directory at prepare: what the directory holds is this row's only
    # if it carries this token (a directory left by an earlier job with the same id does not)
    token: str | None = field(default=None, metadata=sql(String(64)))
    external_id: str | None = field(default=None, metadata=sql(String(255)))
    # the message (task id) that holds the SUBMITTING claim: its own redelivery after a
    # crash may take the launch over at once, any other message must wait out the lease
    owner: str | None = field(default=None, metadata=sql(String(255)))
    exit_code: int | None = field(default=None, metadata=sql(Integer))
    signal: int | None = field(default=None, metadata=sql(Integer))
    reason: str | None = field(default=None, metadata=sql(Text))
    stdout_tail: str | None = field(default=None, metadata=sql(Text))
    stderr_tail: str | None = field(default=None, metadata=sql(Text))
    wall_time_s: float | None = field(default=None, metadata=sql(Float))
    max_rss_kb: int | None = field(default=None, metadata=sql(Integer))
    created_at: datetime = field(default_factory=utcnow, metadata=sql(UTCDateTime()))
    queued_at: datetime | None = field(default=None, metadata=sql(UTCDateTime()))
    running_at: datetime | None = field(default=None, metadata=sql(UTCDateTime()))
    finished_at: datetime | None = field(default=None, metadata=sql(UTCDateTime()))
    ended_at: datetime | None = field(default=None, metadata=sql(UTCDateTime()))
    updated_at: datetime = field(default_factory=utcnow, metadata=sql(UTCDateTime()))
    # reconciliation looks only at rows whose next check is due (an indexed range scan)
    check_at: datetime | None = field(default=None, metadata=sql(UTCDateTime()))
    checks: int = field(default=0, metadata=sql(Integer))
    # why the runner ended the job, in Galaxy's words (walltime_reached, memory_limit_reached)
    runner_state: str | None = field(default=None, metadata=sql(String(64)))
    # job events: the client's queue and id, the number of the job's state changes, and the
    # outbox mark: when a change not yet published was recorded (None: all published)
    events_queue: str | None = field(default=None, metadata=sql(String(255)))
    client_id: str | None = field(default=None, metadata=sql(String(255)))
    event_seq: int = field(default=0, metadata=sql(Integer, server_default="0"))
    unpublished_at: datetime | None = field(default=None, metadata=sql(UTCDateTime()))
    # policies: the attempt (a resubmission is the next one), every earlier attempt, the
    # concurrency-limit keys this job holds a place under, and the key it waits on
    attempt: int = field(default=1, metadata=sql(Integer, server_default="1"))
    attempts: list[dict[str, Any]] | None = field(default=None, metadata=sql(JSON))
    limit_keys: list[str] | None = field(default=None, metadata=sql(JSON(none_as_null=True)))
    waiting_on: str | None = field(default=None, metadata=sql(String(255)))
    # the workflow whose step element this job is (None: a job submitted on its own)
    workflow_id: str | None = field(default=None, metadata=sql(String(36)))
    # provenance: whether the spec allows reuse of an earlier job's result; the key of what
    # the job computes (tool, version, command, environment, its inputs' content hashes),
    # set at prepare for a job that allows reuse; the size and sha256 of each declared output,
    # recorded at finish; the job whose outputs this one reused instead of running
    reuse: bool = field(default=False, metadata=sql(Boolean, server_default=false()))
    provenance: str | None = field(default=None, metadata=sql(String(64), index=True))
    output_files: dict[str, dict[str, Any]] | None = field(default=None, metadata=sql(JSON(none_as_null=True)))
    reused_from: str | None = field(default=None, metadata=sql(String(36)))
    # the Unix user the job runs as (None: the worker's own); the privileged helper reads it here
    run_as: str | None = field(default=None, metadata=sql(String(32)))
    # the job's GPUs and its own scheduler options (checked against its destination at accept)
    output_size_bytes: int | None = field(default=None, metadata=sql(BigInteger))
    gpus: int | None = field(default=None, metadata=sql(Integer))
    native_specification: str | None = field(default=None, metadata=sql(Text))
    # a client's directory the job's user is given with the job's own (Galaxy's job directory);
    # the privileged helper reads it here
    handover_dir: str | None = field(default=None, metadata=sql(Text))
    # what a destination without a shared filesystem sends home and rewrites (docs/staging.md)
    returns: list[str] | None = field(default=None, metadata=sql(JSON))
    rewrite: list[str] | None = field(default=None, metadata=sql(JSON))
    # the http staging transfer's tokens (JSON: {"in": ..., "out": ...}), minted at prepare on
    # the submitter's side; the far worker reads them here (never shown, logged or in a job's files)
    staging_tokens: str | None = field(default=None, repr=False, metadata=sql(Text))

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        """The job of a row of every column (`select(jobs)`, a move's `RETURNING *`), each
        field set through its slot: a frozen dataclass's __init__ sets each of its fields
        with object.__setattr__, which cost a burst about 40 us per row read, several rows
        per job. A row with fewer columns goes through __init__, with its defaults."""
        job = object.__new__(cls)
        try:
            for name, set_field in _FIELD_SETTERS:
                set_field(job, row[name])
        except KeyError:
            return cls(**row)
        return job

    def to_json(self) -> dict[str, Any]:
        """The job as clients see it (`status --json`, `list --json`): the fields of
        `SHOWN`, in that order, times in ISO 8601."""
        view = {}
        for name in SHOWN:
            value = getattr(self, name)
            view[SHOWN_AS.get(name, name)] = value.isoformat() if isinstance(value, datetime) else value
        view["attempts"] = self.attempts or []
        return view


#: each field of a Job and the slot that holds it (Job.from_row)
_FIELD_SETTERS = [(f.name, getattr(Job, f.name).__set__) for f in fields(Job)]

#: what clients see of a job, in the order they see it
SHOWN = ("id", "state", "exit_code", "signal", "reason", "runner_state", "attempt", "attempts", "waiting_on",
         "workflow_id", "reused_from", "output_files", "tool_id", "tool_version", "user", "destination",
         "external_id", "cores", "memory_mb", "walltime_s", "wall_time_s", "max_rss_kb", "job_dir", "created_at",
         "queued_at", "running_at", "finished_at", "stdout_tail", "stderr_tail")
#: the names clients know a shown field by, where it is not the column's
SHOWN_AS = {"stdout_tail": "stdout", "stderr_tail": "stderr"}


jobs = Table(
    "gt_job", metadata,
    *columns(Job),
    Index("ix_gt_job_state_check_at", "state", "check_at"),
    Index("ix_gt_job_waiting", "state", "waiting_on", "created_at"),
    # a destination's line: who runs and who waits there, per user (fair share, status)
    Index("ix_gt_job_line", "destination", "state", "user", "created_at"),
    # a destination's recent run times (estimates of a waiting job's start, load-aware routing)
    Index("ix_gt_job_destination_finished_at", "destination", "finished_at"),
    Index("ix_gt_job_created_at", "created_at"),
    Index("ix_gt_job_unpublished_at", "unpublished_at"),
    Index("ix_gt_job_workflow_id", "workflow_id", "state"),
)


def history(owner: Table, key: str) -> Table:
    """One row per transition of the rows of `owner` (named by `key`): their history, and
    the audit that it was legal."""
    return Table(
        f"{owner.name}_state_change", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(key, String(36), ForeignKey(owner.c.id, ondelete="CASCADE"), nullable=False, index=True),
        Column("from_state", String(16)),
        Column("to_state", String(16), nullable=False),
        Column("at", UTCDateTime(), nullable=False, default=utcnow),
        Column("reason", Text),
    )


state_changes = history(jobs, "job_id")

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


#: a message the broker gave back after its worker died with it (acks_late): how often it
#: came back, so one that keeps killing its worker is set aside instead of served forever
deliveries = Table(
    "gt_delivery", metadata,
    Column("message_id", String(255), primary_key=True),
    Column("task", String(255), nullable=False),
    Column("returns", Integer, nullable=False),
    Column("first_at", UTCDateTime(), nullable=False),
    Column("dead_at", UTCDateTime()),
)


#: the ids of signed messages taken, each until its message expires: a second copy of one
#: (captured from the broker and pushed back) is refused (galaxy_tasks/freshness.py)
seen_messages = Table(
    "gt_seen_message", metadata,
    Column("message_id", String(64), primary_key=True),
    Column("kept_until", UTCDateTime(), nullable=False, index=True),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRecord:
    """A workflow's row as the store read it: a named DAG of job specs (docs/workflows.md),
    its document as submitted, and its own state; `check_at` is when reconciliation next
    runs a scheduling pass over it. The fields are the columns of `gt_workflow`."""

    id: str = field(metadata=sql(String(36), primary_key=True))
    name: str = field(metadata=sql(String(255)))
    user: str | None = field(default=None, metadata=sql(String(255)))
    state: str = field(metadata=sql(String(16)))
    document: dict[str, Any] = field(metadata=sql(JSON))
    reason: str | None = field(default=None, metadata=sql(Text))
    created_at: datetime = field(default_factory=utcnow, metadata=sql(UTCDateTime()))
    updated_at: datetime = field(default_factory=utcnow, metadata=sql(UTCDateTime()))
    check_at: datetime | None = field(default=None, metadata=sql(UTCDateTime()))

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> WorkflowRecord:
        return cls(**row)


workflows = Table(
    "gt_workflow", metadata,
    *columns(WorkflowRecord),
    Index("ix_gt_workflow_state_check_at", "state", "check_at"),
    Index("ix_gt_workflow_created_at", "created_at"),
)

workflow_changes = history(workflows, "workflow_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    """A step's row: its job spec template, how many elements it has, the steps it needs
    (`needs`: step name -> "each" (the element of the same index) or "all"), and what its
    elements' parameters are computed from (`fan`, see workflows.document.params; None for a
    workflow recorded before elements were made lazily, whose element rows all exist). The
    fields are the columns of `gt_workflow_step`."""

    workflow_id: str = field(metadata=sql(String(36), ForeignKey(workflows.c.id, ondelete="CASCADE"),
                                          primary_key=True))
    name: str = field(metadata=sql(String(64), primary_key=True))
    position: int = field(metadata=sql(Integer))
    elements: int = field(metadata=sql(Integer))
    spec: dict[str, Any] = field(metadata=sql(JSON))
    needs: dict[str, str] = field(metadata=sql(JSON))
    fan: dict[str, Any] | None = field(default=None, metadata=sql(JSON))

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> StepRecord:
        return cls(**row)


workflow_steps = Table("gt_workflow_step", metadata, *columns(StepRecord))

#: one element of a step: its parameters and the id its job has (or will have) in this run
#: of it; the job's row, once it exists, is the element's state. A pass writes it with its
#: first job (an element without a row is waiting). The primary key is the element, and the
#: job id is derived from it: a job is never created twice for one element.
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
