"""SIGKILL of the pool process in the middle of a workflow's scheduling: after the end of a
job was recorded and before its dependents were created. Reconciliation makes each lost
pass good, the workflow ends ok, and no element's command runs twice."""
from __future__ import annotations

import json

import pytest

from tests.faults.checks import assert_exactly_once, ledger_command

pytestmark = pytest.mark.faults


def test_a_worker_killed_mid_scheduling_leaves_the_workflow_to_finish_once(make_deployment, tmp_path):
    deployment = make_deployment(GALAXY_TASKS_CRASH_POINTS="workflow-pass", GALAXY_TASKS_CRASH_DIR=str(tmp_path),
                                 GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_CHECK_AFTER="2",
                                 GALAXY_TASKS_CHECK_AFTER_MAX="4")
    ledger = tmp_path / "ledger"
    record = ledger_command(ledger)
    document = {"name": "crashing", "steps": {
        "first": {"spec": {"tool_id": "first", "command": f"{record}; echo x > a", "outputs": ["a"]}},
        "each": {"map": [1, 2, 3], "spec": {"tool_id": "each", "command": f"{record}; cat ${{steps.first.outputs.a}}"}},
        "last": {"after": "each", "spec": {"tool_id": "last", "command": record}},
    }}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(document))
    deployment.worker()
    deployment.beat()
    submitted = deployment.cli("workflow", "submit", str(path))
    assert submitted.returncode == 0, submitted.stderr
    workflow_id = submitted.stdout.strip()

    def state() -> str:
        return json.loads(deployment.cli("workflow", "status", workflow_id, "--json").stdout)["state"]

    deployment.wait_until(lambda: state() in ("ok", "error"), timeout=75, what="the workflow's end")
    status = json.loads(deployment.cli("workflow", "status", workflow_id, "--json").stdout)
    assert status["state"] == "ok" and status["states"] == {"ok": 5}, status
    ids = [job.id for job in deployment.jobs()]
    crashes = len(list(tmp_path.glob("crashed-workflow-pass-*")))
    assert len(ids) == 5, "one job per element"
    assert crashes == 5, "every job's end passed the crash point once"
    assert "WorkerLostError" in deployment.logs() or "SIGKILL" in deployment.logs()
    assert_exactly_once(deployment, ids, ledger, "SIGKILL mid workflow scheduling", extra=f"crashes={crashes}")
