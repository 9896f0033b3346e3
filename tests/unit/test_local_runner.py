"""The local runner for real (no Celery): jobs are process groups, ends are reported once."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from galaxy_tasks import jobdir
from galaxy_tasks.jobdir import JobDir, job_environment, script_environment
from galaxy_tasks.runners import runner_class
from galaxy_tasks.runners.base import Completion, Launch, Tracked
from galaxy_tasks.runners.local import LocalRunner
from tests.support.services import unavailable

HOST = socket.gethostname()
PR_SET_CHILD_SUBREAPER = 36


class Reports:
    """The runner's report callback: a list, and an Event set on every report."""

    def __init__(self) -> None:
        self.items: list[Completion] = []
        self.arrived = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, completion: Completion) -> None:
        with self._lock:
            self.items.append(completion)
        self.arrived.set()

    def of(self, job_id: str) -> list[Completion]:
        with self._lock:
            return [c for c in self.items if c.job_id == job_id]

    def wait_for(self, job_id: str, timeout: float = 15.0) -> Completion:
        deadline = time.monotonic() + timeout
        while True:
            found = self.of(job_id)
            if found:
                return found[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no report for {job_id} within {timeout}s; got {self.items}")
            self.arrived.wait(min(remaining, 0.5))
            self.arrived.clear()

    def assert_once(self, job_id: str, settle: float = 0.3) -> Completion:
        """Exactly one report for the job, also after a moment for late duplicates."""
        first = self.wait_for(job_id)
        time.sleep(settle)
        assert len(self.of(job_id)) == 1, self.of(job_id)
        return first


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def groups():
    """Process groups started by a test; whatever survives it is killed."""
    started: list[int] = []
    yield started
    for pgid in started:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def runner(reports, groups):
    runner = LocalRunner({"kill_grace_s": 0.5}, reports)
    original = runner.submit

    def submit(launch: Launch) -> str:
        external_id = original(launch)
        groups.append(pid_of(external_id))
        return external_id

    runner.submit = submit  # remember each group, to clean up after a failing test
    yield runner
    runner.close()


def prepared(tmp_path: Path, command: str, job_id: str = "job1", *, cores: int = 1,
             memory_mb: int | None = None) -> Launch:
    root = tmp_path / "jobs" / job_id
    env = job_environment(JobDir(root), cores=cores, memory_mb=memory_mb, spec_env={}, destination_env={},
                          mesos_url="", job_id=job_id)
    job_dir = jobdir.create(root, command, env, None)
    return Launch(job_id=job_id, job_dir=root, script=job_dir.script, cores=cores, memory_mb=memory_mb)


def pid_of(external_id: str) -> int:
    host, pid, *started = external_id.split(":")
    assert host == HOST and len(started) <= 1
    return int(pid)


def tracked(launch: Launch, external_id: str) -> Tracked:
    return Tracked(launch.job_id, external_id, launch.job_dir)


def wait_claimed(launch: Launch, timeout: float = 10.0) -> int:
    job_dir = JobDir(launch.job_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = job_dir.claimed_pid()
        if pid is not None:
            return pid
        time.sleep(0.01)
    raise AssertionError("the job script never claimed the job")


def group_members(pgid: int) -> dict[int, str]:
    """pid -> state letter of every process whose process group is `pgid`."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            members[int(entry)] = fields[0]
    return members


def live(pgid: int) -> dict[int, str]:
    return {pid: state for pid, state in group_members(pgid).items() if state not in "ZX"}


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def subreaper():
    """Make this process the reaper of orphaned job processes, so that a dead group really
    disappears here (this machine's PID 1 does not reap orphans)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        unavailable(f"cannot become a child subreaper (errno {ctypes.get_errno()})")
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reap_orphans(pgid: int, leader: int) -> None:
    for pid, state in group_members(pgid).items():
        if pid != leader and state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# -- the end of a job is reported ---------------------------------------------------------


def test_runner_class_by_name():
    assert runner_class("local") is LocalRunner


def test_exit_code_and_wall_time_reported(tmp_path, runner, reports):
    launch = prepared(tmp_path, "echo out; sleep 0.4; exit 3")
    external_id = runner.submit(launch)
    assert pid_of(external_id) > 0
    done = reports.assert_once("job1")
    assert done.exit_code == 3
    assert done.signal is None and done.reason is None
    assert 0.4 <= done.wall_time_s < 10
    assert done.external_id == external_id
    assert JobDir(launch.job_dir).claimed_pid() == pid_of(external_id)
    assert JobDir(launch.job_dir).tail("stdout") == "out\n"
    assert abs(done.ended_at - time.time()) < 10


def test_success_reported_as_zero(tmp_path, runner, reports):
    runner.submit(prepared(tmp_path, "true"))
    done = reports.assert_once("job1")
    assert done.exit_code == 0 and done.signal is None and done.reason is None


def test_many_jobs_each_reported_once_with_its_own_code(tmp_path, runner, reports):
    launches = [prepared(tmp_path, f"sleep 0.{i % 3}; exit {i}", f"job{i}") for i in range(20)]
    for launch in launches:
        runner.submit(launch)
    for i in range(20):
        assert reports.wait_for(f"job{i}").exit_code == i
    time.sleep(0.3)
    counts = Counter(c.job_id for c in reports.items)
    assert counts == {f"job{i}": 1 for i in range(20)}


def test_job_runs_with_the_launch_environment_only(tmp_path, runner, reports, monkeypatch):
    monkeypatch.setenv("GALAXY_TASKS_DATABASE_URL", "postgresql://u:secret@h/db")
    launch = prepared(tmp_path, "env > env.dump", cores=3, memory_mb=512)
    runner.submit(launch)
    assert reports.assert_once("job1").exit_code == 0
    dump = (launch.job_dir / "working" / "env.dump").read_text()
    assert "secret" not in dump and "GALAXY_TASKS_DATABASE_URL" not in dump
    assert "GALAXY_SLOTS=3\n" in dump and "GALAXY_MEMORY_MB=512\n" in dump


def test_job_killed_by_signal_reports_the_signal(tmp_path, runner, reports):
    launch = prepared(tmp_path, "sleep 100")
    pgid = pid_of(runner.submit(launch))
    wait_claimed(launch)
    os.killpg(pgid, signal.SIGKILL)
    done = reports.assert_once("job1")
    assert done.signal == signal.SIGKILL
    assert done.exit_code is None
    assert "SIGKILL" in done.reason


def test_job_that_cannot_start_is_reported(tmp_path, runner, reports):
    launch = prepared(tmp_path, "true")
    launch.script.unlink()
    runner.submit(launch)
    done = reports.assert_once("job1")
    assert done.exit_code not in (None, 0)


# -- cancel ------------------------------------------------------------------------------


def test_cancel_kills_the_whole_process_group(tmp_path, runner, reports, subreaper):
    launch = prepared(tmp_path, "sleep 100 & sleep 100; wait")
    external_id = runner.submit(launch)
    pgid = pid_of(external_id)
    # the job script, the command's shell and both sleeps
    wait_until(lambda: len(live(pgid)) >= 4, 10, "the job's processes to start")
    started = time.monotonic()
    runner.cancel(tracked(launch, external_id))
    done = reports.wait_for("job1")
    assert done.signal == signal.SIGTERM
    assert "SIGTERM" in done.reason

    wait_until(lambda: not live(pgid), 5, "every process of the group to die")

    def gone() -> bool:
        reap_orphans(pgid, pgid)
        return group_gone(pgid)

    wait_until(gone, 5, "os.killpg(pgid, 0) to raise ProcessLookupError")
    assert time.monotonic() - started < 5
    time.sleep(0.3)
    assert len(reports.of("job1")) == 1
    assert JobDir(launch.job_dir).recorded_exit_code() is None


def test_cancel_kills_processes_that_ignore_sigterm(tmp_path, runner, reports, subreaper):
    launch = prepared(tmp_path, "trap '' TERM; sleep 100 & sleep 100; wait")
    external_id = runner.submit(launch)
    pgid = pid_of(external_id)
    wait_until(lambda: len(live(pgid)) >= 4, 10, "the job's processes to start")
    runner.cancel(tracked(launch, external_id))
    reports.wait_for("job1")
    # kill_grace_s is 0.5: well within 3 s, SIGKILL must have followed
    wait_until(lambda: not live(pgid), 3, "every process of the group to die")


def test_cancel_of_a_finished_job_is_quiet(tmp_path, runner, reports):
    launch = prepared(tmp_path, "exit 0")
    external_id = runner.submit(launch)
    reports.wait_for("job1")
    runner.cancel(tracked(launch, external_id))
    time.sleep(0.3)
    assert len(reports.of("job1")) == 1
    assert reports.of("job1")[0].exit_code == 0


# -- submit is idempotent ----------------------------------------------------------------


def test_submit_twice_runs_the_command_once(tmp_path, runner, reports):
    ledger = tmp_path / "ledger"
    launch = prepared(tmp_path, f"echo ran >> {ledger}; sleep 0.5; exit 4")
    first = runner.submit(launch)
    assert wait_claimed(launch) == pid_of(first)
    second = runner.submit(launch)
    assert second == first
    assert reports.wait_for("job1").exit_code == 4
    assert ledger.read_text() == "ran\n"


def test_submit_after_the_job_finished_does_not_run_it_again(tmp_path, runner, reports):
    ledger = tmp_path / "ledger"
    launch = prepared(tmp_path, f"echo ran >> {ledger}; exit 2")
    first = runner.submit(launch)
    assert reports.wait_for("job1").exit_code == 2
    assert runner.submit(launch).split(":")[:2] == first.split(":")[:2]  # the same host and process
    time.sleep(0.3)
    assert ledger.read_text() == "ran\n"
    assert all(c.exit_code == 2 for c in reports.of("job1"))


def test_immediate_double_submit_runs_once_and_reports_the_real_exit(tmp_path, runner, reports):
    ledger = tmp_path / "ledger"
    launch = prepared(tmp_path, f"echo ran >> {ledger}; sleep 0.3; exit 6")
    runner.submit(launch)
    runner.submit(launch)  # possibly before the first copy claimed the job
    done = reports.wait_for("job1")
    assert done.exit_code == 6  # never the stand-down code of the duplicate copy
    time.sleep(0.3)
    assert ledger.read_text() == "ran\n"
    assert all(c.exit_code == 6 for c in reports.of("job1"))


def test_submit_twice_reports_once(tmp_path, runner, reports):
    launch = prepared(tmp_path, "sleep 0.5")
    runner.submit(launch)
    wait_claimed(launch)
    runner.submit(launch)
    reports.assert_once("job1", settle=0.5)


# -- status ------------------------------------------------------------------------------


def test_status_of_a_finished_job_reads_the_exit_code_file(tmp_path, runner, reports):
    launch = prepared(tmp_path, "exit 9")
    external_id = runner.submit(launch)
    reports.wait_for("job1")
    other = LocalRunner({}, Reports())  # a fresh process knows nothing but the job dir
    try:
        answer = other.status([tracked(launch, external_id)])
    finally:
        other.close()
    assert set(answer) == {"job1"}
    assert answer["job1"].exit_code == 9
    assert answer["job1"].external_id == external_id
    assert answer["job1"].source == "job_dir"


def test_status_of_a_running_job_is_none(tmp_path, runner, reports):
    launch = prepared(tmp_path, "sleep 100")
    external_id = runner.submit(launch)
    wait_claimed(launch)
    assert runner.status([tracked(launch, external_id)]) == {"job1": None}
    os.killpg(pid_of(external_id), signal.SIGKILL)
    reports.wait_for("job1")


def test_status_in_batch(tmp_path, runner, reports):
    finished = prepared(tmp_path, "exit 1", "done")
    running = prepared(tmp_path, "sleep 100", "busy")
    done_id = runner.submit(finished)
    busy_id = runner.submit(running)
    reports.wait_for("done")
    wait_claimed(running)
    answer = runner.status([tracked(finished, done_id), tracked(running, busy_id)])
    assert answer["busy"] is None
    assert answer["done"].exit_code == 1
    os.killpg(pid_of(busy_id), signal.SIGKILL)
    reports.wait_for("busy")


def test_status_of_a_vanished_job_says_so(tmp_path, runner, reports):
    launch = prepared(tmp_path, "sleep 100")
    external_id = runner.submit(launch)
    wait_claimed(launch)
    os.killpg(pid_of(external_id), signal.SIGKILL)
    reports.wait_for("job1")
    answer = runner.status([tracked(launch, external_id)])["job1"]
    assert answer is not None and answer.exit_code is None
    assert "without recording an exit code" in answer.reason


# -- recover -----------------------------------------------------------------------------


def start_elsewhere(launch: Launch, groups: list[int]) -> subprocess.Popen:
    """Start the job script as an earlier worker would have, outside the runner."""
    process = subprocess.Popen(["/bin/sh", str(launch.script)], env=script_environment(), start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    groups.append(process.pid)
    return process


def test_recover_follows_a_job_started_by_another_process(tmp_path, runner, reports, groups):
    launch = prepared(tmp_path, "sleep 0.6; exit 5")
    process = start_elsewhere(launch, groups)
    try:
        assert wait_claimed(launch) == process.pid
        runner.recover([tracked(launch, f"{HOST}:{process.pid}")])
        assert reports.of("job1") == []  # still running
        done = reports.assert_once("job1")
        assert done.exit_code == 5
        assert done.external_id == f"{HOST}:{process.pid}"
    finally:
        assert process.wait(timeout=10) == 5


def test_recover_reports_a_job_that_finished_meanwhile(tmp_path, runner, reports, groups):
    launch = prepared(tmp_path, "exit 8")
    process = start_elsewhere(launch, groups)
    assert process.wait(timeout=10) == 8
    runner.recover([tracked(launch, f"{HOST}:{process.pid}")])
    assert reports.assert_once("job1").exit_code == 8


def test_recover_reports_a_job_that_died_without_an_exit_code(tmp_path, runner, reports, groups):
    launch = prepared(tmp_path, "sleep 100")
    process = start_elsewhere(launch, groups)
    wait_claimed(launch)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    runner.recover([tracked(launch, f"{HOST}:{process.pid}")])
    done = reports.assert_once("job1")
    assert done.exit_code is None and done.reason


def test_recover_ignores_jobs_of_other_hosts(tmp_path, runner, reports):
    launch = prepared(tmp_path, "true")
    runner.recover([tracked(launch, "some-other-host:12345")])
    time.sleep(0.3)
    assert reports.items == []


# -- max_jobs: job slots shared by every process on the host --------------------------


@pytest.fixture
def limited(tmp_path, reports, groups):
    made: list[LocalRunner] = []

    def make(max_jobs: int = 2) -> LocalRunner:
        runner = LocalRunner({"max_jobs": max_jobs, "slots_dir": str(tmp_path / "slots")}, reports)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


def test_max_jobs_bounds_the_jobs_running_at_once(tmp_path, limited, reports, groups):
    from galaxy_tasks.errors import RunnerFull

    runner = limited(2)
    gate = tmp_path / "gate"
    held = [prepared(tmp_path, f"until [ -e {gate} ]; do sleep 0.05; done", f"held{i}") for i in range(2)]
    for launch in held:
        groups.append(pid_of(runner.submit(launch)))
    assert not runner.has_room()
    waiting = prepared(tmp_path, "echo ran > ran.txt", "waiting")
    with pytest.raises(RunnerFull, match="all 2 job slots"):
        runner.submit(waiting)
    assert not (waiting.job_dir / "working" / "ran.txt").exists() and not JobDir(waiting.job_dir).claimed()
    # another worker process of the destination on this host sees the same slots
    assert not limited(2).has_room()
    gate.touch()
    for launch in held:
        reports.wait_for(launch.job_id)
    wait_until(runner.has_room, 10, "a free slot")
    runner.submit(waiting)
    assert reports.wait_for("waiting").exit_code == 0


def test_a_slot_is_held_while_any_process_of_the_job_lives(tmp_path, limited, reports, groups, subreaper):
    """The job script's children inherit the slot: a background process the tool left
    behind keeps the host's slot taken until it ends too."""
    runner = limited(1)
    gate = tmp_path / "gate"
    launch = prepared(tmp_path, f"(until [ -e {gate} ]; do sleep 0.05; done) & echo started", "leaves")
    pgid = pid_of(runner.submit(launch))
    groups.append(pgid)
    assert reports.wait_for("leaves").exit_code == 0  # job.sh has ended ...
    assert not runner.has_room()  # ... but its background child still holds the slot
    gate.touch()
    wait_until(runner.has_room, 10, "the slot freed by the last process")


def test_max_jobs_must_be_a_positive_whole_number(reports):
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(ValueError, match="max_jobs"):
            LocalRunner({"max_jobs": bad}, reports)
    assert LocalRunner({}, reports).has_room()


def test_cancel_never_kills_a_stranger_that_took_the_jobs_pid(tmp_path, runner, reports):
    """The job ended and its pid was reused by another process: the external id now names
    a stranger. Cancel acts only on the process that claimed the job (its `claim` file)."""
    launch = prepared(tmp_path, "true")
    external_id = runner.submit(launch)
    reports.wait_for(launch.job_id)
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        host = external_id.split(":")[0]
        runner.cancel(Tracked(launch.job_id, f"{host}:{stranger.pid}", launch.job_dir))
        time.sleep(runner.kill_grace_s + 0.3)  # past the SIGKILL that would follow a SIGTERM
        assert stranger.poll() is None, "the stranger was killed"
    finally:
        stranger.kill()
        stranger.wait()


def test_cancel_checks_the_processs_start_time_not_only_its_pid(tmp_path, runner, reports):
    """The pid the job's claim names was reused by a stranger (as after a host's pid space
    wrapped around): the start time recorded in the external id tells them apart."""
    launch = prepared(tmp_path, "true")
    external_id = runner.submit(launch)
    reports.wait_for(launch.job_id)
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)  # leads a group of its own
    try:
        job_dir = JobDir(launch.job_dir)
        job_dir.claim_file.write_text(f"{stranger.pid} {job_dir.own_token()}\n")
        host, _, started = external_id.split(":")
        runner.cancel(Tracked(launch.job_id, f"{host}:{stranger.pid}:{int(started) - 1}", launch.job_dir))
        time.sleep(runner.kill_grace_s + 0.3)
        assert stranger.poll() is None, "the stranger was killed"
    finally:
        stranger.kill()
        stranger.wait()


def test_cancel_never_signals_the_workers_own_process_group(tmp_path, runner):
    launch = prepared(tmp_path, "true")
    job_dir = JobDir(launch.job_dir)
    job_dir.claim_file.write_text(f"{os.getpgrp()} {job_dir.own_token()}\n")
    runner.cancel(Tracked(launch.job_id, f"{HOST}:{os.getpgrp()}", launch.job_dir))  # this test survives it


# -- walltime ------------------------------------------------------------------------------


def test_walltime_stops_even_children_that_ignore_sigterm_after_the_directory_is_taken(
        tmp_path, runner, reports, subreaper):
    """At its walltime the job is stopped; the kill that follows SIGTERM must not depend on
    the job's directory, which the next attempt of a resubmitted job may already have
    taken (rewritten at the same path) within the grace period."""
    launch = prepared(tmp_path, "trap '' TERM; sleep 100 & sleep 100; wait")
    launch = Launch(**{**launch.__dict__, "walltime_s": 1})
    external_id = runner.submit(launch)
    pgid = pid_of(external_id)
    wait_until(lambda: len(live(pgid)) >= 3, 10, "the job's processes to start")
    done = reports.wait_for("job1", timeout=10)
    assert done.runner_state == "walltime_reached"
    again = prepared(tmp_path, "sleep 1", "job1")  # the next attempt's directory, at the same path
    assert JobDir(again.job_dir).claimed_pid() is None
    wait_until(lambda: not live(pgid), 5, "every process of the first attempt's group to die")


def test_a_launch_taken_over_keeps_the_jobs_walltime(tmp_path, reports, groups):
    """A second runner (another pool process) takes over a launch whose job already runs:
    the walltime still holds, counted from when the job started."""
    first = LocalRunner({"kill_grace_s": 0.5}, lambda c: None)
    second = LocalRunner({"kill_grace_s": 0.5}, reports)
    try:
        launch = prepared(tmp_path, "sleep 100")
        groups.append(pid_of(first.submit(launch)))  # no walltime: its deadline keeper is lost
        wait_claimed(launch)
        second.submit(Launch(**{**launch.__dict__, "walltime_s": 1}))
        assert reports.wait_for("job1", timeout=10).runner_state == "walltime_reached"
    finally:
        first.close()
        second.close()


def test_reconciliation_stops_a_job_past_its_walltime_that_nobody_stopped(tmp_path, reports, groups):
    first = LocalRunner({"kill_grace_s": 0.5}, lambda c: None)
    second = LocalRunner({"kill_grace_s": 0.5}, reports)
    try:
        launch = prepared(tmp_path, "sleep 100")
        external_id = first.submit(launch)
        groups.append(pid_of(external_id))
        wait_claimed(launch)
        long_ago = time.time() - 100
        looked = Tracked(launch.job_id, external_id, launch.job_dir, walltime_s=5, running_since=long_ago)
        assert second.status([looked]) == {"job1": None}, "still running when looked at"
        assert reports.wait_for("job1", timeout=10).runner_state == "walltime_reached"
    finally:
        first.close()
        second.close()
