"""Workflows with the stub runner on SQLite: a step becomes a job when its inputs exist,
map, sweep, seeds and reduce, pause, resume, cancel, rerun, a pass lost to a crash made good
by reconciliation, one job per element however many passes run, and elements made lazily:
none at submit, at most GALAXY_TASKS_WORKFLOW_PASS_MOST per pass, the rest by the passes that continue it."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest

from galaxy_tasks import lifecycle
from galaxy_tasks.client import Client
from galaxy_tasks.context import Context
from galaxy_tasks.errors import SpecError
from galaxy_tasks.lifecycle import Effects
from galaxy_tasks.model import Job, WorkflowRecord, utcnow
from galaxy_tasks.runners.stub import StubRunner
from galaxy_tasks.states import JobState
from galaxy_tasks.workflows import control, schedule
from galaxy_tasks.workflows.document import params
from tests.support.embedded import embedded_context

JOB_CONF = """
destinations:
  stub: {runner: stub}
default: stub
"""


@pytest.fixture
def ctx(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Context]:
    """The embedded context; `pass_most(n)` parametrizes it indirectly: passes of n elements."""
    settings = {"WORKFLOW_PASS_MOST": str(request.param)} if hasattr(request, "param") else {}
    with embedded_context(tmp_path, JOB_CONF, **settings) as context:
        yield context


def pass_most(most: int) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("ctx", [most], indirect=True)


@pytest.fixture
def stub(ctx: Context) -> StubRunner:
    return StubRunner(ctx.routing.destinations["stub"].params, lambda completion: None, destination="stub")


def step(command: str, outputs: list[str] | None = None, **fan: Any) -> dict[str, Any]:
    return {"spec": {"tool_id": "t", "command": command, "outputs": outputs or []}, **fan}


def submit(ctx: Context, document: dict[str, Any]) -> tuple[WorkflowRecord, list[Job]]:
    """The workflow recorded, and the jobs its first pass created."""
    workflow, follows = schedule.submit(ctx, document)
    return workflow, list(follows.start)


def run(ctx: Context, stub: StubRunner, job: Job, exit_code: int = 0) -> list[Job]:
    """The job prepared, launched, its outputs written and its end recorded: the jobs the
    pass that follows created."""
    return list(ended(ctx, stub, job, exit_code).start)


def ended(ctx: Context, stub: StubRunner, job: Job, exit_code: int = 0) -> Effects:
    """As run: what the pass that follows its end says follows."""
    assert lifecycle.prepare(ctx, job.id)
    assert lifecycle.launch(ctx, job.id, lambda _name: stub, owner="m")
    row = ctx.store.job(job.id)
    assert row is not None and row.job_dir
    for output in row.outputs:
        (Path(row.job_dir) / "working" / output).write_text(f"{job.id}\n")
    finished = lifecycle.finish(ctx, stub.end(job.id, exit_code=exit_code, report=False))
    assert finished.moved is not None
    return schedule.after_end(ctx, finished.moved.job)


def drain(ctx: Context, stub: StubRunner, jobs: list[Job] | Effects, fail: str = "") -> list[Job]:
    """Run every job and those they lead to, in order, and each pass a pass asked for
    (advance_workflow); jobs whose command contains `fail` (when given) exit 1. Returns
    every job that ran."""
    ran: list[Job] = []
    follows = jobs if isinstance(jobs, Effects) else Effects(start=jobs)
    pending, passes = list(follows.start), list(follows.advance)
    while pending or passes:
        if passes:
            follows = schedule.advance(ctx, passes.pop(0))
        else:
            job = pending.pop(0)
            ran.append(job)
            follows = ended(ctx, stub, job, 1 if fail and fail in job.command else 0)
        assert len(follows.start) <= ctx.settings.workflow_pass_most
        pending += follows.start
        passes += follows.advance
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
    workflow, created = submit(ctx, DIAMOND)
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
    workflow, created = submit(ctx, document)
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


def test_a_workflow_of_thousands_of_seeds_is_accepted_without_its_elements_and_made_a_bounded_pass_at_a_time(ctx):
    """Submit records the workflow and its steps, not 5,000 elements: its first pass writes
    one chunk and asks for the next pass; no pass creates more than its bound (1,000); the passes
    driven to the end create each element's job once, and the workflow ends ok when every
    one of them is ok."""
    workflow, follows = schedule.submit(ctx, {"name": "many", "steps": {"s": step("echo ${seed}", seeds=5000)}})
    assert len(follows.start) == ctx.settings.workflow_pass_most and follows.advance == [workflow.id]
    assert len(ctx.store.elements(workflow.id)) == ctx.settings.workflow_pass_most
    assert ctx.store.element_counts(workflow.id) == {"s": {"new": 1000, "waiting": 4000}}
    assert ctx.store.workflow(workflow.id).check_at <= utcnow(), "a lost continuation is reconciliation's"
    created = list(follows.start)
    while follows.advance:
        follows = schedule.advance(ctx, follows.advance[0])
        assert 0 < len(follows.start) <= ctx.settings.workflow_pass_most
        created += follows.start
    assert len(created) == len({job.id for job in created}) == 5000
    assert len({job.command for job in created}) > 4990, "each element its own seed"
    assert ctx.store.element_counts(workflow.id) == {"s": {"new": 5000}}
    assert not schedule.advance(ctx, workflow.id), "every element has its job"
    for job in created:
        assert ctx.store.move(job.id, JobState.OK) is not None
    assert not schedule.advance(ctx, workflow.id) and state(ctx, workflow.id) == "ok"


@pass_most(3)
def test_seeds_are_the_same_on_every_pass_that_computes_them(ctx):
    """An element's parameters are computed from its step and index: a pass that races
    another computes the same seed, and the seed is the one recorded with the element."""
    workflow, follows = schedule.submit(ctx, {"name": "s", "steps": {"s": step("echo ${seed}", seeds=5)}})
    [steps] = [ctx.store.steps(workflow.id)]
    again = [params(steps[0].fan, index)["seed"] for index in range(5)]
    assert [job.command for job in follows.start] == [f"echo {seed}" for seed in again[:3]]
    assert [e.params["seed"] for e in ctx.store.elements(workflow.id)] == again[:3]


@pass_most(40)
def test_two_racing_passes_create_each_job_once(ctx, monkeypatch):
    """A pass that plans its elements while another writes the same ones: the element and
    job ids that exist are skipped, so each element gets one job, made by one of them."""
    workflow, first = schedule.submit(ctx, {"name": "race", "steps": {"s": step("echo ${item}", map=list(range(100)))}})
    create_jobs = ctx.store.create_jobs
    raced: list[Job] = []

    def racing(rows, elements=()):  # the other pass writes between this one's reading and writing
        monkeypatch.setattr(ctx.store, "create_jobs", create_jobs)
        raced.extend(schedule.advance(ctx, workflow.id).start)
        return create_jobs(rows, elements)

    monkeypatch.setattr(ctx.store, "create_jobs", racing)
    mine = schedule.advance(ctx, workflow.id).start
    assert len(raced) == 40 and mine == [], "the same 40 elements: the first to write made them"
    created = [*first.start, *raced, *schedule.advance(ctx, workflow.id).start]
    assert len(created) == len({job.id for job in created}) == 100
    assert len(ctx.store.elements(workflow.id)) == 100 and len(ctx.store.recent(limit=1000)) == 100


@pass_most(7)
def test_a_foreach_and_a_reduce_over_several_chunks_end_right(ctx, stub):
    document = {"name": "chunks", "steps": {
        "align": step("align ${item} > o", ["o"], map=[f"s{n}" for n in range(20)]),
        "sort": step("sort ${item} ${steps.align.outputs.o} > s", ["s"], foreach="align"),
        "call": step("call ${params.q} ${steps.sort.outputs.s}", reduce="sort", sweep={"q": [1, 2, 3]}),
    }}
    workflow, follows = schedule.submit(ctx, document)
    assert len(follows.start) == 7 and follows.advance
    ran = drain(ctx, stub, follows)
    assert state(ctx, workflow.id) == "ok"
    assert ctx.store.element_counts(workflow.id) == {"align": {"ok": 20}, "sort": {"ok": 20}, "call": {"ok": 3}}
    sorts = [j.command.split()[1] for j in ran if j.command.startswith("sort")]
    assert sorted(sorts) == sorted(f"s{n}" for n in range(20)), "each sort keeps its align's item, once"
    calls = [j.command for j in ran if j.command.startswith("call")]
    assert len(calls) == 3 and all(c.count("/working/s") == 20 for c in calls), "a reduce gets every element"
    assert len(ran) == len({j.id for j in ran}) == 43


@pass_most(2)
def test_a_workflow_is_not_ended_while_elements_are_still_to_be_written(ctx, stub):
    """Every job written so far ended ok, the next pass's message lost: the pass after the
    last end writes the next elements instead of ending the workflow ok."""
    workflow, follows = schedule.submit(ctx, {"name": "w", "steps": {"s": step("echo ${item}", map=[1, 2, 3, 4, 5])}})
    assert run(ctx, stub, follows.start[0]) == []
    after = ended(ctx, stub, follows.start[1])
    assert [j.command for j in after.start] == ["echo 3", "echo 4"] and after.advance == [workflow.id]
    assert state(ctx, workflow.id) == "running"
    status = Client(ctx).workflow_status(workflow.id)
    assert status["states"] == {"ok": 2, "new": 2, "waiting": 1}
    assert status["steps"][0]["elements"] == 5 and status["steps"][0]["states"]["waiting"] == 1
    drain(ctx, stub, after)
    assert state(ctx, workflow.id) == "ok"


@pass_most(10)
def test_a_lost_continuation_is_made_good_by_reconciliation(ctx, stub):
    workflow, follows = schedule.submit(ctx, {"name": "w", "steps": {"s": step("echo ${seed}", seeds=25)}})
    assert follows.advance == [workflow.id]  # the worker was killed before it sent this
    made = schedule.overdue(ctx)
    assert len(made.start) == 10 and made.advance == [workflow.id]
    assert len(schedule.overdue(ctx).start) == 5, "due again at once while work is left"
    assert ctx.store.element_counts(workflow.id) == {"s": {"new": 25}}


@pass_most(4)
def test_rerun_of_a_failed_element_in_a_chunked_workflow(ctx, stub):
    document = {"name": "flaky", "steps": {
        "align": step("align ${item} > o", ["o"], map=[f"s{n}" for n in range(11)]),
        "merge": step("merge ${steps.align.outputs.o}", reduce="align"),
    }}
    workflow, follows = schedule.submit(ctx, document)
    ran = drain(ctx, stub, follows, fail="s7 ")
    assert len(ran) == 11 and state(ctx, workflow.id) == "error"
    assert ctx.store.element_counts(workflow.id) == {"align": {"ok": 10, "error": 1}, "merge": {"waiting": 1}}
    again = control.rerun(ctx, workflow.id)
    assert [j.command for j in again.start] == ["align s7 > o"] and not again.advance
    rest = drain(ctx, stub, again)
    assert [j.command.split()[0] for j in rest] == ["align", "merge"] and state(ctx, workflow.id) == "ok"
    assert rest[1].command.count("/working/o") == 11


def test_a_pass_run_twice_or_at_once_creates_no_job_twice(ctx, stub):
    workflow, created = submit(ctx, DIAMOND)
    assert not schedule.advance(ctx, workflow.id).start, "the first job exists: nothing new"
    assert lifecycle.prepare(ctx, created[0].id)
    assert lifecycle.launch(ctx, created[0].id, lambda _name: stub, owner="m")
    (Path(ctx.store.job(created[0].id).job_dir) / "working" / "ref.fa").write_text("x")
    finished = lifecycle.finish(ctx, stub.end(created[0].id, exit_code=0, report=False))
    first = schedule.after_end(ctx, finished.moved.job).start
    again = schedule.after_end(ctx, finished.moved.job).start
    full = schedule.advance(ctx, workflow.id).start
    assert len(first) == 2 and not again and not full
    assert ctx.store.element_counts(workflow.id)["left"] == {"new": 1}


def test_reconciliation_makes_good_a_pass_a_crash_lost(ctx, stub):
    workflow, created = submit(ctx, DIAMOND)
    assert lifecycle.prepare(ctx, created[0].id)
    assert lifecycle.launch(ctx, created[0].id, lambda _name: stub, owner="m")
    (Path(ctx.store.job(created[0].id).job_dir) / "working" / "ref.fa").write_text("x")
    assert lifecycle.finish(ctx, stub.end(created[0].id, exit_code=0, report=False)).moved is not None
    # the process died here: the end is recorded, the dependents never created
    assert not schedule.overdue(ctx).start, "not due yet"
    ctx.store.push_check(workflow.id, utcnow() - timedelta(seconds=1))
    made = schedule.overdue(ctx).start
    assert sorted(j.command.split(" > ")[1] for j in made) == ["l", "r"]
    assert not schedule.overdue(ctx).start, "its next pass was pushed out"


def test_pause_starts_nothing_new_and_resume_goes_on(ctx, stub):
    workflow, created = submit(ctx, DIAMOND)
    control.pause(ctx, workflow.id)
    assert run(ctx, stub, created[0]) == [], "paused: the running job finished, nothing new started"
    assert state(ctx, workflow.id) == "paused"
    resumed = control.resume(ctx, workflow.id).start
    assert len(resumed) == 2 and state(ctx, workflow.id) == "running"
    with pytest.raises(control.NotMoved):
        control.resume(ctx, workflow.id)


def test_cancel_cancels_running_jobs_and_nothing_more_starts(ctx, stub):
    workflow, created = submit(ctx, DIAMOND)
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
    workflow, created = submit(ctx, document)
    ran = drain(ctx, stub, created, fail="bad")
    assert len(ran) == 3 and state(ctx, workflow.id) == "error"
    assert "align (1)" in ctx.store.workflow(workflow.id).reason
    again = list(control.rerun(ctx, workflow.id).start)
    assert [j.command for j in again] == ["align bad > o"], "the ok elements keep their jobs"
    rest = drain(ctx, stub, again)
    assert [j.command.split()[0] for j in rest] == ["align", "merge"]
    assert state(ctx, workflow.id) == "ok"
    kept = {j.id for j in created if "bad" not in j.command}
    assert kept <= {e.job_id for e in ctx.store.elements(workflow.id)}
    with pytest.raises(control.NotMoved):
        control.rerun(ctx, workflow.id)


def test_rerun_of_a_cancelled_workflow(ctx, stub):
    workflow, created = submit(ctx, DIAMOND)
    control.cancel(ctx, workflow.id)
    again = list(control.rerun(ctx, workflow.id).start)
    assert [j.command for j in again] == ["echo ref > ref.fa"] and again[0].id != created[0].id
    drain(ctx, stub, again)
    assert state(ctx, workflow.id) == "ok"


def test_a_workflow_submitted_twice_with_its_id_is_recorded_once(ctx, stub):
    first, created = submit(ctx, {**DIAMOND, "id": "wf-1"})
    again, more = submit(ctx, {**DIAMOND, "id": "wf-1"})
    assert first.id == again.id == "wf-1" and len(created) == 1 and more == []
    assert len(ctx.store.recent_workflows()) == 1 and len(ctx.store.recent()) == 1
    with pytest.raises(SpecError):
        submit(ctx, {**DIAMOND, "name": "other", "id": "wf-1"})


def test_a_repeated_end_gives_the_pass_a_crash_may_have_swallowed_its_job_again(ctx, stub):
    """The finish recorded the end and died before its pass: the redelivered finish hands
    the ended job back, and the pass it runs creates the dependent once."""
    workflow, created = submit(ctx, {"name": "w", "steps": {
        "a": step("echo x > o", ["o"]), "b": step("cat ${steps.a.outputs.o}")}})
    job = created[0]
    assert lifecycle.prepare(ctx, job.id) and lifecycle.launch(ctx, job.id, lambda _name: stub, owner="m")
    job_dir = ctx.store.job(job.id).job_dir
    (Path(job_dir) / "working" / "o").write_text("x\n")
    first = lifecycle.finish(ctx, stub.end(job.id, exit_code=0, report=False))
    assert first.moved is not None and first.ended_before is None  # its pass never ran
    again = lifecycle.finish(ctx, stub.end(job.id, exit_code=0, report=False))
    assert again.moved is None and again.ended_before is not None and again.ended_before.id == job.id
    dependents = schedule.after_end(ctx, again.ended_before).start
    assert first.moved.job.state == "ok" and [j.command for j in dependents] == [f"cat {job_dir}/working/o"]
    assert not schedule.after_end(ctx, again.ended_before).start, "each element's job is created once"
