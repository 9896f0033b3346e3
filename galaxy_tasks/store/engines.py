"""Database engines: one per URL (and mode) per process, safe to share between threads."""
from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

_engines: dict[tuple[str, bool], Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """PostgreSQL through psycopg2 (the driver this project depends on), whichever
    spelling the URL uses; SQLAlchemy 2.1 would otherwise look for psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def engine(url: str, autocommit: bool = False) -> Engine:
    """The process's engine for `url`; `autocommit` gives the pool of single-statement
    writes on PostgreSQL (nothing is ever left open to roll back on return)."""
    url = normalize_url(url)
    with _lock:
        if (url, autocommit) not in _engines:
            if url.startswith("sqlite"):
                made = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
                event.listen(made, "connect", _sqlite_pragmas)
            else:
                # No ping per checkout (a round trip on every step): a connection found dead
                # invalidates the pool, and the step is retried (see tasks.DB_RETRY).
                options: dict[str, Any] = dict(pool_size=5, max_overflow=10, pool_recycle=3600)
                if autocommit:
                    options.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
                made = create_engine(url, **options)
            _engines[url, autocommit] = made
        return _engines[url, autocommit]


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def dispose_after_fork() -> None:
    """A forked worker process must not share its parent's database connections."""
    for made in _engines.values():
        made.dispose(close=False)
