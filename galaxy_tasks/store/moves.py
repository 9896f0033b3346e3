"""The steps' hot path: read a job, create it, move it with a compare-and-set.

On PostgreSQL each write is one prebuilt statement: the update and its history row are one
`WITH ... UPDATE ... RETURNING` statement, so a step costs one round trip and no
BEGIN/COMMIT. Elsewhere (SQLite) the same two statements run in a transaction.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Mapping, NamedTuple

from sqlalchemy import String, bindparam, case, column, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Executable

from galaxy_tasks.model import Job, jobs, state_changes, utcnow
from galaxy_tasks.states import TERMINAL, JobState, sources_of
from galaxy_tasks.store.base import FOUND_STATE, StoreBase

_STAMPS = {JobState.QUEUED: "queued_at", JobState.RUNNING: "running_at"}
_CHANGE_COLUMNS = ["job_id", "from_state", "to_state", "at", "reason"]
#: a job's launch clears why it waited (a slot, a limit): what it says no longer holds
_ENDS_WAITING = frozenset({JobState.SUBMITTING})

_ROW = select(jobs).where(jobs.c.id == bindparam("job_id"))
_STATE = select(jobs.c.state).where(jobs.c.id == bindparam("job_id"))
_CLAIM_STALE = (update(jobs)
                .where(jobs.c.id == bindparam("job_id"), FOUND_STATE == bindparam("in_state"),
                       jobs.c.updated_at == bindparam("seen", type_=jobs.c.updated_at.type))
                .values(updated_at=bindparam("now", type_=jobs.c.updated_at.type)))


_PUBLISHED = (update(jobs).where(jobs.c.id == bindparam("job_id"), jobs.c.event_seq == bindparam("seq"))
              .values(unpublished_at=None))


class Moved(NamedTuple):
    """A move that happened: the state the job left, and its row as the move left it."""

    before: JobState
    job: Job


class Moves(StoreBase):
    def job(self, job_id: str) -> Job | None:
        """A job's row, by its exact id."""
        with self._reading() as connection:
            row = connection.execute(_ROW, {"job_id": job_id}).mappings().first()
        return Job.from_row(row) if row is not None else None

    def create(self, values: dict[str, Any]) -> bool:
        """Insert a new job and its first history row, both or neither; False (and nothing
        written) if a job with this id exists."""
        columns = tuple(values)
        params = {f"v_{name}": value for name, value in values.items()}
        params.update(c_from=None, c_reason=None)
        try:
            with self._writing() as connection:
                if self._pg:
                    connection.execute(self._statement(("create", columns), _pg_create, columns), params)
                else:
                    connection.execute(self._statement(("create", columns), _create, columns), params)
                    connection.execute(self._statement(("log",), _log), {
                        "c_job_id": values["id"], "c_from": None, "c_to": values["state"],
                        "c_at": values["created_at"], "c_reason": None})
        except IntegrityError:
            return False
        return True

    def move(
        self,
        job_id: str,
        target: JobState,
        *,
        reason: str | None = None,
        sources: frozenset[JobState] | None = None,
        connection: Connection | None = None,
        stamp: bool = True,
        **values: Any,
    ) -> Moved | None:
        """Move the job to `target` if it is in one of `sources` (by default every state
        the state machine allows `target` from), setting `values` on its row. None when
        the job was already past this step: the caller then does nothing. `connection`: as
        part of a transaction of the caller's (a move that takes a limit's place). `stamp`:
        set the time the job reached the state (queued_at, running_at); a woken job keeps
        the time it was first queued."""
        allowed = sources_of(target) if sources is None else sources
        assignments = self._assignments(target, reason, stamp, values)
        columns = tuple(assignments)
        params = {f"v_{name}": value for name, value in assignments.items()}
        params.update(job_id=job_id, c_reason=reason)
        if connection is not None:
            return self._move_on(connection, target, allowed, columns, params)
        with self._writing() as writing:
            return self._move_on(writing, target, allowed, columns, params)

    def move_many(
        self,
        moves: Mapping[str, Mapping[str, Any]],
        target: JobState,
        source: JobState,
        **values: Any,
    ) -> dict[str, Moved]:
        """`move` for many jobs from one `source` state: each job in `moves` (id -> its own
        values; every job gives the same names) that is in `source` moves to `target` with
        those and the common `values` (a job's own `reason` is also its history row's). Each
        job moves at most once, as with `move`; the jobs that were not in `source` are left
        out of the result. On PostgreSQL one statement moves them all and writes their
        history rows."""
        if not moves:
            return {}
        assignments = self._assignments(target, None, True, values)
        own = tuple(next(iter(moves.values())))
        for name in own:
            assignments.pop(name, None)
        columns = tuple(assignments)
        params: dict[str, Any] = {f"v_{name}": value for name, value in assignments.items()}
        params.update(current=source.value, c_reason=None)
        if self._pg and len(moves) == 1:  # one job (a quiet moment): the single move's plain statement
            (job_id, given), = moves.items()
            params.update({f"v_{name}": value for name, value in given.items()}, job_id=job_id,
                          c_reason=given.get("reason"))
            with self._writing() as connection:
                job = self._move_once(connection, columns + own, params)
            return {job_id: Moved(source, job)} if job is not None else {}
        if self._pg:
            params["ids"] = list(moves)
            for name in own:
                params[f"p_{name}"] = [given[name] for given in moves.values()]
            with self._writing() as connection:
                rows = connection.execute(self._statement(("many", columns, own), _pg_move_many, columns, own),
                                          params).mappings().all()
            return {row["id"]: Moved(source, Job.from_row(row)) for row in rows}
        moved: dict[str, Moved] = {}
        with self._writing() as connection:
            for job_id, given in moves.items():
                shape = columns + tuple(given)
                job = self._move_once(connection, shape, {**params, **{f"v_{k}": v for k, v in given.items()},
                                                          "job_id": job_id, "c_reason": given.get("reason")})
                if job is not None:
                    moved[job_id] = Moved(source, job)
        return moved

    def _assignments(self, target: JobState, reason: str | None, stamp: bool,
                     values: Mapping[str, Any]) -> dict[str, Any]:
        now = utcnow()
        assignments: dict[str, Any] = {"state": target.value, "updated_at": now}
        if reason is not None or target in _ENDS_WAITING:
            assignments["reason"] = reason
        if target in _STAMPS and stamp:
            assignments[_STAMPS[target]] = now
        if target in TERMINAL:
            assignments.update(finished_at=now, check_at=None)
        else:
            assignments.update(check_at=now + timedelta(seconds=self.check_after), checks=0)
        assignments.update(values)  # given values win (a cancel keeps a check on what it stops)
        return assignments

    def _move_on(self, connection: Connection, target: JobState, allowed: frozenset[JobState],
                 columns: tuple[str, ...], params: dict[str, Any]) -> Moved | None:
        # The usual source is tried first without reading the row: one round trip per step.
        current = _likely_source(target, allowed) or connection.scalar(_STATE, {"job_id": params["job_id"]})
        while current is not None and JobState(current) in allowed:
            params["current"] = current
            job = self._move_once(connection, columns, params)
            if job is not None:
                return Moved(JobState(current), job)
            current = connection.scalar(_STATE, {"job_id": params["job_id"]})
        return None

    def mark_published(self, job_id: str, seq: int) -> bool:
        """The job's state change number `seq` reached its events queue: clear the outbox
        mark, unless a later change is already waiting to be published."""
        with self._writing() as connection:
            return connection.execute(_PUBLISHED, {"job_id": job_id, "seq": seq}).rowcount == 1

    def claim_stale(self, job_id: str, state: JobState, seen: datetime) -> bool:
        """Take over a job whose step's owner vanished: succeeds for one caller only, the
        one that saw the row as it still is (same state, same last update)."""
        with self._writing() as connection:
            moved = connection.execute(_CLAIM_STALE, {"job_id": job_id, "in_state": state.value, "seen": seen,
                                                      "now": utcnow()})
            return moved.rowcount == 1

    def _move_once(self, connection: Connection, columns: tuple[str, ...], params: dict[str, Any]) -> Job | None:
        if self._pg:
            row = connection.execute(self._statement(("move", columns), _pg_move, columns), params).mappings().first()
            return Job.from_row(row) if row is not None else None
        if connection.execute(self._statement(("move", columns), _update, columns), params).rowcount != 1:
            return None
        found = connection.execute(_ROW, params).mappings().first()
        assert found is not None
        job = Job.from_row(found)
        connection.execute(self._statement(("log",), _log), {
            "c_job_id": job.id, "c_from": params["current"], "c_to": job.state, "c_at": job.updated_at,
            "c_reason": params["c_reason"]})
        return job


def _likely_source(target: JobState, allowed: frozenset[JobState]) -> str | None:
    if len(allowed) == 1:
        return next(iter(allowed)).value
    if target in TERMINAL and JobState.RUNNING in allowed:
        return JobState.RUNNING.value
    return None


# -- statements, with named parameters: v_<column> for values, c_* for the history row --

def _update(columns: tuple[str, ...]) -> Any:
    """Every move also counts the job's state changes (an event's `seq`) and, for a job whose
    events go to a client, marks the change as not yet published (the outbox)."""
    current = bindparam("current", type_=String)
    values: dict[str, Any] = {name: bindparam(f"v_{name}", type_=jobs.c[name].type) for name in columns}
    values["event_seq"] = jobs.c.event_seq + 1
    values["unpublished_at"] = case((jobs.c.events_queue.is_(None), None), else_=values["updated_at"])
    return update(jobs).where(jobs.c.id == bindparam("job_id"), FOUND_STATE == current).values(values)


def _pg_move(columns: tuple[str, ...]) -> Executable:
    """WITH moved AS (UPDATE ... RETURNING *), logged AS (INSERT history) SELECT moved.*"""
    moved = _update(columns).returning(*jobs.c).cte("moved")
    logged = insert(state_changes).from_select(_CHANGE_COLUMNS, select(
        moved.c.id, bindparam("current", type_=String), moved.c.state, moved.c.updated_at,
        bindparam("c_reason", type_=state_changes.c.reason.type),
    )).cte("logged")
    return select(moved).add_cte(logged)


def _pg_move_many(columns: tuple[str, ...], own: tuple[str, ...]) -> Executable:
    """_pg_move for a batch: the ids and each job's own values come as arrays, unnested into
    rows the UPDATE joins on (UPDATE ... FROM unnest(...)); one history row per job moved."""
    given = func.unnest(bindparam("ids", type_=ARRAY(String)),
                        *(bindparam(f"p_{name}", type_=ARRAY(jobs.c[name].type)) for name in own)) \
        .table_valued(column("id", String), *(column(name, jobs.c[name].type) for name in own)) \
        .render_derived(name="given")
    current = bindparam("current", type_=String)
    # the rows are locked in the order of their ids first: two batches that share jobs wait
    # for each other instead of each holding what the other needs (a deadlock)
    ids = jobs.c.id == func.any(bindparam("ids", type_=ARRAY(String)))
    locked = select(jobs.c.id).where(ids, FOUND_STATE == current).order_by(jobs.c.id).with_for_update().cte("locked")
    values: dict[str, Any] = {name: bindparam(f"v_{name}", type_=jobs.c[name].type) for name in columns}
    values.update({name: given.c[name] for name in own})
    values["event_seq"] = jobs.c.event_seq + 1
    values["unpublished_at"] = case((jobs.c.events_queue.is_(None), None), else_=values["updated_at"])
    # (the ids again, so the jobs are found by their key whatever the planner guesses of the
    # unnested rows: a batch never reads the whole table)
    moved = (update(jobs).where(ids, jobs.c.id == given.c.id, given.c.id == locked.c.id, FOUND_STATE == current)
             .values(values).returning(*jobs.c).cte("moved"))
    reason = moved.c.reason if "reason" in own else bindparam("c_reason", type_=state_changes.c.reason.type)
    logged = insert(state_changes).from_select(_CHANGE_COLUMNS, select(
        moved.c.id, current, moved.c.state, moved.c.updated_at, reason)).cte("logged")
    return select(moved).add_cte(logged)


def _create(columns: tuple[str, ...]) -> Any:
    return insert(jobs).values({name: bindparam(f"v_{name}", type_=jobs.c[name].type) for name in columns})


def _pg_create(columns: tuple[str, ...]) -> Executable:
    created = _create(columns).returning(jobs.c.id, jobs.c.state, jobs.c.created_at).cte("created")
    return insert(state_changes).from_select(_CHANGE_COLUMNS, select(
        created.c.id, bindparam("c_from", type_=String), created.c.state, created.c.created_at,
        bindparam("c_reason", type_=state_changes.c.reason.type),
    ))


def _log() -> Executable:
    return insert(state_changes).values(
        job_id=bindparam("c_job_id"), from_state=bindparam("c_from", type_=String),
        to_state=bindparam("c_to"), at=bindparam("c_at", type_=state_changes.c.at.type),
        reason=bindparam("c_reason", type_=state_changes.c.reason.type))
