"""What the workers remember of the messages they took: how often the broker gave one back
(a message that keeps killing the worker that takes it is set aside after a few returns),
and the ids of signed messages taken (a second copy of one is a replay)."""
from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import delete, update
from sqlalchemy.dialects import postgresql, sqlite

from galaxy_tasks.model import deliveries, seen_messages, utcnow
from galaxy_tasks.store.base import StoreBase

#: seconds between two clean-ups of the expired ids by one process
PRUNE_EVERY_S = 10.0


class Deliveries(StoreBase):
    _pruned_at = 0.0

    def first_taking(self, message_id: str, kept_until: datetime) -> bool:
        """Record that a signed message was taken; False if its id was taken before. An id
        is kept until its message has expired (later copies are refused for that), so the
        table holds no more than the messages of one message life."""
        dialect = postgresql if self._pg else sqlite
        statement = (dialect.insert(seen_messages).values(message_id=message_id, kept_until=kept_until)
                     .on_conflict_do_nothing(index_elements=["message_id"]).returning(seen_messages.c.message_id))
        with self._writing() as connection:
            first = connection.execute(statement).first() is not None
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            with self._writing() as connection:
                connection.execute(delete(seen_messages).where(seen_messages.c.kept_until < utcnow()))
        return first

    def count_return(self, message_id: str, task: str) -> int:
        """Record that the broker gave this message back once more; how often it has."""
        dialect = postgresql if self._pg else sqlite
        statement = dialect.insert(deliveries).values(message_id=message_id, task=task[:255], returns=1,
                                                      first_at=utcnow())
        statement = statement.on_conflict_do_update(
            index_elements=["message_id"], set_={"returns": deliveries.c.returns + 1}).returning(deliveries.c.returns)
        with self._writing() as connection:
            return int(connection.execute(statement).scalar_one())

    def set_aside(self, message_id: str) -> None:
        """Mark a returned message as dead-lettered (what an operator looks up by its id)."""
        with self._writing() as connection:
            connection.execute(update(deliveries).where(deliveries.c.message_id == message_id)
                               .values(dead_at=utcnow()))

