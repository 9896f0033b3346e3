"""Concurrency limits when workers die: a place is never lost (a waiting job would wait for
ever) and never given twice (a user would run more than the limit)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.checks import assert_exactly_once, ledger_command
from tests.support.ledger import most_at_once, timed

pytestmark = pytest.mark.faults

CONF = """
destinations:
  local: {runner: local, params: {max_jobs: 20}}
default: local
limits:
  - type: registered_user_concurrent_jobs
    value: LIMIT
"""


def _limited(make_deployment, tmp_path: Path, limit: int, **env: str):
    path = tmp_path / "job_conf.yml"
    path.write_text(CONF.replace("LIMIT", str(limit)))
    return make_deployment(GALAXY_TASKS_JOB_CONF=str(path), **env)


def test_a_finish_killed_between_recording_the_end_and_giving_places_back(make_deployment, tmp_path):
    """The pool process dies right after finish recorded a job's end, before the job gave
    its place back and woke the next: the redelivered finish gives it back (once) and the
    waiting jobs run, at once, not after reconciliation's CHECK_AFTER (300 s here)."""
    deployment = _limited(make_deployment, tmp_path, 1, GALAXY_TASKS_CRASH_POINTS="finish",
                          GALAXY_TASKS_CRASH_DIR=str(tmp_path))
    ledger, ledgers = tmp_path / "ledger", tmp_path / "ledgers"
    ledgers.mkdir()
    deployment.worker()
    started = time.monotonic()
    ids = deployment.submit_many([{"tool_id": "t", "user": "alice",
                                   "command": ledger_command(ledger, timed(ledgers, "alice", 0.3))}
                                  for _ in range(4)])
    deployment.wait_terminal(ids, timeout=120)
    assert time.monotonic() - started < 90, "the places came back with the redelivered finish"
    # the crash comes after the record: the last job is terminal a moment before its marker
    deployment.wait_until(lambda: len(list(tmp_path.glob("crashed-finish-*"))) >= len(ids), 30, "every crash")
    assert len(list(tmp_path.glob("crashed-finish-*"))) == len(ids)
    assert most_at_once(ledgers / "alice") == 1
    # the last job's end was recorded before its own crash; its redelivered finish (no
    # reconciliation runs here) gives the place back
    deployment.wait_until(lambda: deployment.store.limit_usage(["user:alice"]) == {"user:alice": 0}, 30,
                          "the last place given back")
    assert_exactly_once(deployment, ids, ledger, "SIGKILL between a limited job's end and its release")


def test_the_whole_worker_killed_while_limited_jobs_run_and_wait(make_deployment, tmp_path):
    """SIGKILL of the whole worker (main process and pool) while two users' jobs run at
    their limit and more wait LIMITED. The running jobs live on (sessions of their own); a
    new worker and reconciliation follow them to their end, the places they held come back
    exactly once, and every waiting job runs, never more than the limit at once."""
    deployment = _limited(make_deployment, tmp_path, 2, GALAXY_TASKS_RECONCILE_INTERVAL="1",
                          GALAXY_TASKS_CHECK_AFTER="3", GALAXY_TASKS_CHECK_AFTER_MAX="5")
    ledger, ledgers = tmp_path / "ledger", tmp_path / "ledgers"
    ledgers.mkdir()
    doomed = deployment.worker(None, "doomed@%h")
    deployment.beat()
    users = ("alice", "bob")
    ids = deployment.submit_many([{"tool_id": "t", "user": user,
                                   "command": ledger_command(ledger, timed(ledgers, user, 2))}
                                  for _ in range(4) for user in users])
    deployment.wait_until(lambda: sum(deployment.job(j).state == "running" for j in ids) == 4, 60,
                          "both users at their limit")
    doomed.kill()
    deployment.worker(None, "heir@%h")
    deployment.wait_terminal(ids, timeout=180)
    assert {user: most_at_once(ledgers / user) for user in users} == {"alice": 2, "bob": 2}
    assert set(deployment.store.limit_usage([f"user:{u}" for u in users]).values()) == {0}
    assert_exactly_once(deployment, ids, ledger, "whole worker SIGKILLed with limited jobs running and waiting")
