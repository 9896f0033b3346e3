"""Provenance reuse with the stub runner on SQLite: outputs' sizes and sha256 recorded at
finish, a job that allows reuse ends ok with an earlier job's outputs linked in, a workflow
run again over the same data reuses every step, and the chain of jobs behind an output."""
from __future__ import annotations

import hashlib
import os
import shlex
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
    row = lifecycle.prepare(ctx, job.id).job
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
    row = run(ctx, stub, prepared(ctx, {"command": "make out", "outputs": ["out", "sub/x"], "reuse": True}))
    digest = hashlib.sha256(b"data\n").hexdigest()
    assert row.output_files == {"out": {"size": 5, "sha256": digest}, "sub/x": {"size": 5, "sha256": digest}}
    plain = run(ctx, stub, prepared(ctx, {"command": "make out", "outputs": ["out"]}))
    assert plain.output_files == {"out": {"size": 5}}, "a job that allows no reuse is not read at its finish"


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
    assert linked.stat().st_ino != (Path(first.job_dir) / "working" / "out").stat().st_ino, "copied, not linked"
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
        row = lifecycle.prepare(ctx, job.id).job
        assert row is not None
        if row.state != "ok":
            row = run(ctx, stub, row, f"{job.command}\n")
        ended.append(row)
        jobs += schedule.after_end(ctx, row).start
    return ended


def test_a_workflow_run_again_over_the_same_data_reuses_every_step(ctx, stub):
    first_run, created = schedule.submit(ctx, PIPELINE)
    first = drain(ctx, stub, list(created.start))
    assert [j.reused_from for j in first] == [None, None, None]
    second_run, created = schedule.submit(ctx, PIPELINE)
    second = drain(ctx, stub, list(created.start))
    assert {j.reused_from for j in second} == {j.id for j in first}, "each step reused, the dependents too"
    assert ctx.store.workflow(second_run.id).state == "ok"
    use = next(j for j in second if j.tool_id == "use")
    links = chain(ctx, use.id)
    assert [entry["tool_id"] for entry in links][:2] == ["use", "make"]
    assert links[0]["inputs"][0]["from"] == links[1]["id"]
    assert any(entry["id"] == use.reused_from for entry in links), "and the job it reused"


def test_an_input_named_like_shell_code_cannot_stand_for_an_honest_command(ctx, stub, tmp_path):
    """`cat <dir>/a;echo 666` with an input named `a;echo 666` once read, after the path was
    replaced by its hash, like `cat <dir>/a` over a file of the same content: the honest
    job ended ok with 666. A path stands for its content only where it is one shell word."""
    honest_input, hostile_input = tmp_path / "a", tmp_path / "a;echo 666"
    honest_input.write_text("13\n")
    hostile_input.write_text("13\n")
    hostile = {"command": f"cat {hostile_input} > out", "inputs": [str(hostile_input)], "outputs": ["out"],
               "reuse": True}
    run(ctx, stub, prepared(ctx, hostile), "666\n")
    honest = {"command": f"cat {honest_input} > out", "inputs": [str(honest_input)], "outputs": ["out"],
              "reuse": True}
    assert prepared(ctx, honest).state == "queued", "the hostile job's result does not stand for the honest one"
    quoted = {**hostile, "command": f"cat {shlex.quote(str(hostile_input))} > out"}
    first = run(ctx, stub, prepared(ctx, quoted), "13\n")
    assert prepared(ctx, honest).reused_from == first.id, "the same file content read by the same command is reused"


def test_the_setup_file_the_destination_and_the_user_are_in_the_key_or_scope(ctx, stub, tmp_path):
    setup = tmp_path / "setup.sh"
    setup.write_text("export PATH=/opt/tool/bin:$PATH\n")
    spec = {"command": "tool > out", "outputs": ["out"], "reuse": True, "environment_setup_file": str(setup),
            "user": "alice"}
    first = run(ctx, stub, prepared(ctx, spec), "good\n")
    setup.write_text("export PATH=/tmp/fake:$PATH\n")
    assert prepared(ctx, spec).state == "queued", "another setup file content is another computation"
    setup.write_text("export PATH=/opt/tool/bin:$PATH\n")
    assert prepared(ctx, {**spec, "user": "bob"}).state == "queued", "bob's job does not reuse alice's"
    assert prepared(ctx, spec).reused_from == first.id


def test_a_trusted_users_jobs_may_stand_for_anyones(tmp_path):
    conf = "destinations:\n  stub: {runner: stub}\ndefault: stub\n"
    with embedded_context(tmp_path, conf, REUSE_TRUSTED_USERS="pipelines, ci") as ctx:
        stub = StubRunner(ctx.routing.destinations["stub"].params, lambda completion: None, destination="stub")
        spec = {"command": "tool > out", "outputs": ["out"], "reuse": True, "user": "pipelines"}
        first = run(ctx, stub, prepared(ctx, spec))
        assert prepared(ctx, {**spec, "user": "bob"}).reused_from == first.id


def test_a_reused_output_is_a_checked_copy_reached_without_links(ctx, stub, tmp_path):
    """Same size, other content: not reused. A copy: appending to it leaves the earlier
    job's output alone. A directory of the earlier output replaced by a link out: not
    followed, not reused."""
    spec = {"command": "make", "outputs": ["out", "sub/x"], "reuse": True}
    first = run(ctx, stub, prepared(ctx, spec), "data\n")
    earlier = Path(first.job_dir) / "working"
    (earlier / "out").write_text("DATA\n")  # same size, changed after its hash was recorded
    assert prepared(ctx, spec).state == "queued"
    (earlier / "out").write_text("data\n")
    second = prepared(ctx, spec)
    assert second.reused_from == first.id
    with open(Path(second.job_dir) / "working" / "out", "a") as copy:
        copy.write("appended by the reusing job\n")
    assert (earlier / "out").read_text() == "data\n"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("data\n")  # the recorded content, outside the job directory
    (earlier / "sub" / "x").unlink()
    (earlier / "sub").rmdir()
    (earlier / "sub").symlink_to(outside)
    third = prepared(ctx, spec)
    assert third.state == "queued", "a link on the way to an output is not followed"
    assert not (Path(third.job_dir) / "working" / "out").exists(), "no copy is left of a refused reuse"


def test_hashing_is_bounded_at_finish_and_at_prepare(ctx, stub, tmp_path):
    """A sparse file of terabytes costs its job nothing to make; its finish (and a later
    job's prepare reading it as an input) stays within the hashing budget: the file is
    recorded by size, without a sha256, and is never reused."""
    import time

    job = prepared(ctx, {"command": "make", "outputs": ["huge", "small", "link1", "link2"], "reuse": True})
    assert lifecycle.launch(ctx, job.id, lambda _name: stub, owner="m")
    working = Path(job.job_dir) / "working"
    with open(working / "huge", "wb") as sparse:
        sparse.truncate(2 << 40)  # 2 TiB, no block written
    (working / "small").write_bytes(b"x" * 4096)
    for name in ("link1", "link2"):  # hard links to one file: one inode, read once
        os.link(working / "small", working / name)
    started = time.monotonic()
    finished = lifecycle.finish(ctx, stub.end(job.id, exit_code=0, report=False)).moved
    assert finished is not None and time.monotonic() - started < 5
    files = finished.job.output_files
    assert files["huge"] == {"size": 2 << 40}, "past the budget: its size only"
    assert files["small"]["sha256"] == files["link1"]["sha256"] == files["link2"]["sha256"]
    started = time.monotonic()
    again = prepared(ctx, {"command": "use", "inputs": [str(working / "huge")], "outputs": ["o"], "reuse": True})
    assert again.state == "queued" and time.monotonic() - started < 5
