"""Create or migrate the schema with Alembic (`galaxy-tasks db upgrade`)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from galaxy_tasks.store.engines import engine

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(url: str) -> None:
    """Bring the database to the newest schema; safe to run again and from many processes
    one after another."""
    with engine(url).begin() as connection:
        command.upgrade(_config(connection), "head")


def head() -> str:
    """The newest revision this code knows."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return str(ScriptDirectory.from_config(config).get_current_head())


def current(url: str) -> str | None:
    with engine(url).connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
