"""A real Galaxy's job on a galaxy-tasks destination without a shared filesystem
(`pytest -k staging`): Galaxy's environment gt_staged sends probe_upper_staged to the
galaxy-tasks destination `staged` (`shared_filesystem: false`, metadata set in Galaxy's
Celery worker), whose worker runs in a mount namespace of its own where Galaxy's datasets,
Galaxy's job directories, its tools' directory and galaxy-tasks' jobs root are empty tmpfs.
The plugin declares the job's files; the worker fetches them over this module's sshd (port 2298; 2299 is
tests/integration/test_staging.py's), or from a staging server of the test's own (http),
runs Galaxy's job script against the staged copies and sends the outputs home before Galaxy
hears that the job ended.

One Galaxy start for the module; a galaxy-tasks deployment per test.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from galaxy_tasks.states import JobState
from tests.galaxy.api import GalaxyApi
from tests.galaxy.conftest import running
from tests.galaxy.server import STAGED_DESTINATION, TOOL_NOTE, GalaxyServer, celery_options, own_redis
from tests.support.deployment import Deployment
from tests.support.redis_server import RedisServer, free_port
from tests.support.sshd import Sshd, own_sshd

pytestmark = [pytest.mark.galaxy, pytest.mark.xdist_group("staging_galaxy")]

PORT = 2298
TEXT = "far from Galaxy\nand back again\n"
#: jobs of each kind for the figures
ROUNDS = 3


@pytest.fixture(scope="module")
def staging_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    yield from own_sshd(tmp_path_factory.mktemp("staging-sshd"), PORT)


@pytest.fixture(scope="module")
def staging_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from own_redis(tmp_path_factory.mktemp("staging-broker"))


@pytest.fixture(scope="module")
def staging_galaxy(galaxy_venv: Path, staging_broker: RedisServer,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[GalaxyServer]:
    server = GalaxyServer(galaxy_venv, tmp_path_factory.mktemp("staging-galaxy"), staging_broker.url,
                          galaxy_options=celery_options(staging_broker.url))
    yield from running(server)


@pytest.fixture(scope="module")
def staging_user(staging_galaxy: GalaxyServer) -> GalaxyApi:
    return staging_galaxy.admin.user_api("staging@example.org")


@pytest.fixture
def staged_tasks(request: pytest.FixtureRequest, make_deployment, staging_broker: RedisServer,
                 staging_galaxy: GalaxyServer, staging_sshd: Sshd, tmp_path: Path) -> Iterator[Deployment]:
    """galaxy-tasks on Galaxy's broker: a steps worker that sees everything (Galaxy's side),
    and the staging destination's worker, which sees none of Galaxy's data. Its files travel
    by rsync over ssh, or (`http`, an indirect parameter) from a staging server of the test's
    own; the secret that signs the http tokens is the steps worker's and the server's only."""
    transfer = getattr(request, "param", "rsync")
    redis.Redis.from_url(staging_broker.url).flushdb()
    http_port = free_port()
    how = (f"      transfer: http\n      url: http://127.0.0.1:{http_port}\n" if transfer == "http" else
           f"      host: 127.0.0.1\n      port: {PORT}\n      identity_file: {staging_sshd.identity}\n"
           f"      known_hosts: {staging_sshd.known_hosts}\n")
    conf = tmp_path / "job_conf.yml"
    conf.write_text(
        f"destinations:\n  local:\n    runner: local\n  {STAGED_DESTINATION}:\n    runner: local\n"
        f"    queue: {STAGED_DESTINATION}\n    shared_filesystem: false\n    staging:\n{how}"
        f"      root: {tmp_path / 'staged'}\n      max_bytes: {1 << 30}\ndefault: local\n")
    deployment = make_deployment(broker=staging_broker.url, GALAXY_TASKS_JOB_CONF=str(conf))
    secret = {"GALAXY_TASKS_STAGING_SECRET": "the staging secret of the submitter's side alone"}
    deployment.worker("galaxy_tasks,galaxy_tasks.ends,local", "steps@%h", env=secret)
    server = None
    if transfer == "http":
        server = subprocess.Popen(
            [sys.executable, "-m", "galaxy_tasks.cli", "staging-server"], start_new_session=True,
            stdout=open(tmp_path / "staging-server.log", "ab"), stderr=subprocess.STDOUT,
            env={**deployment.env, **secret, "GALAXY_TASKS_STAGING_LISTEN": f"127.0.0.1:{http_port}"})
        deployment.wait_until(lambda: b"staging_server_listening" in (tmp_path / "staging-server.log").read_bytes(),
                              30, "the staging server")
    hidden = [Path(deployment.env["GALAXY_TASKS_JOBS_DIR"]), staging_galaxy.data_dir / "objects",
              staging_galaxy.data_dir / "jobs_directory", staging_galaxy.root / "tools"]
    for path in hidden:
        path.mkdir(parents=True, exist_ok=True)
    hide = " && ".join(f'mount -t tmpfs hidden "${n}"' for n in range(1, len(hidden) + 1))
    deployment.worker(STAGED_DESTINATION, "stager@%h", prefix=[
        "unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
        f'{hide} && shift {len(hidden)} && exec "$@"', "sh", *map(str, hidden)])
    yield deployment
    if server is not None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def staging_history(staging_user: GalaxyApi) -> tuple[str, str]:
    """A history holding one text dataset."""
    history_id = staging_user.history("staging")
    return history_id, staging_user.upload(history_id, TEXT)


def run(galaxy: GalaxyServer, user: GalaxyApi, tasks: Deployment, history: tuple[str, str],
        tool_id: str) -> tuple[str, str, float]:
    """The tool run on the history's dataset until its job is ok: job and output ids, seconds."""
    started = time.monotonic()
    job_id, output_id = user.run_tool(history[0], tool_id, history[1])
    try:
        user.wait_job(job_id, want="ok", timeout=240, poll=0.1)
    except (AssertionError, TimeoutError) as exc:
        info = user.call("GET", f"/api/datasets/{output_id}")["misc_info"]
        raise AssertionError(f"{exc}\nGalaxy says: {info}\ngalaxy-tasks' workers:\n{tasks.logs()[-4000:]}"
                             f"\nGalaxy's log ends:\n{galaxy.tail(3000)}") from None
    return job_id, output_id, time.monotonic() - started


@pytest.mark.parametrize("tool_id", ["probe_upper_staged", "probe_upper_staged_wd"])
@pytest.mark.parametrize("staged_tasks", ["rsync", "http"], indirect=True)
def test_staging_galaxy_job_without_a_shared_filesystem_produces_the_right_dataset(
        staging_galaxy: GalaxyServer, staging_user: GalaxyApi, staging_history: tuple[str, str],
        staged_tasks: Deployment, tool_id: str) -> None:
    """The tool writes its output where Galaxy's datasets are (probe_upper_staged) or, with
    `outputs_to_working_directory: true` (probe_upper_staged_wd), in Galaxy's job directory,
    whence Galaxy's finish moves it."""
    job_id, output_id, _ = run(staging_galaxy, staging_user, staged_tasks, staging_history, tool_id)
    # the job read the staged copy of its input and wrote a copy of its output, where
    # Galaxy's files directory is empty; the output came home whole
    assert staging_user.dataset_text(output_id) == TEXT.upper() + "seen 0\n"
    row = staged_tasks.job(staging_galaxy.task_id(job_id))
    assert (row.destination, JobState(row.state)) == (STAGED_DESTINATION, JobState.OK)
    # the metadata was set on Galaxy's side, from the dataset that came home
    assert staging_user.call("GET", f"/api/datasets/{output_id}")["metadata_data_lines"] == 3
    number = staging_galaxy.admin.decode(job_id)
    working = staging_galaxy.working_directory(number)
    # Galaxy's job script still names Galaxy's own paths (the worker rewrote only its copy),
    # and what the job wrote in Galaxy's job directory came home
    assert f"cd {working}\n" in (working / f"galaxy_{number}.sh").read_text()
    assert (working / f"galaxy_{number}.ec").read_text().strip() == "0"
    assert (working / "outputs" / "tool_stdout").exists()
    if tool_id == "probe_upper_staged_wd":  # the tool wrote in Galaxy's job directory, not in its datasets
        assert f"'{working}/outputs/dataset_" in (working / "tool_script.sh").read_text()
    assert not list(Path(row.job_dir).glob(".stage-out"))


def test_staging_galaxy_tool_with_a_config_file_and_a_file_of_its_own(
        staging_galaxy: GalaxyServer, staging_user: GalaxyApi, staging_history: tuple[str, str],
        staged_tasks: Deployment) -> None:
    """Galaxy's config file (which names the input dataset) is rewritten to name the staged
    copy, and the tool's directory, which the tool script names, travels with the job."""
    _, output_id, _ = run(staging_galaxy, staging_user, staged_tasks, staging_history, "probe_config_staged")
    assert staging_user.dataset_text(output_id) == TEXT.upper() + (staging_galaxy.root / "tools" / TOOL_NOTE).read_text()


def test_staging_galaxy_figures_submit_to_ok_staged_and_shared(
        staging_galaxy: GalaxyServer, staging_user: GalaxyApi, staging_history: tuple[str, str],
        staged_tasks: Deployment) -> None:
    """Galaxy's run_tool to ok, a staged job beside one on a destination that shares
    Galaxy's files (both through galaxy-tasks, metadata in Galaxy's Celery worker)."""
    seconds: dict[str, list[float]] = {"staged": [], "shared": []}
    for _ in range(ROUNDS):
        for kind, tool_id in (("staged", "probe_upper_staged"), ("shared", "probe_whoami_gt")):
            job_id, _, took = run(staging_galaxy, staging_user, staged_tasks, staging_history, tool_id)
            seconds[kind].append(took)
            assert staged_tasks.job(staging_galaxy.task_id(job_id)).destination == (
                STAGED_DESTINATION if kind == "staged" else "local")
    medians = {kind: sorted(values)[len(values) // 2] for kind, values in seconds.items()}
    print(f"\nGalaxy run_tool -> ok, median of {ROUNDS}: staged {medians['staged']:.2f} s, "
          f"shared {medians['shared']:.2f} s")
