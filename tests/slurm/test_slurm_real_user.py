"""Jobs run as their real Unix user on the real Slurm: submitted through the privileged
helper (sbatch as the user), cancelled through it (scancel as the user), their directory
handed back once their end is known. `pytest -k real_user` selects them."""
from __future__ import annotations

import pwd
import signal
from typing import Iterator

import pytest

from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.runners.base import Launch, Tracked
from galaxy_tasks.runners.slurm import WALLTIME_REACHED, SlurmRunner
from tests.slurm.conftest import runner_params, show_job, slurm_state, started, wait_until
from tests.support.events import Events
from tests.support.real_user import (
    GATED,
    Site,
    Users,
    batch_job_through_sudo,
    handed_back,
    make_site,
    needs_root,
    owned_by_the_worker,
    print_medians,
    submit_to_running,
)

pytestmark = [pytest.mark.slurm, needs_root]


@pytest.fixture
def site(unix_users: Users, slurm: dict[str, str]) -> Iterator[Site]:
    yield from make_site(unix_users, {"SLURM_CONF": slurm["SLURM_CONF"]})


@pytest.fixture
def runner(site: Site, events: Events, tmp_path) -> Iterator[SlurmRunner]:
    made = SlurmRunner(runner_params(tmp_path, run_as_command=site.command), events, destination="slurm")
    yield made
    made.close()


def tracked(launch: Launch, external_id: str) -> Tracked:
    return Tracked(launch.job_id, external_id, launch.job_dir)


def test_real_user_slurm_jobs_run_as_their_own_users(site, runner, events) -> None:
    launches = {user: site.job("id -un > who.txt; echo made > out.txt", user)
                for user in (site.users.alice, site.users.bob)}
    ids = {user: runner.submit(launch) for user, launch in launches.items()}
    for user, launch in launches.items():
        assert show_job(ids[user])["UserId"].startswith(f"{user}(")  # Slurm holds a job of the user's
        done = events.wait_for(launch.job_id)
        assert (done.exit_code, done.external_id) == (0, ids[user]), (done, site.refusals())
        working = JobDir(launch.job_dir).working
        assert (working / "who.txt").read_text().strip() == user
        assert handed_back(launch.job_dir)  # before the end was reported
        assert owned_by_the_worker(working / "out.txt")
        assert JobDir(launch.job_dir).end_note() is not None  # written by the worker once it was given back
    log = site.log_file.read_text()
    for user, launch in launches.items():
        assert f"event=real_user_submit job_id={launch.job_id} user={user}" in log
        assert f"event=real_user_reclaimed job_id={launch.job_id} user={user}" in log


def test_real_user_slurm_job_cannot_read_another_users_directory_and_is_cancelled(site, runner, events) -> None:
    alice = site.job(f"echo secret > secret.txt; {GATED}", site.users.alice)
    alice_id = runner.submit(alice)
    secret = JobDir(alice.job_dir).working / "secret.txt"
    wait_until(secret.exists, what="alice's job to write its file")
    assert pwd.getpwuid(alice.job_dir.stat().st_uid).pw_name == site.users.alice  # hers while it runs
    bob = site.job(f"cat {secret}; ls {alice.job_dir}; exit 0", site.users.bob)
    runner.submit(bob)
    assert events.wait_for(bob.job_id).exit_code == 0
    stderr = JobDir(bob.job_dir).tail("stderr")
    assert stderr.count("Permission denied") == 2 and "secret" not in JobDir(bob.job_dir).tail("stdout"), stderr
    runner.cancel(tracked(alice, alice_id))
    done = events.wait_for(alice.job_id)
    assert done.exit_code is None and done.reason == "the job was cancelled (scancel by galaxy-tasks)", done
    assert slurm_state(alice_id) == "CANCELLED"
    assert f"event=real_user_cancel job_id={alice.job_id} user={site.users.alice}" in site.log_file.read_text()
    assert handed_back(alice.job_dir)


def test_real_user_slurm_walltime_kill(site, runner, events) -> None:
    launch = site.job("exec sleep 300", site.users.alice, walltime_s=1)  # Slurm counts minutes: --time=1
    external_id = runner.submit(launch)
    assert show_job(external_id)["TimeLimit"] == "00:01:00"
    done = events.wait_for(launch.job_id, timeout=150)  # slurmctld checks limits every ~30 s
    assert done.runner_state == WALLTIME_REACHED and done.signal == signal.SIGTERM, done
    assert slurm_state(external_id) == "TIMEOUT"
    assert handed_back(launch.job_dir), site.log_file.read_text()


def test_real_user_slurm_job_heard_by_a_restarted_runner(site, events, tmp_path) -> None:
    launch = site.job(f"{GATED}; id -un > who.txt; exit 6", site.users.alice)
    params = runner_params(tmp_path, run_as_command=site.command)
    first = SlurmRunner(params, events)
    external_id = first.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    first.close()
    second = SlurmRunner(params, events)
    try:
        second.recover([tracked(launch, external_id)])  # still running: followed again
        assert events.of(launch.job_id) == []
        (JobDir(launch.job_dir).working / "gate").touch()
        done = events.wait_for(launch.job_id)
    finally:
        second.close()
    assert (done.exit_code, done.source) == (6, "runner") and len(events.of(launch.job_id)) == 1
    assert (JobDir(launch.job_dir).working / "who.txt").read_text().strip() == site.users.alice
    assert handed_back(launch.job_dir)


def test_real_user_slurm_overhead_of_the_privileged_step(site, runner, capsys) -> None:
    medians = submit_to_running(site, runner.submit)
    with capsys.disabled():
        print_medians("Slurm, median of 3", medians)
    assert medians["real_user running"] < 60, medians


def test_real_user_slurm_job_of_an_unprivileged_worker_through_sudo(site, sudo_worker, slurm) -> None:
    """The deployment of docs/security.md: the worker is not root and has only the documented
    sudo rule; its Slurm job of alice runs as alice, and the end comes back to the worker."""
    state = site.base / "worker-home" / "state"
    batch_job_through_sudo(site, sudo_worker, "slurm", {"listen_host": "127.0.0.1", "announce_host": "127.0.0.1",
                                                        "state_file": str(state / "slurm.listener")},
                           ends="report", env=slurm)
