"""Galaxy's side of the job-event contract, against a real Galaxy, with the test in
galaxy-tasks' place.

The test plays galaxy-tasks' part of the written contract, so Galaxy's side is checked on
its own: it takes the plugin's `submit_job` message off the steps queue, runs the job's
command as a galaxy-tasks runner would, and publishes the job events (plain JSON,
default exchange, routing key = the events queue). Galaxy's real finish and fail paths do
the rest. test_galaxy.py covers the same with the real publisher.
"""
from __future__ import annotations

import time
from typing import Any

import pytest

from galaxy_tasks import spec as task_spec
from galaxy_tasks.galaxy import stats
from tests.galaxy.api import GalaxyApi
from tests.galaxy.server import CONTRACT_EVENTS_QUEUE, GalaxyServer
from tests.galaxy.standin import StandIn, submitted
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.galaxy


@pytest.fixture
def standin(galaxy_broker: RedisServer) -> StandIn:
    made = StandIn(galaxy_broker.url)
    made.drain()
    return made


@pytest.fixture(scope="module")
def history(galaxy_user: GalaxyApi) -> tuple[str, str]:
    history_id = galaxy_user.history("event contract")
    return history_id, galaxy_user.upload(history_id, "contract input\n")


def wait_state(user: GalaxyApi, job_id: str, state: str, timeout: float = 60) -> dict[str, Any]:
    return user.wait_job(job_id, want=state, timeout=timeout, poll=0.1)


def test_events_take_a_galaxy_job_to_running_then_ok(galaxy: GalaxyServer, galaxy_user: GalaxyApi,
                                                     history: tuple[str, str], standin: StandIn) -> None:
    history_id, dataset_id = history
    before = stats.read(galaxy.contract_stats_file)  # another test's jobs may have run through this runner
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_cat_contract", dataset_id)
    spec = submitted(standin)
    assert spec["events"] == {"queue": CONTRACT_EVENTS_QUEUE, "client_id": "main"}
    assert task_spec.parse({k: v for k, v in spec.items() if k != "events"}).id == spec["id"]
    assert galaxy.admin.job(job_id)["external_id"] == spec["id"]

    standin.publish(spec["id"], "queued")
    standin.publish(spec["id"], "running")
    wait_state(galaxy_user, job_id, "running")
    assert standin.run(spec) == 0
    standin.publish(spec["id"], "ok", exit_code=0)
    wait_state(galaxy_user, job_id, "ok")
    assert galaxy_user.dataset_text(output_id) == "probe header\ncontract input\n"

    standin.publish(spec["id"], "ok", exit_code=0, seq=standin.seq[spec["id"]])  # a duplicate, by design
    def counted(name: str) -> int:
        return stats.read(galaxy.contract_stats_file).get(name, 0) - before.get(name, 0)

    deadline = time.monotonic() + 10
    while counted("events_ignored") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (counted("events_ignored"), counted("finished"), counted("check_watched_item")) == (1, 1, 0)
    deadline = time.monotonic() + 10
    while standin.unsettled_events() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert standin.unsettled_events() == 0, "every event is acknowledged once Galaxy recorded it"
    assert galaxy_user.job(job_id)["state"] == "ok"


def test_a_failing_tool_ends_in_error_with_its_exit_code_and_stderr(galaxy_user: GalaxyApi, history: tuple[str, str],
                                                                    standin: StandIn) -> None:
    history_id, dataset_id = history
    job_id, _ = galaxy_user.run_tool(history_id, "probe_fail_contract", dataset_id)
    spec = submitted(standin)
    standin.publish(spec["id"], "running")
    assert standin.run(spec) == 3
    standin.publish(spec["id"], "error", exit_code=3, reason="exit code 3")
    job = wait_state(galaxy_user, job_id, "error")
    assert job["exit_code"] == 3 and "about to fail" in job["tool_stderr"]


def test_a_walltime_kill_fails_the_job_with_galaxys_runner_state(galaxy_user: GalaxyApi, history: tuple[str, str],
                                                                 standin: StandIn) -> None:
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_cat_contract", dataset_id)
    spec = submitted(standin)
    standin.publish(spec["id"], "running")
    standin.publish(spec["id"], "error", signal=9, reason="walltime", runner_state="walltime_reached")
    job = wait_state(galaxy_user, job_id, "error")
    assert job["exit_code"] is None
    assert "ran longer than its walltime" in galaxy_user.call("GET", f"/api/datasets/{output_id}")["misc_info"]


def test_a_restarted_galaxy_asks_about_its_jobs_and_resends_an_unknown_one(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], standin: StandIn) -> None:
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_cat_contract", dataset_id)
    spec = submitted(standin)  # and "lost" before galaxy-tasks recorded it

    galaxy.kill()
    galaxy.start()
    name, asked = standin.take_task(timeout=90)
    assert name == "galaxy_tasks.announce_jobs" and spec["id"] in asked["job_ids"]
    assert asked["queue"] == CONTRACT_EVENTS_QUEUE
    standin.publish(spec["id"], "unknown", seq=0)
    assert submitted(standin) == spec, "the same job is resent, with the same id"

    standin.publish(spec["id"], "running")
    assert standin.run(spec) == 0
    standin.publish(spec["id"], "ok", exit_code=0)
    wait_state(galaxy_user, job_id, "ok", timeout=90)
    assert galaxy_user.dataset_text(output_id) == "probe header\ncontract input\n"
