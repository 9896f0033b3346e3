from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.deployment import Deployment
from tests.support.services import create_database, drop_database, redis_database


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """Redis + a fresh PostgreSQL database + job directories; workers are started by the test."""
    database = create_database()
    broker = redis_database()
    deployment = Deployment(tmp_path, database, broker)
    try:
        yield deployment
    finally:
        deployment.close()
        drop_database(database)
