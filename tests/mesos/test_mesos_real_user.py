"""Jobs run as their real Unix user through the Mesos runner: the real pymesos driver against
the Mesos master TEST DOUBLE, whose agents run a task as its `command.user` as a Mesos agent
running as root does. The privileged helper (run as root, as sudo would run it) hands the job's
directory to the user or refuses the job, and takes the directory back at the end. Users and a
group are made here (tests/support/real_user.py); `pytest -k real_user` selects these."""
from __future__ import annotations

import os
import pwd

import pytest

from tests.support.services import require_module

require_module("pymesos", "run ops/install-mesos-extra.sh")  # first imported in the main thread

from galaxy_tasks.errors import RunnerError  # noqa: E402
from galaxy_tasks.jobdir import JobDir  # noqa: E402
from galaxy_tasks.runners.base import Launch, Tracked  # noqa: E402
from tests.support.real_user import (  # noqa: E402
    GATED,
    handed_back,
    needs_root,
    owned_by_the_worker,
    print_medians,
    submit_to_running,
    wait_for,
)

pytestmark = [pytest.mark.mesos, needs_root]


def task_users(master, launch: Launch) -> list[str | None]:
    """The `command.user` of every TaskInfo the framework launched for the job."""
    return [info["command"].get("user") for call in master.calls_of("ACCEPT") for op in call["accept"]["operations"]
            for info in op["launch"]["task_infos"] if info["task_id"]["value"] == launch.external_name]


def test_real_user_mesos_tasks_run_as_their_users_and_their_directories_come_back(
        master, make_runner, make_reports, site):
    users = site.users
    reports = make_reports()
    runner = make_runner(reports, run_as_command=site.command)
    alice = site.job(f"echo secret > secret.txt; id -un > who.txt; id -u >> who.txt; {GATED}; echo made > out.txt",
                     users.alice)
    runner.submit(alice)
    alice_working = JobDir(alice.job_dir).working
    wait_for((alice_working / "who.txt").exists, 30, "alice's task to start")
    account = pwd.getpwnam(users.alice)
    assert os.stat(alice.job_dir).st_uid == account.pw_uid  # hers while it runs
    assert os.stat(alice_working / "secret.txt").st_uid == account.pw_uid

    bob = site.job(f"id -un > who.txt; cat {alice_working / 'secret.txt'}; ls {alice.job_dir}; echo made > out.txt",
                   users.bob)
    runner.submit(bob)
    bob_end = reports.wait(bob.job_id)
    assert bob_end.exit_code == 0 and "TASK_FINISHED" in bob_end.reason, (bob_end, site.refusals())
    bob_stderr = JobDir(bob.job_dir).tail("stderr")
    assert bob_stderr.count("Permission denied") == 2, bob_stderr  # neither her file nor her directory
    assert "secret" not in JobDir(bob.job_dir).tail("stdout")

    (alice_working / "gate").touch()
    alice_end = reports.wait(alice.job_id)
    assert alice_end.exit_code == 0, (alice_end, site.refusals())
    assert (alice_working / "who.txt").read_text().split() == [users.alice, str(account.pw_uid)]
    assert (JobDir(bob.job_dir).working / "who.txt").read_text().strip() == users.bob
    for launch in (alice, bob):
        assert task_users(master, launch) == [launch.run_as]  # one task, its user named to Mesos
        assert handed_back(launch.job_dir)  # back before the end was reported
        assert owned_by_the_worker(JobDir(launch.job_dir).working / "out.txt")
    log = site.log_file.read_text()
    for launch in (alice, bob):
        assert f"event=real_user_handed_over job_id={launch.job_id} user={launch.run_as}" in log
        assert f"event=real_user_reclaimed job_id={launch.job_id} user={launch.run_as}" in log


@pytest.mark.parametrize("who", ["root", "system", "eve"])
def test_real_user_mesos_refuses_users_the_helper_refuses(master, make_runner, make_reports, site, who):
    """Root, a user under the minimum uid and a user outside the allowed group: refused before
    Mesos hears of the job, in the helper's words, and the directory stays the worker's."""
    user = {"root": "root", "system": site.users.system, "eve": site.users.eve}[who]
    words = {"root": "would run as root", "system": "under the minimum", "eve": "is not in the group"}[who]
    runner = make_runner(make_reports(), run_as_command=site.command)
    launch = site.job("touch ran", user)
    with pytest.raises(RunnerError, match=words):
        runner.submit(launch)
    assert not runner.pending_ids() and not task_users(master, launch)
    assert handed_back(launch.job_dir) and not (JobDir(launch.job_dir).working / "ran").exists()
    assert any(words in line for line in site.refusals()), site.refusals()


def test_real_user_mesos_job_refused_by_a_destination_without_the_helper(master, make_runner, make_reports, site):
    runner = make_runner(make_reports())
    launch = site.job("touch ran", site.users.alice)
    with pytest.raises(RunnerError, match="has no run_as_command"):
        runner.submit(launch)
    assert not task_users(master, launch)


def test_real_user_mesos_cancel_and_walltime_of_tasks_run_as_a_user(master, make_runner, make_reports, site):
    reports = make_reports()
    runner = make_runner(reports, run_as_command=site.command)
    cancelled = site.job("exec sleep 60", site.users.alice)
    late = site.job("exec sleep 60", site.users.bob, walltime_s=1)
    for launch in (cancelled, late):
        runner.submit(launch)
    wait_for(lambda: JobDir(cancelled.job_dir).claimed_pid() is not None, 30, "the job's claim")
    runner.cancel(Tracked(cancelled.job_id, cancelled.external_name, cancelled.job_dir))
    killed = reports.wait(cancelled.job_id)
    assert "TASK_KILLED" in killed.reason, killed
    timed_out = reports.wait(late.job_id)
    assert timed_out.runner_state == "walltime_reached", timed_out
    for launch in (cancelled, late):
        assert task_users(master, launch) == [launch.run_as]
        assert handed_back(launch.job_dir)


def test_real_user_mesos_task_followed_once_after_its_runner_restarts(master, make_runner, make_reports, site):
    """A task running as alice outlives its framework's process; the next process recovers
    it, hears its end once and hands the directory back."""
    launch = site.job(f"{GATED}; id -un > who.txt; exit 3", site.users.alice)
    first_reports = make_reports()
    first = make_runner(first_reports, run_as_command=site.command)
    first.submit(launch)
    wait_for(lambda: JobDir(launch.job_dir).claimed_pid() is not None, 30, "the job's claim")
    first.close()
    master.wait_for(lambda: not master.state()["frameworks"][0]["connected"], what="disconnect")
    second_reports = make_reports()
    second = make_runner(second_reports, run_as_command=site.command)
    tracked = Tracked(launch.job_id, launch.external_name, launch.job_dir)
    second.recover([tracked])
    second.submit(launch)  # a redelivered launch after the restart: no second task, no second hand-over
    (JobDir(launch.job_dir).working / "gate").touch()
    assert second_reports.wait(launch.job_id).exit_code == 3
    assert len(task_users(master, launch)) == 1 and not first_reports.completions
    assert (JobDir(launch.job_dir).working / "who.txt").read_text().strip() == site.users.alice
    assert handed_back(launch.job_dir)
    assert site.log_file.read_text().count(f"event=real_user_handed_over job_id={launch.job_id}") == 1


def test_real_user_mesos_overhead_of_the_privileged_step(master, make_runner, make_reports, site, capsys):
    """Submit to running (the job's claim), plain tasks and tasks run as alice interleaved in
    one run; prints the medians (docs/security.md quotes them)."""
    runner = make_runner(make_reports(), run_as_command=site.command)
    medians = submit_to_running(site, runner.submit)
    with capsys.disabled():
        print_medians("Mesos, median of 3", medians)
    assert medians["real_user running"] < 60, medians
