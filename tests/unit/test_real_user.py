"""Jobs run as their real Unix user through the privileged helper (galaxy-tasks-run-as), on
the local runner, for real: users and a group made here, the helper run as root as sudo
would run it, the job's row in a database of its own. `pytest -k real_user` selects them."""
from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.realuser.helper import REFUSED
from galaxy_tasks.runas import read_arguments, write_arguments
from galaxy_tasks.runners.base import Launch, Tracked
from galaxy_tasks.runners.local import LocalRunner
from tests.support.real_user import (
    HELPER,
    Site,
    handed_back,
    needs_root,
    wait_for,
)
from tests.unit.test_local_runner import Reports

pytestmark = needs_root


def test_real_user_jobs_run_as_their_own_users(site, local_as_user):
    local, reports = local_as_user
    users = site.users
    launches = {user: site.job("id -un > who.txt; id -G >> who.txt; echo made > out.txt", user)
                for user in (users.alice, users.bob)}
    for launch in launches.values():
        local.submit(launch)
    for user, launch in launches.items():
        completion = reports.wait_for(launch.job_id)
        assert completion.exit_code == 0, [line for line in site.log_file.read_text().splitlines() if "refused" in line]
        working = JobDir(launch.job_dir).working
        account = pwd.getpwnam(user)
        assert (working / "who.txt").read_text().split("\n")[:2] == [user, str(account.pw_gid)]  # no other group
        wait_for(lambda: handed_back(launch.job_dir), 10, "the directory handed back to the worker")
        out = os.stat(working / "out.txt")
        # the job's umask was 027 in a setgid directory of the worker's group; now the worker's own
        assert stat.S_IMODE(out.st_mode) == 0o640 and out.st_gid == os.getgid() and out.st_uid == os.getuid()
    log = site.log_file.read_text()
    for user, launch in launches.items():
        assert f"event=real_user_start job_id={launch.job_id} user={user}" in log
        assert f"event=real_user_reclaimed job_id={launch.job_id}" in log


def test_real_user_job_starts_when_its_launch_recorded_it_running_first(site, local_as_user):
    """The launch records `running` as soon as the runner spawned the helper, which may read
    the row only after that (a worker's real launch does exactly this)."""
    local, reports = local_as_user
    launch = site.job("id -un > who.txt", site.users.alice, state="running")
    local.submit(launch)
    assert reports.wait_for(launch.job_id).exit_code == 0, site.refusals()
    assert (JobDir(launch.job_dir).working / "who.txt").read_text().strip() == site.users.alice


def test_real_user_job_cannot_read_another_users_directory_and_is_cancelled(site, local_as_user):
    local, reports = local_as_user
    users = site.users
    alice = site.job("echo secret > secret.txt; exec sleep 60", users.alice)
    alice_id = local.submit(alice)
    secret = JobDir(alice.job_dir).working / "secret.txt"
    wait_for(secret.exists, 10, "alice's job to write its file")
    assert os.stat(alice.job_dir).st_uid == pwd.getpwnam(users.alice).pw_uid  # hers while it runs
    bob = site.job(f"cat {secret}; ls {alice.job_dir}; exit 0", users.bob)
    local.submit(bob)
    completion = reports.wait_for(bob.job_id)
    stderr = JobDir(bob.job_dir).tail("stderr")
    assert "Permission denied" in stderr and "secret" not in JobDir(bob.job_dir).tail("stdout"), stderr
    assert stderr.count("Permission denied") == 2, stderr
    assert completion.exit_code == 0
    local.cancel(Tracked(alice.job_id, alice_id, alice.job_dir))
    ended = reports.wait_for(alice.job_id)
    assert ended.signal == signal.SIGTERM, ended
    wait_for(lambda: handed_back(alice.job_dir), 10, "alice's directory handed back")


def test_real_user_walltime_kill_and_the_helpers_own_signal(site, local_as_user):
    local, reports = local_as_user
    late = site.job("exec sleep 60", site.users.alice, walltime_s=1)
    local.submit(late)
    completion = reports.wait_for(late.job_id, timeout=15)
    assert completion.runner_state == "walltime_reached", completion
    # a worker that may not signal the user's processes asks the helper, which signals as the user
    other = site.job("exec sleep 60", site.users.bob)
    local.submit(other)
    JobDir(other.job_dir).claimed_pid() or wait_for(lambda: JobDir(other.job_dir).claimed_pid() is not None, 10,
                                                    "the job's claim")
    result = site.helper("term", other.job_id)
    assert result.returncode == 0, result.stderr
    assert reports.wait_for(other.job_id).signal == signal.SIGTERM


def test_real_user_job_recovered_once_after_its_worker_is_sigkilled(site):
    """A worker process starts a job as alice and is SIGKILLed; a new runner recovers it and
    reports its end once."""
    launch = site.job("sleep 1.5; id -un > who.txt", site.users.alice)
    code = textwrap.dedent(f"""\
        import sys, time
        from pathlib import Path
        from galaxy_tasks.runners.base import Launch
        from galaxy_tasks.runners.local import LocalRunner
        runner = LocalRunner({{"run_as_command": {' '.join([*HELPER, str(site.config)])!r}}}, lambda c: None)
        launch = Launch(job_id={launch.job_id!r}, job_dir=Path({str(launch.job_dir)!r}),
                        script=Path({str(launch.script)!r}), run_as={launch.run_as!r})
        print(runner.submit(launch), flush=True)
        time.sleep(60)
        """)
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    external_id = worker.stdout.readline().strip()
    wait_for(lambda: JobDir(launch.job_dir).claimed_pid() is not None, 10, "the job's claim")
    worker.kill()
    worker.wait()
    reports = Reports()
    recovering = LocalRunner({"run_as_command": " ".join([*HELPER, str(site.config)])}, reports)
    try:
        recovering.recover([Tracked(launch.job_id, external_id, launch.job_dir)])
        completion = reports.assert_once(launch.job_id) if reports.wait_for(launch.job_id, timeout=15) else None
    finally:
        recovering.close()
    assert completion is not None and completion.exit_code == 0, completion
    assert (JobDir(launch.job_dir).working / "who.txt").read_text().strip() == site.users.alice


def _outside(site: Site) -> Launch:
    elsewhere = site.base / "elsewhere"
    elsewhere.mkdir(mode=0o711, exist_ok=True)
    return site.job("touch ran", site.users.alice, job_dir=elsewhere / f"ru{uuid.uuid4().hex[:12]}")


def _symlinked(site: Site) -> Launch:
    launch = _outside(site)
    link = site.jobs_root / launch.job_id
    link.symlink_to(launch.job_dir)
    site.store.move(launch.job_id, _state("submitting"), sources=frozenset({_state("submitting")}),
                    job_dir=str(link))
    return launch


def _state(name: str):
    from galaxy_tasks.states import JobState
    return JobState(name)


REFUSALS = {
    # what is asked: (how to make the job, what the refusal says)
    "path_outside_the_jobs_root": (_outside, "is not"),
    "symlinked_job_directory": (_symlinked, "is a symlink"),
    "root": (lambda site: site.job("touch ran", "root"), "would run as root"),
    "uid_under_the_minimum": (lambda site: site.job("touch ran", site.users.system), "under the minimum 1000"),
    "user_outside_the_group": (lambda site: site.job("touch ran", site.users.eve), "is not in the group"),
    "unknown_job_id": (lambda site: Launch("ru-nosuchjob", site.jobs_root / "ru-nosuchjob", Path("/nonexistent")),
                       "no job 'ru-nosuchjob'"),
    "job_of_another_state": (lambda site: site.job("touch ran", site.users.alice, state="queued"),
                             "is queued; start needs running/submitting"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_real_user_helper_refuses(site, case):
    make, says = REFUSALS[case]
    launch = make(site)
    before = os.lstat(launch.job_dir) if os.path.lexists(launch.job_dir) else None
    result = site.helper("start", launch.job_id)
    assert result.returncode == REFUSED, (result.returncode, result.stderr)
    assert "event=real_user_refused" in result.stderr and says in result.stderr, result.stderr
    assert "event=real_user_refused action=start job_id=" + launch.job_id in site.log_file.read_text()
    if before is not None:  # nothing handed over, nothing run
        after = os.lstat(launch.job_dir)
        assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
        assert not JobDir(launch.job_dir).claimed()


def test_real_user_helper_refuses_a_configuration_others_may_write(site):
    os.chmod(site.config, 0o666)
    result = site.helper("start", site.job("touch ran", site.users.alice).job_id)
    assert result.returncode == REFUSED and "writable by root alone" in result.stderr, result.stderr


def test_real_user_overhead_of_the_privileged_step(site, local_as_user, capsys):
    """Submit to running (the job's claim) with and without the helper, interleaved in one
    run; prints both medians (docs/security.md quotes them)."""
    local, reports = local_as_user
    plain_runner = LocalRunner({"kill_grace_s": 1.0}, reports)
    times: dict[str, list[float]] = {"plain": [], "real_user": []}
    try:
        for _ in range(5):
            for kind in times:
                launch = site.job("true", site.users.alice if kind == "real_user" else None)
                started = time.monotonic()
                (local if kind == "real_user" else plain_runner).submit(launch)
                wait_for(lambda: JobDir(launch.job_dir).claimed_pid() is not None, 30, "the job's claim")
                times[kind].append(time.monotonic() - started)
                assert reports.wait_for(launch.job_id).exit_code == 0
    finally:
        plain_runner.close()
    medians = {kind: sorted(values)[len(values) // 2] for kind, values in times.items()}
    with capsys.disabled():
        print(f"\nsubmit->running median of 5: plain {medians['plain'] * 1000:.0f} ms, "
              f"through galaxy-tasks-run-as {medians['real_user'] * 1000:.0f} ms")
    assert medians["real_user"] < 10, medians


WORKER_SCRIPT = """
import json, signal, sys, time
from pathlib import Path
from galaxy_tasks.errors import RunnerError
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.runners.base import Launch, Tracked
from galaxy_tasks.runners.local import LocalRunner
args = json.loads(sys.argv[1])
ended = []
runner = LocalRunner({"kill_grace_s": 1.0, "run_as_command": args["command"]}, ended.append)
launch = Launch(job_id=args["job_id"], job_dir=Path(args["job_dir"]), script=Path(args["job_dir"]) / "job.sh",
                run_as=args["user"])
external_id = runner.submit(launch)
deadline = time.monotonic() + 30
while not (Path(args["job_dir"]) / "working" / "who.txt").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
claimed = JobDir(launch.job_dir).claimed_pid()
runner.cancel(Tracked(launch.job_id, external_id, launch.job_dir))
while not ended and time.monotonic() < deadline:
    time.sleep(0.05)
runner.close()
print(json.dumps({"pid": int(external_id.split(":")[1]), "claimed": claimed,
                  "signal": ended[0].signal if ended else None}))
"""


def test_real_user_unprivileged_worker_through_sudo_starts_and_cancels(site, sudo_worker):
    """The deployment of docs/security.md: a worker that is not root, the helper through the
    documented sudo rule. The pid the worker started is the job's (sudo execs in place), the
    job runs as its user, and a cancel (the worker may not signal the user's processes)
    goes through the helper."""
    launch = site.job("id -un > who.txt; exec sleep 60", site.users.alice)
    sudo_worker.own(launch.job_dir)
    seen = sudo_worker.python(WORKER_SCRIPT, {"command": sudo_worker.command, "job_id": launch.job_id,
                                              "job_dir": str(launch.job_dir), "user": site.users.alice})
    assert seen["claimed"] == seen["pid"], seen  # sudo exec'd the helper in place: the job is the spawned pid
    assert seen["signal"] == signal.SIGTERM, seen
    assert (JobDir(launch.job_dir).working / "who.txt").read_text().strip() == site.users.alice
    log = site.log_file.read_text()
    assert f"event=real_user_action action=term job_id={launch.job_id} user={site.users.alice} " \
           f"caller={sudo_worker.name}" in log


@pytest.mark.parametrize("action", ["sbatch", "qsub", "reclaim"])
def test_real_user_helper_refuses_batch_actions_for_a_job_of_another_state(site, action):
    launch = site.job("touch ran", site.users.alice, state="queued")
    write_arguments(launch.job_dir, ["--parsable", str(launch.script)])
    result = site.helper(action, launch.job_id)
    assert result.returncode == REFUSED and f"is queued; {action} needs" in result.stderr, result.stderr
    assert handed_back(launch.job_dir)  # nothing handed over


def test_real_user_submission_arguments_are_read_back_whole_or_refused(tmp_path):
    arguments = ["--job-name=gt-x", "--comment=two words", "-l", "h_rt=10"]
    write_arguments(tmp_path, arguments)
    assert read_arguments(tmp_path) == arguments
    with pytest.raises(RunnerError, match="newline or NUL"):
        write_arguments(tmp_path, ["--comment=a\n--uid=0"])
    (tmp_path / "submit.args").write_text("x\n" * 300)
    with pytest.raises(ValueError, match="more than 256 arguments"):
        read_arguments(tmp_path)
