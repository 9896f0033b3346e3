"""A destination's line: who runs there and who waits, for fair share and for the answer
to "why does my job wait" (status, events). Each read is bounded by the number of users
waiting, not of jobs: the counts come from the index on (destination, state, user,
created_at)."""
from __future__ import annotations

import fcntl
import os
import threading
import zlib
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Iterator, NamedTuple

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import DBAPIError

from galaxy_tasks.fairshare import Waiting
from galaxy_tasks.model import Job, jobs, utcnow
from galaxy_tasks.states import JobState
from galaxy_tasks.store.base import FOUND_STATE, StoreBase

_RUNNING = [JobState.SUBMITTING.value, JobState.RUNNING.value]
_WAITING = [JobState.NEW.value, JobState.QUEUED.value, JobState.LIMITED.value]
#: finished jobs an estimate of a destination's run time looks at
RECENT_RUNS = 50
#: the first key of a turn's advisory lock on PostgreSQL (the second is the destination's)
_TURN_LOCKS = 0x47540001
_in_memory_turns = threading.Lock()


class Line(NamedTuple):
    """A destination's jobs running now, per user, and its waiting (QUEUED) jobs, per user."""

    running: dict[str | None, int]
    waiting: list[Waiting]


class Lines(StoreBase):
    def line(self, destination: str) -> Line:
        """Who runs on `destination` and who waits there, per user."""
        with self._reading() as connection:
            running = {user: int(n) for user, n in connection.execute(
                select(jobs.c.user, func.count()).where(jobs.c.destination == destination,
                                                        jobs.c.state.in_(_RUNNING)).group_by(jobs.c.user))}
            waiting = [Waiting(user, int(n), first) for user, n, first in connection.execute(
                select(jobs.c.user, func.count(), func.min(jobs.c.created_at))
                .where(jobs.c.destination == destination, jobs.c.state == JobState.QUEUED.value)
                .group_by(jobs.c.user))]
        return Line(running, [w._replace(first=_aware(w.first)) for w in waiting])

    @contextmanager
    def turn(self, destination: str) -> Iterator[None]:
        """Held while a destination's next turn is chosen and claimed, by every process: two
        turns taken at once (two ends recorded together) would both count the line before
        either claim, and both give the same party its turn. On PostgreSQL an advisory lock
        of a transaction of its own (gone with its connection if the process dies); on a
        SQLite file, a lock on a file beside it."""
        key = zlib.crc32(destination.encode())
        if self._pg:
            with self.engine.connect() as connection:
                connection.execute(select(func.pg_advisory_xact_lock(_TURN_LOCKS, key - 2 ** 31)))
                try:
                    yield
                finally:
                    try:
                        connection.rollback()
                    except DBAPIError as exc:
                        # a connection lost by then took the lock with it: the claim made
                        # under it stands, and the step goes on
                        if not exc.connection_invalidated:
                            raise
            return
        database = self.engine.url.database
        if not database or database == ":memory:":
            with _in_memory_turns:
                yield
            return
        fd = os.open(f"{database}.turn-{key:08x}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def oldest_of(self, destination: str, user: str | None) -> str | None:
        """The id of `user`'s oldest job waiting (QUEUED) on `destination`."""
        who = jobs.c.user.is_(None) if user is None else jobs.c.user == user
        with self._reading() as connection:
            return connection.scalar(select(jobs.c.id).where(jobs.c.destination == destination,
                                                             jobs.c.state == JobState.QUEUED.value, who)
                                     .order_by(jobs.c.created_at).limit(1))

    def ahead_of(self, job: Job, users: list[str | None]) -> int:
        """How many jobs of these users (the job's own, or its group's) wait on its
        destination in the same state and were submitted before it."""
        named = [u for u in users if u is not None]
        clauses = ([jobs.c.user.in_(named)] if named else []) + ([jobs.c.user.is_(None)] if None in users else [])
        query = select(func.count()).select_from(jobs).where(
            jobs.c.destination == job.destination, jobs.c.state == job.state, jobs.c.created_at < job.created_at)
        if job.state == JobState.LIMITED.value:
            query = query.where(jobs.c.waiting_on == job.waiting_on)
        elif clauses:
            query = query.where(or_(*clauses))
        with self._reading() as connection:
            return int(connection.scalar(query) or 0)

    def load(self, destination: str) -> tuple[int, int]:
        """How many of the destination's jobs run (or are being launched) and how many wait
        for it (new, queued, limited)."""
        with self._reading() as connection:
            counts: dict[str, int] = {state: int(n) for state, n in connection.execute(
                select(jobs.c.state, func.count()).where(jobs.c.destination == destination,
                                                         jobs.c.state.in_([*_RUNNING, *_WAITING]))
                .group_by(jobs.c.state))}
        return (sum(counts.get(s, 0) for s in _RUNNING), sum(counts.get(s, 0) for s in _WAITING))

    def mean_run_s(self, destination: str) -> float | None:
        """The mean run time of the destination's last finished jobs (None: none yet)."""
        recent = (select(jobs.c.wall_time_s).where(jobs.c.destination == destination,
                                                   jobs.c.state.in_([JobState.OK.value, JobState.ERROR.value]),
                                                   jobs.c.wall_time_s.is_not(None))
                  .order_by(jobs.c.finished_at.desc()).limit(RECENT_RUNS).subquery())
        with self._reading() as connection:
            value = connection.scalar(select(func.avg(recent.c.wall_time_s)))
        return float(value) if value is not None else None

    def note_waiting(self, job_id: str, reason: str) -> Job | None:
        """Record why a QUEUED job still waits (as its `reason`), once per reason: the row
        if it changed (its event is then due: the number of its changes goes up, and the
        outbox mark is set as for a move), None if it said so already or is past waiting."""
        now = utcnow()
        with self._transaction() as connection:
            done = connection.execute(
                update(jobs).where(and_(jobs.c.id == job_id, FOUND_STATE == JobState.QUEUED.value,
                                        func.coalesce(jobs.c.reason, "") != reason))
                .values(reason=reason, updated_at=now, event_seq=jobs.c.event_seq + 1,
                        check_at=now + timedelta(seconds=self.check_after),
                        unpublished_at=case((jobs.c.events_queue.is_(None), None), else_=now))).rowcount
            if not done:
                return None
            row = connection.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return Job.from_row(row) if row is not None else None


def _aware(value: datetime) -> datetime:
    """min() of a UTC column comes back without the column's type (naive, or text on SQLite)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
