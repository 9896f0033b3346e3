"""Galaxy's interactive tools through galaxy-tasks: a running tool's entry point is found
(Galaxy's `container_runtime.json`, which the plugin looks for while the job runs, with no
monitor loop), Galaxy's proxy map points at the port the tool serves on, stopping the job in
Galaxy ends its process, a failed container monitor fails the job, and a restarted Galaxy
looks again for a recovered job's entry point."""
from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from galaxy_tasks.galaxy import stats
from galaxy_tasks.states import JobState
from tests.galaxy.api import GalaxyApi
from tests.galaxy.server import IT_TOOL_PORT, GalaxyServer
from tests.galaxy.test_galaxy import wait_for_row
from tests.galaxy.test_production import shown
from tests.support.deployment import Deployment
from tests.support.processes import alive

pytestmark = pytest.mark.galaxy

PAGE = "hello from the interactive tool\n"
#: seconds from container_runtime.json written to Galaxy's entry point configured that pass
FOUND_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def history(galaxy_user: GalaxyApi) -> tuple[str, str]:
    history_id = galaxy_user.history("interactive tools")
    return history_id, galaxy_user.upload(history_id, PAGE)


@pytest.fixture
def it_gate(galaxy: GalaxyServer) -> Iterator[Path]:
    """Closed at the start of each test; the test opens it."""
    galaxy.it_gate.unlink(missing_ok=True)
    yield galaxy.it_gate
    galaxy.it_gate.unlink(missing_ok=True)


def entry_points(user: GalaxyApi, job_id: str) -> list[dict[str, Any]]:
    return user.call("GET", f"/api/entry_points?job_id={job_id}")


def proxy_map(galaxy: GalaxyServer) -> list[tuple[str, int]]:
    """(host, port) of each entry point in the map Galaxy keeps for its proxy."""
    with sqlite3.connect(galaxy.interactivetools_map) as db:
        return db.execute("SELECT host, port FROM gxitproxy").fetchall()


def serves(port: int) -> str | None:
    """The page at the port, or None if nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def wait(predicate, timeout: float, what: str, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not after {timeout} s")
        time.sleep(poll)
    return value


def running_it(galaxy: GalaxyServer, user: GalaxyApi, history: tuple[str, str],
               tasks: Deployment) -> tuple[str, str, Path]:
    """An interactive tool's job running in galaxy-tasks and in Galaxy, its entry point not
    yet known (the gate is closed); its Galaxy id, galaxy-tasks id and working directory."""
    history_id, dataset_id = history
    job_id, _ = user.run_tool(history_id, "probe_it_gt", dataset_id)
    ours = galaxy.task_id(job_id)
    wait_for_row(tasks, ours, {JobState.RUNNING})
    user.wait_job(job_id, want="running", timeout=60)
    [point] = entry_points(user, job_id)
    assert not point["active"], "no entry point before the tool says where it serves"
    return job_id, ours, galaxy.working_directory(galaxy.admin.decode(job_id))


def found_once_open(user: GalaxyApi, job_id: str, workdir: Path, it_gate: Path, when: str) -> Path:
    """Opens the gate: the tool writes container_runtime.json, and Galaxy configures the
    entry point within FOUND_WITHIN_S of it (the figure is printed); the file."""
    it_gate.touch()
    runtime = workdir / "container_runtime.json"
    wait(runtime.exists, 30, "container_runtime.json")
    seconds = configured_after(user, job_id, runtime)
    print(f"\n{when}entry point configured {seconds:.3f} s after container_runtime.json was written")
    assert seconds < FOUND_WITHIN_S
    return runtime


def configured_after(user: GalaxyApi, job_id: str, runtime: Path) -> float:
    """Seconds from container_runtime.json written to Galaxy's entry point configured (its
    modified_time, Galaxy's UTC), once it is."""
    [point] = wait(lambda: [p for p in entry_points(user, job_id) if p["active"]], FOUND_WITHIN_S + 5,
                   "the entry point configured")
    configured = datetime.fromisoformat(point["modified_time"])
    if configured.tzinfo is None:
        configured = configured.replace(tzinfo=UTC)
    return configured.timestamp() - runtime.stat().st_mtime


def test_a_running_interactive_tools_entry_point_is_found_and_stopping_it_ends_it(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], tasks: Deployment,
        it_gate: Path) -> None:
    job_id, ours, workdir = running_it(galaxy, galaxy_user, history, tasks)
    assert stats.read(galaxy.stats_file).get("looking_for_entry_points") == 1

    runtime = found_once_open(galaxy_user, job_id, workdir, it_gate, "")

    port = json.loads(runtime.read_text())[str(IT_TOOL_PORT)]["port"]
    assert ("127.0.0.1", port) in proxy_map(galaxy), "Galaxy's proxy map points at the tool's port"
    assert serves(port) == PAGE
    [point] = entry_points(galaxy_user, job_id)
    assert point["target"].endswith("/"), point
    # the plugin counts the entry point a moment after Galaxy shows it configured
    figures = wait(lambda: (found := stats.read(galaxy.stats_file)).get("entry_points_configured", 0) >= 1 and found,
                   10, "the entry point counted as configured")
    assert figures.get("looking_for_entry_points") == 0, "nothing looks once Galaxy has the entry point"
    assert figures.get("check_watched_item", 0) == 0

    galaxy_user.cancel(job_id)
    wait_for_row(tasks, ours, {JobState.DELETED}, timeout=90)
    wait(lambda: serves(port) is None, 30, "the tool's server gone")
    assert galaxy_user.job(job_id)["state"] in ("deleted", "deleting", "stopped")
    assert not any(p["active"] for p in entry_points(galaxy_user, job_id))
    assert stats.read(galaxy.stats_file).get("check_watched_item", 0) == 0


def test_a_failed_container_monitor_fails_the_job_and_ends_it_in_galaxy_tasks(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], tasks: Deployment) -> None:
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_it_broken_gt", dataset_id)
    ours = galaxy.task_id(job_id)
    galaxy_user.wait_job(job_id, want="error", timeout=90)
    assert shown(galaxy_user, output_id) == "Monitoring interactive tool entry point failed"
    wait_for_row(tasks, ours, {JobState.DELETED}, timeout=90)
    pid = int((Path(tasks.job(ours).job_dir) / "claim").read_text().split()[0])
    wait(lambda: not alive(pid), 30, "the job's process gone", poll=0.2)
    assert stats.read(galaxy.stats_file).get("entry_points_failed", 0) >= 1


def test_a_restarted_galaxy_looks_again_for_its_running_interactive_tools_entry_point(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], tasks: Deployment,
        it_gate: Path) -> None:
    job_id, ours, workdir = running_it(galaxy, galaxy_user, history, tasks)
    galaxy.kill()
    galaxy.start()
    recovered = f"({galaxy.admin.decode(job_id)}/{ours}) recovered"
    wait(lambda: recovered in galaxy.tail(size=10**8), 60, "the job recovered", poll=0.5)

    runtime = found_once_open(galaxy_user, job_id, workdir, it_gate, "after a restart, ")
    assert tasks.history(ours).count(JobState.RUNNING) == 1, "the tool ran once"
    port = json.loads(runtime.read_text())[str(IT_TOOL_PORT)]["port"]
    assert serves(port) == PAGE
    galaxy_user.cancel(job_id)
    wait_for_row(tasks, ours, {JobState.DELETED}, timeout=90)
    wait(lambda: serves(port) is None, 30, "the tool's server gone")
