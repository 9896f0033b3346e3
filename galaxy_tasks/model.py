"""The job tables. The row is the source of truth; the broker only carries work."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from galaxy_tasks.states import JobState


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC and read back as aware UTC, the same on SQLite
    (which keeps no zone) and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "gt_job"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # the job spec, as validated at submission
    tool_id: Mapped[str] = mapped_column(String(255), index=True)
    tool_version: Mapped[str | None] = mapped_column(String(64))
    user: Mapped[str | None] = mapped_column(String(255), index=True)
    command: Mapped[str] = mapped_column(Text)
    environment: Mapped[dict] = mapped_column(JSON, default=dict)
    inputs: Mapped[list] = mapped_column(JSON, default=list)
    outputs: Mapped[list] = mapped_column(JSON, default=list)
    cores: Mapped[int] = mapped_column(Integer, default=1)
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    walltime_s: Mapped[int | None] = mapped_column(Integer)
    destination_hint: Mapped[str | None] = mapped_column(String(255))
    environment_setup_file: Mapped[str | None] = mapped_column(Text)
    # where it went and what happened
    destination: Mapped[str] = mapped_column(String(255), index=True)
    queue: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default=JobState.NEW.value)
    job_dir: Mapped[str | None] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(255))
    # the message (task id) that holds the SUBMITTING claim: its own redelivery after a
    # crash may take the launch over at once, any other message must wait out the lease
    owner: Mapped[str | None] = mapped_column(String(255))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    signal: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    stdout_tail: Mapped[str | None] = mapped_column(Text)
    stderr_tail: Mapped[str | None] = mapped_column(Text)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    max_rss_kb: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    running_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # reconciliation looks only at rows whose next check is due (an indexed range scan)
    check_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    checks: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_gt_job_state_check_at", "state", "check_at"),
        Index("ix_gt_job_created_at", "created_at"),
    )

    def to_json(self) -> dict:
        """The job as clients see it (`status --json`, `list --json`)."""
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "state": self.state,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "reason": self.reason,
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
            "created_at": iso(self.created_at),
            "queued_at": iso(self.queued_at),
            "running_at": iso(self.running_at),
            "finished_at": iso(self.finished_at),
            "stdout": self.stdout_tail,
            "stderr": self.stderr_tail,
        }


class JobStateChange(Base):
    """One row per transition: the job's history, and the audit that it was legal."""

    __tablename__ = "gt_job_state_change"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("gt_job.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """A named, expiring lock in the database: one reconciliation pass at a time, however
    many workers or beat processes try to start one."""

    __tablename__ = "gt_lease"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    until: Mapped[datetime] = mapped_column(UTCDateTime())
