"""SIGKILL of worker processes at the worst moments of a job's life."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from galaxy_tasks.jobdir import JobDir
from tests.faults.checks import assert_exactly_once, gated, ledger_command
from tests.support.processes import alive

pytestmark = [pytest.mark.faults, pytest.mark.both_brokers]


def _crashing(make_deployment, tmp_path, point: str):
    return make_deployment(GALAXY_TASKS_CRASH_POINTS=point, GALAXY_TASKS_CRASH_DIR=str(tmp_path),
                           GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_CHECK_AFTER="3",
                           GALAXY_TASKS_CHECK_AFTER_MAX="5")


@pytest.mark.parametrize("point", ["prepare", "launch", "finish"])
def test_sigkill_of_the_pool_process_mid_step(make_deployment, tmp_path, point):
    """The pool process dies: during prepare (job dir written, state not), right after the
    runner launched the command but before the launch was recorded, and right after finish
    recorded the end (one atomic statement) but before its message was acknowledged. The
    step's message is redelivered (late ack, reject on
    worker loss) and the job completes, its command run once."""
    deployment = _crashing(make_deployment, tmp_path, point)
    ledger = tmp_path / "ledger"
    deployment.worker()
    deployment.beat()
    ids = [deployment.submit(ledger_command(ledger, "sleep 0.2"), f"crash_{point}") for _ in range(4)]
    deployment.wait_terminal(ids, timeout=120)

    def crashes() -> int:
        return len(list(tmp_path.glob(f"crashed-{point}-*")))

    # finish's crash point comes after its record: a job can be terminal a moment before
    # its marker exists
    deployment.wait_until(lambda: crashes() >= len(ids), timeout=30, what="every job's crash")
    assert crashes() == len(ids), "every job passed the crash point once"
    assert "WorkerLostError" in deployment.logs() or "SIGKILL" in deployment.logs()
    assert_exactly_once(deployment, ids, ledger, f"SIGKILL during {point}", extra=f"crashes={crashes()}")


def test_a_launch_whose_whole_worker_died_is_taken_over_after_the_lease(make_deployment, tmp_path):
    """A solo worker runs the launch in its main process: SIGKILLed right after the runner
    started the command, nothing requeues its message (the broker holds it, unacknowledged,
    for its visibility timeout). Reconciliation takes the launch over once the launch lease
    is up (3 s here), not after CHECK_AFTER (300 s), and the command runs once."""
    deployment = make_deployment(GALAXY_TASKS_CRASH_POINTS="launch", GALAXY_TASKS_CRASH_DIR=str(tmp_path),
                                 GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_LAUNCH_LEASE="3")
    ledger = tmp_path / "ledger"
    deployment.worker("galaxy_tasks", "steps@%h")
    doomed = deployment.worker("local", "local1@%h", "--pool", "solo")
    deployment.beat()
    job_id = deployment.submit(ledger_command(ledger, "sleep 0.2"), "orphaned_launch")
    deployment.wait_until(lambda: doomed.proc.poll() is not None, 60, "the launching worker killed itself")
    killed_at = time.monotonic()
    deployment.worker("local", "local2@%h", "--pool", "solo")  # a worker of the queue, not the dead one
    [job] = deployment.wait_terminal([job_id], timeout=120)
    # CHECK_AFTER is 300 s: well under it is the lease, with room for a machine busy with other tests
    assert job.state == "ok" and time.monotonic() - killed_at < 120, "taken over after the lease, not CHECK_AFTER"
    assert "launch_takeover" in deployment.logs()
    assert_exactly_once(deployment, [job_id], ledger, "whole worker SIGKILLed mid-launch",
                        extra=f"recovered_after_s={time.monotonic() - killed_at:.1f}")


def test_sigkill_of_the_whole_worker_during_the_run(deployment, tmp_path):
    """The worker (main process and pool) dies while jobs run; the jobs, in sessions of
    their own, go on, and a new worker follows them again from the database."""
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    worker = deployment.worker()
    ids = [deployment.submit(ledger_command(ledger, gated(gate)), "long") for _ in range(3)]
    deployment.wait_until(lambda: all(deployment.job(i).state == "running" for i in ids), what="running")
    worker.kill(signal.SIGKILL)
    deployment.worker(None, "w-restarted@%h")
    gate.touch()
    deployment.wait_terminal(ids, timeout=60)
    assert "event=recovered_jobs" in deployment.logs()
    assert_exactly_once(deployment, ids, ledger, "SIGKILL of worker during run")


def test_lost_completion_event_is_found_by_reconciliation(make_deployment, tmp_path):
    """The process holding a job's exit watcher dies while the worker lives on: nobody will
    ever send the completion event. Reconciliation finds the overdue job and finishes it."""
    deployment = make_deployment(GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_CHECK_AFTER="2",
                                 GALAXY_TASKS_CHECK_AFTER_MAX="4")
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    deployment.worker()
    deployment.beat()
    # held open until its watcher is gone (a job of a fixed length could end before a loaded
    # host's test even saw it running, and be finished by its own event)
    job_id = deployment.submit(ledger_command(ledger, gated(gate)), "orphaned")
    deployment.wait_until(lambda: deployment.job(job_id).state == "running", timeout=120, what="running")
    pid = int(deployment.job(job_id).external_id.split(":")[1])
    with open(f"/proc/{pid}/stat") as handle:
        spawner = int(handle.read().rsplit(")", 1)[1].split()[1])
    os.kill(spawner, signal.SIGKILL)  # the pool process that launched the job and watches it
    gate.touch()
    exit_file = deployment.tmp / "jobs" / job_id / "exit_code"
    deployment.wait_until(exit_file.exists, timeout=30, what="job end")
    ended = exit_file.stat().st_mtime
    [job] = deployment.wait_terminal([job_id], timeout=60)
    found_after = job.finished_at.timestamp() - ended
    # the check logs its line after it has recorded the end: wait for it, do not race it
    deployment.wait_until(lambda: "event=reconcile_check" in deployment.logs(), timeout=10,
                          what="reconciliation's check in the worker's log")
    assert found_after < 30, f"reconciliation took {found_after:.1f} s"  # CHECK_AFTER's default is 300 s
    assert_exactly_once(deployment, [job_id], ledger, "lost completion event",
                        extra=f"found_after_s={found_after:.1f} (interval 1 s, check_after 2 s)")


def test_cancel_racing_with_completion(deployment, tmp_path):
    """Jobs end one after another while cancels sweep across them from the other end: some
    cancels come first, some too late, some race the completion event. Each job ends either
    ok or deleted, exactly once, whichever step won the compare-and-set."""
    from celery import Celery

    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    deployment.worker()
    # after the gate, job i ends ~0.1 s apart from the next; cancels sweep the other way
    ids = [deployment.submit(ledger_command(ledger, gated(gate, f"sleep {0.1 * i:.1f}")), "racer")
           for i in range(12)]
    deployment.wait_until(lambda: all(deployment.job(i).state == "running" for i in ids), what="running")
    client = Celery(broker=deployment.env["GALAXY_TASKS_BROKER_URL"])
    gate.touch()  # the jobs notice within 0.2 s
    for job_id in reversed(ids):
        client.send_task("galaxy_tasks.cancel_job", args=[job_id], queue="galaxy_tasks")
        time.sleep(0.1)
    jobs = deployment.wait_terminal(ids)
    pids = [JobDir(Path(job.job_dir)).claimed_pid() for job in jobs if Path(job.job_dir, "claim").exists()]
    deployment.wait_until(lambda: not any(alive(pid) for pid in pids), what="every job process ended")
    deployment.wait_consumed()  # late completion events must not change a cancelled job
    states = [deployment.job(i).state for i in ids]
    assert states.count("ok") and states.count("deleted"), f"no race happened: {states}"
    assert_exactly_once(deployment, ids, ledger, "cancel racing completion",
                        expect=frozenset({"ok", "deleted"}),
                        extra=f"ok={states.count('ok')} deleted={states.count('deleted')}")
