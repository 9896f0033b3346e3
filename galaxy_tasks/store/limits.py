"""Concurrency limits, counted in the database: a job takes a place under each of its limit
keys in the same transaction as the move that launches it, and gives them back in one
guarded by its row (a compare-and-set on `limit_keys`), so the count is exact however many
workers race, and a place is given back exactly once.

The counters a move takes or gives are locked first, in a fixed order: a job refused
because a counter is full is marked LIMITED (waiting on that key) before anyone else can
give a place back, and whoever gives one back then finds it: no wake-up is lost.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from galaxy_tasks.logs import event
from galaxy_tasks.model import jobs, limit_usage
from galaxy_tasks.states import JobState
from galaxy_tasks.store.moves import Moved, Moves

log = logging.getLogger(__name__)


class Refused(NamedTuple):
    """The launch did not take its places: `key` is full (`used` of `limit`); the job is
    now LIMITED, waiting on it (`moved`, unless the job was past its launch already)."""

    key: str
    used: int
    limit: int
    moved: Moved | None


class Released(NamedTuple):
    """Places given back, and for each key the oldest job that waited on it, woken (moved
    back to QUEUED in the same transaction, so the next place given back wakes the next
    job, not this one again): its move, to announce, and its launch to send."""

    keys: list[str]
    woken: list[Moved]

    @property
    def waiting(self) -> list[tuple[str, str]]:
        """(id, queue) of each woken job."""
        return [(moved.job.id, moved.job.queue) for moved in self.woken]


class LimitPlaces(Moves):
    def claim_places(self, job_id: str, keys: dict[str, int], sources: frozenset[JobState], *,
                     check_at: datetime, limited_check_at: datetime, **values: Any) -> Moved | Refused | None:
        """Move the job to SUBMITTING holding a place under every key (`key: limit`), or,
        if one is full, to LIMITED waiting on it. None: the job was past this step.

        The job's row is locked before the counters, as when places are given back (one
        order, no deadlock). Places the job still holds (a give-back lost in a crash) are
        not taken twice, and those it no longer needs, or all of them when it must wait, are
        given back: a waiting job holds nothing. A job refused again on the key it already
        waits on is left as it is (no new state change: reconciliation's backoff stands)."""
        with self._transaction() as connection:
            row = self._lock_job(connection, job_id)
            if row is None or JobState(row.state) not in sources:
                return None
            held = set(row.limit_keys or ())
            usage = self._lock_counters(connection, {**keys, **dict.fromkeys(held - set(keys), 0)})
            for key in sorted(keys):
                if key not in held and usage[key] >= keys[key]:
                    if held:
                        self._give_back(connection, sorted(held))
                    if row.state == JobState.LIMITED.value and row.waiting_on == key and not held:
                        return Refused(key, usage[key], keys[key], None)
                    reason = f"waiting: {key} has {usage[key]} of {keys[key]} places taken"
                    moved = self.move(job_id, JobState.LIMITED, sources=sources, reason=reason, connection=connection,
                                      waiting_on=key, check_at=limited_check_at, owner=None, limit_keys=None)
                    return Refused(key, usage[key], keys[key], moved)
            moved = self.move(job_id, JobState.SUBMITTING, sources=sources, connection=connection,
                              limit_keys=sorted(keys) or None, waiting_on=None, check_at=check_at, **values)
            if moved is None:
                return None
            self._give_back(connection, sorted(held - set(keys)))  # (its destination's limits changed)
            taken = [key for key in keys if key not in held]
            if taken:
                connection.execute(update(limit_usage).where(limit_usage.c.key.in_(taken))
                                   .values(used=limit_usage.c.used + 1))
            return moved

    def move_giving_back(self, job_id: str, target: JobState, *, sources: frozenset[JobState],
                         reason: str | None = None, **values: Any) -> tuple[Moved | None, Released]:
        """Move the job on and give back every place it holds, in one transaction: no crash
        leaves a job that moved on (ended, resubmitted, back in line) holding places."""
        with self._transaction() as connection:
            row = self._lock_job(connection, job_id)
            if row is None or JobState(row.state) not in sources:
                return None, Released([], [])
            keys = sorted(row.limit_keys or ())
            moved = self.move(job_id, target, sources=sources, reason=reason, connection=connection,
                              **{**values, "limit_keys": None})
            if moved is None or not keys:
                return moved, Released([], [])
            self._lock_counters(connection, dict.fromkeys(keys, 0))
            self._give_back(connection, keys)
            return moved, Released(keys, [w for key in keys if (w := self._wake_oldest(connection, key)) is not None])

    def release_places(self, job_id: str) -> Released:
        """Give back the places the job holds (once: the first caller clears `limit_keys`),
        and wake the oldest job waiting on each freed key."""
        with self._transaction() as connection:
            row = self._lock_job(connection, job_id)
            if row is None or not row.limit_keys:
                return Released([], [])
            keys = sorted(row.limit_keys)
            connection.execute(update(jobs).where(jobs.c.id == job_id).values(limit_keys=None))
            self._lock_counters(connection, dict.fromkeys(keys, 0))
            self._give_back(connection, keys)
            if JobState(row.state) in (JobState.OK, JobState.ERROR):  # a cancelled job's stop is still checked
                connection.execute(update(jobs).where(jobs.c.id == job_id).values(check_at=None))
            return Released(keys, [w for key in keys if (w := self._wake_oldest(connection, key)) is not None])

    def wake_oldest(self, key: str, why: str | None = None) -> Moved | None:
        """Wake the oldest job waiting on `key` (a wake-up passed on: `why` begins the
        reason, PASSED_ON)."""
        with self._transaction() as connection:
            return self._wake_oldest(connection, key, why)

    def _wake_oldest(self, connection: Connection, key: str, why: str | None = None) -> Moved | None:
        query = _OLDEST_WAITING.with_for_update(skip_locked=True) if self._pg else _OLDEST_WAITING
        found = connection.execute(query, {"key": key}).first()
        if found is None:
            return None
        return self.move(found.id, JobState.QUEUED, sources=_LIMITED, connection=connection,
                         reason=f"{why or 'woken'}: a place under {key} was given back", stamp=False)

    def limit_usage(self, keys: list[str]) -> dict[str, int]:
        """How many places are taken under each of these keys now."""
        with self._reading() as connection:
            found = dict(connection.execute(select(limit_usage.c.key, limit_usage.c.used)
                                            .where(limit_usage.c.key.in_(keys))).all())
        return {key: int(found.get(key, 0)) for key in keys}

    def _lock_job(self, connection: Connection, job_id: str) -> Any:
        query = select(jobs.c.state, jobs.c.limit_keys, jobs.c.waiting_on).where(jobs.c.id == job_id)
        return connection.execute(query.with_for_update() if self._pg else query).first()

    def _give_back(self, connection: Connection, keys: list[str]) -> None:
        """One place under each key (the counters locked already). A counter already at 0
        stays there and is logged: a place given back twice would let the limit be passed."""
        if not keys:
            return
        done = connection.execute(update(limit_usage).where(limit_usage.c.key.in_(keys), limit_usage.c.used > 0)
                                  .values(used=limit_usage.c.used - 1)).rowcount
        if done != len(keys):
            event(log, "limit_counter_at_zero", level=logging.ERROR, keys=",".join(keys),
                  why="a place was given back that was not taken")

    def _lock_counters(self, connection: Connection, keys: dict[str, int]) -> dict[str, int]:
        """Create the counters that do not exist yet, lock all of them (in key order) and
        return how many places each has taken."""
        names = sorted(keys)
        if not names:
            return {}
        insert = pg_insert if self._pg else sqlite_insert
        connection.execute(insert(limit_usage).values([{"key": key, "used": 0} for key in names])
                           .on_conflict_do_nothing())
        query = select(limit_usage.c.key, limit_usage.c.used).where(limit_usage.c.key.in_(names)) \
            .order_by(limit_usage.c.key)
        if self._pg:
            query = query.with_for_update()
        return {key: int(used) for key, used in connection.execute(query)}


_LIMITED = frozenset({JobState.LIMITED})
#: the reason of a job woken by a wake-up another job passed on (it passes nothing on itself)
PASSED_ON = "woken (passed on)"
_OLDEST_WAITING = (select(jobs.c.id, jobs.c.queue)
                   .where(and_(jobs.c.state == JobState.LIMITED.value, jobs.c.waiting_on == bindparam("key")))
                   .order_by(jobs.c.created_at).limit(1))
