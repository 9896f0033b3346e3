"""Named queries: each returns one set of jobs, named after what it is (rq's registries
are the model: `due`, `startup`, `held_by`, ...), so the lifecycle reads like itself."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Callable, Iterable

from sqlalchemy import bindparam, func, select, update

from galaxy_tasks.model import Job, StateChange, jobs, state_changes, utcnow
from galaxy_tasks.states import ACTIVE, TERMINAL, JobState
from galaxy_tasks.store.base import FOUND_STATE, StoreBase

#: rows reconciliation looks at when their check is due: the active ones, and cancelled
#: ones whose runner may not have stopped them yet
DUE_STATES = sorted(s.value for s in JobState)  # an ended row is due only while it holds a limit's place
_NOT_HANDED_TO_A_RUNNER = [JobState.NEW.value, JobState.QUEUED.value, JobState.SUBMITTING.value]
_LAUNCHED = [JobState.SUBMITTING.value, JobState.RUNNING.value]
_ACTIVE_STATES = sorted(s.value for s in ACTIVE)

_OLDEST = (select(jobs.c.id).where(jobs.c.destination == bindparam("destination"),
                                   jobs.c.state == bindparam("state"))
           .order_by(jobs.c.created_at).limit(1))


class Queries(StoreBase):
    def oldest(self, destination: str, state: JobState) -> str | None:
        """The id of the destination's oldest job in `state`."""
        with self._reading() as connection:
            return connection.scalar(_OLDEST, {"destination": destination, "state": state.value})

    def jobs(self, job_ids: Iterable[str]) -> dict[str, Job]:
        """These jobs by id (unknown ids are left out)."""
        ids = list(job_ids)
        found: dict[str, Job] = {}
        if not ids:
            return found
        with self._reading() as connection:
            for start in range(0, len(ids), 1000):
                for row in connection.execute(select(jobs).where(jobs.c.id.in_(ids[start:start + 1000]))).mappings():
                    found[row["id"]] = Job.from_row(row)
        return found

    def with_prefix(self, prefix: str, limit: int = 2) -> list[Job]:
        """Jobs whose id starts with `prefix` (at most `limit`: enough to tell ambiguity)."""
        return self._select(select(jobs).where(jobs.c.id.startswith(prefix, autoescape=True)).limit(limit))

    def recent(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs, optionally in one state."""
        query = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(jobs.c.state == state.value)
        return self._select(query)

    def reusable(self, key: str, limit: int = 3) -> list[Job]:
        """Ended-ok jobs with this provenance key, oldest first (the first that computed it)."""
        return self._select(select(jobs).where(jobs.c.provenance == key, jobs.c.state == JobState.OK.value)
                            .order_by(jobs.c.finished_at).limit(limit))

    def unfinished(self) -> list[Job]:
        """Every job not yet in a terminal state, oldest first."""
        return self._select(select(jobs).where(jobs.c.state.not_in([s.value for s in TERMINAL]))
                            .order_by(jobs.c.created_at))

    def startup(self) -> list[Job]:
        """Jobs not yet handed to a runner: what the steps drive again after a restart."""
        return self._select(select(jobs).where(jobs.c.state.in_(_NOT_HANDED_TO_A_RUNNER)))

    def held_by(self, destinations: Iterable[str]) -> list[Job]:
        """Launched jobs of these destinations: what a starting runner worker follows again."""
        return self._select(select(jobs).where(
            jobs.c.destination.in_(list(destinations)), jobs.c.state.in_(_LAUNCHED),
            jobs.c.external_id.is_not(None)))

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (states with none are left out)."""
        with self._reading() as connection:
            return {state: int(n) for state, n in connection.execute(
                select(jobs.c.state, func.count()).group_by(jobs.c.state))}

    def count_ended(self, job_ids: list[str]) -> int:
        """How many of these jobs are in a terminal state."""
        with self._reading() as connection:
            return int(connection.scalar(select(func.count()).select_from(jobs).where(
                jobs.c.id.in_(job_ids), FOUND_STATE.in_([s.value for s in TERMINAL]))) or 0)

    def take_due(self, now: datetime, limit: int, delay: Callable[[int], float]) -> list[Job]:
        """At most `limit` jobs whose check is due, most overdue first; each one's next check
        is pushed out by `delay(checks)` seconds in the same transaction, so two passes never
        take the same job."""
        with self._transaction() as connection:
            due = [Job.from_row(row) for row in connection.execute(
                select(jobs).where(jobs.c.state.in_(DUE_STATES), jobs.c.check_at <= now)
                .order_by(jobs.c.check_at).limit(limit)).mappings()]
            by_checks: dict[int, list[str]] = defaultdict(list)
            for job in due:
                by_checks[job.checks].append(job.id)
            for checks, ids in by_checks.items():  # one statement per distinct delay
                connection.execute(update(jobs).where(jobs.c.id.in_(ids), jobs.c.check_at <= now)
                                   .values(check_at=now + timedelta(seconds=delay(checks)), checks=checks + 1))
        return due

    def unpublished(self, before: datetime, limit: int) -> list[Job]:
        """Jobs whose latest state change was recorded before `before` and never reached the
        client's events queue (a crash between the two): the outbox to send again."""
        return self._select(select(jobs).where(jobs.c.unpublished_at <= before)
                            .order_by(jobs.c.unpublished_at).limit(limit))

    def recheck(self, job_id: str) -> None:
        """Have reconciliation look at this active job at its next pass."""
        with self._transaction() as connection:
            connection.execute(update(jobs).where(jobs.c.id == job_id, FOUND_STATE.in_(_ACTIVE_STATES))
                               .values(check_at=utcnow()))

    def settle(self, job_ids: list[str]) -> None:
        """Cancelled jobs known to have nothing left running: no more looks at them."""
        if job_ids:
            with self._transaction() as connection:
                connection.execute(update(jobs).where(jobs.c.id.in_(job_ids), FOUND_STATE == JobState.DELETED.value)
                                   .values(check_at=None))

    # -- history ------------------------------------------------------------------------

    def history(self, job_id: str) -> list[StateChange]:
        """A job's state changes, oldest first."""
        return self._changes(select(state_changes).where(state_changes.c.job_id == job_id)
                             .order_by(state_changes.c.id))

    def last_change_id(self) -> int:
        with self._reading() as connection:
            return int(connection.scalar(select(func.max(state_changes.c.id))) or 0)

    def changes_since(self, after_id: int, job_ids: Iterable[str]) -> list[StateChange]:
        """State changes of these jobs recorded after the change `after_id`, oldest first."""
        return self._changes(select(state_changes).where(state_changes.c.id > after_id,
                                                         state_changes.c.job_id.in_(list(job_ids)))
                             .order_by(state_changes.c.id))

    def _select(self, query: object) -> list[Job]:
        with self._reading() as connection:
            return [Job.from_row(row) for row in connection.execute(query).mappings()]  # type: ignore[call-overload]

    def _changes(self, query: object) -> list[StateChange]:
        with self._reading() as connection:
            return [StateChange(**row) for row in connection.execute(query).mappings()]  # type: ignore[call-overload]
