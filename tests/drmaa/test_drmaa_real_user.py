"""Jobs run as their real Unix user on the real Grid Engine: submitted through the privileged
helper (qsub as the user: a DRMAA session is the worker's, so the runner adopts the job as
it adopts any job outside its session), cancelled through it (qdel as the user), their end
found in Grid Engine's records as reconciliation finds it, their directory handed back
then. `pytest -k real_user` selects them."""
from __future__ import annotations

import pwd
import signal
import subprocess
from typing import Any, Iterator

import pytest

from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.runners.base import Completion, Launch, Tracked
from tests.support import real_user as ru
from tests.support.events import Events

pytestmark = [pytest.mark.drmaa, ru.needs_root]


@pytest.fixture
def site(unix_users: ru.Users, sge: dict[str, str]) -> Iterator[ru.Site]:
    yield from ru.make_site(unix_users, {"SGE_ROOT": sge["SGE_ROOT"], "SGE_CELL": sge["SGE_CELL"]})


@pytest.fixture
def runner(site: ru.Site, sge: dict[str, str], events: Events) -> Iterator[Any]:
    from galaxy_tasks.runners.drmaa import DrmaaRunner

    made = DrmaaRunner({"accounting_flush_s": 2, "wait_timeout_s": 1, "run_as_command": site.command}, events)
    yield made
    made.close()


def tracked(launch: Launch, external_id: str) -> Tracked:
    return Tracked(launch.job_id, external_id, launch.job_dir)


def ended(runner: Any, job: Tracked, timeout: float = 90) -> Completion:
    """The job's end as reconciliation asks for it: `status` until it has one."""
    import time

    deadline = time.monotonic() + timeout
    while (done := runner.status([job])[job.job_id]) is None:
        assert time.monotonic() < deadline, f"job {job.job_id} did not end within {timeout}s"
        time.sleep(1)
    return done


def owner(external_id: str) -> str:
    out = subprocess.run(["qstat", "-j", external_id], capture_output=True, text=True, timeout=60).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("owner:"))


def test_real_user_grid_engine_jobs_run_as_their_own_users(site, runner) -> None:
    launches = {user: site.job(f"{ru.GATED}; id -un > who.txt; echo made > out.txt", user)
                for user in (site.users.alice, site.users.bob)}
    ids = {user: runner.submit(launch) for user, launch in launches.items()}
    for user, launch in launches.items():
        assert owner(ids[user]) == user  # Grid Engine holds a job of the user's
        (JobDir(launch.job_dir).working / "gate").touch()
    for user, launch in launches.items():
        done = ended(runner, tracked(launch, ids[user]))
        assert (done.exit_code, done.external_id) == (0, ids[user]), (done, site.refusals())
        working = JobDir(launch.job_dir).working
        assert (working / "who.txt").read_text().strip() == user
        assert ru.handed_back(launch.job_dir) and ru.owned_by_the_worker(working / "out.txt")
    log = site.log_file.read_text()
    for user, launch in launches.items():
        assert f"event=real_user_submit job_id={launch.job_id} user={user}" in log
        assert f"event=real_user_reclaimed job_id={launch.job_id} user={user}" in log


def test_real_user_grid_engine_job_cannot_read_another_users_directory_and_is_cancelled(site, runner) -> None:
    alice = site.job(f"echo secret > secret.txt; {ru.GATED}", site.users.alice)
    alice_id = runner.submit(alice)
    secret = JobDir(alice.job_dir).working / "secret.txt"
    _wait(secret.exists, "alice's job to write its file")
    assert pwd.getpwuid(alice.job_dir.stat().st_uid).pw_name == site.users.alice  # hers while it runs
    bob = site.job(f"cat {secret}; ls {alice.job_dir}; exit 0", site.users.bob)
    bob_id = runner.submit(bob)
    assert ended(runner, tracked(bob, bob_id)).exit_code == 0
    stderr = JobDir(bob.job_dir).tail("stderr")
    assert stderr.count("Permission denied") == 2 and "secret" not in JobDir(bob.job_dir).tail("stdout"), stderr
    runner.cancel(tracked(alice, alice_id))
    done = ended(runner, tracked(alice, alice_id))
    assert done.exit_code is None and done.signal is not None, done
    assert f"event=real_user_cancel job_id={alice.job_id} user={site.users.alice}" in site.log_file.read_text()
    assert ru.handed_back(alice.job_dir)


def test_real_user_grid_engine_walltime_kill(site, runner) -> None:
    launch = site.job("exec sleep 60", site.users.alice, walltime_s=2)
    external_id = runner.submit(launch)
    done = ended(runner, tracked(launch, external_id))
    assert done.signal == signal.SIGKILL and done.exit_code is None, done
    assert ru.handed_back(launch.job_dir)


def _wait(predicate: Any, what: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_real_user_grid_engine_job_found_by_a_restarted_runner(site, sge, events) -> None:
    from galaxy_tasks.runners.drmaa import DrmaaRunner

    params = {"accounting_flush_s": 2, "wait_timeout_s": 1, "run_as_command": site.command}
    launch = site.job(f"{ru.GATED}; id -un > who.txt; exit 6", site.users.alice)
    first = DrmaaRunner(params, events)
    try:
        external_id = first.submit(launch)
        _wait(lambda: JobDir(launch.job_dir).claimed_pid() is not None, "the job to start")
    finally:
        first.close()
    second = DrmaaRunner(params, events)
    try:
        second.recover([tracked(launch, external_id)])  # still running: left to reconciliation
        assert events.of(launch.job_id) == []
        (JobDir(launch.job_dir).working / "gate").touch()
        done = ended(second, tracked(launch, external_id))
    finally:
        second.close()
    assert done.exit_code == 6 and events.of(launch.job_id) == [], done
    assert (JobDir(launch.job_dir).working / "who.txt").read_text().strip() == site.users.alice
    assert ru.handed_back(launch.job_dir)


def test_real_user_grid_engine_overhead_of_the_privileged_step(site, runner, capsys) -> None:
    medians = ru.submit_to_running(site, runner.submit)
    with capsys.disabled():
        ru.print_medians("Grid Engine, median of 3", medians)
    assert medians["real_user running"] < 60, medians


def test_real_user_grid_engine_job_of_an_unprivileged_worker_through_sudo(site, sudo_worker, sge) -> None:
    """The deployment of docs/security.md: the worker is not root and has only the documented
    sudo rule; its Grid Engine job of alice runs as alice, its end is found as reconciliation
    finds it, and the directory comes back to the worker."""
    import os

    ru.batch_job_through_sudo(site, sudo_worker, "drmaa", {"accounting_flush_s": 2, "wait_timeout_s": 1},
                              ends="status", env={**sge, "GLIBC_TUNABLES": os.environ["GLIBC_TUNABLES"]})
