"""With `metadata_strategy: directory_celery` a job run through the plugin carries no
metadata step (the step that is ~90% of a trivial job's time): when the job's end event
arrives, Galaxy sets the metadata in its warm Celery worker, then finishes the job.

A Galaxy of its own (Celery on, its Celery worker running) on a Redis of its own; the test
plays galaxy-tasks' side of the job-event contract (tests/galaxy/standin.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.galaxy.server import GalaxyServer, celery_options
from tests.galaxy.standin import StandIn, submitted
from tests.support.redis_server import RedisServer
from tests.support.services import require, unavailable

pytestmark = pytest.mark.galaxy


@pytest.fixture(scope="module")
def celery_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path_factory.mktemp("celery-broker")).start()
    except (OSError, RuntimeError) as exc:
        require("redis-server", exc)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def celery_galaxy(galaxy_venv: Path, celery_broker: RedisServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[GalaxyServer]:
    server = GalaxyServer(galaxy_venv, tmp_path_factory.mktemp("galaxy-celery"), celery_broker.url,
                          galaxy_options=celery_options(celery_broker.url))
    server.start_celery()
    try:
        server.start()
    except (RuntimeError, TimeoutError) as exc:
        server.stop()
        server.stop_celery()
        unavailable(f"Galaxy with Celery did not start: {exc}")
    yield server
    server.stop()
    server.stop_celery()


def test_metadata_is_set_in_galaxys_celery_worker_not_in_the_job(celery_galaxy: GalaxyServer,
                                                                celery_broker: RedisServer) -> None:
    user = celery_galaxy.admin.user_api("tester@example.org")
    history_id = user.history("celery metadata")
    dataset_id = user.upload(history_id, "one\ntwo\n")
    standin = StandIn(celery_broker.url)
    job_id, output_id = user.run_tool(history_id, "probe_cat_contract", dataset_id)
    spec = submitted(standin)
    number = celery_galaxy.admin.decode(job_id)
    assert "metadata/set.py" not in (celery_galaxy.working_directory(number) / f"galaxy_{number}.sh").read_text()

    standin.publish(spec["id"], "running")
    assert standin.run(spec) == 0
    standin.publish(spec["id"], "ok", exit_code=0)
    user.wait_job(job_id, want="ok", timeout=90, poll=0.1)

    output = user.call("GET", f"/api/datasets/{output_id}")
    assert output["metadata_data_lines"] == 3, output
    assert user.dataset_text(output_id) == "probe header\none\ntwo\n"
    log = (celery_galaxy.root / "celery.log").read_text(errors="replace")
    assert "Task galaxy.set_job_metadata" in log and "succeeded" in log
