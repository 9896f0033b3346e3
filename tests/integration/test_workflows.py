"""Workflows through real worker processes on Redis and PostgreSQL: a diamond with a map and
a reduce runs to its end with independent steps in parallel, a failed element is rerun
alone, a client of the task contract submits a workflow by task name, and a workflow larger
than a pass is made a bounded pass at a time, each pass sending the next."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from celery import Celery

from galaxy_tasks import yamlconf

pytestmark = pytest.mark.integration

WORKFLOW = r"""
name: fan
steps:
  reference:
    spec: {tool_id: ref, command: "printf 'ACGT\n' > ref.txt", outputs: [ref.txt]}
  count:
    map: [alpha, beta, gamma]
    spec:
      tool_id: count
      command: "test -e GATE -o ${item} != beta && echo ${item} $(wc -c < ${steps.reference.outputs.ref.txt}) > c.txt"
      outputs: [c.txt]
  total:
    reduce: count
    sweep: {scale: [1, 10]}
    spec:
      tool_id: total
      command: "cat ${steps.count.outputs.c.txt} | awk '{s += $2 * ${params.scale}} END {print s}' > t.txt"
      outputs: [t.txt]
"""


def _status(deployment, workflow_id: str) -> dict:
    result = deployment.cli("workflow", "status", workflow_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _wait(deployment, workflow_id: str, states: set[str], timeout: float = 30) -> dict:
    deployment.wait_until(lambda: _status(deployment, workflow_id)["state"] in states, timeout, "workflow end")
    return _status(deployment, workflow_id)


def test_a_workflow_runs_fails_one_element_and_reruns_only_it(deployment, tmp_path: Path):
    deployment.worker()
    gate = tmp_path / "gate"
    document = tmp_path / "wf.yml"
    document.write_text(WORKFLOW.replace("GATE", str(gate)))
    submitted = deployment.cli("workflow", "submit", str(document))
    assert submitted.returncode == 0, submitted.stderr
    workflow_id = submitted.stdout.strip()

    failed = _wait(deployment, workflow_id, {"ok", "error"})
    assert failed["state"] == "error" and "count (1)" in failed["reason"]
    assert {s["name"]: s["states"] for s in failed["steps"]} == {
        "reference": {"ok": 1}, "count": {"ok": 2, "error": 1}, "total": {"waiting": 2}}
    jobs_before = {j.id for j in deployment.jobs()}

    gate.write_text("open")
    rerun = deployment.cli("workflow", "rerun", workflow_id)
    assert rerun.returncode == 0 and "1 jobs started" in rerun.stdout, rerun.stdout + rerun.stderr
    done = _wait(deployment, workflow_id, {"ok", "error"})
    assert done["state"] == "ok" and done["states"] == {"ok": 6}
    after = deployment.jobs()
    assert len(after) == len(jobs_before) + 1 + 2, "only the failed element and the reduce ran again"
    totals = sorted(int((Path(j.job_dir) / "working" / "t.txt").read_text()) for j in after if j.tool_id == "total")
    assert totals == [15, 150]
    assert [h["to_state"] for h in done["history"]] == ["running", "error", "running", "ok"]
    listed = deployment.cli("workflow", "list")
    assert workflow_id in listed.stdout and "ok" in listed.stdout


def test_a_contract_client_submits_a_workflow_by_task_name_and_a_duplicate_is_harmless(deployment, tmp_path: Path):
    deployment.worker()
    document = yamlconf.loads(WORKFLOW.replace("GATE", "/"), "wf.yml")
    document["id"] = "contract-wf-1"
    app = Celery(broker=deployment.env["GALAXY_TASKS_BROKER_URL"])
    app.conf.update(task_serializer="json", accept_content=["json"])
    for _ in range(2):
        app.send_task("galaxy_tasks.submit_workflow", kwargs={"workflow": document}, queue="galaxy_tasks")
    deadline = time.monotonic() + 30
    while deployment.store.workflow("contract-wf-1") is None and time.monotonic() < deadline:
        time.sleep(0.2)
    done = _wait(deployment, "contract-wf-1", {"ok", "error"})
    assert done["state"] == "ok" and done["states"] == {"ok": 6}
    assert len(deployment.jobs()) == 6, "one job per element, however many submissions"


def test_a_workflow_whose_job_is_cancelled_on_its_own_ends_at_once(deployment, tmp_path: Path):
    """A user cancels one job of a workflow (galaxy-tasks cancel ID): what needs it cannot
    start, and the workflow ends then, not at reconciliation's next look (300 s here)."""
    deployment.worker()
    document = tmp_path / "wf.json"
    document.write_text(json.dumps({"name": "cancelled", "steps": {
        "slow": {"spec": {"tool_id": "slow", "command": "sleep 60"}},
        "next": {"after": "slow", "spec": {"tool_id": "next", "command": "true"}}}}))
    submitted = deployment.cli("workflow", "submit", str(document))
    assert submitted.returncode == 0, submitted.stderr
    workflow_id = submitted.stdout.strip()
    deployment.wait_until(lambda: any(j.state == "running" for j in deployment.jobs()), 30, "the first job running")
    [job] = deployment.jobs()
    assert deployment.cli("cancel", job.id).returncode == 0
    ended = _wait(deployment, workflow_id, {"ok", "error", "cancelled"}, timeout=30)
    assert ended["state"] == "error" and "slow (1)" in ended["reason"], ended
    assert [j.id for j in deployment.jobs()] == [job.id], "the step after it never started"


def test_a_hundred_byte_workflow_asking_for_a_billion_seeds_is_refused_at_once(deployment):
    """The issue's message: ~100 bytes with `seeds: 1000000000`, and one whose steps are
    each within their bound but not together, sent by task name to a real worker. Each is
    refused at once, naming the step and the bound, with nothing recorded; the worker's
    memory does not grow and it serves on (building the seeds first took every steps worker
    down, one after another)."""
    from tests.support.processes import descendants

    worker = deployment.worker()
    warm = deployment.submit("true", "warm")
    assert deployment.wait_terminal([warm])[0].state == "ok"

    def rss_kib() -> int:
        pids = {worker.proc.pid, *descendants(worker.proc.pid)}
        return sum(int(line.split()[1]) for pid in pids for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))

    before = rss_kib()
    bomb = {"name": "b", "steps": {"s": {"seeds": 1_000_000_000, "spec": {"tool_id": "t", "command": "true"}}}}
    assert len(json.dumps(bomb)) < 110
    wide = {"name": "w", "steps": {name: {"seeds": 10_000, "spec": {"tool_id": "t", "command": "true"}}
                                   for name in ("a", "b", "c")}}
    app = Celery(broker=deployment.env["GALAXY_TASKS_BROKER_URL"])
    app.conf.update(task_serializer="json", accept_content=["json"])
    started = time.monotonic()
    for document in (bomb, wide):
        app.send_task("galaxy_tasks.submit_workflow", kwargs={"workflow": document}, queue="galaxy_tasks")
    deployment.wait_until(lambda: deployment.logs().count("event=workflow_refused") >= 2, timeout=30,
                          what="both workflows refused")
    refused_in = time.monotonic() - started
    logs = deployment.logs()
    assert "field=steps.s.seeds error=\"has 1000000000 elements, more than 10000\"" in logs, logs[-2000:]
    assert "field=steps.c error=\"brings the workflow to 30000 jobs, more than 20000 in all" in logs
    assert refused_in < 10, f"refusing took {refused_in:.1f} s"
    grown = rss_kib() - before
    assert grown < 20 * 1024, f"the worker grew by {grown} KiB"
    assert deployment.store.recent_workflows() == []
    again = deployment.submit("true", "after")
    assert deployment.wait_terminal([again])[0].state == "ok", "the worker serves on"


def test_a_workflow_larger_than_a_pass_is_made_a_pass_at_a_time_each_sending_the_next(make_deployment, tmp_path):
    """Passes of 3 elements: the submit writes 3 of the map's 8, each pass that leaves ready
    elements sends advance_workflow for the next (reconciliation, 300 s away here, has no
    part in it); the foreach and the reduce follow, and each element's job is made once."""
    deployment = make_deployment(GALAXY_TASKS_WORKFLOW_PASS_MOST="3")
    deployment.worker()
    document = tmp_path / "wf.json"
    document.write_text(json.dumps({"name": "passes", "steps": {
        "make": {"map": list(range(8)), "spec": {"tool_id": "make", "command": "echo ${item} > n", "outputs": ["n"]}},
        "double": {"foreach": "make", "spec": {
            "tool_id": "double", "command": "echo $((2 * $(cat ${steps.make.outputs.n}))) > d", "outputs": ["d"]}},
        "sum": {"reduce": "double", "spec": {
            "tool_id": "sum", "command": "cat ${steps.double.outputs.d} | awk '{s += $1} END {print s}' > s",
            "outputs": ["s"]}},
    }}))
    submitted = deployment.cli("workflow", "submit", str(document))
    assert submitted.returncode == 0, submitted.stderr
    done = _wait(deployment, submitted.stdout.strip(), {"ok", "error"}, timeout=60)
    assert done["state"] == "ok" and done["states"] == {"ok": 17}, done
    jobs = deployment.jobs()
    assert len(jobs) == len({j.id for j in jobs}) == 17
    [total] = [j for j in jobs if j.tool_id == "sum"]
    assert (Path(total.job_dir) / "working" / "s").read_text().strip() == str(2 * sum(range(8)))
    assert deployment.logs().count("galaxy_tasks.advance_workflow") >= 2
