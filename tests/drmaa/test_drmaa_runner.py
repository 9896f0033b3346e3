"""DrmaaRunner against the real Grid Engine cell (see conftest.py for the command line)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.runners.base import Launch, Tracked
from galaxy_tasks.runners.drmaa import SUBMIT_MARKER, DrmaaParams, DrmaaRunner, native_specification

pytestmark = pytest.mark.drmaa
REPO = Path(__file__).resolve().parents[2]


def tracked(launch: Launch, external_id: str) -> Tracked:
    return Tracked(launch.job_id, external_id, launch.job_dir)


def wait_until(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_native_specification_mapping(make_launch) -> None:
    launch = make_launch("true", cores=4, memory_mb=1000, walltime_s=3725)
    assert native_specification(launch, DrmaaParams()) == "-l h_rt=1:02:05"
    assert native_specification(launch, DrmaaParams(parallel_environment="smp", memory_resource="h_vmem",
                                                    native_specification="-q all.q")) == \
        "-l h_rt=1:02:05 -pe smp 4 -l h_vmem=250M -q all.q"
    assert native_specification(launch, DrmaaParams(memory_resource="mem_free")) == \
        "-l h_rt=1:02:05 -l mem_free=1000M"


def test_success_reports_exit_zero_and_usage_without_spinning(runner, events, make_launch) -> None:
    launch = make_launch("echo hello")
    external_id = runner.submit(launch)
    done = events.wait_for(launch.job_id)
    assert (done.exit_code, done.signal, done.reason, done.external_id) == (0, None, None, external_id)
    assert done.wall_time_s is not None and done.max_rss_kb and done.max_rss_kb > 0
    assert JobDir(launch.job_dir).tail("stdout") == "hello\n"
    assert (launch.job_dir / "drm.out").exists()
    waits = runner.calls["wait"]
    time.sleep(3 * runner.wait_timeout_s)  # no job left: the wait thread must block
    assert runner.calls["wait"] <= waits + 1
    assert runner.calls["runJob"] == 1 and runner.calls["qstat"] == 0


def test_exit_code_three(runner, events, make_launch) -> None:
    launch = make_launch("echo oops >&2; exit 3")
    runner.submit(launch)
    done = events.wait_for(launch.job_id)
    assert (done.exit_code, done.signal, done.reason) == (3, None, None)
    assert JobDir(launch.job_dir).tail("stderr") == "oops\n"


def test_killed_by_signal(runner, events, make_launch) -> None:
    launch = make_launch("kill -TERM $PPID; sleep 30")  # the job script itself dies
    runner.submit(launch)
    done = events.wait_for(launch.job_id)
    assert done.signal == signal.SIGTERM and done.exit_code is None
    assert "SIGTERM" in done.reason


def test_walltime_maps_to_h_rt_and_kills(runner, events, make_launch) -> None:
    launch = make_launch("sleep 60", walltime_s=2)
    runner.submit(launch)
    done = events.wait_for(launch.job_id)
    assert done.signal == signal.SIGKILL and done.exit_code is None


def test_cancel_running_job_is_reported_aborted(runner, events, make_launch) -> None:
    launch = make_launch("sleep 120")
    external_id = runner.submit(launch)
    wait_until(lambda: JobDir(launch.job_dir).claimed_pid() is not None, what="job start")
    runner.cancel(tracked(launch, external_id))
    done = events.wait_for(launch.job_id)
    assert done.exit_code is None and "aborted" in done.reason and done.external_id == external_id
    runner.cancel(tracked(launch, external_id))  # already gone: quietly accepted


def test_cancel_queued_job_no_usage_information(runner_with, events, make_launch) -> None:
    runner = runner_with(native_specification="-h")  # held: never starts
    launch = make_launch("true")
    external_id = runner.submit(launch)
    runner.cancel(tracked(launch, external_id))
    done = events.wait_for(launch.job_id)
    assert done.external_id == external_id and "before it ran" in done.reason
    assert JobDir(launch.job_dir).claimed_pid() is None


def test_rejected_native_specification(runner, runner_with, events, make_launch) -> None:
    bad = make_launch("true")
    refusing = runner_with(native_specification="-l no_such_resource=1")
    before = refusing.calls["runJob"]
    with pytest.raises(RunnerError) as error:
        refusing.submit(bad)
    assert 'unknown resource "no_such_resource"' in str(error.value)
    assert refusing.calls["runJob"] - before == 1  # no pointless retries
    good = make_launch("true")  # the session keeps serving others
    runner.submit(good)
    assert events.wait_for(good.job_id).exit_code == 0


def test_a_jobs_own_options_and_gpus_reach_grid_engine(runner, runner_with, events, make_launch) -> None:
    launch = make_launch("sleep 120", native_specification="-q all.q -l h_fsize=1G")
    external_id = runner.submit(launch)
    shown = subprocess.run(["qstat", "-j", external_id], capture_output=True, text=True, timeout=60).stdout
    assert "all.q" in shown and "h_fsize=1G" in shown
    runner.cancel(tracked(launch, external_id))
    assert events.wait_for(launch.job_id).external_id == external_id
    # this cell has no GPU resource: its refusal shows the count reached the submission
    with pytest.raises(RunnerError, match='unknown resource "gpu"'):
        runner_with(gpu_resource="gpu").submit(make_launch("true", gpus=1))


def test_submit_is_idempotent(runner, events, make_launch, tmp_path) -> None:
    ledger = tmp_path / "ledger"
    launch = make_launch(f"echo ran >> {ledger}; sleep 2")
    first = runner.submit(launch)
    assert runner.submit(launch) == first  # id recorded in the job dir
    # a crash between "the DRM accepted it" and "we recorded its id": found by name in qstat
    (launch.job_dir / SUBMIT_MARKER).write_text("submitting\n")
    assert runner.submit(launch) == first
    done = events.wait_for(launch.job_id)
    assert done.exit_code == 0 and done.external_id == first
    # ... and once it has ended: found by name in the accounting file
    (launch.job_dir / SUBMIT_MARKER).write_text("submitting\n")
    time.sleep(1.5)
    assert runner.submit(launch) == first
    assert ledger.read_text() == "ran\n"
    assert runner.calls["runJob"] == 1
    assert len(events.of(launch.job_id)) <= 2  # re-adopting an ended job may report it again


def test_duplicate_copy_stands_down(runner, events, make_launch, tmp_path) -> None:
    ledger = tmp_path / "ledger"
    launch = make_launch(f"echo ran >> {ledger}; sleep 3")
    original = runner.submit(launch)
    wait_until(lambda: JobDir(launch.job_dir).claimed_pid() is not None, what="job start")
    (launch.job_dir / SUBMIT_MARKER).unlink()  # as if the marker were lost: a second copy
    duplicate = runner.submit(launch)
    assert duplicate != original
    done = events.wait_for(launch.job_id)
    assert (done.exit_code, done.external_id) == (0, original)
    time.sleep(2)
    assert [c.external_id for c in events.of(launch.job_id)] == [original]
    assert ledger.read_text() == "ran\n"


def test_status_of_many_jobs_in_one_batch(runner, events, make_launch) -> None:
    quick = [make_launch(f"exit {i}") for i in range(4)]
    slow = [make_launch("sleep 120") for _ in range(2)]
    jobs = {launch.job_id: tracked(launch, runner.submit(launch)) for launch in quick + slow}
    for launch in quick:
        events.wait_for(launch.job_id)
    before = dict(runner.calls)
    result = runner.status(list(jobs.values()))
    assert runner.calls["qstat"] - before.get("qstat", 0) == 1
    assert runner.calls["accounting"] - before.get("accounting", 0) == 1
    assert [result[launch.job_id].exit_code for launch in quick] == [0, 1, 2, 3]
    assert all(result[launch.job_id].external_id == jobs[launch.job_id].external_id for launch in quick)
    assert [result[launch.job_id] for launch in slow] == [None, None]
    for launch in slow:
        runner.cancel(jobs[launch.job_id])
    for launch in slow:
        events.wait_for(launch.job_id)


CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from galaxy_tasks.runners.base import Launch
    from galaxy_tasks.runners.drmaa import DrmaaRunner
    runner = DrmaaRunner(json.loads(sys.argv[2]), lambda completion: None)
    ids = {}
    for job_id, root in json.loads(sys.argv[1]).items():
        ids[job_id] = runner.submit(Launch(job_id, Path(root), Path(root) / "job.sh"))
    print(json.dumps({"contact": runner.contact, "ids": ids}), flush=True)
    os._exit(0)  # die without closing the session
    """
)


def submit_and_die(launches: list[Launch], params: dict | None = None) -> dict:
    """Submit from another process that then dies with its session open."""
    arg = json.dumps({launch.job_id: str(launch.job_dir) for launch in launches})
    proc = subprocess.run([sys.executable, "-c", CHILD, arg, json.dumps(params or {})], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def in_accounting(external_id: str) -> bool:
    return subprocess.run(["qacct", "-j", external_id], capture_output=True).returncode == 0


def test_reattach_follows_running_jobs_and_finds_ended_ones(sge, events, make_launch, tmp_path) -> None:
    running = make_launch("sleep 6; exit 5")
    ended = make_launch("exit 4")
    contact_file = tmp_path / "state" / "drmaa.contact"
    child = submit_and_die([running, ended], {"contact_file": str(contact_file)})
    assert contact_file.read_text().strip() == child["contact"]
    wait_until(lambda: in_accounting(child["ids"][ended.job_id]), what="the quick job's accounting record")
    assert JobDir(running.job_dir).recorded_exit_code() is None
    runner = DrmaaRunner({"contact_file": str(contact_file)}, events)
    try:
        assert runner.reattached and runner.contact == child["contact"]
        runner.recover([tracked(running, child["ids"][running.job_id]), tracked(ended, child["ids"][ended.job_id])])
        finished = events.wait_for(ended.job_id, timeout=5)
        assert (finished.exit_code, finished.external_id) == (4, child["ids"][ended.job_id])
        assert finished.wall_time_s is not None and finished.source == "reconcile"
        later = events.wait_for(running.job_id)
        assert (later.exit_code, later.source) == (5, "runner")  # from wait-any, not a record
        time.sleep(1)
        assert len(events.items) == 2
    finally:
        runner.close()


def test_job_that_ended_while_detached_is_reported_from_accounting(sge, events, make_launch) -> None:
    launch = make_launch("kill -KILL $PPID")  # leaves no exit_code file: only the DRM knows
    external_id = submit_and_die([launch])["ids"][launch.job_id]
    wait_until(lambda: subprocess.run(["qstat", "-j", external_id], capture_output=True).returncode != 0,
               what="the job to leave qstat")
    runner = DrmaaRunner({}, events)  # a new session, not a re-attached one
    try:
        assert not runner.reattached
        runner.recover([Tracked(launch.job_id, external_id, launch.job_dir)])
        done = events.wait_for(launch.job_id, timeout=10)
        assert (done.signal, done.exit_code, done.external_id) == (signal.SIGKILL, None, external_id)
        assert runner.calls["qstat"] == 1 and runner.calls["accounting"] <= 2
    finally:
        runner.close()


def test_contact_file_in_use_by_a_live_process_is_not_shared(sge, events, tmp_path) -> None:
    contact_file = tmp_path / "drmaa.contact"
    contact_file.write_text("session=somebody.else\n")
    holder = subprocess.Popen(["flock", str(contact_file), "sleep", "60"])
    try:
        wait_until(lambda: subprocess.run(["flock", "-n", str(contact_file), "true"]).returncode != 0,
                   what="the lock")
        runner = DrmaaRunner({"contact_file": str(contact_file)}, events)
        try:
            assert not runner.reattached and runner.contact != "session=somebody.else"
        finally:
            runner.close()
        assert contact_file.read_text() == "session=somebody.else\n"
    finally:
        holder.kill()
        holder.wait()


def test_runners_of_one_process_share_the_session(sge, make_launch, new_events) -> None:
    first_events, second_events = new_events(), new_events()
    first = DrmaaRunner({"wait_timeout_s": 1}, first_events)
    second = DrmaaRunner({"native_specification": "-q all.q"}, second_events)
    try:
        assert first.contact == second.contact
        a, b = make_launch("exit 1"), make_launch("exit 2")
        first.submit(a)
        second.submit(b)
        assert second_events.wait_for(b.job_id).exit_code == 2
        assert first_events.wait_for(a.job_id).exit_code == 1
        assert not first_events.of(b.job_id) and not second_events.of(a.job_id)
        first.close()
        c = make_launch("exit 3")
        second.submit(c)  # the session stays open for the runner left
        assert second_events.wait_for(c.job_id).exit_code == 3
    finally:
        first.close()
        second.close()


def test_denied_submission_is_retried_with_backoff(runner_with, events, make_launch, monkeypatch) -> None:
    import drmaa

    runner = runner_with(submit_backoff_s=0.2)
    session = runner._session.session
    real, attempts = session.runJob, []

    def refused_twice(template):
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            raise drmaa.errors.DeniedByDrmException("code 17: job rejected: qmaster is busy")
        return real(template)

    monkeypatch.setattr(session, "runJob", refused_twice)
    launch = make_launch("true")
    runner.submit(launch)
    assert events.wait_for(launch.job_id).exit_code == 0
    assert len(attempts) == 3 and attempts[1] - attempts[0] >= 0.2 and attempts[2] - attempts[1] >= 0.4

    def always_refused(template):
        raise drmaa.errors.DeniedByDrmException("code 17: job rejected: qmaster is busy")

    monkeypatch.setattr(session, "runJob", always_refused)
    impatient = runner_with(submit_backoff_s=0.01, submit_retries=2)
    before = impatient.calls["runJob"]
    with pytest.raises(RunnerError, match="qmaster is busy"):
        impatient.submit(make_launch("true"))
    assert impatient.calls["runJob"] - before == 3
