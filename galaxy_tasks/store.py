"""The database: engines, sessions, and the compare-and-set every step moves a job with."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Iterator

from sqlalchemy import create_engine, event, insert, literal, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.orm import Session, sessionmaker

from galaxy_tasks.model import Job, JobStateChange, utcnow
from galaxy_tasks.states import TERMINAL, JobState, sources_of

_STAMPS = {JobState.QUEUED: "queued_at", JobState.RUNNING: "running_at"}
_JOBS = Job.__table__
_CHANGES = JobStateChange.__table__


class Store:
    """One engine per database URL per process; short transactions, committed per step."""

    def __init__(self, url: str, check_after: float = 300.0) -> None:
        self.url = url
        self.check_after = check_after
        self.engine = _engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            with session.begin():
                yield session

    def get(self, job_id: str) -> Job | None:
        with self._sessions() as session:
            return session.get(Job, job_id)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A plain connection in a transaction, for the steps' hot path: the compare-and-set
        needs no ORM session around it."""
        with self.engine.begin() as connection:
            yield connection

    def row(self, job_id: str) -> Row | None:
        """A job's row (attributes named like `Job`'s), read without the ORM."""
        with self.engine.connect() as connection:
            return connection.execute(select(_JOBS).where(_JOBS.c.id == job_id)).first()

    def transition(
        self,
        session: Session | Connection,
        job_id: str,
        target: JobState,
        *,
        reason: str | None = None,
        sources: frozenset[JobState] | None = None,
        **values: Any,
    ) -> JobState | None:
        """Move the job to `target` if it is in one of `sources` (by default every state
        the state machine allows `target` from). Returns the state it left, or None when
        the job was already past this step: the caller then does nothing."""
        allowed = sources_of(target) if sources is None else sources
        now = utcnow()
        stamps: dict[str, Any] = {"updated_at": now}
        if reason is not None:
            stamps["reason"] = reason
        if target in _STAMPS:
            stamps[_STAMPS[target]] = now
        if target in TERMINAL:
            stamps.update(finished_at=now, check_at=None)
        else:
            stamps.update(check_at=now + timedelta(seconds=self.check_after), checks=0)
        # The usual source is tried first without reading the row: one round trip per step.
        current: str | None = _likely_source(target, allowed)
        if current is None:
            current = session.scalar(select(_JOBS.c.state).where(_JOBS.c.id == job_id))
        # Core statements on the tables: the ORM's bulk-update and unit-of-work machinery
        # would cost more than the round trips themselves on every step.
        pg = self.engine.dialect.name == "postgresql"
        while current is not None and JobState(current) in allowed:
            move = (update(_JOBS).where(_JOBS.c.id == job_id, _JOBS.c.state == current)
                    .values(state=target.value, **stamps, **values))
            change = dict(job_id=job_id, from_state=current, to_state=target.value, at=now, reason=reason)
            if pg:  # one statement: WITH moved AS (UPDATE ... RETURNING) INSERT ... SELECT
                moved_row = move.returning(_JOBS.c.id).cte("moved")
                columns = [literal(value, _CHANGES.c[name].type).label(name) for name, value in change.items()
                           if name != "job_id"]
                moved = session.execute(
                    insert(_CHANGES).from_select(list(change), select(moved_row.c.id, *columns))
                ).rowcount
            else:
                moved = session.execute(move).rowcount
                if moved == 1:
                    session.execute(insert(_CHANGES).values(**change))
            if moved == 1:
                return JobState(current)
            current = session.scalar(select(_JOBS.c.state).where(_JOBS.c.id == job_id))
        return None

    def claim_stale(self, session: Session | Connection, job_id: str, state: JobState, seen: datetime) -> bool:
        """Take over a job whose step's owner vanished: succeeds for one caller only, the
        one that saw the row as it still is (same state, same last update)."""
        moved = session.execute(
            update(_JOBS)
            .where(_JOBS.c.id == job_id, _JOBS.c.state == state.value, _JOBS.c.updated_at == seen)
            .values(updated_at=utcnow())
        ).rowcount
        return moved == 1


def _likely_source(target: JobState, allowed: frozenset[JobState]) -> str | None:
    if len(allowed) == 1:
        return next(iter(allowed)).value
    if target in TERMINAL and JobState.RUNNING in allowed:
        return JobState.RUNNING.value
    return None


_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """PostgreSQL through psycopg2 (the driver this project depends on), whichever
    spelling the URL uses; SQLAlchemy 2.1 would otherwise look for psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _engine(url: str) -> Engine:
    url = normalize_url(url)
    with _lock:
        if url not in _engines:
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                # No ping per checkout (a round trip on every step): a connection found dead
                # invalidates the pool, and the step is retried (see tasks.DB_RETRY).
                engine = create_engine(url, pool_size=5, max_overflow=10, pool_recycle=3600)
            _engines[url] = engine
        return _engines[url]


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def dispose_after_fork() -> None:
    """A forked worker process must not share its parent's database connections."""
    for engine in _engines.values():
        engine.dispose(close=False)
