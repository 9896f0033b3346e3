"""Provenance reuse with the stub runner on SQLite: outputs' sizes and sha256 recorded at
finish, a job that allows reuse ends ok with an earlier job's outputs linked in, a workflow
run again over the same data reuses every step, and the chain of jobs behind an output."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import pytest

from galaxy_tasks import lifecycle
from galaxy_tasks.context import Context
from galaxy_tasks.lifecycle.reuse import chain
from galaxy_tasks.model import Job
from galaxy_tasks.runners.stub import StubRunner
from galaxy_tasks.spec import parse
from galaxy_tasks.states import JobState, is_legal_path
from galaxy_tasks.workflows import schedule
from tests.support.embedded import embedded_context


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    with embedded_context(tmp_path, "destinations:\n  stub: {runner: stub}\ndefault: stub\n") as context:
        yield context


@pytest.fixture
def stub(ctx: Context) -> StubRunner:
    return StubRunner(ctx.routing.destinations["stub"].params, lambda completion: None, destination="stub")


def prepared(ctx: Context, spec: dict[str, Any]) -> Job:
    job, _ = lifecycle.accept(ctx, parse({"tool_id": "t", **spec}))
    row = lifecycle.prepare(ctx, job.id)
    assert row is not None
    return row


def run(ctx: Context, stub: StubRunner, job: Job, content: str = "data\n") -> Job:
    """A prepared job launched, its outputs written with `content`, its end recorded."""
    assert lifecycle.launch(ctx, job.id, lambda _name: stub, owner="m")
    for output in job.outputs:
        where = Path(job.job_dir) / "working" / output
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(content)
    finished = lifecycle.finish(ctx, stub.end(job.id, exit_code=0, report=False))
    assert finished.moved is not None
    return finished.moved.job


def test_output_sizes_and_hashes_are_recorded_at_finish(ctx, stub):
    row = run(ctx, stub, prepared(ctx, {"command": "make out", "outputs": ["out", "sub/x"]}))
    digest = hashlib.sha256(b"data\n").hexdigest()
    assert row.output_files == {"out": {"size": 5, "sha256": digest}, "sub/x": {"size": 5, "sha256": digest}}


def test_a_job_that_allows_reuse_ends_ok_with_the_earlier_jobs_outputs(ctx, stub, tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("same input\n")
    spec = {"command": f"sort {source} > out", "inputs": [str(source)], "outputs": ["out"], "reuse": True}
    first = run(ctx, stub, prepared(ctx, spec), "sorted\n")
    second = prepared(ctx, spec)
    assert second.state == "ok" and second.reused_from == first.id and second.exit_code == 0
    assert "reused the outputs of job" in second.reason
    linked = Path(second.job_dir) / "working" / "out"
    assert linked.read_text() == "sorted\n"
    assert linked.stat().st_ino == (Path(first.job_dir) / "working" / "out").stat().st_ino, "linked, not copied"
    assert second.output_files == first.output_files
    assert is_legal_path([JobState(ch.to_state) for ch in ctx.store.history(second.id)])  # new -> ok
    assert not lifecycle.launch(ctx, second.id, lambda _name: stub, owner="m"), "its launch does nothing"
    assert second.id not in stub.starts


def test_no_reuse_when_an_input_changed_or_the_spec_does_not_allow_it(ctx, stub, tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("one\n")
    spec = {"command": f"sort {source} > out", "inputs": [str(source)], "outputs": ["out"], "reuse": True}
    run(ctx, stub, prepared(ctx, spec))
    assert prepared(ctx, {**spec, "reuse": False}).state == "queued", "not allowed by the spec"
    source.write_text("two\n")
    assert prepared(ctx, spec).state == "queued", "the input's content changed"
    assert prepared(ctx, {**spec, "command": f"sort -r {source} > out"}).state == "queued", "another command"


def test_no_reuse_when_the_earlier_output_is_gone(ctx, stub, tmp_path):
    spec = {"command": "make out", "outputs": ["out"], "reuse": True}
    first = run(ctx, stub, prepared(ctx, spec))
    (Path(first.job_dir) / "working" / "out").unlink()
    assert prepared(ctx, spec).state == "queued"


PIPELINE = {"name": "again", "steps": {
    "make": {"spec": {"tool_id": "make", "command": "make > a", "outputs": ["a"], "reuse": True}},
    "use": {"map": [1, 2], "spec": {"tool_id": "use", "command": "use ${item} ${steps.make.outputs.a} > b",
                                    "outputs": ["b"], "reuse": True}},
}}


def drain(ctx: Context, stub: StubRunner, jobs: list[Job]) -> list[Job]:
    """Every job run (or reused at its prepare) to its end, and those that follow."""
    ended: list[Job] = []
    while jobs:
        job = jobs.pop(0)
        row = lifecycle.prepare(ctx, job.id)
        assert row is not None
        if row.state != "ok":
            row = run(ctx, stub, row, f"{job.command}\n")
        ended.append(row)
        jobs += schedule.after_end(ctx, row)
    return ended


def test_a_workflow_run_again_over_the_same_data_reuses_every_step(ctx, stub):
    first_run, created = schedule.submit(ctx, PIPELINE)
    first = drain(ctx, stub, created)
    assert [j.reused_from for j in first] == [None, None, None]
    second_run, created = schedule.submit(ctx, PIPELINE)
    second = drain(ctx, stub, created)
    assert {j.reused_from for j in second} == {j.id for j in first}, "each step reused, the dependents too"
    assert ctx.store.workflow(second_run.id).state == "ok"
    use = next(j for j in second if j.tool_id == "use")
    links = chain(ctx, use.id)
    assert [entry["tool_id"] for entry in links][:2] == ["use", "make"]
    assert links[0]["inputs"][0]["from"] == links[1]["id"]
    assert any(entry["id"] == use.reused_from for entry in links), "and the job it reused"
