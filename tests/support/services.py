"""Reaching the machine's real PostgreSQL, and failing (not skipping) under CI without it."""
from __future__ import annotations

import os
import uuid

import pytest

PG_ADMIN_URL = os.environ.get("GT_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(message: str) -> None:
    """Skip on a developer's machine; fail under CI, which must never pass by skipping."""
    if IN_CI:
        pytest.fail(message + " (required under CI)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(service: str, error: Exception) -> None:
    unavailable(f"{service} is not reachable: {error}")


def require_module(name: str, hint: str) -> None:
    """At a test module's top: its tests need `name` (an optional extra)."""
    try:
        __import__(name)
    except ImportError as exc:
        unavailable(f"{name} is not installed ({exc}): {hint}")


def create_database(template: str | None = None) -> str:
    """A new PostgreSQL database, empty or a copy of `template` (the URL of a database no one
    is connected to: `migrated_template`); returns its URL."""
    from sqlalchemy import create_engine, text

    name = "gt_test_" + uuid.uuid4().hex[:12]
    copy = f' TEMPLATE "{template.rsplit("/", 1)[1]}"' if template else ""
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"{copy}'))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL"
        require("PostgreSQL", exc)
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def migrated_template() -> str:
    """A database at the newest schema, for `create_database(template=...)`: a copy of it
    takes a tenth of a second, where a new database and `galaxy-tasks db upgrade` take
    seconds. Its connections are closed (a template must have none); the caller drops it."""
    from galaxy_tasks.store import schema
    from galaxy_tasks.store.engines import engine

    url = create_database()
    schema.upgrade(url)
    engine(url).dispose()
    return url


def drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
