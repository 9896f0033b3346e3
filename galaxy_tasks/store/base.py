"""What every part of the store shares: the engines and how a write is run."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Executable

from galaxy_tasks.model import jobs
from galaxy_tasks.store.engines import engine

#: a job's state, compared on rows found by their ids: an expression no index covers, so a
#: query that names its jobs reads those and no others. Compared as the column itself, it
#: let PostgreSQL read every job in that state through the state's index instead, which its
#: statistics (that lag a burst) said held a handful: each batch of a 10,000-job burst read
#: every waiting job, and so did a single job's move (its key is unique, but a state said to
#: hold one row costs the same to the planner).
FOUND_STATE = jobs.c.state.concat("")


class StoreBase:
    """Two pools on PostgreSQL: transactions, and autocommit single statements (a step's
    write is one statement, atomic by itself, so it needs no BEGIN/COMMIT)."""

    def __init__(self, url: str, check_after: float = 300.0) -> None:
        self.url = url
        self.check_after = check_after
        self.engine: Engine = engine(url)
        self.dialect = self.engine.dialect.name
        self._pg = self.dialect == "postgresql"
        self._single: Engine = engine(url, autocommit=True) if self._pg else self.engine
        self._statements: dict[tuple[Any, ...], Executable] = {}

    def dispose(self) -> None:
        """Close this store's pooled connections (before its database is dropped)."""
        self.engine.dispose()
        self._single.dispose()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._single.connect() as connection:
            yield connection

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One statement on PostgreSQL (autocommit); a transaction elsewhere."""
        if self._pg:
            with self._single.connect() as connection:
                yield connection
        else:
            with self.engine.begin() as connection:
                yield connection

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """Several statements that must commit together. On SQLite the transaction takes
        the database's write lock at once (`BEGIN IMMEDIATE`): pysqlite would begin only at
        the first write, and a read before it would see what another writer then changes."""
        with self.engine.begin() as connection:
            if not self._pg:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield connection

    def _statement(self, key: tuple[Any, ...], build: Callable[..., Executable], *args: Any) -> Executable:
        """Statements are built once per shape: building and hashing a statement on every
        step would cost more than the round trip it makes."""
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = build(*args)
        return statement
