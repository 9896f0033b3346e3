from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support import brokers
from tests.support.deployment import Deployment
from tests.support.postgres_server import PostgresServer
from tests.support.services import create_database, drop_database, migrated_template, require


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--broker", choices=[*brokers.KINDS, "both"], default="both",
                     help="the broker(s) of the tests marked both_brokers (default: both)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_brokers: runs once on Redis and once on RabbitMQ")


#: What there is only one of on the machine, by the marker of the tests that need it: every
#: test so marked runs on the same pytest-xdist worker (`--dist loadgroup`), one at a time.
#: One Galaxy server per run (a session fixture, its broker flushed by tests), the one Slurm
#: (a test restarts its controller), the one Grid Engine cell. The first marker found wins.
ONE_OF_EACH = (("galaxy", "galaxy"), ("slurm", "slurm"), ("drmaa", "grid_engine"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tests of each thing there is only one of in one xdist group (before
    pytest-xdist reads the groups)."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        group = next((group for marker, group in ONE_OF_EACH if item.get_closest_marker(marker)), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `both_brokers` that builds a deployment runs on each broker chosen."""
    if "broker_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_brokers"):
        chosen = metafunc.config.getoption("--broker")
        metafunc.parametrize("broker_kind", brokers.KINDS if chosen == "both" else [chosen])


@pytest.fixture
def broker_kind() -> str:
    """The broker of a test that is not marked `both_brokers`."""
    return "redis"


@pytest.fixture
def make_broker(tmp_path: Path, broker_kind: str) -> Iterator[Callable[..., brokers.Broker]]:
    """Start a broker of the test's kind (`restartable=True`: one the test may restart;
    `durable=True`: a Redis that keeps an append-only file); stopped after the test."""
    started: list[brokers.Broker] = []

    def make(kind: str | None = None, restartable: bool = False, durable: bool = False) -> brokers.Broker:
        kind = kind or broker_kind
        try:
            broker = brokers.start(kind, tmp_path / f"broker-{len(started)}", restartable, durable)
        except (OSError, RuntimeError) as exc:
            require("redis-server" if kind == "redis" else "RabbitMQ", exc)
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.close()


@pytest.fixture(scope="session")
def database_template() -> Iterator[str]:
    """A PostgreSQL database at the newest schema that this test process copies for each
    deployment (dropped at the end of the run)."""
    url = migrated_template()
    yield url
    drop_database(url)


@pytest.fixture
def make_deployment(tmp_path: Path, make_broker, database_template: str) -> Iterator[Callable[..., Deployment]]:
    """Build a deployment (a fresh PostgreSQL database, a broker of its own, job directories)
    with extra settings; workers are started by the test. A broker of its own keeps
    concurrent test runs from consuming each other's messages. `broker` may be a broker the
    test started (`make_broker`) or a URL; `database` a database URL of the test's own, which
    `galaxy-tasks db upgrade` brings to the newest schema (the fresh one is a copy of a
    database already there)."""
    made: list[tuple[Deployment, str | None]] = []

    def make(broker: brokers.Broker | str | None = None, database: str | None = None, **env: str) -> Deployment:
        if broker is None:
            broker = make_broker()
        own_database = database is None
        database = database or create_database(template=database_template)
        deployment = Deployment(tmp_path, database, broker, env, upgrade=not own_database)
        made.append((deployment, database if own_database else None))
        return deployment

    yield make
    for deployment, database in made:
        deployment.close()
        if database is not None:
            drop_database(database)


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of the test's own, which it may stop and start again."""
    try:
        server = PostgresServer()
    except (OSError, RuntimeError) as exc:
        require("PostgreSQL server binaries (initdb, pg_ctl)", exc)
    try:
        server.init().start()
    except (OSError, RuntimeError) as exc:
        server.close()
        require("a private PostgreSQL cluster", exc)
    yield server
    server.close()


@pytest.fixture
def deployment(make_deployment) -> Deployment:
    """A broker + a fresh PostgreSQL database + job directories; workers are started by the test."""
    return make_deployment()
