"""The database: engines, sessions, and the compare-and-set every step moves a job with.

The steps' hot path (`row`, `create`, `move`, `claim_stale`) runs prebuilt Core statements.
On PostgreSQL each of them is one statement on an autocommit connection: the update and its
history row are one `WITH ... UPDATE ... RETURNING` statement, atomic by itself, so a step
costs one round trip and no BEGIN/COMMIT. Elsewhere (SQLite) they run in a transaction.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Iterator, NamedTuple

from sqlalchemy import String, bindparam, create_engine, event, insert, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

from galaxy_tasks.model import Job, JobStateChange, utcnow
from galaxy_tasks.states import TERMINAL, JobState, sources_of

_STAMPS = {JobState.QUEUED: "queued_at", JobState.RUNNING: "running_at"}
_JOBS = Job.__table__
_CHANGES = JobStateChange.__table__
_CHANGE_COLUMNS = ["job_id", "from_state", "to_state", "at", "reason"]

_ROW = select(_JOBS).where(_JOBS.c.id == bindparam("job_id"))
_STATE = select(_JOBS.c.state).where(_JOBS.c.id == bindparam("job_id"))
_OLDEST = (select(_JOBS.c.id).where(_JOBS.c.destination == bindparam("destination"),
                                    _JOBS.c.state == bindparam("state"))
           .order_by(_JOBS.c.created_at).limit(1))
_CLAIM_STALE = (update(_JOBS)
                .where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.state == bindparam("in_state"),
                       _JOBS.c.updated_at == bindparam("seen", type_=_JOBS.c.updated_at.type))
                .values(updated_at=bindparam("now", type_=_JOBS.c.updated_at.type)))


class Moved(NamedTuple):
    """A move that happened: the state the job left, and its row as the move left it."""

    before: JobState
    job: Row


class Store:
    """One engine per database URL per process; every step's write is one short transaction."""

    def __init__(self, url: str, check_after: float = 300.0) -> None:
        self.url = url
        self.check_after = check_after
        self.engine = _engine(url)
        self._pg = self.engine.dialect.name == "postgresql"
        self._single = _engine(url, autocommit=True) if self._pg else self.engine
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._statements: dict[tuple, Executable] = {}

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            with session.begin():
                yield session

    def get(self, job_id: str) -> Job | None:
        with self._sessions() as session:
            return session.get(Job, job_id)

    def row(self, job_id: str) -> Row | None:
        """A job's row (attributes named like `Job`'s), read without the ORM."""
        with self._single.connect() as connection:
            return connection.execute(_ROW, {"job_id": job_id}).first()

    def create(self, values: dict[str, Any]) -> None:
        """Insert a new job and its first history row, both or neither. A duplicate id
        raises IntegrityError."""
        columns = tuple(values)
        params = {f"v_{name}": value for name, value in values.items()}
        params.update(c_from=None, c_reason=None)
        with self._writing() as connection:
            if self._pg:
                connection.execute(self._statement(("create", columns), _pg_create, columns), params)
            else:
                connection.execute(self._statement(("create", columns), _create, columns), params)
                connection.execute(self._statement(("log",), _log), {
                    "c_job_id": values["id"], "c_from": None, "c_to": values["state"], "c_at": values["created_at"],
                    "c_reason": None})

    def move(
        self,
        job_id: str,
        target: JobState,
        *,
        reason: str | None = None,
        sources: frozenset[JobState] | None = None,
        **values: Any,
    ) -> Moved | None:
        """Move the job to `target` if it is in one of `sources` (by default every state
        the state machine allows `target` from), setting `values` on its row. None when
        the job was already past this step: the caller then does nothing."""
        allowed = sources_of(target) if sources is None else sources
        now = utcnow()
        assignments: dict[str, Any] = {"state": target.value, "updated_at": now}
        if reason is not None:
            assignments["reason"] = reason
        if target in _STAMPS:
            assignments[_STAMPS[target]] = now
        if target in TERMINAL:
            assignments.update(finished_at=now, check_at=None)
        else:
            assignments.update(check_at=now + timedelta(seconds=self.check_after), checks=0)
        assignments.update(values)  # given values win (a cancel keeps a check on what it stops)
        columns = tuple(assignments)
        params = {f"v_{name}": value for name, value in assignments.items()}
        params.update(job_id=job_id, c_reason=reason)
        with self._writing() as connection:
            # The usual source is tried first without reading the row: one round trip per step.
            current = _likely_source(target, allowed) or connection.scalar(_STATE, {"job_id": job_id})
            while current is not None and JobState(current) in allowed:
                params["current"] = current
                job = self._move_once(connection, columns, params)
                if job is not None:
                    return Moved(JobState(current), job)
                current = connection.scalar(_STATE, {"job_id": job_id})
        return None

    def oldest(self, destination: str, state: JobState) -> str | None:
        """The id of the destination's oldest job in `state`."""
        with self._single.connect() as connection:
            return connection.scalar(_OLDEST, {"destination": destination, "state": state.value})

    def claim_stale(self, job_id: str, state: JobState, seen: datetime) -> bool:
        """Take over a job whose step's owner vanished: succeeds for one caller only, the
        one that saw the row as it still is (same state, same last update)."""
        with self._writing() as connection:
            moved = connection.execute(_CLAIM_STALE, {"job_id": job_id, "in_state": state.value, "seen": seen,
                                                      "now": utcnow()})
            return moved.rowcount == 1

    def _move_once(self, connection: Connection, columns: tuple[str, ...], params: dict[str, Any]) -> Row | None:
        if self._pg:
            return connection.execute(self._statement(("move", columns), _pg_move, columns), params).first()
        if connection.execute(self._statement(("move", columns), _update, columns), params).rowcount != 1:
            return None
        job = connection.execute(_ROW, params).first()
        connection.execute(self._statement(("log",), _log), {
            "c_job_id": job.id, "c_from": params["current"], "c_to": job.state, "c_at": job.updated_at,
            "c_reason": params["c_reason"]})
        return job

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        if self._pg:  # every hot-path write is a single statement, atomic by itself
            with self._single.connect() as connection:
                yield connection
        else:
            with self.engine.begin() as connection:
                yield connection

    def _statement(self, key: tuple, build, *args: Any) -> Executable:
        """Statements are built once per shape: building and hashing a statement on every
        step would cost more than the round trip it makes."""
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = build(*args)
        return statement


def _likely_source(target: JobState, allowed: frozenset[JobState]) -> str | None:
    if len(allowed) == 1:
        return next(iter(allowed)).value
    if target in TERMINAL and JobState.RUNNING in allowed:
        return JobState.RUNNING.value
    return None


# -- statements, with named parameters: v_<column> for values, c_* for the history row --

def _update(columns: tuple[str, ...]):
    current = bindparam("current", type_=String)
    return (update(_JOBS).where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.state == current)
            .values({name: bindparam(f"v_{name}", type_=_JOBS.c[name].type) for name in columns}))


def _pg_move(columns: tuple[str, ...]):
    """WITH moved AS (UPDATE ... RETURNING *), logged AS (INSERT history) SELECT moved.*"""
    moved = _update(columns).returning(*_JOBS.c).cte("moved")
    logged = insert(_CHANGES).from_select(_CHANGE_COLUMNS, select(
        moved.c.id, bindparam("current", type_=String), moved.c.state, moved.c.updated_at,
        bindparam("c_reason", type_=_CHANGES.c.reason.type),
    )).cte("logged")
    return select(moved).add_cte(logged)


def _create(columns: tuple[str, ...]):
    return insert(_JOBS).values({name: bindparam(f"v_{name}", type_=_JOBS.c[name].type) for name in columns})


def _pg_create(columns: tuple[str, ...]):
    created = _create(columns).returning(_JOBS.c.id, _JOBS.c.state, _JOBS.c.created_at).cte("created")
    return insert(_CHANGES).from_select(_CHANGE_COLUMNS, select(
        created.c.id, bindparam("c_from", type_=String), created.c.state, created.c.created_at,
        bindparam("c_reason", type_=_CHANGES.c.reason.type),
    ))


def _log():
    return insert(_CHANGES).values(
        job_id=bindparam("c_job_id"), from_state=bindparam("c_from", type_=String),
        to_state=bindparam("c_to"), at=bindparam("c_at", type_=_CHANGES.c.at.type),
        reason=bindparam("c_reason", type_=_CHANGES.c.reason.type))


# -- engines ------------------------------------------------------------------------------

_engines: dict[tuple[str, bool], Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """PostgreSQL through psycopg2 (the driver this project depends on), whichever
    spelling the URL uses; SQLAlchemy 2.1 would otherwise look for psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _engine(url: str, autocommit: bool = False) -> Engine:
    url = normalize_url(url)
    with _lock:
        if (url, autocommit) not in _engines:
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                # No ping per checkout (a round trip on every step): a connection found dead
                # invalidates the pool, and the step is retried (see tasks.DB_RETRY).
                options: dict[str, Any] = dict(pool_size=5, max_overflow=10, pool_recycle=3600)
                if autocommit:  # nothing is ever left open to roll back on return
                    options.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
                engine = create_engine(url, **options)
            _engines[url, autocommit] = engine
        return _engines[url, autocommit]


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
