"""With `metadata_strategy: directory_celery` a job run through the plugin carries no
metadata step (the step that is ~90% of a trivial job's time): when the job's end event
arrives, Galaxy sets the metadata in its warm Celery worker, then finishes the job.

The session's Galaxy (its Celery worker running); the tool's environment asks for Celery
metadata, and the test plays galaxy-tasks' side of the job-event contract
(tests/galaxy/standin.py)."""
from __future__ import annotations

import pytest

from tests.galaxy.api import GalaxyApi
from tests.galaxy.server import GalaxyServer
from tests.galaxy.standin import StandIn, submitted
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.galaxy


def test_metadata_is_set_in_galaxys_celery_worker_not_in_the_job(galaxy: GalaxyServer, galaxy_user: GalaxyApi,
                                                                galaxy_broker: RedisServer) -> None:
    history_id = galaxy_user.history("celery metadata")
    dataset_id = galaxy_user.upload(history_id, "one\ntwo\n")
    standin = StandIn(galaxy_broker.url)
    standin.drain()
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_cat_contract_celery", dataset_id)
    spec = submitted(standin)
    number = galaxy.admin.decode(job_id)
    assert "metadata/set.py" not in (galaxy.working_directory(number) / f"galaxy_{number}.sh").read_text()

    standin.publish(spec["id"], "running")
    assert standin.run(spec) == 0
    standin.publish(spec["id"], "ok", exit_code=0)
    galaxy_user.wait_job(job_id, want="ok", timeout=90, poll=0.1)

    output = galaxy_user.call("GET", f"/api/datasets/{output_id}")
    assert output["metadata_data_lines"] == 3, output
    assert galaxy_user.dataset_text(output_id) == "probe header\none\ntwo\n"
    log = (galaxy.root / "celery.log").read_text(errors="replace")
    assert "Task galaxy.set_job_metadata" in log and "succeeded" in log
