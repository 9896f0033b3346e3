"""The broker and the database go away under load; duplicated and late messages."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from galaxy_tasks.jobdir import JobDir
from tests.faults.checks import assert_exactly_once, ledger_command
from tests.support.ledger import gated, ledger_lines
from tests.support.processes import alive

pytestmark = pytest.mark.faults

RECONCILE_FAST = dict(GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_CHECK_AFTER="3",
                      GALAXY_TASKS_CHECK_AFTER_MAX="6", GALAXY_TASKS_LAUNCH_LEASE="5")


@pytest.mark.both_brokers
def test_broker_restarted_while_jobs_are_queued_and_running(make_broker, make_deployment, tmp_path, broker_kind):
    """The broker dies while jobs are queued and running, and comes back 3 s later: Redis
    empty (it keeps nothing on disk here: every message in flight is lost), RabbitMQ (a node
    of the test's own, SIGKILLed) with its durable queues and persistent messages. Workers
    and beat reconnect; reconciliation re-sends lost steps and finds the completion events
    that could not be sent."""
    broker = make_broker(restartable=True)
    deployment = make_deployment(broker, **RECONCILE_FAST)
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    deployment.worker()
    deployment.beat()
    # the jobs run until the broker has been restarted (a loaded host may otherwise have run
    # them all before the outage, which then tests nothing)
    command = ledger_command(ledger, f"until [ -e {gate} ]; do sleep 0.1; done; sleep 1")
    ids = deployment.submit_many([{"tool_id": "through_outage", "command": command}] * 12)
    deployment.wait_until(lambda: any(deployment.job(i).state == "running" for i in ids), timeout=120,
                          what="running")
    broker.restart(down_for=3, **({"hard": True} if broker_kind == "rabbitmq" else {}))
    gate.touch()
    deployment.wait_terminal(ids, timeout=180)
    states = [deployment.job(i).state for i in ids]
    assert all(w.proc.poll() is None for w in deployment.workers), "every worker survived the outage"
    assert_exactly_once(deployment, ids, ledger, f"{broker_kind} restarted", extra=f"ok={states.count('ok')}")


def test_database_connections_killed_while_jobs_finish(make_deployment, tmp_path):
    deployment = make_deployment(**RECONCILE_FAST)
    ledger = tmp_path / "ledger"
    deployment.worker()
    deployment.beat()
    ids = deployment.submit_many([{"tool_id": "db_outage", "command": ledger_command(ledger, f"sleep {0.2 * (i % 5):.1f}")}
                                  for i in range(15)])
    name = deployment.database_url.rsplit("/", 1)[1]
    admin = create_engine(deployment.database_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    killed = 0
    deadline = time.monotonic() + 4
    with admin.connect() as connection:
        while time.monotonic() < deadline:
            killed += connection.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name}).scalar()
            time.sleep(0.3)
    admin.dispose()
    deployment.wait_terminal(ids, timeout=120)
    assert killed > 0
    assert_exactly_once(deployment, ids, ledger, "PostgreSQL connections killed", extra=f"connections_killed={killed}")


@pytest.mark.both_brokers
def test_duplicated_and_late_messages_change_nothing(deployment, tmp_path):
    from celery import Celery

    ledger = tmp_path / "ledger"
    deployment.worker()
    client = Celery(broker=deployment.env["GALAXY_TASKS_BROKER_URL"])
    spec = {"id": "dup-0001", "tool_id": "dup", "command": ledger_command(ledger, "sleep 1")}
    for _ in range(3):  # the same submit message delivered three times
        client.send_task("galaxy_tasks.submit_job", kwargs=spec, queue="galaxy_tasks")
    deployment.wait_until(lambda: any(j.id == "dup-0001" for j in deployment.jobs()), what="accepted")
    for _ in range(2):  # duplicated steps while it runs
        client.send_task("galaxy_tasks.prepare_job", args=["dup-0001"], queue="galaxy_tasks")
        client.send_task("galaxy_tasks.launch_job", args=["dup-0001"], queue="local")
    [job] = deployment.wait_terminal(["dup-0001"])
    assert job.state == "ok"
    # a completion event delivered twice, late, and saying something else
    late = {"exit_code": 1, "reason": "a stale event", "ended_at": time.time()}
    for _ in range(2):
        client.send_task("galaxy_tasks.finish_job", args=["dup-0001"], kwargs={"completion": late},
                         queue="galaxy_tasks")
        client.send_task("galaxy_tasks.launch_job", args=["dup-0001"], queue="local")
    deployment.wait_consumed()
    assert deployment.job("dup-0001").state == "ok" and deployment.job("dup-0001").exit_code == 0
    assert_exactly_once(deployment, ["dup-0001"], ledger, "duplicated and late messages")


@pytest.mark.both_brokers
def test_a_lost_kill_message_is_made_good_by_reconciliation(make_deployment, tmp_path):
    """A job is cancelled while no worker serves its queue, and the broker loses the kill
    message. The row says deleted at once; the process would run on. Reconciliation looks
    at the cancelled job once more, finds its process alive, and stops it."""
    deployment = make_deployment(**RECONCILE_FAST)
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    first = deployment.worker()
    job_id = deployment.submit(ledger_command(ledger, gated(gate)), "cancel_lost")
    try:
        deployment.wait_until(lambda: deployment.job(job_id).state == "running", what="running")
        job = deployment.job(job_id)
        pid = JobDir(Path(job.job_dir)).claimed_pid()
        first.stop()  # jobs run on without their worker
        assert deployment.cli("cancel", job_id).returncode == 0
        host_queue = f"{job.queue}@{job.external_id.split(':')[0]}"
        assert deployment.broker.queue_length(host_queue) == 1, "the kill message waits on the job's host's queue"
        deployment.broker.purge(host_queue)  # ... and is lost
        time.sleep(1)
        assert alive(pid), "nothing else stops the job"
        deployment.worker()
        deployment.beat()
        deployment.wait_until(lambda: not alive(pid), timeout=60, what="the job's process stopped")
        deployment.wait_until(lambda: deployment.job(job_id).check_at is None, timeout=60, what="no more looks")
        cancelled = deployment.job(job_id)
        assert (cancelled.state, cancelled.reason) == ("deleted", "cancelled")
        assert deployment.history(job_id)[-1].value == "deleted"
        assert "event=reconcile_stop" in deployment.logs() and "still_running=1" in deployment.logs()
        gate.touch()
        time.sleep(1.5)  # a command still alive would now pass its gate and write the ledger
        assert ledger_lines(ledger) == [], "the cancelled command did not run on"
    finally:
        gate.touch()  # a failed run leaves no job waiting behind
