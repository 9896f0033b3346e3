"""Named, expiring locks in the database: one reconciliation pass at a time, however many
workers or beat processes try to start one."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from galaxy_tasks.model import leases, utcnow
from galaxy_tasks.store.base import StoreBase


class Leases(StoreBase):
    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Hold the named lease for `seconds` unless someone else holds it now."""
        now = utcnow()
        until = now + timedelta(seconds=seconds)
        with self._transaction() as connection:
            taken = connection.execute(update(leases).where(leases.c.name == name, leases.c.until < now)
                                       .values(holder=holder, until=until)).rowcount
            if taken:
                return True
            if connection.scalar(select(leases.c.name).where(leases.c.name == name)) is not None:
                return False
        try:
            with self._transaction() as connection:
                connection.execute(insert(leases).values(name=name, holder=holder, until=until))
        except IntegrityError:
            return False  # another process created it a moment ago
        return True

    def lease_until(self, name: str) -> datetime | None:
        """When the named lease runs out (None: never taken)."""
        with self._reading() as connection:
            return connection.scalar(select(leases.c.until).where(leases.c.name == name))
