"""SlurmRunner against the real single-node Slurm of ops/slurm-up.sh (see conftest.py)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from galaxy_tasks.errors import ConfigError, RunnerError, RunnerUnavailable
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.runners.base import Launch, Tracked
from galaxy_tasks.runners.slurm import (
    MEMORY_LIMIT_REACHED,
    SUBMIT_MARKER,
    UNKNOWN_ERROR,
    WALLTIME_REACHED,
    WRAPPER,
    SlurmRunner,
)
from tests.slurm.conftest import runner_params, show_job, slurm_state, started, tracked, wait_until
from tests.support.ledger import gated, ledger_command, ledger_counts
from tests.support.slurm import MEMORY_HOG, node_state, start_slurm, stop_slurmctld

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]


def announce(address: tuple[str, int], line: str) -> None:
    """Send one announcement line, as a job's batch script does."""
    with socket.create_connection(address, timeout=10) as conn:
        conn.sendall(line.encode() + b"\n")


def token_of(launch: Launch) -> str:
    """The token a job can read from its own batch script (so a job can forge this much)."""
    return re.search(r"gt-end \S+ %s %s ([0-9a-f]{32})", (launch.job_dir / WRAPPER).read_text()).group(1)


def heard(runner: SlurmRunner) -> int:
    return sum(runner.listener_stats.values())


# -- params ----------------------------------------------------------------------------------

def test_bad_runner_params_are_refused_with_their_name(slurm, events, tmp_path) -> None:
    for bad, message in [({"command_timeout_s": "soon"}, "params: command_timeout_s: must be a number, not 'soon'"),
                         ({"command_retries": -1}, "params: command_retries: must be at least 0, not -1"),
                         ({"announce_host": "host; rm"}, "params: announce_host: must be a host name or an IPv4 "
                                                         "address, not 'host; rm'"),
                         ({"listen_port": "http"}, "params: listen_port: must be a whole number, not 'http'"),
                         ({"listen_port": 70000}, "params: listen_port: must be a port number (at most 65535)")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            SlurmRunner(runner_params(tmp_path, **bad), events).close()
    holder = SlurmRunner(runner_params(tmp_path), events)
    try:  # a second process on the same state file: refused, not silently sharing the port
        code = ("import sys; from galaxy_tasks.runners.slurm import SlurmRunner\n"
                f"SlurmRunner({{'state_file': {str(tmp_path / 'state' / 'slurm.listener')!r}}}, print)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode != 0 and "is held by another live process" in proc.stderr
    finally:
        holder.close()


# -- the end of a job, as an event -------------------------------------------------------------

def test_exit_code_and_stdout_with_one_sbatch_and_nothing_while_it_runs(runner, events, make_launch,
                                                                         tmp_path) -> None:
    gate = tmp_path / "gate"
    launch = make_launch(gated(gate, "echo hello"))
    external_id = runner.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    while_running = runner.calls
    time.sleep(1.5)  # the job runs; the runner must not ask Slurm anything meanwhile
    assert runner.calls == while_running == {"sbatch": 1}
    gate.touch()
    done = events.wait_for(launch.job_id)
    assert (done.exit_code, done.signal, done.reason, done.external_id) == (0, None, None, external_id)
    assert done.source == "runner" and done.wall_time_s is not None and done.wall_time_s >= 1
    assert JobDir(launch.job_dir).tail("stdout") == "hello\n"
    # the confirmation: one squeue, or a few more if Slurm had not recorded the end yet
    assert runner.calls["sbatch"] == 1 and 1 <= runner.calls["squeue"] <= 3
    assert runner.listener_stats == {"accepted": 1}
    assert show_job(external_id)["JobName"] == launch.external_name


def test_failing_job_reports_its_exit_code_and_stderr(runner, events, make_launch) -> None:
    launch = make_launch("echo oops >&2; exit 3")
    runner.submit(launch)
    done = events.wait_for(launch.job_id)
    assert (done.exit_code, done.signal, done.reason) == (3, None, None)
    assert JobDir(launch.job_dir).tail("stderr") == "oops\n"
    assert slurm_state(done.external_id) == "FAILED"


def test_job_script_killed_by_a_signal(runner, events, make_launch) -> None:
    launch = make_launch("kill -TERM $PPID; sleep 30")  # job.sh itself dies: no exit_code file
    runner.submit(launch)
    done = events.wait_for(launch.job_id)
    assert (done.signal, done.exit_code) == (signal.SIGTERM, None)
    assert "SIGTERM" in done.reason


def test_resources_and_destination_params_are_mapped_to_slurm(runner_with, events, make_launch,
                                                              tmp_path) -> None:
    gate = tmp_path / "gate"
    launch = make_launch(gated(gate, 'echo "$SLURM_CPUS_PER_TASK $SLURM_MEM_PER_NODE"'), cores=2, memory_mb=300,
                         walltime_s=125)
    destination = runner_with(partition="debug", account="gtlab", native_specification="--comment=gt-resources")
    external_id = destination.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    job = show_job(external_id)
    assert (job["NumCPUs"], job["CPUs/Task"], job["MinMemoryNode"], job["TimeLimit"]) == ("2", "2", "300M", "00:03:00")
    assert (job["Partition"], job["Account"], job["Comment"], job["Requeue"]) == ("debug", "gtlab", "gt-resources", "0")
    assert job["WorkDir"] == str(launch.job_dir) and job["StdOut"] == f"{launch.job_dir}/slurm.out"
    gate.touch()
    assert events.wait_for(launch.job_id).exit_code == 0
    # job.sh sets the job's environment itself; Slurm's own variables are there too
    assert JobDir(launch.job_dir).tail("stdout") == "2 300\n"


def test_a_jobs_own_options_reach_slurm_after_the_destinations_and_its_gpus_are_asked_as_gres(
        runner_with, events, make_launch, tmp_path) -> None:
    gate = tmp_path / "gate"
    launch = make_launch(gated(gate, "true"), native_specification="--comment=tpv-job -p debug")
    destination = runner_with(native_specification="--comment=from-destination")
    external_id = destination.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    job = show_job(external_id)
    assert (job["Comment"], job["Partition"]) == ("tpv-job", "debug")
    gate.touch()
    assert events.wait_for(launch.job_id).exit_code == 0
    # this Slurm has no GPUs: its refusal of --gres=gpu:1 shows the count reached sbatch
    with pytest.raises(RunnerError, match="Slurm refused job gt-.*gres"):
        destination.submit(make_launch("true", gpus=1))


def test_refused_submission_is_a_clear_error_without_retries(runner, runner_with, events, make_launch) -> None:
    nowhere = runner_with(partition="nosuchpartition")
    with pytest.raises(RunnerError, match="Slurm refused job gt-.*[Ii]nvalid partition"):
        nowhere.submit(make_launch("true"))
    too_big = make_launch("true", memory_mb=10 ** 8)
    with pytest.raises(RunnerError, match="Requested node configuration is not available|can not be satisfied"):
        runner.submit(too_big)
    assert nowhere.calls["sbatch"] == runner.calls["sbatch"] == 1  # no pointless retries
    good = make_launch("true")  # the runner keeps serving others
    runner.submit(good)
    assert events.wait_for(good.job_id).exit_code == 0


# -- cancellation ------------------------------------------------------------------------------

def test_cancel_running_job(runner, events, make_launch) -> None:
    launch = make_launch("sleep 120")
    external_id = runner.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    runner.cancel(tracked(launch, external_id))
    done = events.wait_for(launch.job_id)
    assert (done.runner_state, done.exit_code, done.external_id) == (None, None, external_id)
    assert done.reason == "the job was cancelled (scancel by galaxy-tasks)"
    runner.cancel(tracked(launch, external_id))  # already gone: quietly accepted
    assert len(events.of(launch.job_id)) == 1


def test_cancel_pending_job_is_reported_although_it_never_ran(runner_with, events, make_launch) -> None:
    holding = runner_with(native_specification="--hold")  # held: never starts
    launch = make_launch("true")
    external_id = holding.submit(launch)
    assert slurm_state(external_id) == "PENDING"
    holding.cancel(tracked(launch, external_id))
    done = events.wait_for(launch.job_id, timeout=30)
    assert (done.runner_state, done.external_id) == (None, external_id)
    assert done.reason == "the job was cancelled (scancel by galaxy-tasks)"
    assert not started(launch)


def test_scancel_by_an_administrator_is_reported_as_such(runner, events, make_launch) -> None:
    launch = make_launch("sleep 120")
    external_id = runner.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    subprocess.run(["scancel", external_id], check=True, timeout=60)  # outside the system
    done = events.wait_for(launch.job_id)
    assert done.runner_state is None  # nothing should run it again
    assert "cancelled outside galaxy-tasks" in done.reason and "administrator" in done.reason


# -- limits enforced by Slurm ------------------------------------------------------------------

def test_walltime_kill_is_reported_as_walltime_reached(runner, events, make_launch) -> None:
    launch = make_launch("sleep 300", walltime_s=1)  # Slurm counts minutes: --time=1
    external_id = runner.submit(launch)
    assert show_job(external_id)["TimeLimit"] == "00:01:00"
    done = events.wait_for(launch.job_id, timeout=150)  # slurmctld checks limits every ~30 s
    assert done.runner_state == WALLTIME_REACHED and "walltime limit" in done.reason
    assert done.signal == signal.SIGTERM and done.exit_code is None
    assert done.source == "runner"  # announced by the batch script's TERM trap, then confirmed
    assert slurm_state(external_id) == "TIMEOUT"


def test_memory_limit_kill_is_reported_as_memory_limit_reached(runner, events, make_launch, slurm) -> None:
    launch = make_launch(MEMORY_HOG, memory_mb=64)
    external_id = runner.submit(launch)
    done = events.wait_for(launch.job_id, timeout=60)
    assert done.runner_state == MEMORY_LIMIT_REACHED, (done, slurm["GT_SLURM_MEMORY_ENFORCEMENT"])
    assert "memory limit" in done.reason and done.signal == signal.SIGKILL
    expected = "OUT_OF_MEMORY" if slurm["GT_SLURM_MEMORY_ENFORCEMENT"] == "cgroup" else "FAILED"
    assert slurm_state(external_id) == expected


def test_memory_limit_kill_by_polling_without_cgroups(runner, events, make_launch, slurm) -> None:
    """The other enforcement ops/slurm-up.sh offers (for hosts without cgroup v1):
    jobacct_gather/linux + OverMemoryKill. slurmstepd SIGKILLs every process of the job,
    the batch script too, so nothing announces the end: status() (reconciliation) finds it,
    Slurm says FAILED (signal 9), and the runner still says memory_limit_reached."""
    switch = subprocess.run([str(REPO / "ops" / "slurm-up.sh")], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "GT_SLURM_MEMORY_ENFORCEMENT": "poll"})
    try:
        assert switch.returncode == 0, switch.stdout + switch.stderr
        launch = make_launch(MEMORY_HOG, memory_mb=64)
        external_id = runner.submit(launch)
        wait_until(lambda: slurm_state(external_id) == "FAILED", 60, "Slurm to kill the job")
        # slurmstepd writes its words a moment after the state turns FAILED (on a loaded
        # machine a status asked in between reports a plain SIGKILL: a known race)
        err = launch.job_dir / "slurm.err"
        wait_until(lambda: err.exists() and "exceeded memory limit" in err.read_text(), 30, "slurmstepd's words")
        done = runner.status([tracked(launch, external_id)])[launch.job_id]
        assert done.runner_state == MEMORY_LIMIT_REACHED and "polling" in done.reason
        assert done.signal == signal.SIGKILL and done.source == "reconcile"
        # the batch script is killed too, or lives just long enough to announce the same end
        assert all(e.runner_state == MEMORY_LIMIT_REACHED for e in events.of(launch.job_id))
        assert "exceeded memory limit" in (launch.job_dir / "slurm.err").read_text()
    finally:
        back = subprocess.run([str(REPO / "ops" / "slurm-up.sh")], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "GT_SLURM_MEMORY_ENFORCEMENT": slurm["GT_SLURM_MEMORY_ENFORCEMENT"]})
        assert back.returncode == 0, back.stdout + back.stderr


def test_node_failure_is_reported_as_such(runner, events, make_launch) -> None:
    launch = make_launch("sleep 120")
    external_id = runner.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    try:
        subprocess.run(["scontrol", "update", "NodeName=localhost", "State=DOWN", "Reason=gt-test-node-failure"],
                       check=True, timeout=60)
        done = events.wait_for(launch.job_id, timeout=60)
        # the cluster's doing, not the job's: Galaxy's unknown_error, which a resubmission may cure
        assert done.runner_state == UNKNOWN_ERROR and "NODE_FAIL" in done.reason
        assert slurm_state(external_id) == "NODE_FAIL"  # --no-requeue: not run again
    finally:
        if not node_state().startswith(("idle", "mixed", "allocated")):
            subprocess.run(["scontrol", "update", "NodeName=localhost", "State=RESUME"], timeout=60)
        wait_until(lambda: node_state().startswith(("idle", "mixed", "allocated")), what="the node back")


# -- announcements are hints -----------------------------------------------------------------

def test_forged_announcements_change_nothing(runner, events, make_launch, tmp_path) -> None:
    gate = tmp_path / "gate"
    launch = make_launch(gated(gate, "exit 0"))
    external_id = runner.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    before = runner.calls
    # a stranger who does not know the token: dropped without asking Slurm anything
    announce(runner.address, f"gt-end {launch.job_id} {external_id} 0 {'0' * 32}")
    announce(runner.address, "GET / HTTP/1.0")
    announce(runner.address, "x" * 1000)
    wait_until(lambda: heard(runner) == 3, what="the three lines to be heard")
    assert runner.listener_stats == {"bad_token": 1, "malformed": 2}
    assert runner.calls == before
    # the job itself (it can read its batch script) announcing its end early: Slurm disagrees
    announce(runner.address, f"gt-end {launch.job_id} {external_id} 0 {token_of(launch)}")
    wait_until(lambda: runner.calls["squeue"] > before["squeue"], what="the runner to ask Slurm")
    assert slurm_state(external_id) == "RUNNING"
    assert events.of(launch.job_id) == []
    gate.touch()
    done = events.wait_for(launch.job_id)
    assert done.exit_code == 0 and len(events.of(launch.job_id)) == 1


def test_duplicated_announcements_are_reported_once(runner, events, make_launch, tmp_path) -> None:
    gate = tmp_path / "gate"
    launch = make_launch(gated(gate))
    external_id = runner.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    line = f"gt-end {launch.job_id} {external_id} 0 {token_of(launch)}"
    gate.touch()
    for _ in range(3):  # copies around the job's own announcement
        announce(runner.address, line)
    done = events.wait_for(launch.job_id)
    assert done.exit_code == 0
    for _ in range(3):  # and late copies, after the report
        announce(runner.address, line)
    wait_until(lambda: heard(runner) == 7, what="all seven announcements to be heard")
    assert len(events.of(launch.job_id)) == 1
    stats = runner.listener_stats
    assert stats.get("early", 0) >= 3  # no longer followed: nothing asked, nothing reported


def test_lost_announcement_is_recovered_by_status(slurm, events, make_launch, tmp_path) -> None:
    gate = tmp_path / "gate"
    launch = make_launch(gated(gate, "exit 4"))
    first = SlurmRunner(runner_params(tmp_path), events)
    external_id = first.submit(launch)
    address = first.address
    wait_until(lambda: started(launch), what="the job to start")
    first.close()  # nobody listens when the job ends
    gate.touch()
    wait_until(lambda: slurm_state(external_id) == "FAILED", what="the job to end in Slurm")
    assert events.of(launch.job_id) == []
    second = SlurmRunner(runner_params(tmp_path), events)
    try:
        assert second.address == address  # the state file gave it the same port
        result = second.status([tracked(launch, external_id)])
        assert result[launch.job_id].exit_code == 4 and result[launch.job_id].external_id == external_id
        assert second.calls == {"squeue": 1}
        assert events.of(launch.job_id) == []  # status() answers; reconciliation reports
    finally:
        second.close()


def test_restarted_runner_hears_jobs_submitted_before(slurm, events, make_launch, tmp_path) -> None:
    gate = tmp_path / "gate"
    launch = make_launch(gated(gate, "exit 6"))
    first = SlurmRunner(runner_params(tmp_path), events)
    external_id = first.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    first.close()
    second = SlurmRunner(runner_params(tmp_path), events)
    try:
        second.recover([tracked(launch, external_id)])  # still running: followed again
        assert events.of(launch.job_id) == []
        calls = second.calls
        gate.touch()
        done = events.wait_for(launch.job_id)
        assert (done.exit_code, done.source) == (6, "runner")  # heard, not reconciled
        # its confirmation: one squeue, or a few more if Slurm had not recorded the end yet
        assert 1 <= second.calls["squeue"] - calls["squeue"] <= 3 and second.listener_stats == {"accepted": 1}
    finally:
        second.close()


def test_status_of_many_jobs_is_one_slurm_command(runner, events, make_launch, tmp_path) -> None:
    gate = tmp_path / "gate"
    quick = [make_launch(f"exit {i}") for i in range(6)]
    slow = [make_launch(gated(gate)) for _ in range(2)]
    jobs = {launch.job_id: tracked(launch, runner.submit(launch)) for launch in quick + slow}
    for launch in quick:
        events.wait_for(launch.job_id)
    before = runner.calls
    result = runner.status(list(jobs.values()))
    assert runner.calls - before == {"squeue": 1}
    assert [result[launch.job_id].exit_code for launch in quick] == list(range(6))
    assert all(result[launch.job_id].external_id == jobs[launch.job_id].external_id for launch in quick)
    assert [result[launch.job_id] for launch in slow] == [None, None]
    gate.touch()
    for launch in slow:
        assert events.wait_for(launch.job_id).exit_code == 0


def test_jobcomp_record_knows_jobs_squeue_has_forgotten(runner, events, make_launch) -> None:
    launch = make_launch("exit 5")
    external_id = runner.submit(launch)
    events.wait_for(launch.job_id)
    wait_until(lambda: runner.records.jobcomp_jobs({external_id}, set(), 0), what="the jobcomp record")
    by_id = runner.records.jobcomp_jobs({external_id}, set(), 0)[external_id]
    by_name = runner.records.jobcomp_jobs(set(), {launch.external_name}, 0)[launch.external_name]
    assert by_id == by_name
    assert (by_id.state, by_id.exit_code, by_id.name, by_id.source) == ("FAILED", 5, launch.external_name, "jobcomp")


def test_files_a_job_left_are_read_without_following_links_or_blocking(runner, events, make_launch,
                                                                      tmp_path) -> None:
    launch = make_launch("exit 3")
    external_id = runner.submit(launch)
    assert events.wait_for(launch.job_id).exit_code == 3
    exit_code = launch.job_dir / "exit_code"
    forged = tmp_path / "zero"
    forged.write_text("0\n")
    exit_code.unlink()
    exit_code.symlink_to(forged)  # a link to a file saying "success"
    assert runner.status([tracked(launch, external_id)])[launch.job_id].exit_code == 3  # Slurm's word
    exit_code.unlink()
    os.mkfifo(exit_code)  # a FIFO nobody writes: opening it for reading must not block
    began = time.monotonic()
    assert runner.status([tracked(launch, external_id)])[launch.job_id].exit_code == 3
    assert time.monotonic() - began < 30  # bounded (a blocked read would wait forever), on a busy machine too


# -- idempotent submission -------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from galaxy_tasks.runners.base import Launch
    from galaxy_tasks.runners.slurm import SlurmRunner
    runner = SlurmRunner(json.loads(sys.argv[2]), lambda completion: None)
    for job_id, root in json.loads(sys.argv[1]).items():
        runner.submit(Launch(job_id, Path(root), Path(root) / "job.sh"))
    os._exit(0)  # not reached with the crash point set
    """
)


def submit_and_crash(launch: Launch, params: dict, crash_dir: Path) -> subprocess.CompletedProcess:
    """Submit from another process that SIGKILLs itself right after sbatch returned,
    before anything recorded Slurm's id."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "GALAXY_TASKS_CRASH_POINTS": "slurm_submitted",
           "GALAXY_TASKS_CRASH_DIR": str(crash_dir)}
    return subprocess.run([sys.executable, "-c", CHILD, json.dumps({launch.job_id: str(launch.job_dir)}),
                           json.dumps(params)], capture_output=True, text=True, timeout=120, env=env)


def test_crash_between_sbatch_and_recording_runs_the_command_once(slurm, events, make_launch, tmp_path) -> None:
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    launch = make_launch(gated(gate, ledger_command(ledger)))
    params = runner_params(tmp_path)
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    child = submit_and_crash(launch, params, crash_dir)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert (launch.job_dir / SUBMIT_MARKER).read_text() == "submitting\n"  # Slurm's id never written
    # the worker restarted (same state file: same port) and the launch is redelivered
    runner = SlurmRunner(params, events)
    try:
        wait_until(lambda: started(launch), what="the crashed attempt's job to start")
        external_id = runner.submit(launch)
        assert runner.calls["sbatch"] == 0 and runner.calls["squeue"] == 1  # found by name
        assert show_job(external_id)["JobName"] == launch.external_name
        gate.touch()
        done = events.wait_for(launch.job_id)
        assert (done.exit_code, done.external_id) == (0, external_id)
        # redelivered once more after the job ended (marker as the crash left it): found again
        (launch.job_dir / SUBMIT_MARKER).write_text("submitting\n")
        assert runner.submit(launch) == external_id
        assert runner.calls["sbatch"] == 0
        assert ledger_counts(ledger) == {launch.job_id: 1}
    finally:
        runner.close()


def test_crashed_attempt_whose_job_ended_is_heard_before_the_redelivery(slurm, events, make_launch,
                                                                        tmp_path) -> None:
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    launch = make_launch(gated(gate, ledger_command(ledger)))
    params = runner_params(tmp_path)
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    assert submit_and_crash(launch, params, crash_dir).returncode == -signal.SIGKILL
    runner = SlurmRunner(params, events)  # the restarted worker: on the crashed process's port
    try:
        gate.touch()
        # the end is heard before the launch is redelivered: kept, not believed, not reported
        wait_until(lambda: runner.listener_stats.get("early") == 1, what="the announcement")
        assert events.of(launch.job_id) == [] and runner.calls == {}
        external_id = runner.submit(launch)  # the redelivered launch adopts the ended job
        done = events.wait_for(launch.job_id, timeout=30)
        assert (done.exit_code, done.external_id) == (0, external_id)
        assert runner.calls["sbatch"] == 0
        assert ledger_counts(ledger) == {launch.job_id: 1}
    finally:
        runner.close()


def _only_job_named(name: str) -> str:
    out = subprocess.run(["squeue", "--noheader", "--states=all", f"--name={name}", "-o", "%i"],
                         capture_output=True, text=True, timeout=60).stdout.split()
    assert len(out) == 1, out
    return out[0]


def test_duplicate_copy_stands_down(runner, events, make_launch, tmp_path) -> None:
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    launch = make_launch(gated(gate, ledger_command(ledger)))
    original = runner.submit(launch)
    wait_until(lambda: started(launch), what="the job to start")
    (launch.job_dir / SUBMIT_MARKER).unlink()  # as if the marker were lost: a second copy
    duplicate = runner.submit(launch)
    assert duplicate != original
    wait_until(lambda: slurm_state(duplicate) == "FAILED", what="the duplicate to stand down")
    gate.touch()
    done = events.wait_for(launch.job_id)
    assert (done.exit_code, done.external_id) == (0, original)
    # reconciliation asked about the duplicate finds the original's end
    assert runner.status([tracked(launch, duplicate)])[launch.job_id].external_id == original
    assert [c.external_id for c in events.of(launch.job_id)] == [original]
    assert ledger_counts(ledger) == {launch.job_id: 1}


# -- faults of Slurm itself --------------------------------------------------------------------

def test_slurmctld_restart_while_jobs_run(runner, events, make_launch, tmp_path) -> None:
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    launches = [make_launch(gated(gate, ledger_command(ledger))) for _ in range(3)]
    ids = {launch.job_id: runner.submit(launch) for launch in launches}
    for launch in launches:
        wait_until(lambda: started(launch), what="the jobs to start")
    late = make_launch(ledger_command(ledger))
    submitted: dict[str, str] = {}
    stop_slurmctld()
    try:
        gate.touch()  # the jobs end while the controller is down: their announcements are heard,
        for launch in launches:  # but Slurm cannot confirm them yet
            wait_until(lambda: (launch.job_dir / "exit_code").exists(), what="the jobs to end")
        wait_until(lambda: runner.listener_stats.get("accepted") == 3, what="the announcements")
        # a submission while the controller is down waits (retries) until it is back
        thread = threading.Thread(target=lambda: submitted.update(id=runner.submit(late)))
        thread.start()
        assert all(not events.of(launch.job_id) for launch in launches)
    finally:
        start_slurm()
    thread.join(120)
    assert "id" in submitted
    for launch in launches:
        done = events.wait_for(launch.job_id, timeout=120)  # slurmstepd retries its RPC every ~15 s
        assert (done.exit_code, done.external_id) == (0, ids[launch.job_id])
    assert events.wait_for(late.job_id, timeout=60).exit_code == 0
    assert all(len(events.of(launch.job_id)) == 1 for launch in [*launches, late])
    assert ledger_counts(ledger) == {launch.job_id: 1 for launch in [*launches, late]}


SHIM = """#!/bin/bash
# a {name} that hangs on its first {hangs} call(s){after}
n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}
if [ $n -le {hangs} ]; then
  {before}sleep {sleep}
fi
exec {real} "$@"
"""


def make_shim(directory: Path, name: str, hangs: int, *, submit_first: bool = False) -> Path:
    """A command on PATH that hangs (sleeps far past the runner's timeout) a few times."""
    directory.mkdir(exist_ok=True)
    real = subprocess.run(["bash", "-c", f"command -v {name}"], capture_output=True, text=True).stdout.strip()
    counter = directory / f"{name}.calls"
    before = f'{real} "$@" >/dev/null; ' if submit_first else ""
    shim = directory / name
    shim.write_text(SHIM.format(name=name, hangs=hangs, counter=counter, real=real, before=before, sleep=3017,
                                after=" (after it submitted: its answer is lost)" if submit_first else ""))
    shim.chmod(0o755)
    return counter


def no_sleeper_left() -> bool:
    return subprocess.run(["pgrep", "-f", "sleep 3017"], capture_output=True).returncode != 0


def test_hanging_sbatch_is_bounded_and_retried(slurm, events, make_launch, tmp_path, monkeypatch) -> None:
    shims = tmp_path / "bin"
    counter = make_shim(shims, "sbatch", hangs=1)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    runner = SlurmRunner(runner_params(tmp_path, command_timeout_s=2, command_backoff_s=0.2), events)
    try:
        launch = make_launch("true")
        began = time.monotonic()
        external_id = runner.submit(launch)
        took = time.monotonic() - began
        # one timeout, one back-off, one lookup, one sbatch: not the hung command's 3017 s, even on a busy machine
        assert 2 <= took < 30, took
        assert counter.read_text().strip() == "2" and runner.calls["sbatch"] == 2
        assert runner.calls["squeue"] == 1  # looked for the job before submitting again
        assert events.wait_for(launch.job_id).external_id == external_id
        assert wait_until(no_sleeper_left, 10, "the hung command's children to be killed")
    finally:
        runner.close()


def test_sbatch_that_submitted_then_hung_does_not_submit_twice(slurm, events, make_launch, tmp_path,
                                                               monkeypatch) -> None:
    ledger = tmp_path / "ledger"
    shims = tmp_path / "bin"
    counter = make_shim(shims, "sbatch", hangs=1, submit_first=True)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    runner = SlurmRunner(runner_params(tmp_path, command_timeout_s=2, command_backoff_s=0.2), events)
    try:
        launch = make_launch(ledger_command(ledger, "sleep 1"))
        external_id = runner.submit(launch)
        assert counter.read_text().strip() == "1"  # the retry found the job instead of submitting
        assert _only_job_named(launch.external_name) == external_id
        assert events.wait_for(launch.job_id).exit_code == 0
        assert ledger_counts(ledger) == {launch.job_id: 1}
    finally:
        runner.close()


def test_commands_that_always_hang_fail_in_bounded_time(slurm, events, make_launch, tmp_path,
                                                        monkeypatch) -> None:
    shims = tmp_path / "bin"
    make_shim(shims, "sbatch", hangs=99)
    make_shim(shims, "squeue", hangs=99)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    runner = SlurmRunner(runner_params(tmp_path, command_timeout_s=1, command_retries=1, command_backoff_s=0.1),
                         events)
    try:
        launch = make_launch("true")
        began = time.monotonic()
        # not the job's fault: RunnerUnavailable, so the launch step is retried, the job not failed
        with pytest.raises(RunnerUnavailable, match="did not accept job .* after 2 attempts: sbatch .*did not end "
                                                    "within 1s"):
            runner.submit(launch)
        assert time.monotonic() - began < 30  # the commands hang for 3017 s
        began = time.monotonic()
        with pytest.raises(RunnerUnavailable, match="squeue .*did not end within 1s"):
            runner.status([Tracked(launch.job_id, "1", launch.job_dir)])
        assert time.monotonic() - began < 30
        assert runner.calls["sbatch"] == 2
        assert wait_until(no_sleeper_left, 10, "the hung commands' children to be killed")
    finally:
        runner.close()
