"""A real Galaxy routing with the real TPV (total-perspective-vortex) to a galaxy-tasks
destination on the real Slurm, and Galaxy's own limits kept by galaxy-tasks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from tests.galaxy.api import GalaxyApi
from tests.galaxy.server import TPV_DESTINATION, GalaxyServer
from tests.galaxy.test_production import shown
from tests.slurm.conftest import show_job
from tests.slurm.test_slurm_worker import SlurmDeployment
from tests.support.deployment import Deployment
from tests.support.redis_server import RedisServer
from tests.support.slurm import slurm_up

pytestmark = [pytest.mark.galaxy, pytest.mark.slurm]

#: galaxy-tasks' side of docs/galaxy.md#tpv: the destination TPV names, which lets a job set
#: its comment and partition and gives at most one GPU
JOB_CONF = f"""\
destinations:
  local:
    runner: local
  {TPV_DESTINATION}:
    runner: slurm
    queue: slurm
    max_gpus: 1
    allow_native: [comment, partition]
    params: {{listen_host: 127.0.0.1, announce_host: 127.0.0.1, partition: debug}}
default: local
"""


@pytest.fixture(scope="module")
def history(galaxy_user: GalaxyApi) -> tuple[str, str]:
    history_id = galaxy_user.history("galaxy-tasks tpv tests")
    return history_id, galaxy_user.upload(history_id, "hello from tpv\n")


@pytest.fixture
def slurm_tasks(make_deployment: Any, galaxy_broker: RedisServer, tmp_path: Path) -> Iterator[Any]:
    """galaxy-tasks on Galaxy's broker with the TPV destination on the real Slurm: a steps
    worker and a Slurm worker."""
    redis.Redis.from_url(galaxy_broker.url).flushdb()
    job_conf = tmp_path / "job_conf.yml"
    job_conf.write_text(JOB_CONF)
    made = SlurmDeployment(make_deployment(broker=galaxy_broker.url), slurm_up(), job_conf)
    made.steps_worker()
    made.slurm_worker()
    try:
        yield made
    finally:
        made.close()


def test_tpv_routes_tools_to_galaxy_tasks_with_cores_memory_gpus_and_a_native_option(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], slurm_tasks: Any) -> None:
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_tpv", dataset_id)
    gpu_job_id, gpu_output_id = galaxy_user.run_tool(history_id, "probe_tpv_gpu", dataset_id)
    assert galaxy_user.wait_job(job_id, timeout=180)["state"] == "ok"
    assert galaxy_user.dataset_text(output_id) == "probe header\nhello from tpv\n"

    # TPV chose the resources and the option; galaxy-tasks recorded them and Slurm ran the job so
    row = slurm_tasks.job(galaxy.task_id(job_id))
    assert (row.destination, row.cores, row.memory_mb, row.gpus, row.native_specification) == (
        TPV_DESTINATION, 2, 512, None, "--comment=tpv-probe")
    slurm_job = show_job(row.external_id)
    assert (slurm_job["NumCPUs"], slurm_job["MinMemoryNode"], slurm_job["Comment"], slurm_job["Partition"]) == (
        "2", "512M", "tpv-probe", "debug")

    # TPV's GPU reached Slurm as --gres=gpu:1, which this Slurm (no GPUs) refuses: the job
    # fails in Galaxy with Slurm's own words
    assert galaxy_user.wait_job(gpu_job_id, timeout=180)["state"] == "error"
    gpu_row = slurm_tasks.job(galaxy.task_id(gpu_job_id))
    assert (gpu_row.destination, gpu_row.gpus, gpu_row.state) == (TPV_DESTINATION, 1, "error")
    assert "gres" in gpu_row.reason.lower()
    assert "gres" in shown(galaxy_user, gpu_output_id).lower()


def test_tpv_galaxys_tool_time_limit_is_kept_by_galaxy_tasks_and_shown_in_galaxys_words(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], tasks: Deployment) -> None:
    """No Galaxy monitor loop runs: galaxy-tasks kills the job at the tool's 3 s time limit
    (walltime_reached in its row) and Galaxy records tool_timelimit_reached, as its own
    runners would."""
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_tpv_timelimit", dataset_id)
    assert galaxy_user.wait_job(job_id, timeout=120)["state"] == "error"
    row = tasks.job(galaxy.task_id(job_id))
    assert (row.walltime_s, row.state, row.runner_state) == (3, "error", "walltime_reached")
    assert row.wall_time_s is not None and row.wall_time_s < 60
    assert "ran longer than the tool's time limit" in shown(galaxy_user, output_id)
