from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.deployment import Deployment
from tests.support.redis_server import RedisServer
from tests.support.services import create_database, drop_database, require


@pytest.fixture
def make_deployment(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Build a deployment (a fresh PostgreSQL database, a Redis server of its own, job
    directories) with extra settings; workers are started by the test. Its own Redis keeps
    concurrent test runs from consuming each other's messages."""
    made: list[tuple[Deployment, str]] = []
    servers: list[RedisServer] = []

    def make(broker: str | None = None, **env: str) -> Deployment:
        if broker is None:
            try:
                server = RedisServer(tmp_path).start()
            except (OSError, RuntimeError) as exc:
                require("redis-server", exc)
            servers.append(server)
            broker = server.url
        database = create_database()
        deployment = Deployment(tmp_path, database, broker, env)
        made.append((deployment, database))
        return deployment

    yield make
    for deployment, database in made:
        deployment.close()
        drop_database(database)
    for server in servers:
        server.kill()


@pytest.fixture
def deployment(make_deployment) -> Deployment:
    """Redis + a fresh PostgreSQL database + job directories; workers are started by the test."""
    return make_deployment()
