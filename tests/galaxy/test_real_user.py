"""A real Galaxy's jobs run as the Unix user of the Galaxy user who submitted them
(`pytest -k real_user`): Galaxy's runner `gt_user` (`run_as_real_user: true`, Galaxy's
default `real_system_username: user_email`) sends them to a galaxy-tasks local destination
whose `run_as_command` is the privileged helper, run as root as sudo would run it. The helper
hands Galaxy's job directory (declared in the job's spec) to the user with galaxy-tasks' own
and gives both back before Galaxy finishes the job (`outputs_to_working_directory`: the tool
writes its outputs there, and Galaxy moves them as its own user).

The Galaxy of this module (one start) lives under a directory of /var/tmp whose parents are
root's: pytest's own temporary directories (mode 0700) are out of a job's user's reach, and
so would be Galaxy's job directories, datasets and galaxy-tasks' jobs root there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis

from galaxy_tasks.states import JobState
from tests.galaxy.api import GalaxyApi
from tests.galaxy.conftest import running
from tests.galaxy.server import REAL_USER_DESTINATION, GalaxyServer, celery_options, own_redis
from tests.support.deployment import Deployment
from tests.support.real_user import HELPER, WORKER, Users, needs_root, wait_for
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.galaxy, needs_root]

INPUT = "read by the job's user\n"
#: plain and real-user jobs each, interleaved, for the submit -> ok figures
ROUNDS = 3


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """Everything a job's user must reach (Galaxy's data, galaxy-tasks' jobs root), under a
    directory of root's that no one else may write; removed afterwards."""
    path = Path(f"/var/tmp/gt-galaxy-real-user-{WORKER}-{uuid.uuid4().hex[:8]}")
    path.mkdir(mode=0o755)
    (path / "jobs").mkdir(mode=0o711)  # a job's user reaches its own directory by name, lists none
    os.chmod(path / "jobs", 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def user_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from own_redis(tmp_path_factory.mktemp("real-user-broker"))


@pytest.fixture(scope="module")
def user_galaxy(galaxy_venv: Path, user_broker: RedisServer, base: Path) -> Iterator[GalaxyServer]:
    """A Galaxy whose tools write their outputs in the job directory, metadata set in its
    Celery worker (the job's user cannot reach Galaxy's venv)."""
    root = base / "galaxy"
    root.mkdir(mode=0o755)
    options = {**celery_options(user_broker.url), "outputs_to_working_directory": True}
    server = GalaxyServer(galaxy_venv, root, user_broker.url, galaxy_options=options)
    for private in ("config", "signing"):
        os.chmod(root / private, 0o700)
    yield from running(server)


@pytest.fixture(scope="module")
def history(user_galaxy: GalaxyServer, unix_users: Users) -> dict[str, tuple[GalaxyApi, str, str]]:
    """Each Galaxy user (email `<Unix name>@example.org`, as Galaxy maps it) with a history
    holding one dataset: alice and bob (in the helper's group), eve (outside it), root."""
    made = {}
    for name in (unix_users.alice, unix_users.bob, unix_users.eve, "root"):
        user = user_galaxy.admin.user_api(f"{name}@example.org")
        history_id = user.history("real user")
        made[name] = (user, history_id, user.upload(history_id, INPUT))
    return made


@pytest.fixture
def user_tasks(make_deployment, user_broker: RedisServer, user_galaxy: GalaxyServer, unix_users: Users,
               base: Path) -> Deployment:
    """galaxy-tasks with its jobs root under `base` and a local destination whose jobs run
    as their users through the helper, whose configuration takes Galaxy's jobs directory as
    its one handover root."""
    redis.Redis.from_url(user_broker.url).flushdb()
    deployment = make_deployment(broker=user_broker.url)
    jobs_root = base / "jobs"
    config = base / f"run-as-{uuid.uuid4().hex[:8]}.yml"
    config.write_text(textwrap.dedent(f"""\
        database_url: {deployment.database_url}
        jobs_root: {jobs_root}
        allowed_group: {unix_users.group}
        log_file: {base / "run-as.log"}
        handover_roots: [{user_galaxy.data_dir / "jobs_directory"}]
        """))
    os.chmod(config, 0o600)
    job_conf = base / f"job_conf-{config.stem}.yml"
    job_conf.write_text(textwrap.dedent(f"""\
        destinations:
          local:
            runner: local
          {REAL_USER_DESTINATION}:
            runner: local
            queue: {REAL_USER_DESTINATION}
            params: {{run_as_command: "{' '.join([*HELPER, str(config)])}"}}
        default: local
        """))
    deployment.env.update(GALAXY_TASKS_JOBS_DIR=str(jobs_root), GALAXY_TASKS_JOB_CONF=str(job_conf))
    deployment.worker(f"galaxy_tasks,local,{REAL_USER_DESTINATION}")
    return deployment


def owners(path: Path) -> set[int]:
    """The owners of a directory and of everything in it (links not followed)."""
    found = {os.lstat(path).st_uid}
    for directory, names, files in os.walk(path):
        found |= {os.lstat(os.path.join(directory, name)).st_uid for name in names + files}
    return found


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=30)


def run(galaxy: GalaxyServer, user: GalaxyApi, history_id: str, dataset_id: str, tool_id: str,
        want: str = "ok") -> tuple[str, str, float]:
    """The tool run through Galaxy's API until its job is `want`: job and output ids, seconds."""
    started = time.monotonic()
    job_id, output_id = user.run_tool(history_id, tool_id, dataset_id)
    try:
        user.wait_job(job_id, want=want, timeout=180, poll=0.1)
    except (AssertionError, TimeoutError) as exc:
        helper_log = galaxy.root.parent / "run-as.log"
        raise AssertionError(f"{exc}\nGalaxy says: {user.call('GET', f'/api/datasets/{output_id}')['misc_info']}\n"
                             f"the helper's log ends:\n{helper_log.read_text()[-3000:] if helper_log.exists() else ''}"
                             f"\nGalaxy's log ends:\n{galaxy.tail(3000)}") from None
    return job_id, output_id, time.monotonic() - started


def test_real_user_galaxy_job_runs_as_its_user_and_galaxy_gets_its_directory_back(
        user_galaxy: GalaxyServer, history, unix_users: Users, user_tasks: Deployment) -> None:
    alice, alice_history, alice_data = history[unix_users.alice]
    seconds: dict[str, list[float]] = {"plain": [], "real_user": []}
    for _ in range(ROUNDS):
        job_id, output_id, took = run(user_galaxy, alice, alice_history, alice_data, "probe_whoami_gt")
        seconds["plain"].append(took)
        assert alice.dataset_text(output_id) == f"root\n{INPUT}"  # the worker's own user
        job_id, output_id, took = run(user_galaxy, alice, alice_history, alice_data, "probe_whoami_user")
        seconds["real_user"].append(took)
        assert alice.dataset_text(output_id) == f"{unix_users.alice}\n{INPUT}"

        number = user_galaxy.admin.decode(job_id)
        row = user_tasks.job(user_galaxy.task_id(job_id))
        job_directory = user_galaxy.working_directory(number)
        assert (row.state, row.run_as, row.handover_dir) == ("ok", unix_users.alice, str(job_directory))
        # Galaxy's job directory and galaxy-tasks' are Galaxy's (the worker's) user's again
        assert owners(job_directory) == {os.getuid()} and owners(Path(row.job_dir)) == {os.getuid()}
        dataset = Path(user_galaxy.admin.dataset_path(output_id))  # moved there by Galaxy, as Galaxy's user
        assert dataset.read_text() == f"{unix_users.alice}\n{INPUT}" and dataset.stat().st_uid == os.getuid()
    medians = {kind: sorted(values)[len(values) // 2] for kind, values in seconds.items()}
    print(f"\nGalaxy run_tool -> ok, median of {ROUNDS}: plain {medians['plain']:.2f} s, "
          f"as the job's user {medians['real_user']:.2f} s")


def test_real_user_galaxy_job_is_private_to_its_user_while_it_runs(
        user_galaxy: GalaxyServer, history, unix_users: Users, user_tasks: Deployment) -> None:
    alice, alice_history, alice_data = history[unix_users.alice]
    job_id, output_id = alice.run_tool(alice_history, "probe_gated_whoami_user", alice_data)
    try:
        alice.wait_job(job_id, want="running", timeout=120, poll=0.1)
        job_directory = user_galaxy.working_directory(user_galaxy.admin.decode(job_id))
        alice_uid = int(as_user(unix_users.alice, "id", "-u").stdout)
        # (Galaxy hears `running` once the helper was spawned, before it has handed anything over)
        wait_for(lambda: os.lstat(job_directory).st_uid == alice_uid, 60, "Galaxy's job directory handed to alice")
        assert os.lstat(job_directory).st_mode & 0o007 == 0  # no one else's
        script = next(job_directory.glob("galaxy_*.sh"))
        for argv in (["ls", str(job_directory)], ["cat", str(script)]):
            bob = as_user(unix_users.bob, *argv)
            assert bob.returncode != 0 and "Permission denied" in bob.stderr, bob
        assert as_user(unix_users.alice, "cat", str(script)).returncode == 0
    finally:  # the job ends whatever happened (a job of alice's left running keeps her account)
        user_galaxy.gate.touch()
    try:
        alice.wait_job(job_id, want="ok", timeout=120, poll=0.1)
    finally:
        user_galaxy.gate.unlink()
    assert alice.dataset_text(output_id) == f"{unix_users.alice}\n{INPUT}"
    assert owners(job_directory) == {os.getuid()}


@pytest.mark.parametrize("who", ["root", "outside_the_group"])
def test_real_user_galaxy_user_the_helper_refuses_ends_in_error_with_its_reason(
        user_galaxy: GalaxyServer, history, unix_users: Users, user_tasks: Deployment, who: str) -> None:
    name, says = {"root": ("root", "would run as root"),
                  "outside_the_group": (unix_users.eve, f"is not in the group {unix_users.group}")}[who]
    user, history_id, dataset_id = history[name]
    job_id, output_id, _ = run(user_galaxy, user, history_id, dataset_id, "probe_whoami_user", want="error")
    message = user.call("GET", f"/api/datasets/{output_id}")["misc_info"] or ""
    assert message.startswith("The job failed in galaxy-tasks: the privileged helper refused to start the job: ") \
        and says in message, message
    row = user_tasks.job(user_galaxy.task_id(job_id))
    assert JobState(row.state) is JobState.ERROR and row.run_as == name
    assert owners(user_galaxy.working_directory(user_galaxy.admin.decode(job_id))) == {os.getuid()}
