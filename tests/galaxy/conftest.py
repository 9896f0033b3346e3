"""The Galaxy tier: one real Galaxy for the session (its venv from ops/galaxy-venv.sh) and
its Celery worker, a Redis of its own (database 0 is galaxy-tasks' broker, 1 and 2 Galaxy's
Celery), and per test a galaxy-tasks deployment (a fresh PostgreSQL database, real
workers) on that broker.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import redis

from tests.galaxy.api import GalaxyApi
from tests.galaxy.server import GalaxyServer, celery_options, ensure_venv, own_redis
from tests.support.deployment import Deployment
from tests.support.redis_server import RedisServer
from tests.support.services import unavailable


@pytest.fixture(scope="session")
def galaxy_venv() -> Path:
    try:
        return ensure_venv()
    except RuntimeError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def galaxy_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from own_redis(tmp_path_factory.mktemp("galaxy-broker"))


@pytest.fixture(scope="session")
def galaxy(galaxy_venv: Path, galaxy_broker: RedisServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[GalaxyServer]:
    """A running Galaxy; a test may kill it and start it again on the same data. Metadata is
    set in the job unless a tool's environment says `metadata_strategy: directory_celery`."""
    yield from running(GalaxyServer(galaxy_venv, tmp_path_factory.mktemp("galaxy"), galaxy_broker.url,
                                    galaxy_options=celery_options(galaxy_broker.url, metadata_strategy="directory")))


def running(server: GalaxyServer) -> Iterator[GalaxyServer]:
    """A Galaxy and its Celery worker started (the test skipped, or failed under CI, if it
    does not start), then stopped."""
    server.start_celery()
    try:
        server.start()
    except (RuntimeError, TimeoutError) as exc:
        server.stop()
        server.stop_celery()
        unavailable(f"Galaxy did not start: {exc}")
    yield server
    server.stop()
    server.stop_celery()


@pytest.fixture(scope="session")
def galaxy_user(galaxy: GalaxyServer) -> GalaxyApi:
    return galaxy.admin.user_api("tester@example.org")


@pytest.fixture
def tasks(make_deployment, galaxy_broker: RedisServer) -> Deployment:
    """galaxy-tasks on Galaxy's broker (its database emptied first: nothing of an earlier test
    is left to consume; Galaxy's Celery keeps its own) with one worker serving the steps and
    local queues."""
    redis.Redis.from_url(galaxy_broker.url).flushdb()
    deployment = make_deployment(broker=galaxy_broker.url)
    deployment.worker("galaxy_tasks,local")
    return deployment
