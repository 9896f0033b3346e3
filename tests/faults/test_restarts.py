"""Servers restarted for real: the job database stopped for ~10 s in the middle of a burst,
and queued messages kept across a broker restart by the broker's own persistence."""
from __future__ import annotations

import os
import time

import pytest

from tests.faults.checks import assert_exactly_once, ledger_command
from tests.support.bursts import every_process_alive, submit_many

pytestmark = [pytest.mark.faults, pytest.mark.both_brokers]

RECONCILE_FAST = dict(GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_CHECK_AFTER="3",
                      GALAXY_TASKS_CHECK_AFTER_MAX="6", GALAXY_TASKS_LAUNCH_LEASE="5")
JOBS = int(os.environ.get("GT_RESTART_JOBS", "120"))
DOWN_S = float(os.environ.get("GT_DB_DOWN_S", "10"))


def test_database_restarted_in_the_middle_of_a_burst(make_deployment, private_postgres, tmp_path, broker_kind):
    """PostgreSQL (a cluster of the test's own) is stopped for ~10 s while a burst of jobs
    goes through two workers, and started again: steps that meet the closed database are
    retried on fresh connections, beat and reconciliation carry on, and every job ends once,
    its command run once."""
    database = private_postgres.create_database("gt_restart")
    deployment = make_deployment(database=database, **RECONCILE_FAST)
    ledger = tmp_path / "ledger"
    deployment.worker(None, "restart1@%h")
    deployment.worker(None, "restart2@%h")
    deployment.beat()
    started = time.monotonic()
    ids = submit_many(deployment, JOBS, ledger_command(ledger, "sleep 0.1"), "db_restart")
    deployment.wait_until(lambda: deployment.count_terminal() >= JOBS // 4, timeout=120, what="a quarter done")
    done_before = deployment.count_terminal()
    deployment.store.dispose()
    private_postgres.restart(down_for=DOWN_S)
    deployment.wait_until(lambda: deployment.count_terminal() == JOBS, timeout=300, what=f"{JOBS} jobs terminal")
    elapsed = time.monotonic() - started
    assert every_process_alive(deployment) == []
    assert_exactly_once(deployment, ids, ledger, f"PostgreSQL restarted ({broker_kind})",
                        extra=f"down_s={DOWN_S:.0f} terminal_before_stop={done_before} seconds={elapsed:.1f}")


def test_a_queued_job_survives_a_broker_restart(make_broker, make_deployment, tmp_path, broker_kind):
    """A job is submitted while no worker runs; the broker is killed (SIGKILL) and started
    again; its first message is still there (Redis: append-only file, fsync always;
    RabbitMQ: a durable queue, a persistent message the broker confirmed), and the job runs
    once when a worker starts."""
    broker = make_broker(restartable=True, durable=True)
    deployment = make_deployment(broker)
    ledger = tmp_path / "ledger"
    job_id = deployment.submit(ledger_command(ledger), "kept")
    assert broker.queue_length("galaxy_tasks") == 1
    broker.restart(**({"hard": True} if broker_kind == "rabbitmq" else {}))
    assert broker.queue_length("galaxy_tasks") == 1, "the queued message survived the restart"
    deployment.worker()
    [job] = deployment.wait_terminal([job_id])
    assert job.state == "ok"
    assert_exactly_once(deployment, [job_id], ledger, f"queued job across a {broker_kind} restart")
