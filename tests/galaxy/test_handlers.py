"""A Galaxy with two job handler processes sharing one galaxy-tasks (`pytest -k handlers`):
the web process runs no job, each handler takes jobs from Galaxy's PostgreSQL database
(db-skip-locked) and all read one events queue. Jobs spread over both; a handler SIGKILLed
with jobs in flight and started again, another renamed (its jobs given to the new name as
an admin does), a third retired with jobs in flight: every job ends once in Galaxy and its
command ran once. Many trivial jobs across both handlers end `ok` with no monitor call
(GT_GALAXY_HANDLER_JOBS of them; the figures of 1,000 are in docs/galaxy.md).
"""
from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import redis
from sqlalchemy import create_engine, text

from galaxy_tasks.galaxy import stats
from galaxy_tasks.states import JobState
from tests.galaxy.api import GalaxyApi, wait_all
from tests.galaxy.server import HANDLER_MAX_GRAB, GalaxyServer, celery_options, own_redis
from tests.support.deployment import Deployment
from tests.support.ledger import ledger_lines
from tests.support.redis_server import RedisServer
from tests.support.services import create_database, drop_database, unavailable

pytestmark = pytest.mark.galaxy

INPUT = "hello from the test\n"
#: gated jobs in flight in each round of the crash, rename and retire test, in one request:
#: more than one handler takes at a time, so both have some (jobs sent one by one mostly go to
#: whichever handler looks for new jobs first after each, its 1 s loop ahead of the other's)
IN_FLIGHT = HANDLER_MAX_GRAB + 2
#: trivial jobs through Galaxy's API (1,000 for the figures; the default keeps CI within minutes)
MANY = int(os.environ.get("GT_GALAXY_HANDLER_JOBS", "200"))


@pytest.fixture(scope="module")
def handlers_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this Galaxy's own: the session's Galaxy reads `galaxy.main` on its broker."""
    yield from own_redis(tmp_path_factory.mktemp("handlers-broker"))


@pytest.fixture(scope="module")
def handlers_galaxy(galaxy_venv: Path, handlers_broker: RedisServer,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[GalaxyServer]:
    """A web process, two job handler processes (handler0, handler1) and Galaxy's Celery
    worker on PostgreSQL (several processes write at once, which SQLite refuses)."""
    database = create_database()
    options = {**celery_options(handlers_broker.url), "database_connection": database,
               "cleanup_job": "always"}  # a production site's disks: the session Galaxy keeps every directory
    server = GalaxyServer(galaxy_venv, tmp_path_factory.mktemp("galaxy-handlers"), handlers_broker.url,
                          galaxy_options=options, handlers=True)
    try:
        server.start_celery()
        server.start()
        for name in ("handler0", "handler1"):
            server.start_handler(name)
    except (RuntimeError, TimeoutError) as exc:
        server.stop()
        server.stop_celery()
        drop_database(database)
        unavailable(f"Galaxy with two handlers did not start: {exc}")
    yield server
    server.stop()
    server.stop_celery()
    drop_database(database)


@pytest.fixture(scope="module")
def handlers_user(handlers_galaxy: GalaxyServer) -> GalaxyApi:
    return handlers_galaxy.admin.user_api("handlers@example.org")


@pytest.fixture(scope="module")
def history(handlers_user: GalaxyApi) -> tuple[str, str]:
    history_id = handlers_user.history("two handlers")
    return history_id, handlers_user.upload(history_id, INPUT)


@pytest.fixture
def handlers_tasks(make_deployment, handlers_broker: RedisServer) -> Deployment:
    redis.Redis.from_url(handlers_broker.url).flushdb()
    deployment = make_deployment(broker=handlers_broker.url, GALAXY_TASKS_CLEANUP_JOB="always")
    deployment.worker("galaxy_tasks,local")
    return deployment


def galaxy_sql(galaxy: GalaxyServer, statement: str, **params: object) -> list[tuple]:
    """Galaxy's own database, read (and, for an admin's reassignment, written) directly."""
    engine = create_engine(galaxy.database_connection)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def handlers_of(galaxy: GalaxyServer, job_ids: list[str]) -> dict[str, str]:
    """The handler Galaxy's database names for each job (encoded ids)."""
    numbers = {galaxy.admin.decode(job_id): job_id for job_id in job_ids}
    rows = galaxy_sql(galaxy, "SELECT id, handler FROM job WHERE id = ANY(:ids)", ids=list(numbers))
    return {numbers[number]: handler for number, handler in rows}


def ends_recorded(galaxy: GalaxyServer, job_ids: list[str]) -> Counter:
    """How many times Galaxy recorded each job entering a terminal state (its state history)."""
    numbers = {galaxy.admin.decode(job_id): job_id for job_id in job_ids}
    rows = galaxy_sql(galaxy, "SELECT job_id FROM job_state_history WHERE job_id = ANY(:ids) "
                              "AND state IN ('ok', 'error', 'deleted', 'failed')", ids=list(numbers))
    return Counter(numbers[number] for (number,) in rows)


def start_gated(galaxy: GalaxyServer, user: GalaxyApi, history: tuple[str, str], tasks: Deployment) -> list[str]:
    """IN_FLIGHT jobs of the ledger tool, once all their commands run (held by the closed
    gate) and both live handlers have some."""
    history_id, dataset_id = history
    galaxy.gate.unlink(missing_ok=True)
    before = len(ledger_lines(galaxy.ledger))
    job_ids, _ = user.run_batch(history_id, "probe_ledger_gt", [dataset_id] * IN_FLIGHT)
    tasks.wait_until(lambda: len(ledger_lines(galaxy.ledger)) == before + IN_FLIGHT, 180,
                     f"the commands of {IN_FLIGHT} jobs running")
    owners = Counter(handlers_of(galaxy, job_ids).values())
    assert set(owners) == set(galaxy.handler_procs), f"jobs spread over the live handlers: {owners}"
    return job_ids


def assert_each_ended_once(galaxy: GalaxyServer, user: GalaxyApi, tasks: Deployment, job_ids: list[str],
                           outputs_before: int) -> None:
    assert wait_all(user, job_ids, timeout=180) == dict.fromkeys(job_ids, "ok")
    assert ends_recorded(galaxy, job_ids) == Counter(dict.fromkeys(job_ids, 1)), "each job ended once in Galaxy"
    runs = Counter(ledger_lines(galaxy.ledger)[outputs_before:])
    assert len(runs) == len(job_ids) and set(runs.values()) == {1}, f"each command ran once: {runs}"
    histories = tasks.histories([galaxy.task_id(job_id) for job_id in job_ids])
    assert {job: (h.count(JobState.RUNNING), h[-1]) for job, h in histories.items()} == \
        {galaxy.task_id(job_id): (1, JobState.OK) for job_id in job_ids}


def test_handlers_share_jobs_and_each_ends_once_through_a_kill_a_rename_and_a_retirement(
        handlers_galaxy: GalaxyServer, handlers_user: GalaxyApi, history: tuple[str, str],
        handlers_tasks: Deployment) -> None:
    galaxy, user, tasks = handlers_galaxy, handlers_user, handlers_tasks
    try:
        # handler0 crashes with its jobs running and starts again; handler1 is renamed
        # handler2: stopped, its unfinished jobs given to the new name (the admin's SQL), started
        outputs_before = len(ledger_lines(galaxy.ledger))
        job_ids = start_gated(galaxy, user, history, tasks)
        galaxy.stop_handler("handler0", signal.SIGKILL)
        galaxy.start_handler("handler0")
        galaxy.stop_handler("handler1")
        galaxy_sql(galaxy, "UPDATE job SET handler = 'handler2' WHERE handler = 'handler1' "
                           "AND state NOT IN ('ok', 'error', 'deleted', 'failed')")
        galaxy.start_handler("handler2")
        galaxy.gate.touch()
        assert_each_ended_once(galaxy, user, tasks, job_ids, outputs_before)
        assert set(handlers_of(galaxy, job_ids).values()) <= {"handler0", "handler1", "handler2"}

        # handler2 is retired with its jobs in flight, nothing reassigned: their events are
        # applied by handler0, and its name started again later finds nothing to run
        outputs_before = len(ledger_lines(galaxy.ledger))
        job_ids = start_gated(galaxy, user, history, tasks)
        retired = [job for job, handler in handlers_of(galaxy, job_ids).items() if handler == "handler2"]
        galaxy.stop_handler("handler2", signal.SIGKILL)
        galaxy.gate.touch()
        assert_each_ended_once(galaxy, user, tasks, job_ids, outputs_before)
        assert set(handlers_of(galaxy, retired).values()) == {"handler2"}, "ended where no handler of the name runs"
        galaxy.start_handler("handler2")
        time.sleep(5)
        assert ends_recorded(galaxy, job_ids) == Counter(dict.fromkeys(job_ids, 1))
        assert len(ledger_lines(galaxy.ledger)) == outputs_before + IN_FLIGHT
    finally:
        galaxy.gate.touch()


def test_handlers_end_many_trivial_jobs_ok_with_no_monitor_calls(
        handlers_galaxy: GalaxyServer, handlers_user: GalaxyApi, history: tuple[str, str],
        handlers_tasks: Deployment) -> None:
    galaxy, user = handlers_galaxy, handlers_user
    history_id, dataset_id = history
    alive = sorted(galaxy.handler_procs)
    assert len(alive) == 2, alive
    finished_before = sum(stats.read(galaxy.handler_stats_file(name)).get("finished", 0) for name in alive)
    started = time.monotonic()
    job_ids = user.run_many(history_id, "probe_cat_fast", dataset_id, MANY)
    assert wait_all(user, job_ids, timeout=120 + MANY) == dict.fromkeys(job_ids, "ok")
    seconds = time.monotonic() - started
    owners = Counter(handlers_of(galaxy, job_ids).values())
    assert set(owners) == set(alive), f"jobs spread over both handlers: {owners}"

    def counters() -> dict[str, dict[str, int]]:
        return {name: stats.read(galaxy.handler_stats_file(name)) for name in alive}

    # nothing of the ended jobs stays in either handler, whichever applied their events
    handlers_tasks.wait_until(lambda: all(f.get("watching") == 0 for f in counters().values()), 30,
                              f"no job watched: {counters()}")
    figures = counters()
    assert {name: f.get("check_watched_item", 0) for name, f in figures.items()} == dict.fromkeys(alive, 0)
    assert sum(f.get("finished", 0) for f in figures.values()) - finished_before == MANY, "each finished once"
    # cleanup_job: always in Galaxy, GALAXY_TASKS_CLEANUP_JOB=always in galaxy-tasks: both
    # directories of every job are gone once its end was recorded and delivered
    task_dirs = [Path(handlers_tasks.job(galaxy.task_id(job_id)).job_dir) for job_id in job_ids]
    galaxy_dirs = [galaxy.working_directory(galaxy.admin.decode(job_id)) for job_id in job_ids]
    handlers_tasks.wait_until(lambda: not any(d.exists() for d in task_dirs + galaxy_dirs), 60,
                              "every job's directories removed")
    print(f"\n{MANY} trivial jobs over two handlers: all ok in {seconds:.1f} s; per handler {dict(owners)}; "
          f"counters {figures}")
