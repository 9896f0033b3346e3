"""The Galaxy tier: one real Galaxy for the session (its venv from ops/galaxy-venv.sh), a
Redis of its own as galaxy-tasks' broker, and per test a galaxy-tasks deployment (a fresh
PostgreSQL database, real workers) on that broker.

GT_GALAXY_VENV chooses the venv (the root conftest clears GALAXY_TASKS_* variables, so the
script's own GALAXY_TASKS_GALAXY_VENV is passed on from here).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import redis

from galaxy_tasks.spec import FIELDS
from tests.galaxy.api import GalaxyApi
from tests.galaxy.server import GalaxyServer
from tests.support.deployment import ROOT, Deployment
from tests.support.redis_server import RedisServer
from tests.support.services import require, unavailable

#: galaxy-tasks accepts the spec's `events` field (the job-event feature is live)
EVENTS = "events" in FIELDS


def galaxy_venv_path() -> Path:
    """Runs ops/galaxy-venv.sh (fast when the venv is already complete)."""
    env = dict(os.environ)
    if os.environ.get("GT_GALAXY_VENV"):
        env["GALAXY_TASKS_GALAXY_VENV"] = os.environ["GT_GALAXY_VENV"]
    try:
        result = subprocess.run(["bash", str(ROOT / "ops" / "galaxy-venv.sh")], env=env, capture_output=True,
                                text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"ops/galaxy-venv.sh did not run: {exc}")
    if result.returncode != 0 or not result.stdout.strip():
        unavailable(f"ops/galaxy-venv.sh failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def galaxy_venv() -> Path:
    return galaxy_venv_path()


@pytest.fixture(scope="session")
def galaxy_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path_factory.mktemp("galaxy-broker")).start()
    except (OSError, RuntimeError) as exc:
        require("redis-server", exc)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def galaxy(galaxy_venv: Path, galaxy_broker: RedisServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[GalaxyServer]:
    """A running Galaxy; a test may kill it and start it again on the same data."""
    server = GalaxyServer(galaxy_venv, tmp_path_factory.mktemp("galaxy"), galaxy_broker.url, events=EVENTS)
    try:
        server.start()
    except (RuntimeError, TimeoutError) as exc:
        server.stop()
        unavailable(f"Galaxy did not start: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def galaxy_user(galaxy: GalaxyServer) -> GalaxyApi:
    return galaxy.admin.user_api("tester@example.org")


@pytest.fixture
def tasks(make_deployment, galaxy_broker: RedisServer) -> Deployment:
    """galaxy-tasks on Galaxy's broker (emptied first: nothing of an earlier test is left to
    consume) with one worker serving the steps and local queues."""
    redis.Redis.from_url(galaxy_broker.url).flushall()
    deployment = make_deployment(broker=galaxy_broker.url)
    deployment.worker("galaxy_tasks,local")
    return deployment
