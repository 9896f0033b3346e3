"""Aggregates for operators: `galaxy-tasks stats` and the Prometheus exporter.

Plain SQL aggregates, the same on PostgreSQL and SQLite. The active-state counts are
answered by the `(state, check_at)` index; the history is read by primary key.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, Sequence

from sqlalchemy import case, distinct, extract, func, select
from sqlalchemy.sql.elements import ColumnElement

from galaxy_tasks.model import jobs, state_changes
from galaxy_tasks.states import ACTIVE, TERMINAL, JobState
from galaxy_tasks.store.base import StoreBase

GROUPS = {"tool": jobs.c.tool_id, "destination": jobs.c.destination, "user": jobs.c.user}
_ACTIVE = sorted(s.value for s in ACTIVE)
_ENDS = [JobState.RUNNING.value, *sorted(s.value for s in TERMINAL)]


class ActiveCounts(NamedTuple):
    """Active jobs by (state, destination); those overdue; those reconciliation looked at."""

    active: dict[tuple[str, str], int]
    overdue: dict[tuple[str, str], int]
    checked: dict[str, int]


class ChangesRead(NamedTuple):
    """State changes to `running` or a terminal state, with their job's columns; the newest
    change id that exists; and the ids of every change present up to it."""

    rows: list[Any]
    newest: int
    present: set[int]


class Reports(StoreBase):
    def job_stats(self, since: datetime, until: datetime, by: Sequence[str],
                  limit: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Jobs created in [since, until): counts per state, and one row of aggregates per
        group of `by` (keys of GROUPS), the busiest first."""
        window = (jobs.c.created_at >= since, jobs.c.created_at < until)
        ran = jobs.c.state.in_([JobState.OK.value, JobState.ERROR.value]) & jobs.c.running_at.is_not(None)
        wait = self._seconds(jobs.c.running_at, jobs.c.created_at)
        run = case((ran, func.coalesce(jobs.c.wall_time_s, self._seconds(jobs.c.finished_at, jobs.c.running_at))))
        keys = [GROUPS[k].label(k) for k in by]

        def count_state(*states: JobState) -> ColumnElement[Any]:
            return func.sum(case((jobs.c.state.in_([s.value for s in states]), 1), else_=0))

        columns = [
            *keys,
            func.count().label("jobs"),
            count_state(JobState.OK).label("ok"),
            count_state(JobState.ERROR).label("error"),
            count_state(JobState.DELETED).label("deleted"),
            count_state(*ACTIVE).label("active"),
            func.count(distinct(jobs.c.user)).label("users"),
            func.count(distinct(jobs.c.tool_id)).label("tools"),
            func.avg(wait).label("queue_avg_s"),
            func.max(wait).label("queue_max_s"),
            func.avg(run).label("run_avg_s"),
            func.max(run).label("run_max_s"),
            func.sum(run * jobs.c.cores).label("core_s"),
        ]
        with self._reading() as connection:
            states = {state: int(n) for state, n in connection.execute(
                select(jobs.c.state, func.count()).where(*window).group_by(jobs.c.state))}
            rows = [dict(row) for row in connection.execute(
                select(*columns).where(*window).group_by(*[GROUPS[k] for k in by])
                .order_by(func.count().desc(), *[GROUPS[k] for k in by]).limit(limit)).mappings()]
        return states, rows

    def active_counts(self, now: datetime) -> ActiveCounts:
        with self._reading() as connection:
            active = {(s, d): int(n) for s, d, n in connection.execute(
                select(jobs.c.state, jobs.c.destination, func.count()).where(jobs.c.state.in_(_ACTIVE))
                .group_by(jobs.c.state, jobs.c.destination))}
            overdue = {(s, d): int(n) for s, d, n in connection.execute(
                select(jobs.c.state, jobs.c.destination, func.count())
                .where(jobs.c.state.in_(_ACTIVE), jobs.c.check_at <= now)
                .group_by(jobs.c.state, jobs.c.destination))}
            checked = {d: int(n) for d, n in connection.execute(
                select(jobs.c.destination, func.count()).where(jobs.c.state.in_(_ACTIVE), jobs.c.checks > 0)
                .group_by(jobs.c.destination))}
        return ActiveCounts(active, overdue, checked)

    def ends_after(self, watermark: int, also: Sequence[int], limit: int) -> ChangesRead:
        """Changes to `running` or a terminal state with an id above `watermark` (or in
        `also`: ids seen missing before, whose transaction may have committed since)."""
        wanted = state_changes.c.id > watermark
        if also:
            wanted = wanted | state_changes.c.id.in_(list(also))
        with self._reading() as connection:
            rows = list(connection.execute(
                select(state_changes.c.id, state_changes.c.to_state, state_changes.c.at, jobs.c.tool_id,
                       jobs.c.destination, jobs.c.created_at, jobs.c.running_at, jobs.c.finished_at,
                       jobs.c.wall_time_s, jobs.c.checks)
                .join(jobs, jobs.c.id == state_changes.c.job_id)
                .where(wanted, state_changes.c.to_state.in_(_ENDS))
                .order_by(state_changes.c.id).limit(limit)))
            # ids of changes to other states count as seen too: only real holes are gaps
            newest = rows[-1].id if len(rows) == limit else connection.scalar(select(func.max(state_changes.c.id)))
            present = set(connection.scalars(select(state_changes.c.id).where(
                state_changes.c.id > watermark, state_changes.c.id <= (newest or 0))))
        return ChangesRead(rows, int(newest or 0), present)

    def _seconds(self, later: Any, earlier: Any) -> ColumnElement[Any]:
        if self.dialect == "sqlite":
            return (func.julianday(later) - func.julianday(earlier)) * 86400.0
        return extract("epoch", later - earlier)
