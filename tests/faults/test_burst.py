"""A burst of trivial jobs through two worker processes: every one terminal exactly once,
and the workers' memory does not grow without bound. GT_BURST_JOBS=10000 is the large run
(`README`, "Fault-injection tests")."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.checks import assert_exactly_once, ledger_command

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
