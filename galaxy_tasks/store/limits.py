"""Concurrency limits, counted in the database: a job takes a place under each of its limit
keys in the same transaction as the move that launches it, and gives them back in one
guarded by its row (a compare-and-set on `limit_keys`), so the count is exact however many
workers race, and a place is given back exactly once.

The counters a move takes or gives are locked first, in a fixed order: a job refused
because a counter is full is marked LIMITED (waiting on that key) before anyone else can
give a place back, and whoever gives one back then finds it: no wake-up is lost.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from galaxy_tasks.model import jobs, limit_usage
from galaxy_tasks.states import TERMINAL, JobState
from galaxy_tasks.store.moves import Moved, Moves


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
        not taken twice."""
        with self._transaction() as connection:
            query = select(jobs.c.state, jobs.c.limit_keys).where(jobs.c.id == job_id)
            row = connection.execute(query.with_for_update() if self._pg else query).first()
            if row is None or JobState(row.state) not in sources:
                return None
            held = set(row.limit_keys or ()) & set(keys)
            usage = self._lock_counters(connection, keys)
            for key in sorted(keys):
                if key not in held and usage[key] >= keys[key]:
                    reason = f"waiting: {key} has {usage[key]} of {keys[key]} places taken"
                    moved = self.move(job_id, JobState.LIMITED, sources=sources, reason=reason, connection=connection,
                                      waiting_on=key, check_at=limited_check_at, owner=None)
                    return Refused(key, usage[key], keys[key], moved)
            moved = self.move(job_id, JobState.SUBMITTING, sources=sources, connection=connection,
                              limit_keys=sorted(keys) or None, waiting_on=None, check_at=check_at, **values)
            taken = [key for key in keys if key not in held]
            if moved is None or not taken:
                return moved  # (the counters it created, at 0, are harmless)
            connection.execute(update(limit_usage).where(limit_usage.c.key.in_(taken))
                               .values(used=limit_usage.c.used + 1))
            return moved

    def release_places(self, job_id: str) -> Released:
        """Give back the places the job holds (once: the first caller clears `limit_keys`),
        and find who waits for each freed key."""
        with self._transaction() as connection:
            query = select(jobs.c.limit_keys, jobs.c.state).where(jobs.c.id == job_id)
            row = connection.execute(query.with_for_update() if self._pg else query).first()
            if row is None or not row.limit_keys:
                return Released([], [])
            taken = connection.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.limit_keys.is_not(None))
                                       .values(limit_keys=None)).rowcount
            if taken != 1:
                return Released([], [])  # another caller gave them back a moment ago
            keys = list(row.limit_keys)
            self._lock_counters(connection, dict.fromkeys(keys, 0))
            connection.execute(update(limit_usage).where(limit_usage.c.key.in_(keys), limit_usage.c.used > 0)
                               .values(used=limit_usage.c.used - 1))
            if JobState(row.state) in TERMINAL:
                connection.execute(update(jobs).where(jobs.c.id == job_id).values(check_at=None))
            woken = [moved for key in keys if (moved := self._wake_oldest(connection, key)) is not None]
            return Released(keys, woken)

    def wake_oldest(self, key: str) -> Moved | None:
        """Wake the oldest job waiting on `key` (a woken job that another limit refused
        passes its wake-up on)."""
        with self._transaction() as connection:
            return self._wake_oldest(connection, key)

    def _wake_oldest(self, connection: Connection, key: str) -> Moved | None:
        query = _OLDEST_WAITING.with_for_update(skip_locked=True) if self._pg else _OLDEST_WAITING
        found = connection.execute(query, {"key": key}).first()
        if found is None:
            return None
        return self.move(found.id, JobState.QUEUED, sources=_LIMITED, connection=connection,
                         reason=f"woken: a place under {key} was given back", stamp=False)

    def limit_usage(self, keys: list[str]) -> dict[str, int]:
        """How many places are taken under each of these keys now."""
        with self._reading() as connection:
            found = dict(connection.execute(select(limit_usage.c.key, limit_usage.c.used)
                                            .where(limit_usage.c.key.in_(keys))).all())
        return {key: int(found.get(key, 0)) for key in keys}

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
_OLDEST_WAITING = (select(jobs.c.id, jobs.c.queue)
                   .where(and_(jobs.c.state == JobState.LIMITED.value, jobs.c.waiting_on == bindparam("key")))
                   .order_by(jobs.c.created_at).limit(1))
