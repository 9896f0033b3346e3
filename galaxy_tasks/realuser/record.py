"""The one row the privileged helper reads: a job's id, state, directory, token, user, attempt
and the client's directory it hands over, through the database's own DB-API driver (sqlite3,
psycopg2) and one SELECT.

Not through the store: SQLAlchemy and the model took most of the helper's start (about half a
second of every start, and the helper starts at least twice for each job run as its user;
docs/security.md has the figures). The columns are `model.Job`'s of the same names
(tests/unit/test_real_user.py checks them against the table).
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Callable
from urllib.parse import quote


@dataclass(frozen=True)
class JobRecord:
    """What the helper needs of a job's row."""

    id: str
    state: str
    job_dir: str | None
    token: str | None
    run_as: str | None
    attempt: int
    handover_dir: str | None


COLUMNS = tuple(f.name for f in fields(JobRecord))
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM gt_job WHERE id = "  # noqa: S608 - the fields above, no input
_POSTGRESQL = ("postgresql://", "postgres://", "postgresql+psycopg2://")


def read_job(url: str, job_id: str) -> JobRecord | None:
    """The job's record from the database at `url` (the store's URL: `sqlite:///PATH` or
    `postgresql://...`), None if there is no such job; ValueError saying why it could not be
    read. A SQLite file is opened read-only, so a wrong path is an error, never a new database."""
    connect: Callable[[], Any]
    if url.startswith("sqlite:///"):
        connect = partial(sqlite3.connect, f"file:{quote(url[len('sqlite:///'):])}?mode=ro", uri=True, timeout=30)
        marker, errors = "?", sqlite3.Error
    elif url.startswith(_POSTGRESQL):
        import psycopg2  # type: ignore[import-untyped]  # only where the jobs are in PostgreSQL

        connect = partial(psycopg2.connect, "postgresql://" + url.partition("://")[2])
        marker, errors = "%s", psycopg2.Error
    else:
        raise ValueError(f"database_url must be sqlite:///PATH or postgresql://..., not {url.partition(':')[0]}:")
    try:
        connection = connect()
        try:
            cursor = connection.cursor()
            cursor.execute(_SELECT + marker, (job_id,))
            row = cursor.fetchone()
        finally:
            connection.close()
    except errors as exc:
        raise ValueError(f"the job database could not be read: {exc}") from None
    return JobRecord(*row) if row is not None else None
