"""The edge's one interpreter, on the in-memory broker and SQLite: each effect of a step
becomes exactly the messages it says (task, queue, arguments), and the tasks, the client
and the embedded mode all reach the same interpreter (a cancel through the client runs the
workflow pass as the cancel task does)."""
from __future__ import annotations

import queue as queue_module
from pathlib import Path
from typing import Any, Iterator

import pytest

from galaxy_tasks import lifecycle
from galaxy_tasks.client import Client
from galaxy_tasks.context import Context
from galaxy_tasks.edge import messages
from galaxy_tasks.edge.app import app
from galaxy_tasks.errors import SpecError
from galaxy_tasks.lifecycle import Effects, ToStop
from galaxy_tasks.model import Job
from galaxy_tasks.runners.base import Completion, Tracked
from galaxy_tasks.runners.stub import StubRunner
from galaxy_tasks.spec import parse
from galaxy_tasks.workflows import schedule
from tests.support.embedded import embedded_context

JOB_CONF = """
destinations:
  local: {runner: local, queue: local}
  cluster: {runner: stub, queue: cluster}
default: local
"""


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    with embedded_context(tmp_path, JOB_CONF) as context:
        drained(context.settings.steps_queue, "local", "cluster")  # nothing left by another test
        yield context


def drained(*queues: str) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """Every message waiting on these queues of the in-memory broker: (queue, task name,
    kwargs, the message's own options), in the order sent per queue."""
    found = []
    with app.connection_for_read() as connection:
        for name in queues:
            simple = connection.SimpleQueue(name, no_ack=True)
            while True:
                try:
                    message = simple.get(timeout=0.05)
                except queue_module.Empty:
                    break
                _args, kwargs, embed = message.decode()
                found.append((name, message.headers["task"], kwargs, {**embed, "eta": message.headers.get("eta")}))
            simple.close()
    return found


def accepted(ctx: Context, **spec: Any) -> Job:
    return lifecycle.accept(ctx, parse({"tool_id": "t", "command": "true", **spec})).job


def test_a_new_job_starts_its_whole_chain_on_the_steps_queue(ctx):
    job = accepted(ctx, destination="cluster")
    messages.carry_out(ctx, lifecycle.accept(ctx, parse({"tool_id": "t", "command": "true", "id": "j-1"})).effects)
    messages.carry_out(ctx, Effects(start=[job]))
    sent = drained(ctx.settings.steps_queue, "cluster", "local")
    assert [(q, task, kw["job_id"]) for q, task, kw, _ in sent] == [
        ("galaxy_tasks", "galaxy_tasks.prepare_job", "j-1"), ("galaxy_tasks", "galaxy_tasks.prepare_job", job.id)]
    [launch] = sent[1][3]["chain"]
    assert launch["task"] == "galaxy_tasks.launch_job" and launch["options"]["queue"] == "cluster"


def test_a_duplicated_submit_starts_nothing(ctx):
    first = lifecycle.accept(ctx, parse({"tool_id": "t", "command": "true", "id": "same"}))
    again = lifecycle.accept(ctx, parse({"tool_id": "t", "command": "true", "id": "same"}))
    messages.carry_out(ctx, again.effects)
    assert first.created and not again.created and drained(ctx.settings.steps_queue) == []


def test_a_resubmission_starts_after_its_delay(ctx):
    job = accepted(ctx)
    messages.carry_out(ctx, Effects(start_later=[(job, 30.0)]))
    [(_queue, task, kwargs, options)] = drained(ctx.settings.steps_queue)
    assert task == "galaxy_tasks.prepare_job" and kwargs["job_id"] == job.id and options["eta"] is not None


def test_launches_wakes_stops_and_batched_checks_go_to_the_queue_that_acts(ctx):
    host = ctx.settings.host
    many = [Tracked(f"c-{n}", f"ext-{n}", Path("/nowhere")) for n in range(messages.BATCH + 1)]
    effects = (Effects(launch=[("a", "local"), ("b", "cluster")], wake=["local"])
               + Effects(stop=[ToStop(Tracked("r", f"{host}:4242", Path("/nowhere")), "local")],
                         check={"cluster": many}, recheck_stopped={"gone": many[:1]}))
    messages.carry_out(ctx, effects)
    sent = drained("local", "cluster", f"local@{host}")
    summary = [(q, task.removeprefix("galaxy_tasks."), kw.get("job_id") or kw.get("destination"),
                len(kw.get("job_ids", []))) for q, task, kw, _ in sent]
    assert summary == [
        ("local", "launch_job", "a", 0), ("local", "launch_next", "local", 0),
        ("cluster", "launch_job", "b", 0), ("cluster", "check_jobs", "cluster", messages.BATCH),
        ("cluster", "check_jobs", "cluster", 1),
        (f"local@{host}", "kill_job", "r", 0),
    ], "a destination no longer configured ('gone') gets nothing"


TWO_STEPS = {"name": "two", "steps": {
    "first": {"spec": {"tool_id": "t", "command": "echo 1 > o", "outputs": ["o"], "destination": "cluster"}},
    "second": {"spec": {"tool_id": "t", "command": "cat ${steps.first.outputs.o}", "destination": "cluster"}},
}}


def test_the_end_of_a_workflow_job_starts_its_dependent_once_however_often_it_is_heard(ctx):
    stub = StubRunner(ctx.routing.destinations["cluster"].params, lambda completion: None, destination="cluster")
    _workflow, follows = schedule.submit(ctx, TWO_STEPS)
    [first] = follows.start
    assert lifecycle.prepare(ctx, first.id) and lifecycle.launch(ctx, first.id, lambda _name: stub, owner="m")
    row = ctx.store.job(first.id)
    (Path(row.job_dir) / "working" / "o").write_text("1\n")
    end = stub.end(first.id, exit_code=0, report=False)
    finished, again = lifecycle.finish(ctx, end), lifecycle.finish(ctx, end)
    assert finished.moved is not None and again.moved is None
    messages.carry_out(ctx, finished.effects)
    messages.carry_out(ctx, again.effects)  # a redelivered finish passes again
    started = [kw["job_id"] for _q, task, kw, _ in drained(ctx.settings.steps_queue) if task.endswith("prepare_job")]
    assert len(started) == 1 and ctx.store.job(started[0]).command.startswith("cat ")


def test_a_cancel_through_the_client_ends_the_workflow_at_once(ctx):
    """The client's cancel (the CLI's) runs the workflow's pass as the cancel task does: the
    workflow whose first job is cancelled before launch ends now, not at reconciliation."""
    client = Client(ctx)
    workflow = client.submit_workflow(TWO_STEPS)
    [first] = [e for e in ctx.store.elements(workflow.id) if e.job_state is not None]
    assert client.cancel(first.job_id).value == "new"
    ended = client.workflow(workflow.id)
    assert ended.state == "error" and "first" in (ended.reason or ""), "its dependent can never run"
    drained(ctx.settings.steps_queue, "cluster")


def test_a_submit_set_aside_for_killing_its_workers_reaches_its_client_as_a_refusal(ctx):
    """A submit whose message the broker gave back MAX_RETURNS times is dead-lettered, and
    its client hears the job refused instead of waiting for it forever."""
    from galaxy_tasks.edge.message_checks import MAX_RETURNS, SUBMIT_JOB, set_aside

    spec = {"tool_id": "t", "command": "true", "id": "g-main-7", "events": {"queue": "galaxy.main", "client_id": "7"}}
    app.send_task(SUBMIT_JOB, kwargs=spec, queue="gt-returned")
    with app.connection_for_read() as connection:
        simple = connection.SimpleQueue("gt-returned")
        message = simple.get(timeout=1)
        assert set_aside(ctx, message, None, SUBMIT_JOB) is False, "a first delivery costs nothing"
        message.delivery_info["redelivered"] = True  # as the broker marks a message it gave back
        verdicts = [set_aside(ctx, message, None, SUBMIT_JOB) for _ in range(MAX_RETURNS)]
        simple.close()
    assert verdicts == [False] * (MAX_RETURNS - 1) + [True]
    assert ctx.store.job("g-main-7") is None
    with app.connection_for_read() as connection:
        events = connection.SimpleQueue("galaxy.main", no_ack=True)
        told = events.get(timeout=1).decode()
        events.close()
    assert (told["job_id"], told["client_id"], told["state"], told["refused"]) == ("g-main-7", "7", "error", True)
    assert f"given back by the broker {MAX_RETURNS} times" in told["reason"]


def test_jobs_started_together_move_in_batches_one_prepare_and_one_launch_message_each(ctx):
    """A burst moves in batches per destination queue (a job alone keeps its own chain, as
    the first test here shows): every job in exactly one batch, none over START_BATCH."""
    specs = [{"tool_id": "t", "command": f"echo {n}", "destination": "cluster" if n % 3 else "local"}
             for n in range(2 * messages.START_BATCH + 7)]
    jobs = Client(ctx).submit_many(specs)
    sent = drained(ctx.settings.steps_queue, "cluster", "local")
    assert {task for _q, task, _kw, _o in sent} == {"galaxy_tasks.prepare_jobs"}
    batches: dict[str, list[str]] = {}
    for _queue, _task, kwargs, options in sent:
        [launch] = options["chain"]
        assert launch["task"] == "galaxy_tasks.launch_jobs" and launch["kwargs"] == kwargs
        assert len(kwargs["job_ids"]) <= messages.START_BATCH
        batches.setdefault(launch["options"]["queue"], []).extend(kwargs["job_ids"])
    assert sorted(batches["cluster"]) == sorted(j.id for j in jobs if j.destination == "cluster")
    assert sorted(batches["local"]) == sorted(j.id for j in jobs if j.destination == "local")
    assert len(sent) == 3, "71 jobs to the cluster in two batches, 36 local in one"


def test_submit_many_checks_every_spec_before_it_records_any(ctx):
    client = Client(ctx)
    good = {"tool_id": "t", "command": "true"}
    with pytest.raises(SpecError) as refused:
        client.submit_many([good, {**good, "id": "m-1"}, {"tool_id": "t"}])
    assert refused.value.field.startswith("specs[2].")
    with pytest.raises(SpecError, match="more than one job"):
        client.submit_many([{**good, "id": "twice"}, {**good, "id": "twice"}])
    assert client.list() == [] and drained(ctx.settings.steps_queue) == []


def test_submit_many_is_idempotent_by_id_and_refuses_an_id_used_by_another_command(ctx):
    client = Client(ctx)
    first = client.submit_many([{"tool_id": "t", "command": "true", "id": f"k-{n}"} for n in range(3)])
    drained(ctx.settings.steps_queue)
    again = client.submit_many([{"tool_id": "t", "command": "true", "id": f"k-{n}"} for n in range(4)])
    assert [j.id for j in again[:3]] == [j.id for j in first]
    [(_q, task, kwargs, _o)] = drained(ctx.settings.steps_queue)
    assert task == "galaxy_tasks.prepare_job" and kwargs["job_id"] == "k-3", "only the new one starts"
    with pytest.raises(SpecError, match="already used by another job"):
        client.submit_many([{"tool_id": "t", "command": "false", "id": "k-0"}, {"tool_id": "t", "command": "true"}])
    assert len(client.list()) == 4, "nothing recorded for the refused burst"


def test_ends_seen_together_are_sent_together_and_each_exactly_once(ctx):
    ends = [Completion(job_id=f"e-{n}", exit_code=0) for n in range(40)]
    messages.report_ends(ctx.settings, ends[:1])
    messages.report_ends(ctx.settings, ends[1:3])
    sender = messages.ends_sender(ctx.settings)
    for end in ends[3:]:
        sender(end)
    assert sender.flush()
    sent = drained(ctx.settings.ends_queue)
    assert [task for _q, task, _kw, _o in sent[:2]] == ["galaxy_tasks.finish_job", "galaxy_tasks.finish_jobs"]
    heard = [kw["job_id"] for _q, task, kw, _o in sent if task.endswith("finish_job")]
    heard += [c["job_id"] for _q, task, kw, _o in sent if task.endswith("finish_jobs") for c in kw["completions"]]
    assert sorted(heard) == sorted(e.job_id for e in ends)
    assert len(sent) <= len(ends) - 1


def test_a_submit_whose_arguments_do_not_fit_reaches_its_client_as_a_refusal(ctx):
    """A submit_job with a positional argument beside its spec is refused unrun, and its
    client hears the job refused with the reason (not a log line alone)."""
    from galaxy_tasks.edge import tasks

    spec = {"tool_id": "t", "command": "true", "id": "g-main-8", "events": {"queue": "galaxy.main", "client_id": "8"}}
    assert tasks.submit_job("stray", **spec) is None
    assert ctx.store.job("g-main-8") is None
    with app.connection_for_read() as connection:
        events = connection.SimpleQueue("galaxy.main", no_ack=True)
        told = events.get(timeout=1).decode()
        events.close()
    assert (told["job_id"], told["state"], told["refused"]) == ("g-main-8", "error", True)
    assert "arguments do not fit" in told["reason"]
