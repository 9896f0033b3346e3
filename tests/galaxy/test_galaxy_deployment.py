"""What a Galaxy user sees when galaxy-tasks runs Galaxy's jobs as in production: on the
real Grid Engine through DRMAA, through a worker SIGKILLed mid-job, through a walltime kill
that Galaxy's own resubmit rule sends to a longer environment, and 50 jobs at once.

These tools set their metadata in Galaxy's Celery worker (`metadata_strategy:
directory_celery` in their environments), so a job's time is the job's own."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import redis

from galaxy_tasks.galaxy import stats
from galaxy_tasks.states import JobState
from tests.drmaa.conftest import DrmaaDeployment
from tests.galaxy.api import GalaxyApi, wait_all
from tests.galaxy.server import SGE_DESTINATION, GalaxyServer
from tests.support.deployment import Deployment
from tests.support.grid_engine import cell_env
from tests.support.ledger import ledger_lines
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.galaxy

INPUT = "hello from the test\n"
CATTED = f"probe header\n{INPUT}"
#: galaxy-tasks' job_conf for the Grid Engine test: the tool's environment names `sge`
GRID_JOB_CONF = f"""\
destinations:
  local:
    runner: local
  {SGE_DESTINATION}:
    runner: drmaa
    queue: drmaa
    params: {{accounting_flush_s: 2, wait_timeout_s: 1}}
default: local
"""
BURST = 50


@pytest.fixture(scope="module")
def history(galaxy_user: GalaxyApi) -> tuple[str, str]:
    history_id = galaxy_user.history("galaxy-tasks in production shape")
    return history_id, galaxy_user.upload(history_id, INPUT)


@pytest.fixture
def grid(make_deployment, galaxy_broker: RedisServer, tmp_path: Path) -> Iterator[DrmaaDeployment]:
    """galaxy-tasks on Galaxy's broker with a steps worker and a DRMAA worker of the real
    Grid Engine cell (ops/sge-up.sh), started the documented way."""
    sge = cell_env()
    redis.Redis.from_url(galaxy_broker.url).flushdb()
    job_conf = tmp_path / "job_conf.yml"
    job_conf.write_text(GRID_JOB_CONF)
    made = DrmaaDeployment(make_deployment(broker=galaxy_broker.url), sge, job_conf)
    try:
        made.steps_worker()
        made.drmaa_worker()
        yield made
    finally:
        made.close()



def test_a_tool_routed_to_grid_engine_runs_there_and_is_ok_in_galaxy(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], grid: DrmaaDeployment) -> None:
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_cat_sge", dataset_id)
    galaxy_user.wait_job(job_id, want="ok", timeout=120)
    assert galaxy_user.dataset_text(output_id) == CATTED

    row = grid.job(galaxy.task_id(job_id))
    assert (row.state, row.destination, row.exit_code) == ("ok", SGE_DESTINATION, 0)
    assert row.external_id and row.external_id.isdigit(), "a Grid Engine job number"
    assert grid.drm_calls()["runJob"] == 1


def test_a_worker_sigkilled_mid_job_changes_nothing_galaxy_sees(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], tasks: Deployment) -> None:
    history_id, dataset_id = history
    galaxy.gate.unlink(missing_ok=True)
    runs_before = len(ledger_lines(galaxy.ledger))
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_ledger_gt", dataset_id)
    ours = galaxy.task_id(job_id)
    tasks.wait_until(lambda: len(ledger_lines(galaxy.ledger)) > runs_before, 60, "the tool's command started")

    tasks.workers[0].kill()
    tasks.worker("galaxy_tasks,local", "w-restarted@%h")
    galaxy.gate.touch()
    try:
        galaxy_user.wait_job(job_id, want="ok", timeout=90)
    finally:
        galaxy.gate.unlink(missing_ok=True)
    assert galaxy_user.dataset_text(output_id) == INPUT
    assert len(ledger_lines(galaxy.ledger)) == runs_before + 1, "the command ran once"
    assert tasks.history(ours).count(JobState.RUNNING) == 1
    assert "event=recovered_jobs" in tasks.logs()


def test_a_walltime_kill_is_resubmitted_by_galaxys_rule_and_ends_ok(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], tasks: Deployment) -> None:
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_slow_gt", dataset_id)
    galaxy_user.wait_job(job_id, want="ok", timeout=120)
    assert galaxy_user.dataset_text(output_id) == INPUT

    first, second = tasks.job(galaxy.task_id(job_id)), tasks.job(galaxy.task_id(job_id, attempt=1))
    assert (first.state, first.runner_state, first.walltime_s) == ("error", "walltime_reached", 2)
    assert (second.state, second.walltime_s) == ("ok", 600), "run again in gt_long, with its walltime"
    assert "Job will be resubmitted to 'gt_long' because it reached the walltime" in galaxy.tail(size=10**8)


def test_fifty_jobs_submitted_at_once_all_end_ok(galaxy: GalaxyServer, galaxy_user: GalaxyApi,
                                                 history: tuple[str, str], tasks: Deployment) -> None:
    """One request (Galaxy's batch mode, one job per value): Galaxy on SQLite refuses writes
    from many requests at once ("database is locked"), which is Galaxy's limit, not ours."""
    history_id, dataset_id = history
    job_ids, output_ids = galaxy_user.run_batch(history_id, "probe_cat_fast", [dataset_id] * BURST)
    assert len(set(job_ids)) == BURST

    states = wait_all(galaxy_user, job_ids, timeout=150)
    assert states == {job_id: "ok" for job_id in job_ids}
    ours = {galaxy.task_id(job_id) for job_id in job_ids}
    rows = {job.id: job.state for job in tasks.jobs() if job.id in ours}
    assert rows == {job: "ok" for job in ours}
    assert {galaxy_user.dataset_text(output_id) for output_id in output_ids[:5]} == {CATTED}
    assert stats.read(galaxy.stats_file).get("check_watched_item", 0) == 0

