"""Jobs on the real Grid Engine cell through the whole system: real Redis and PostgreSQL, a
steps worker, DRMAA workers started the documented way (`celery -A workers.drmaa worker`),
the CLI; workers are killed and restarted for real."""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from galaxy_tasks.jobdir import JobDir
from tests.drmaa.conftest import REPO, in_accounting, in_qstat
from tests.support.ledger import gated, ledger_command, ledger_lines
from tests.support.processes import alive

#: a steps worker's log line for a finish step it completed
FINISHED = re.compile(r"Task galaxy_tasks\.finish_jobs?\[[0-9a-f-]+\] succeeded")

pytestmark = [pytest.mark.drmaa, pytest.mark.integration]


def started(deployment, job_id: str) -> bool:
    job = deployment.job(job_id)
    return job.job_dir is not None and JobDir(Path(job.job_dir)).claimed_pid() is not None


def test_tools_routed_by_the_example_job_conf_run_on_grid_engine(sge, deployment, tmp_path):
    """examples/job_conf.yml as shipped: bwa* to sge_big (cores -> -pe smp, memory -> h_vmem,
    walltime -> h_rt), fastqc to the URL destination `drmaa://-l h_rt=1:00:00/`, the rest local."""
    from tests.drmaa.conftest import DrmaaDeployment

    grid = DrmaaDeployment(deployment, sge, REPO / "examples" / "job_conf.yml")
    try:
        grid.steps_worker()
        drmaa = grid.drmaa_worker()  # no -Q: every drmaa destination's queue
        assert "event=drmaa_session" in drmaa.log.read_text() and "reattached=False" in drmaa.log.read_text()
        bwa = grid.submit('echo "slots=$NSLOTS"; ulimit -v > vmem.txt; echo mapped > out.sam', "bwa_mem",
                          "--cores", "2", "--memory-mb", "1000", "--walltime-s", "600", "--output", "out.sam")
        fastqc = grid.submit("echo report", "fastqc")
        failing = grid.submit("echo broken >&2; exit 3", "bwa_aln")
        local = grid.submit("echo here", "cat1")
        result = grid.cli("wait", bwa, fastqc, failing, local, "--timeout", "120")
        assert result.returncode == 1, result.stdout + result.stderr  # one job fails

        status = json.loads(grid.cli("status", bwa, "--json").stdout)
        assert (status["state"], status["exit_code"], status["destination"]) == ("ok", 0, "sge_big")
        assert status["external_id"].isdigit() and status["stdout"] == "slots=2\n"
        assert status["wall_time_s"] is not None and status["max_rss_kb"] > 0
        assert [h["to"] for h in status["history"]] == ["new", "queued", "submitting", "running", "ok"]
        # h_vmem is per slot: 1000 MB / 2 cores = 500M a slot, 1000 MB for the job
        assert (Path(status["job_dir"]) / "working" / "vmem.txt").read_text().strip() == str(1000 * 1024)

        job = grid.job(fastqc)
        assert (job.state, job.destination, job.stdout_tail) == ("ok", "sge_short", "report\n")
        assert job.external_id.isdigit()
        job = grid.job(failing)
        assert (job.state, job.exit_code, job.destination) == ("error", 3, "sge_big")
        assert job.stderr_tail == "broken\n" and job.reason == "exit code 3"
        job = grid.job(local)
        assert (job.state, job.destination) == ("ok", "local") and ":" in job.external_id
        calls = grid.drm_calls()
        assert calls["runJob"] == 3 and calls["qstat"] == 0 and calls["accounting"] == 0
    finally:
        grid.close()


def test_walltime_kill_and_an_abort_from_outside(drmaa_deployment):
    grid = drmaa_deployment
    grid.steps_worker()
    grid.drmaa_worker()
    overrun = grid.submit("sleep 60", "drm_overrun", "--walltime-s", "2")
    aborted = grid.submit("sleep 120", "drm_aborted")
    grid.wait_until(lambda: started(grid, aborted), 60, "the job started on Grid Engine")
    subprocess.run(["qdel", grid.job(aborted).external_id], check=True, capture_output=True, timeout=60)
    jobs = {job.id: job for job in grid.wait_terminal([overrun, aborted], timeout=90)}
    assert (jobs[overrun].state, jobs[overrun].signal, jobs[overrun].exit_code) == ("error", 9, None)
    assert jobs[overrun].reason == "killed by signal SIGKILL"
    assert jobs[aborted].state == "error" and jobs[aborted].reason.startswith("aborted")
    assert jobs[aborted].exit_code is None


def test_cancel_ends_deleted_and_terminates_the_grid_engine_job(drmaa_deployment):
    grid = drmaa_deployment
    grid.steps_worker()
    grid.drmaa_worker()
    job_id = grid.submit("sleep 300", "drm_sleeper")
    grid.wait_until(lambda: started(grid, job_id), 60, "the job started on Grid Engine")
    external_id = grid.job(job_id).external_id
    assert in_qstat(external_id)
    result = grid.cli("cancel", job_id)
    assert result.returncode == 0 and "cancelled (was running)" in result.stdout
    assert grid.job(job_id).state == "deleted"
    grid.wait_until(lambda: not in_qstat(external_id), 30, "qstat no longer to show the job")
    grid.wait_until(lambda: in_accounting(external_id), 30, "the job's accounting record")
    grid.wait_until(lambda: FINISHED.search(grid.logs()), 30, "the terminated job's wait-any event consumed")
    assert grid.job(job_id).state == "deleted" and grid.history(job_id)[-1].value == "deleted"
    assert grid.drm_calls()["control"] == 1


def test_rejected_native_specification_fails_that_job_and_the_worker_serves_on(drmaa_deployment):
    grid = drmaa_deployment
    grid.steps_worker()
    worker = grid.drmaa_worker()
    rejected = grid.submit("true", "rejected_tool")
    [job] = grid.wait_terminal([rejected])
    assert job.state == "error" and job.external_id is None
    assert 'unknown resource "no_such_resource"' in job.reason and "Grid Engine refused" in job.reason
    following = grid.submit("echo next", "drm_next")
    [job] = grid.wait_terminal([following])
    assert (job.state, job.stdout_tail) == ("ok", "next\n")
    assert worker.proc.poll() is None
    assert grid.drm_calls()["runJob"] == 2  # a refusal that no retry cures is not retried


def test_worker_killed_between_runjob_and_the_database_write_runs_the_job_once(drmaa_deployment, tmp_path):
    """The DRMAA worker dies right after Grid Engine accepted the job, before the job's id
    is written anywhere (the crash point `drmaa_submitted`). The job stays SUBMITTING;
    once the launch lease has passed, reconciliation launches it again on the restarted
    worker, which finds the job Grid Engine already has by its name and adopts it."""
    grid = drmaa_deployment
    grid.env.update(GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_CHECK_AFTER="1",
                    GALAXY_TASKS_CHECK_AFTER_MAX="2", GALAXY_TASKS_LAUNCH_LEASE="3")
    ledger = tmp_path / "ledger"
    grid.steps_worker()
    crashing = grid.drmaa_worker(env={"GALAXY_TASKS_CRASH_POINTS": "drmaa_submitted",
                                      "GALAXY_TASKS_CRASH_DIR": str(tmp_path)})
    gate = tmp_path / "gate"
    job_id = grid.submit(ledger_command(ledger, gated(gate)), "drm_once")
    assert crashing.proc.wait(timeout=60) == -signal.SIGKILL
    job = grid.job(job_id)
    assert (job.state, job.external_id) == ("submitting", None)
    assert (Path(job.job_dir) / "drm_submit").read_text() == "submitting\n"
    [external_id] = grid.drm_jobs().values()  # Grid Engine has it all the same
    grid.drmaa_worker()  # the same node name: re-attaches to the crashed worker's session
    grid.beat()  # once the launch lease (3 s here) has passed, reconciliation re-sends the launch
    grid.wait_until(lambda: grid.job(job_id).state == "running", 120, "the launch taken over")
    assert grid.job(job_id).external_id == external_id  # found by its name in qstat
    gate.touch()
    [job] = grid.wait_terminal([job_id], timeout=60)
    assert (job.state, job.exit_code, job.external_id) == ("ok", 0, external_id)
    assert ledger_lines(ledger) == [job_id]
    assert grid.drm_calls()["runJob"] == 0  # adopted, not submitted again
    assert "launch_takeover" in grid.logs()
    grid.wait_until(lambda: not grid.drm_jobs(), 30, "Grid Engine to hold no job of ours")
    assert ledger_lines(ledger) == [job_id]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_restarted_worker_reattaches_and_follows_the_running_job(drmaa_deployment, tmp_path, how):
    grid = drmaa_deployment
    ledger = tmp_path / "ledger"
    grid.steps_worker()
    first = grid.drmaa_worker()
    gate = tmp_path / "gate"
    job_id = grid.submit(ledger_command(ledger, gated(gate)), "drm_long")
    grid.wait_until(lambda: started(grid, job_id), 60, "the job started on Grid Engine")
    grid.wait_state(job_id, "running")
    contact = (grid.tmp / "home" / "drmaa").glob("drmaa1@*.contact").__next__().read_text().strip()
    first.kill(how)
    if how == signal.SIGTERM:  # a warm shutdown closes the session; the contact stays valid
        assert "event=drmaa_session_closed" in first.log.read_text()
    assert grid.job(job_id).state == "running" and JobDir(Path(grid.job(job_id).job_dir)).recorded_exit_code() is None
    second = grid.drmaa_worker()
    log = second.log.read_text()
    assert f'contact="{contact}"' in log and "reattached=True" in log
    assert "event=recovered_jobs destination=sge jobs=1" in log
    gate.touch()  # the job ends now, followed by the new worker's wait-any
    [job] = grid.wait_terminal([job_id], timeout=60)
    assert (job.state, job.exit_code) == ("ok", 0) and job.wall_time_s is not None
    assert ledger_lines(ledger) == [job_id]
    calls = grid.drm_calls()
    assert calls["runJob"] == 0 and calls["qstat"] == 1 and calls["accounting"] == 0  # still running: wait-any


def test_jobs_that_ended_while_no_worker_ran_are_finished_from_accounting(drmaa_deployment, tmp_path):
    grid = drmaa_deployment
    ledger = tmp_path / "ledger"
    grid.steps_worker()
    first = grid.drmaa_worker()
    gate = tmp_path / "gate"
    exits = grid.submit(ledger_command(ledger, gated(gate, "sleep 3")) + "; exit 4", "drm_exits")
    killed = grid.submit(gated(gate, "kill -KILL $PPID"), "drm_killed")  # no exit_code file: only the DRM knows
    for job_id in (exits, killed):
        grid.wait_until(lambda: started(grid, job_id), 60, "the jobs started on Grid Engine")
        grid.wait_state(job_id, "running")
    ids = {job_id: grid.job(job_id).external_id for job_id in (exits, killed)}
    first.kill(signal.SIGKILL)
    gate.touch()
    for external_id in ids.values():
        grid.wait_until(lambda: not in_qstat(external_id) and in_accounting(external_id), 60,
                        "the job's end in the accounting file")
    assert {grid.job(job_id).state for job_id in ids} == {"running"}
    grid.drmaa_worker()
    jobs = {job.id: job for job in grid.wait_terminal(list(ids), timeout=30)}
    assert (jobs[exits].state, jobs[exits].exit_code, jobs[exits].reason) == ("error", 4, "exit code 4")
    assert jobs[exits].wall_time_s >= 3 and jobs[exits].max_rss_kb > 0
    assert (jobs[killed].state, jobs[killed].signal, jobs[killed].exit_code) == ("error", 9, None)
    assert "killed by signal SIGKILL" in jobs[killed].reason
    assert ledger_lines(ledger) == [exits]
    calls = grid.drm_calls()
    assert calls["runJob"] == 0 and calls["qstat"] == 1 and calls["accounting"] <= 2  # one batch


def ends_waiting(broker: Any) -> set[str]:
    """The jobs whose ends wait on the ends queue of this Redis, alone (finish_job) or
    together (finish_jobs): kombu's messages, their bodies base64 by default."""
    ids: set[str] = set()
    for raw in broker.lrange("galaxy_tasks.ends", 0, -1):
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        ids.add(kwargs.get("job_id"))
        ids.update(end.get("job_id") for end in kwargs.get("completions", []))
    return ids


def test_reconciliation_asks_grid_engine_about_overdue_jobs_in_one_batch(drmaa_deployment, tmp_path):
    """Completion events are lost (no steps worker while they are sent, then the broker's
    queue is emptied); reconciliation asks Grid Engine about all overdue drmaa jobs with one
    qstat and one read of the accounting file per batch, and finishes the ended ones."""
    import redis

    grid = drmaa_deployment
    grid.env.update(GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_CHECK_AFTER="2",
                    GALAXY_TASKS_CHECK_AFTER_MAX="4")
    steps = grid.steps_worker()
    grid.drmaa_worker()
    gate = tmp_path / "gate"
    quick = [grid.submit(gated(gate, f"echo {i}"), "drm_quick") for i in range(3)]
    slow = [grid.submit("sleep 300", "drm_slow") for _ in range(2)]
    for job_id in quick + slow:
        grid.wait_state(job_id, "running")
    steps.stop()
    gate.touch()  # the quick jobs end while no steps worker takes their completion events
    broker = redis.Redis.from_url(grid.env["GALAXY_TASKS_BROKER_URL"])
    grid.wait_until(lambda: set(quick) <= ends_waiting(broker), 60, "three completion events on the queue")
    broker.delete("galaxy_tasks.ends")  # lost
    assert {grid.job(job_id).state for job_id in quick} == {"running"}
    before = grid.drm_calls()
    grid.steps_worker()
    beat = grid.beat()
    jobs = grid.wait_terminal(quick, timeout=60)
    assert [(job.state, job.exit_code, job.stdout_tail) for job in jobs] == [("ok", 0, f"{i}\n") for i in range(3)]
    assert all(job.wall_time_s is not None and job.max_rss_kb > 0 for job in jobs)
    beat.terminate()
    beat.wait(timeout=30)
    grid.wait_consumed(("galaxy_tasks", "galaxy_tasks.ends", "local", "drmaa"))  # checks already sent are done
    checks = [line for line in grid.logs().splitlines() if "event=reconcile_check destination=sge" in line]
    assert checks and "asked=5 ended=3" in checks[0], checks
    after = grid.drm_calls()
    batches = len(checks)
    assert after["qstat"] - before["qstat"] == batches  # one qstat per batch, whatever its size
    assert after["accounting"] - before["accounting"] <= 2 * batches
    assert after["runJob"] == before["runJob"] == 5
    assert {grid.job(job_id).state for job_id in slow} == {"running"}


def test_the_drmaa_worker_never_forks(drmaa_deployment):
    """A DRMAA session does not survive fork(): `--pool prefork` is served by threads (the
    pool workers.drmaa configures), and a forking pool asked for otherwise is refused."""
    grid = drmaa_deployment
    worker = grid.drmaa_worker("forkless", "--pool", "prefork", "--concurrency", "3")
    assert "concurrency: 3 (thread)" in worker.log.read_text()
    refused = grid.drmaa_worker("forking", "--pool", "processes", ready=False)
    assert refused.proc.wait(timeout=60) != 0
    assert "the prefork pool is refused" in refused.log.read_text()


def _holders_started(log: Path) -> list[int]:
    return [int(line.split(" pid=")[1].split()[0]) for line in log.read_text().splitlines()
            if "event=holder_started" in line and "runner=drmaa" in line]


def test_a_worker_without_queues_serves_every_queue_and_keeps_its_drmaa_worker_alive(drmaa_deployment):
    """`galaxy-tasks worker` with no --queues: the steps and local queues in its own process,
    the drmaa queue through a supervised `celery -A workers.drmaa worker` child, which is
    restarted when it dies and stopped when the parent stops."""
    grid = drmaa_deployment
    main = grid.d.worker(None, "all@%h", "--concurrency", "2")
    grid.wait_until(lambda: "all-drmaa@" in main.log.read_text() and
                    main.log.read_text().count(" ready.") >= 2, 60, "both workers ready")
    assert "queues drmaa, drmaa_rejecting (drmaa) are served by a child process" in main.log.read_text()
    on_grid, here = grid.submit("echo grid", "drm_first"), grid.submit("echo here", "cat1")
    jobs = {job.id: job for job in grid.wait_terminal([on_grid, here], timeout=90)}
    assert (jobs[on_grid].state, jobs[on_grid].destination, jobs[on_grid].stdout_tail) == ("ok", "sge", "grid\n")
    assert jobs[on_grid].external_id.isdigit()
    assert (jobs[here].state, jobs[here].destination) == ("ok", "local")

    [first] = _holders_started(main.log)
    os.kill(first, signal.SIGKILL)  # as a crash of the DRM library would
    grid.wait_until(lambda: len(_holders_started(main.log)) == 2, 30, "the drmaa worker restarted")
    assert "event=holder_exited" in main.log.read_text() and "exit_code=-9" in main.log.read_text()
    grid.wait_until(lambda: main.log.read_text().count(" ready.") >= 3, 60, "the new drmaa worker ready")
    after = grid.submit("echo again", "drm_second")
    [job] = grid.wait_terminal([after], timeout=90)
    assert (job.state, job.stdout_tail) == ("ok", "again\n")

    second = _holders_started(main.log)[1]
    main.proc.send_signal(signal.SIGTERM)  # the parent only: it stops its child itself
    main.proc.wait(timeout=90)
    assert not alive(second)
    assert len(_holders_started(main.log)) == 2  # stopping is not a crash: no restart


def test_the_drmaa_worker_ends_when_its_supervising_worker_is_killed(drmaa_deployment):
    grid = drmaa_deployment
    main = grid.d.worker(None, "gone@%h", "--concurrency", "1")
    grid.wait_until(lambda: main.log.read_text().count(" ready.") >= 2, 60, "both workers ready")
    [child] = _holders_started(main.log)
    main.proc.kill()  # SIGKILL to the parent alone: no chance to stop anything
    main.proc.wait(timeout=30)
    grid.wait_until(lambda: not alive(child), 60, "the orphaned drmaa worker ended")
