"""Workflows' SQL: a workflow recorded with its steps, its compare-and-set moves with
history, its elements read with their jobs' states (an element without a row is waiting),
the waiting ones found a bounded number at a time, and many elements and jobs created at
once, each at most once."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from galaxy_tasks.model import (
    ElementRecord,
    StepRecord,
    WorkflowRecord,
    jobs,
    state_changes,
    utcnow,
    workflow_changes,
    workflow_elements,
    workflow_steps,
    workflows,
)
from galaxy_tasks.states import ACTIVE, JobState
from galaxy_tasks.store.base import StoreBase

#: rows per INSERT of a workflow's elements or jobs (one statement, many rows)
BATCH = 500
_ACTIVE = sorted(s.value for s in ACTIVE)
_OK = JobState.OK.value
_ELEMENTS = (select(workflow_elements.c.step, workflow_elements.c.index, workflow_elements.c.params,
                    workflow_elements.c.run, workflow_elements.c.job_id, jobs.c.state.label("job_state"),
                    jobs.c.job_dir)
             .select_from(workflow_elements.outerjoin(jobs, jobs.c.id == workflow_elements.c.job_id)))


class Workflows(StoreBase):
    def create_workflow(self, values: dict[str, Any], steps: Sequence[dict[str, Any]]) -> None:
        """The workflow, its first history row and its steps, all or nothing (its elements
        are written by the passes that create their jobs)."""
        with self._transaction() as connection:
            connection.execute(insert(workflows), [values])
            self._log(connection, values["id"], None, values["state"], values["created_at"], None)
            connection.execute(insert(workflow_steps), list(steps))

    def workflow(self, workflow_id: str) -> WorkflowRecord | None:
        with self._reading() as connection:
            row = connection.execute(select(workflows).where(workflows.c.id == workflow_id)).mappings().first()
        return WorkflowRecord.from_row(row) if row is not None else None

    def workflow_with_prefix(self, prefix: str, limit: int = 2) -> list[WorkflowRecord]:
        with self._reading() as connection:
            return [WorkflowRecord.from_row(row) for row in connection.execute(
                select(workflows).where(workflows.c.id.startswith(prefix, autoescape=True)).limit(limit)).mappings()]

    def recent_workflows(self, limit: int = 100) -> list[WorkflowRecord]:
        with self._reading() as connection:
            return [WorkflowRecord.from_row(row) for row in connection.execute(
                select(workflows).order_by(workflows.c.created_at.desc()).limit(limit)).mappings()]

    def steps(self, workflow_id: str) -> list[StepRecord]:
        """A workflow's steps, each after the steps it needs."""
        with self._reading() as connection:
            return [StepRecord.from_row(row) for row in connection.execute(
                select(workflow_steps).where(workflow_steps.c.workflow_id == workflow_id)
                .order_by(workflow_steps.c.position)).mappings()]

    def workflow_state(self, workflow_id: str) -> str | None:
        """Only the state (the document of a large workflow is not read on every pass)."""
        with self._reading() as connection:
            return connection.scalar(select(workflows.c.state).where(workflows.c.id == workflow_id))

    def elements(self, workflow_id: str, steps: Iterable[str] | None = None,
                 indexes: Sequence[int] | None = None) -> list[ElementRecord]:
        """The element rows of a workflow (or of some of its steps, or only those of some
        indexes), each with its job's state."""
        query = _ELEMENTS.where(workflow_elements.c.workflow_id == workflow_id)
        if steps is not None:
            query = query.where(workflow_elements.c.step.in_(list(steps)))
        if indexes is not None:
            query = query.where(workflow_elements.c.index.in_(list(indexes)))
        with self._reading() as connection:
            return [ElementRecord(**row) for row in connection.execute(
                query.order_by(workflow_elements.c.step, workflow_elements.c.index)).mappings()]

    def ok_elements(self, workflow_id: str, step: str) -> int:
        """How many of a step's elements have a job that ended ok (the step is done when
        they are as many as its elements)."""
        with self._reading() as connection:
            return int(connection.scalar(
                select(func.count()).select_from(workflow_elements.join(jobs, jobs.c.id == workflow_elements.c.job_id))
                .where(workflow_elements.c.workflow_id == workflow_id, workflow_elements.c.step == step,
                       jobs.c.state == _OK)) or 0)

    def waiting_elements(self, workflow_id: str, step: str, size: int,
                         limit: int) -> list[tuple[int, ElementRecord | None]]:
        """At most `limit` elements of a step (indexes 0 to `size`) that have no job yet, in
        index order, each with its row if it has one (None: not yet written)."""
        mine = and_(workflow_elements.c.workflow_id == workflow_id, workflow_elements.c.step == step)
        with self._reading() as connection:
            count, last = connection.execute(select(func.count(), func.max(workflow_elements.c.index))
                                             .where(mine)).one()
            found: list[tuple[int, ElementRecord | None]] = [
                (row["index"], ElementRecord(**row)) for row in connection.execute(
                    _ELEMENTS.where(mine, jobs.c.id.is_(None)).order_by(workflow_elements.c.index).limit(limit))
                .mappings()]
            if not count or last == count - 1:  # the rows are a prefix: passes write them in index order
                unwritten: Iterable[int] = range(count, min(size, count + limit))
            else:
                written = set(connection.scalars(select(workflow_elements.c.index).where(mine)))
                unwritten = itertools.islice((index for index in range(size) if index not in written), limit)
        found += [(index, None) for index in unwritten]
        return sorted(found, key=lambda pair: pair[0])[:limit]

    def waiting_after(self, workflow_id: str, step: str, size: int, limit: int, source: str,
                      only: int | None = None) -> list[tuple[int, ElementRecord | None]]:
        """As waiting_elements, for a step that needs `source` element by element: only the
        elements whose element of `source` (of the same index) ended ok; with `only`, only
        that index."""
        produced = workflow_elements.alias("produced")
        produced_job = jobs.alias("produced_job")
        mine = workflow_elements.alias("mine")
        query = (select(produced.c.index, mine.c.step, mine.c.params, mine.c.run, mine.c.job_id)
                 .select_from(produced.join(produced_job, produced_job.c.id == produced.c.job_id)
                              .outerjoin(mine, and_(mine.c.workflow_id == produced.c.workflow_id,
                                                    mine.c.step == step, mine.c.index == produced.c.index))
                              .outerjoin(jobs, jobs.c.id == mine.c.job_id))
                 .where(produced.c.workflow_id == workflow_id, produced.c.step == source,
                        produced_job.c.state == _OK, produced.c.index < size, jobs.c.id.is_(None))
                 .order_by(produced.c.index).limit(limit))
        if only is not None:
            query = query.where(produced.c.index == only)
        with self._reading() as connection:
            return [(index, None if step_name is None else ElementRecord(
                step=step_name, index=index, params=params, run=run, job_id=job_id, job_state=None, job_dir=None))
                for index, step_name, params, run, job_id in connection.execute(query)]

    def element_of(self, job_id: str) -> tuple[str, str, int] | None:
        """The workflow, step and element index whose job this is."""
        with self._reading() as connection:
            row = connection.execute(select(workflow_elements.c.workflow_id, workflow_elements.c.step,
                                            workflow_elements.c.index)
                                     .where(workflow_elements.c.job_id == job_id)).first()
        return (row[0], row[1], row[2]) if row is not None else None

    def element_counts(self, workflow_id: str) -> dict[str, dict[str, int]]:
        """Per step, how many elements are in each state ("waiting": no job yet, or no row
        yet)."""
        query = (select(workflow_elements.c.step, jobs.c.state, func.count())
                 .select_from(workflow_elements.outerjoin(jobs, jobs.c.id == workflow_elements.c.job_id))
                 .where(workflow_elements.c.workflow_id == workflow_id)
                 .group_by(workflow_elements.c.step, jobs.c.state))
        counts: dict[str, dict[str, int]] = {}
        with self._reading() as connection:
            for step, state, count in connection.execute(query):
                counts.setdefault(step, {})[state or "waiting"] = int(count)
            sizes = connection.execute(select(workflow_steps.c.name, workflow_steps.c.elements)
                                       .where(workflow_steps.c.workflow_id == workflow_id)
                                       .order_by(workflow_steps.c.position)).all()
        for step, size in sizes:
            per = counts.setdefault(step, {})
            if unwritten := size - sum(per.values()):
                per["waiting"] = per.get("waiting", 0) + unwritten
        return counts

    def create_jobs(self, rows: Sequence[dict[str, Any]], elements: Sequence[dict[str, Any]] = ()) -> set[str]:
        """Insert these jobs and their first history rows, skipping any whose id exists (a
        pass that raced another, or ran again after a crash): the ids created now. A
        workflow's pass gives the jobs' elements too (in the same order), each written with
        its job unless its row exists."""
        created: set[str] = set()
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            with self._transaction() as connection:
                if elements:
                    connection.execute(self._insert_elements(), list(elements[start:start + BATCH]))
                ids = {row[0] for row in connection.execute(self._insert_new(), list(chunk))}
                history = [{"job_id": r["id"], "from_state": None, "to_state": r["state"], "at": r["created_at"],
                            "reason": None} for r in chunk if r["id"] in ids]
                if history:
                    connection.execute(insert(state_changes), history)
            created |= ids
        return created

    # Executed with a list of rows: SQLAlchemy compiles the statement once and sends the rows
    # as a few multi-row VALUES (its "insertmanyvalues"), not a statement compiled per batch
    # with a bound parameter per value (most of a 1,000-job submit's time).
    def _insert_elements(self) -> Any:
        dialect = postgresql if self._pg else sqlite
        return dialect.insert(workflow_elements).on_conflict_do_nothing(index_elements=["workflow_id", "step", "index"])

    def _insert_new(self) -> Any:
        dialect = postgresql if self._pg else sqlite
        return dialect.insert(jobs).on_conflict_do_nothing(index_elements=["id"]).returning(jobs.c.id)

    def move_workflow(self, workflow_id: str, target: str, sources: Iterable[str], *, reason: str | None = None,
                      **values: Any) -> bool:
        """Compare-and-set: the workflow to `target` if it is in one of `sources`, with a
        history row; False if it was not (the caller then does nothing)."""
        now = utcnow()
        with self._transaction() as connection:
            before = connection.scalar(select(workflows.c.state).where(workflows.c.id == workflow_id))
            if before is None or before not in set(sources):
                return False
            moved = connection.execute(update(workflows).where(workflows.c.id == workflow_id,
                                                               workflows.c.state == before)
                                       .values(state=target, updated_at=now, reason=reason, **values))
            if moved.rowcount != 1:
                return False
            self._log(connection, workflow_id, before, target, now, reason)
        return True

    def workflow_history(self, workflow_id: str) -> list[dict[str, Any]]:
        with self._reading() as connection:
            return [dict(row) for row in connection.execute(
                select(workflow_changes.c.from_state, workflow_changes.c.to_state, workflow_changes.c.at,
                       workflow_changes.c.reason)
                .where(workflow_changes.c.workflow_id == workflow_id).order_by(workflow_changes.c.id)).mappings()]

    def take_due_workflows(self, states: Iterable[str], now: datetime, limit: int, after_s: float) -> list[str]:
        """At most `limit` workflows in `states` whose scheduling pass is due; each one's next
        pass is pushed out by `after_s` in the same transaction (two passes never take one)."""
        with self._transaction() as connection:
            ids = list(connection.scalars(select(workflows.c.id).where(
                workflows.c.state.in_(list(states)), workflows.c.check_at <= now)
                .order_by(workflows.c.check_at).limit(limit)))
            if ids:
                connection.execute(update(workflows).where(workflows.c.id.in_(ids))
                                   .values(check_at=now + timedelta(seconds=after_s)))
        return ids

    def push_check(self, workflow_id: str, at: datetime) -> None:
        with self._transaction() as connection:
            connection.execute(update(workflows).where(workflows.c.id == workflow_id).values(check_at=at))

    def has_active_jobs(self, workflow_id: str) -> bool:
        """Whether a job of the workflow has not yet ended (one index lookup)."""
        with self._reading() as connection:
            return connection.scalar(select(jobs.c.id).where(jobs.c.workflow_id == workflow_id,
                                                             jobs.c.state.in_(_ACTIVE)).limit(1)) is not None

    def active_workflow_jobs(self, workflow_id: str) -> list[str]:
        """The ids of the workflow's jobs not yet ended."""
        with self._reading() as connection:
            return list(connection.scalars(select(jobs.c.id).where(jobs.c.workflow_id == workflow_id,
                                                                    jobs.c.state.in_(_ACTIVE))))

    def renew_elements(self, workflow_id: str, renewed: Sequence[tuple[str, int, int, str]]) -> None:
        """Elements to run again: (step, index, next run, the job id of that run)."""
        with self._transaction() as connection:
            for start in range(0, len(renewed), BATCH):
                for step, index, run, job_id in renewed[start:start + BATCH]:
                    connection.execute(update(workflow_elements).where(and_(
                        workflow_elements.c.workflow_id == workflow_id, workflow_elements.c.step == step,
                        workflow_elements.c.index == index, workflow_elements.c.run == run - 1))
                        .values(run=run, job_id=job_id))

    def _log(self, connection: Connection, workflow_id: str, before: str | None, after: str, at: datetime,
             reason: str | None) -> None:
        connection.execute(insert(workflow_changes).values(workflow_id=workflow_id, from_state=before, to_state=after,
                                                           at=at, reason=reason))
