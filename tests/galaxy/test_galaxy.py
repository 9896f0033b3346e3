"""A real Galaxy 26.1 running its tool jobs through the galaxy-tasks runner plugin, with a
real galaxy-tasks deployment (workers, PostgreSQL) on a private Redis."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from galaxy_tasks.galaxy import stats
from galaxy_tasks.states import JobState
from tests.galaxy.api import GalaxyApi
from tests.galaxy.server import GalaxyServer
from tests.support.deployment import Deployment
from tests.support.processes import alive

pytestmark = pytest.mark.galaxy


@pytest.fixture(scope="module")
def history(galaxy_user: GalaxyApi) -> tuple[str, str]:
    """A history with one small text dataset."""
    history_id = galaxy_user.history("galaxy-tasks tests")
    return history_id, galaxy_user.upload(history_id, "hello from the test\n")



def wait_for_row(tasks: Deployment, job_id: str, states: set[JobState], timeout: float = 60) -> None:
    def reached() -> bool:
        return any(job.id == job_id and JobState(job.state) in states for job in tasks.jobs())

    tasks.wait_until(reached, timeout, f"{job_id} in {sorted(states)}")


def test_galaxy_loads_the_plugin_from_job_conf(galaxy: GalaxyServer) -> None:
    log = galaxy.tail(size=10_000_000)
    assert "Loaded job runner 'galaxy_tasks.galaxy.runner:GalaxyTasksJobRunner' as 'gt'" in log
    assert "Starting 2 GalaxyTasksRunner workers" in log
    assert "GalaxyTasksRunner.monitor_thread" not in log, "the plugin must not start a polling monitor thread"


def test_a_tool_on_galaxys_own_local_runner_works(galaxy_user: GalaxyApi, history: tuple[str, str]) -> None:
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_cat", dataset_id)
    galaxy_user.wait_job(job_id, want="ok")
    assert galaxy_user.dataset_text(output_id) == "probe header\nhello from the test\n"


def test_a_tool_routed_to_the_plugin_runs_in_galaxy_tasks(galaxy: GalaxyServer, galaxy_user: GalaxyApi,
                                                          history: tuple[str, str], tasks: Deployment) -> None:
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_cat_gt", dataset_id)
    ours = galaxy.task_id(job_id)
    wait_for_row(tasks, ours, {JobState.OK, JobState.ERROR})

    row = tasks.job(ours)
    assert (row.state, row.exit_code, row.tool_id, row.cores) == ("ok", 0, "probe_cat_gt", 2)
    assert tasks.history(ours) == [JobState.NEW, JobState.QUEUED, JobState.SUBMITTING, JobState.RUNNING, JobState.OK]
    assert galaxy.admin.job(job_id)["external_id"] == ours

    # Galaxy's job script ran in galaxy-tasks: the tool wrote the dataset, the exit code and
    # the job script's streams are where Galaxy's finish_job reads them, metadata was set
    workdir = galaxy.working_directory(galaxy.admin.decode(job_id))
    number = galaxy.admin.decode(job_id)
    assert (workdir / f"galaxy_{number}.ec").read_text().strip() == "0"
    assert (workdir / f"galaxy_{number}.o").exists() and (workdir / f"galaxy_{number}.e").exists()
    assert (workdir / "outputs" / "tool_stdout").exists()
    assert (workdir / "metadata" / "metadata_results_output").exists()
    assert (workdir / "__instrument_core_galaxy_slots").read_text().strip() == "2", "GALAXY_SLOTS from the destination"
    assert Path(galaxy.admin.dataset_path(output_id)).read_text() == "probe header\nhello from the test\n"

    spec = json.loads((workdir / f"galaxy_{number}.gt.json").read_text())
    assert spec["id"] == ours and spec["tool_id"] == "probe_cat_gt" and spec["cores"] == 2
    figures = stats.read(galaxy.stats_file)
    assert figures.get("submitted", 0) >= 1
    assert figures.get("check_watched_item", 0) == 0


def test_a_failing_tool_is_an_error_in_galaxy_tasks_with_the_tools_exit_code(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], tasks: Deployment) -> None:
    history_id, dataset_id = history
    job_id, _ = galaxy_user.run_tool(history_id, "probe_fail_gt", dataset_id)
    ours = galaxy.task_id(job_id)
    wait_for_row(tasks, ours, {JobState.OK, JobState.ERROR})
    row = tasks.job(ours)
    assert (row.state, row.exit_code) == ("error", 3)
    number = galaxy.admin.decode(job_id)
    assert "about to fail" in (galaxy.working_directory(number) / "outputs" / "tool_stderr").read_text()


def test_cancel_in_galaxy_reaches_galaxy_tasks(galaxy: GalaxyServer, galaxy_user: GalaxyApi,
                                               history: tuple[str, str], tasks: Deployment) -> None:
    history_id, dataset_id = history
    job_id, _ = galaxy_user.run_tool(history_id, "probe_sleep_gt", dataset_id)
    ours = galaxy.task_id(job_id)
    wait_for_row(tasks, ours, {JobState.RUNNING})
    workdir = Path(tasks.job(ours).job_dir)
    pid = int((workdir / "claim").read_text().split()[0])
    assert alive(pid)

    galaxy_user.cancel(job_id)
    wait_for_row(tasks, ours, {JobState.DELETED}, timeout=90)
    assert galaxy_user.job(job_id)["state"] in ("deleted", "deleting")
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), "the job's process must be gone after the cancel"
    assert stats.read(galaxy.stats_file).get("cancel_sent", 0) >= 1


def test_galaxy_marks_the_job_ok_from_its_event(galaxy: GalaxyServer, galaxy_user: GalaxyApi,
                                                history: tuple[str, str], tasks: Deployment) -> None:
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_cat_gt", dataset_id)
    galaxy_user.wait_job(job_id, want="ok", timeout=90)
    assert galaxy_user.dataset_text(output_id) == "probe header\nhello from the test\n"
    assert stats.read(galaxy.stats_file).get("check_watched_item", 0) == 0
    # cleanup_job: never (this Galaxy's), GALAXY_TASKS_CLEANUP_JOB unset (never): both kept
    assert galaxy.working_directory(galaxy.admin.decode(job_id)).is_dir()
    assert (Path(tasks.job(galaxy.task_id(job_id)).job_dir) / "job.sh").exists()


def test_a_failing_tool_ends_in_error_in_galaxy(galaxy_user: GalaxyApi, history: tuple[str, str],
                                                tasks: Deployment) -> None:
    history_id, dataset_id = history
    job_id, _ = galaxy_user.run_tool(history_id, "probe_fail_gt", dataset_id)
    job = galaxy_user.wait_job(job_id, want="error", timeout=90)
    assert job["exit_code"] == 3 and "about to fail" in job["tool_stderr"]


def test_a_killed_galaxy_recovers_its_submitted_job_without_running_it_twice(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], tasks: Deployment) -> None:
    history_id, dataset_id = history
    job_id, _ = galaxy_user.run_tool(history_id, "probe_sleep_gt", dataset_id)
    ours = galaxy.task_id(job_id)
    wait_for_row(tasks, ours, {JobState.RUNNING})

    galaxy.kill()
    galaxy.start()
    recovered = f"({galaxy.admin.decode(job_id)}/{ours}) recovered"
    deadline = time.monotonic() + 60
    while recovered not in galaxy.tail(size=10**8) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert recovered in galaxy.tail(size=10**8), galaxy.tail()
    assert galaxy.admin.job(job_id)["external_id"] == ours
    assert [job.id for job in tasks.jobs()].count(ours) == 1
    assert tasks.history(ours).count(JobState.RUNNING) == 1, "recovery must not launch the job again"
    galaxy_user.cancel(job_id)
    wait_for_row(tasks, ours, {JobState.DELETED}, timeout=90)
