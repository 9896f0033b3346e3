"""Workflows with the stub runner on SQLite: a step becomes a job when its inputs exist,
map, sweep, seeds and reduce, pause, resume, cancel, rerun, a pass lost to a crash made good
by reconciliation, and one job per element however many passes run."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest

from galaxy_tasks import lifecycle
from galaxy_tasks.context import Context
from galaxy_tasks.errors import SpecError
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.runners.stub import StubRunner
from galaxy_tasks.workflows import control, schedule
from tests.support.embedded import embedded_context

JOB_CONF = """
destinations:
  stub: {runner: stub}
default: stub
"""


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    with embedded_context(tmp_path, JOB_CONF) as context:
        yield context


@pytest.fixture
def stub(ctx: Context) -> StubRunner:
    return StubRunner(ctx.routing.destinations["stub"].params, lambda completion: None, destination="stub")


def step(command: str, outputs: list[str] | None = None, **fan: Any) -> dict[str, Any]:
    return {"spec": {"tool_id": "t", "command": command, "outputs": outputs or []}, **fan}


def run(ctx: Context, stub: StubRunner, job: Job, exit_code: int = 0) -> list[Job]:
    """The job prepared, launched, its outputs written and its end recorded: the jobs the
    pass that follows created."""
    assert lifecycle.prepare(ctx, job.id)
    assert lifecycle.launch(ctx, job.id, lambda _name: stub, owner="m")
    row = ctx.store.job(job.id)
    assert row is not None and row.job_dir
    for output in row.outputs:
        (Path(row.job_dir) / "working" / output).write_text(f"{job.id}\n")
    finished = lifecycle.finish(ctx, stub.end(job.id, exit_code=exit_code, report=False))
    assert finished.moved is not None
    return schedule.after_end(ctx, finished.moved.job)


def drain(ctx: Context, stub: StubRunner, jobs: list[Job], fail: str = "") -> list[Job]:
    """Run every job and those they lead to, in order; jobs whose command contains `fail`
    (when given) exit 1. Returns every job that ran."""
    ran: list[Job] = []
    pending = list(jobs)
    while pending:
        job = pending.pop(0)
        ran.append(job)
        pending += run(ctx, stub, job, 1 if fail and fail in job.command else 0)
    return ran


def state(ctx: Context, workflow_id: str) -> str:
    found = ctx.store.workflow(workflow_id)
    assert found is not None
    return found.state


DIAMOND = {"name": "diamond", "steps": {
    "index": step("echo ref > ref.fa", ["ref.fa"]),
    "left": step("cat ${steps.index.outputs.ref.fa} > l", ["l"]),
    "right": step("cat ${steps.index.outputs.ref.fa} > r", ["r"]),
    "join": step("cat ${steps.left.outputs.l} ${steps.right.outputs.r} > j", ["j"]),
}}


def test_a_step_becomes_a_job_when_its_inputs_exist_and_independent_steps_run_together(ctx, stub):
    workflow, created = schedule.submit(ctx, DIAMOND)
    assert [j.tool_id for j in created] == ["t"] and "echo ref" in created[0].command
    assert state(ctx, workflow.id) == "running"
    parallel = run(ctx, stub, created[0])
    assert sorted(j.command.split(" > ")[1] for j in parallel) == ["l", "r"], "both at once, after index"
    index_dir = ctx.store.job(created[0].id).job_dir
    assert f"{index_dir}/working/ref.fa" in parallel[0].command
    assert run(ctx, stub, parallel[0]) == [], "join waits for both"
    join = run(ctx, stub, parallel[1])
    assert len(join) == 1 and join[0].workflow_id == workflow.id
    assert run(ctx, stub, join[0]) == []
    assert state(ctx, workflow.id) == "ok"
    assert [c["to_state"] for c in ctx.store.workflow_history(workflow.id)] == ["running", "ok"]


def test_map_sweep_and_seeds_make_one_job_per_element_and_a_reduce_gets_them_all(ctx, stub):
    document = {"name": "fan", "steps": {
        "align": step("align ${item} > out.bam", ["out.bam"], map=["s1", "s2", "s3"]),
        "sort": step("sort ${item} ${steps.align.outputs.out.bam} > s.bam", ["s.bam"], foreach="align"),
        "call": step("call -q ${params.q} -d ${params.d} ${steps.sort.outputs.s.bam}", reduce="sort",
                     sweep={"q": [10, 20], "d": ["a", "b", "c"]}),
        "noise": step("noise --seed ${seed}", seeds=4),
    }}
    workflow, created = schedule.submit(ctx, document)
    assert len(created) == 3 + 4
    assert len({j.command for j in created if j.command.startswith("noise")}) == 4
    ran = drain(ctx, stub, created)
    sorts = [j for j in ran if j.command.startswith("sort")]
    assert sorted(j.command.split()[1] for j in sorts) == ["s1", "s2", "s3"], "foreach keeps the element's item"
    calls = [j.command for j in ran if j.command.startswith("call")]
    assert len(calls) == 6 and "call -q 10 -d a " in calls[0]
    assert all(c.count("s.bam") == 3 for c in calls), "a reduce gets every element's output"
    assert state(ctx, workflow.id) == "ok"
    counts = ctx.store.element_counts(workflow.id)
    assert counts == {"align": {"ok": 3}, "sort": {"ok": 3}, "call": {"ok": 6}, "noise": {"ok": 4}}


def test_thousands_of_elements_are_created_in_batches(ctx, stub):
    workflow, created = schedule.submit(ctx, {"name": "big", "steps": {
        "each": step("echo ${item}", map=list(range(4000)))}})
    assert len(created) == 4000 and len({j.id for j in created}) == 4000
    assert ctx.store.element_counts(workflow.id) == {"each": {"new": 4000}}


def test_a_pass_run_twice_or_at_once_creates_no_job_twice(ctx, stub):
    workflow, created = schedule.submit(ctx, DIAMOND)
    assert schedule.advance(ctx, workflow.id) == [], "the first job exists: nothing new"
    assert lifecycle.prepare(ctx, created[0].id)
    assert lifecycle.launch(ctx, created[0].id, lambda _name: stub, owner="m")
    (Path(ctx.store.job(created[0].id).job_dir) / "working" / "ref.fa").write_text("x")
    finished = lifecycle.finish(ctx, stub.end(created[0].id, exit_code=0, report=False))
    first = schedule.after_end(ctx, finished.moved.job)
    again = schedule.after_end(ctx, finished.moved.job)
    full = schedule.advance(ctx, workflow.id)
    assert len(first) == 2 and again == [] and full == []
    assert ctx.store.element_counts(workflow.id)["left"] == {"new": 1}


def test_reconciliation_makes_good_a_pass_a_crash_lost(ctx, stub):
    workflow, created = schedule.submit(ctx, DIAMOND)
    assert lifecycle.prepare(ctx, created[0].id)
    assert lifecycle.launch(ctx, created[0].id, lambda _name: stub, owner="m")
    (Path(ctx.store.job(created[0].id).job_dir) / "working" / "ref.fa").write_text("x")
    assert lifecycle.finish(ctx, stub.end(created[0].id, exit_code=0, report=False)).moved is not None
    # the process died here: the end is recorded, the dependents never created
    assert schedule.overdue(ctx) == [], "not due yet"
    ctx.store.push_check(workflow.id, utcnow() - timedelta(seconds=1))
    made = schedule.overdue(ctx)
    assert sorted(j.command.split(" > ")[1] for j in made) == ["l", "r"]
    assert schedule.overdue(ctx) == [], "its next pass was pushed out"


def test_pause_starts_nothing_new_and_resume_goes_on(ctx, stub):
    workflow, created = schedule.submit(ctx, DIAMOND)
    control.pause(ctx, workflow.id)
    assert run(ctx, stub, created[0]) == [], "paused: the running job finished, nothing new started"
    assert state(ctx, workflow.id) == "paused"
    resumed = control.resume(ctx, workflow.id)
    assert len(resumed) == 2 and state(ctx, workflow.id) == "running"
    with pytest.raises(control.NotMoved):
        control.resume(ctx, workflow.id)


def test_cancel_cancels_running_jobs_and_nothing_more_starts(ctx, stub):
    workflow, created = schedule.submit(ctx, DIAMOND)
    parallel = run(ctx, stub, created[0])
    assert lifecycle.prepare(ctx, parallel[0].id)
    assert lifecycle.launch(ctx, parallel[0].id, lambda _name: stub, owner="m")
    cancelled = control.cancel(ctx, workflow.id)
    assert sorted(c.before.value for c in cancelled) == ["new", "running"]
    assert [c.stop.tracked.job_id for c in cancelled if c.stop] == [parallel[0].id], "the running one is stopped"
    assert state(ctx, workflow.id) == "cancelled"
    assert ctx.store.element_counts(workflow.id) == {"index": {"ok": 1}, "left": {"deleted": 1},
                                                     "right": {"deleted": 1}, "join": {"waiting": 1}}


def test_rerun_runs_only_what_failed_and_what_depends_on_it(ctx, stub):
    document = {"name": "flaky", "steps": {
        "align": step("align ${item} > o", ["o"], map=["good", "bad", "fine"]),
        "merge": step("merge ${steps.align.outputs.o}", reduce="align"),
    }}
    workflow, created = schedule.submit(ctx, document)
    ran = drain(ctx, stub, created, fail="bad")
    assert len(ran) == 3 and state(ctx, workflow.id) == "error"
    assert "align (1)" in ctx.store.workflow(workflow.id).reason
    again = control.rerun(ctx, workflow.id)
    assert [j.command for j in again] == ["align bad > o"], "the ok elements keep their jobs"
    rest = drain(ctx, stub, again)
    assert [j.command.split()[0] for j in rest] == ["align", "merge"]
    assert state(ctx, workflow.id) == "ok"
    kept = {j.id for j in created if "bad" not in j.command}
    assert kept <= {e.job_id for e in ctx.store.elements(workflow.id)}
    with pytest.raises(control.NotMoved):
        control.rerun(ctx, workflow.id)


def test_rerun_of_a_cancelled_workflow(ctx, stub):
    workflow, created = schedule.submit(ctx, DIAMOND)
    control.cancel(ctx, workflow.id)
    again = control.rerun(ctx, workflow.id)
    assert [j.command for j in again] == ["echo ref > ref.fa"] and again[0].id != created[0].id
    drain(ctx, stub, again)
    assert state(ctx, workflow.id) == "ok"


def test_a_workflow_submitted_twice_with_its_id_is_recorded_once(ctx, stub):
    first, created = schedule.submit(ctx, {**DIAMOND, "id": "wf-1"})
    again, more = schedule.submit(ctx, {**DIAMOND, "id": "wf-1"})
    assert first.id == again.id == "wf-1" and len(created) == 1 and more == []
    assert len(ctx.store.recent_workflows()) == 1 and len(ctx.store.recent()) == 1
    with pytest.raises(SpecError):
        schedule.submit(ctx, {**DIAMOND, "name": "other", "id": "wf-1"})


def test_a_repeated_end_gives_the_pass_a_crash_may_have_swallowed_its_job_again(ctx, stub):
    """The finish recorded the end and died before its pass: the redelivered finish hands
    the ended job back, and the pass it runs creates the dependent once."""
    workflow, created = schedule.submit(ctx, {"name": "w", "steps": {
        "a": step("echo x > o", ["o"]), "b": step("cat ${steps.a.outputs.o}")}})
    job = created[0]
    assert lifecycle.prepare(ctx, job.id) and lifecycle.launch(ctx, job.id, lambda _name: stub, owner="m")
    job_dir = ctx.store.job(job.id).job_dir
    (Path(job_dir) / "working" / "o").write_text("x\n")
    first = lifecycle.finish(ctx, stub.end(job.id, exit_code=0, report=False))
    assert first.moved is not None and first.ended_before is None  # its pass never ran
    again = lifecycle.finish(ctx, stub.end(job.id, exit_code=0, report=False))
    assert again.moved is None and again.ended_before is not None and again.ended_before.id == job.id
    dependents = schedule.after_end(ctx, again.ended_before)
    assert first.moved.job.state == "ok" and [j.command for j in dependents] == [f"cat {job_dir}/working/o"]
    assert schedule.after_end(ctx, again.ended_before) == [], "each element's job is created once"
