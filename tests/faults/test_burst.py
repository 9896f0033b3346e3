"""A burst of trivial jobs through two worker processes: every one terminal exactly once,
and the workers' memory does not grow without bound. GT_BURST_JOBS=10000 is the large run
(`README`, "Fault-injection tests")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.checks import assert_exactly_once, ledger_command
from tests.support.bursts import every_process_alive, submit_many

pytestmark = pytest.mark.faults

JOBS = int(os.environ.get("GT_BURST_JOBS", "600"))

SUBMIT = """
import sys
from galaxy_tasks.client import Client
client = Client()
ids = [client.submit({"tool_id": "burst", "command": sys.argv[2]}).id for _ in range(int(sys.argv[1]))]
print("\\n".join(ids))
"""


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_burst_of_trivial_jobs_through_two_workers(make_deployment, tmp_path):
    deployment = make_deployment(GALAXY_TASKS_RECONCILE_INTERVAL="5", GALAXY_TASKS_CHECK_AFTER="60")
    ledger = tmp_path / "ledger"
    workers = [deployment.worker(None, f"burst{i}@%h", "--pool", "solo") for i in range(2)]
    deployment.beat()
    warm = subprocess.run([sys.executable, "-c", SUBMIT, "20", "true"], env=deployment.env, capture_output=True,
                          text=True, check=True).stdout.split()
    deployment.wait_terminal(warm)
    rss_start = [_rss_kb(w.proc.pid) for w in workers]

    started = time.monotonic()
    ids = subprocess.run([sys.executable, "-c", SUBMIT, str(JOBS), ledger_command(ledger)], env=deployment.env,
                         capture_output=True, text=True, check=True, timeout=1800).stdout.split()
    submitted = time.monotonic() - started
    deployment.wait_until(lambda: deployment.count_terminal() == JOBS + len(warm), timeout=max(120, JOBS / 5),
                          what=f"{JOBS} jobs terminal")
    elapsed = time.monotonic() - started
    rss_end = [_rss_kb(w.proc.pid) for w in workers]

    figures = (f"seconds={elapsed:.1f} jobs_per_s={JOBS / elapsed:.1f} submit_s={submitted:.1f} "
               f"worker_rss_kb_start={rss_start} worker_rss_kb_end={rss_end}")
    assert_exactly_once(deployment, ids, ledger, f"burst of {JOBS}", extra=figures)
    growth = sum(rss_end) - sum(rss_start)
    assert growth < 100 * 1024, f"workers grew by {growth} kB over {JOBS} jobs"


CHAOS_JOBS = int(os.environ.get("GT_CHAOS_JOBS", "300"))
CHAOS_CHECK_AFTER = os.environ.get("GT_CHAOS_CHECK_AFTER", "20")


@pytest.mark.both_brokers
def test_burst_through_worker_kills_a_broker_restart_and_a_database_restart(
        make_broker, make_deployment, private_postgres, tmp_path, broker_kind):
    """A burst through two workers, in four quarters; right after each quarter is submitted,
    while it is in flight: a worker is SIGKILLed and replaced; the broker is restarted (Redis
    comes back empty: what it held is re-driven from the rows; a RabbitMQ node is SIGKILLed
    and keeps its durable queues); PostgreSQL is stopped for 10 s; the other worker is
    SIGKILLed and replaced. Every job ends once, its command run once. GT_CHAOS_JOBS=10000 is
    the large run (docs/benchmarks.md)."""
    broker = make_broker(restartable=True)
    deployment = make_deployment(broker, database=private_postgres.create_database("gt_chaos"),
                                 GALAXY_TASKS_RECONCILE_INTERVAL="2", GALAXY_TASKS_CHECK_AFTER=CHAOS_CHECK_AFTER,
                                 GALAXY_TASKS_CHECK_AFTER_MAX=str(2 * int(CHAOS_CHECK_AFTER)),
                                 GALAXY_TASKS_LAUNCH_LEASE="10")
    ledger = tmp_path / "ledger"
    workers = {name: deployment.worker(None, f"{name}@%h") for name in ("chaos1", "chaos2")}
    deployment.beat()
    started = time.monotonic()
    timeline: list[str] = []
    ids: list[str] = []

    def batch_then(fault: str) -> None:
        """A quarter of the jobs, then the fault, while that quarter is still in flight; every
        other quarter submitted at once (its jobs move in batches)."""
        ids.extend(submit_many(deployment, CHAOS_JOBS // 4, ledger_command(ledger), "chaos",
                               together=len(timeline) % 2 == 0))
        timeline.append(f"{fault}@{time.monotonic() - started:.0f}s/{deployment.count_terminal()}")

    def replace(name: str) -> None:
        """SIGKILL, and a new worker, ready once it has re-driven every unfinished job (on a
        large backlog, that takes a while: one confirmed message per job on RabbitMQ)."""
        workers[name].kill(signal.SIGKILL)
        workers[name] = deployment.worker(None, f"{name}b@%h", wait=False).wait_ready(timeout=60 + CHAOS_JOBS / 50)

    batch_then("kill1")
    replace("chaos1")
    batch_then("broker_restart")
    broker.restart(down_for=3, **({"hard": True} if broker_kind == "rabbitmq" else {}))
    batch_then("db_restart")
    deployment.store.dispose()
    private_postgres.restart(down_for=10)
    batch_then("kill2")
    replace("chaos2")
    deployment.wait_until(lambda: deployment.count_terminal() == len(ids), timeout=max(600, CHAOS_JOBS / 5),
                          what=f"{len(ids)} jobs terminal")
    elapsed = time.monotonic() - started
    gone = [line for line in every_process_alive(deployment) if "exited -9" not in line]
    assert gone == [], "only the workers the test killed have gone"
    assert_exactly_once(deployment, ids, ledger, f"burst of {len(ids)} through faults ({broker_kind})",
                        extra=f"seconds={elapsed:.1f} jobs_per_s={len(ids) / elapsed:.1f} faults={','.join(timeline)}")
