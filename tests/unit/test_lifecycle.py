"""The lifecycle's branches with the stub runner on SQLite: launch, finish, cancel during a
launch, a full or refusing runner, the launch lease, prepare's failures, reconciliation's
lease. Milliseconds each; the real runners are tested for real in their own tiers."""
from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from galaxy_tasks import config, lifecycle, routing
from galaxy_tasks.context import Context
from galaxy_tasks.errors import RunnerError, RunnerUnavailable, SpecError
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.model import Job
from galaxy_tasks.runners.base import Completion
from galaxy_tasks.runners.stub import StubRunner
from galaxy_tasks.spec import parse
from galaxy_tasks.states import JobState
from tests.support.embedded import embedded_context

S = JobState
JOB_CONF = """
destinations:
  stub: {runner: stub}
  slotted: {runner: stub, params: {slots: 1}}
default: stub
"""


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    with embedded_context(tmp_path, JOB_CONF, LAUNCH_LEASE="0.3") as context:
        yield context


class Reports(list[Completion]):
    def __call__(self, completion: Completion) -> None:
        self.append(completion)


@pytest.fixture
def stubs(ctx: Context) -> dict[str, StubRunner]:
    return {name: StubRunner(d.params, Reports(), destination=name) for name, d in ctx.routing.destinations.items()}


def queued(ctx: Context, destination: str = "stub", command: str = "true", **fields: object) -> str:
    job, created = lifecycle.accept(ctx, parse({"tool_id": "t", "command": command, "destination": destination,
                                                **fields}))
    assert created
    assert lifecycle.prepare(ctx, job.id)
    return job.id


def launch(ctx: Context, stubs: dict[str, StubRunner], job_id: str, owner: str | None = "m1") -> bool:
    return lifecycle.launch(ctx, job_id, stubs.__getitem__, owner=owner)


def job(ctx: Context, job_id: str) -> Job:
    found = ctx.store.job(job_id)
    assert found is not None
    return found


def states(ctx: Context, job_id: str) -> list[str]:
    return [change.to_state for change in ctx.store.history(job_id)]


# -- launch -------------------------------------------------------------------------------


def test_launch_hands_the_prepared_job_to_its_runner_once(ctx, stubs):
    job_id = queued(ctx)
    assert launch(ctx, stubs, job_id)
    row = job(ctx, job_id)
    assert row.state == "running" and row.external_id == f"stub-{job_id}"
    handed = stubs["stub"].running[job_id]
    assert handed.script == JobDir(Path(row.job_dir)).script and handed.script.exists()
    assert not launch(ctx, stubs, job_id, owner="m2"), "a second message finds the job past its launch"
    assert stubs["stub"].starts == {job_id: 1}
    assert states(ctx, job_id) == ["new", "queued", "submitting", "running"]


def test_a_refusing_runner_fails_the_job_with_its_reason(ctx, stubs):
    job_id = queued(ctx)
    stubs["stub"].fail_next = RunnerError("Grid Engine refused job: unknown queue")
    assert not launch(ctx, stubs, job_id)
    row = job(ctx, job_id)
    assert row.state == "error" and row.reason == "Grid Engine refused job: unknown queue"
    assert stubs["stub"].starts == {}


def test_real_user_job_is_refused_by_a_runner_that_cannot_run_it_as_its_user(ctx, stubs):
    """A job that names run_as never runs as the worker's user instead."""
    job_id = queued(ctx, run_as="gtrualice")
    assert job(ctx, job_id).run_as == "gtrualice"
    assert not launch(ctx, stubs, job_id)
    row = job(ctx, job_id)
    assert row.state == "error" and "cannot start a job as its user" in (row.reason or "")
    assert stubs["stub"].starts == {}


def test_a_full_runner_puts_the_job_back_in_line(ctx, stubs):
    first, second = queued(ctx, "slotted"), queued(ctx, "slotted")
    assert launch(ctx, stubs, first)
    assert not launch(ctx, stubs, second)
    assert job(ctx, second).state == "queued"
    assert states(ctx, second) == ["new", "queued", "submitting", "queued"]
    assert second not in stubs["slotted"].starts


def test_an_unavailable_runner_leaves_the_launch_to_its_retry(ctx, stubs):
    job_id = queued(ctx)
    stubs["stub"].fail_next = RunnerUnavailable("not connected to the Mesos master")
    with pytest.raises(RunnerUnavailable):
        launch(ctx, stubs, job_id, owner="m1")
    assert job(ctx, job_id).state == "submitting", "not the job's fault: it is not failed"
    assert launch(ctx, stubs, job_id, owner="m1"), "the same message, retried, takes its launch over at once"
    assert job(ctx, job_id).state == "running" and stubs["stub"].starts == {job_id: 1}


def test_another_message_waits_out_the_launch_lease(ctx, stubs):
    job_id = queued(ctx)
    stubs["stub"].fail_next = RunnerUnavailable("gone for a moment")
    with pytest.raises(RunnerUnavailable):
        launch(ctx, stubs, job_id, owner="m1")
    assert not launch(ctx, stubs, job_id, owner="m2"), "inside the lease another message leaves it alone"
    assert job(ctx, job_id).state == "submitting"
    time.sleep(ctx.settings.launch_lease + 0.1)
    assert launch(ctx, stubs, job_id, owner="m2"), "after the lease it takes the launch over"
    assert stubs["stub"].starts == {job_id: 1}


def test_a_cancel_that_lands_during_the_launch_stops_what_was_started(ctx, stubs):
    job_id = queued(ctx)
    stub = stubs["stub"]
    stub.during_submit = lambda launched: lifecycle.cancel(ctx, launched.job_id)
    assert not launch(ctx, stubs, job_id)
    assert job(ctx, job_id).state == "deleted"
    assert stub.cancelled == [job_id] and job_id not in stub.running, "the process just started was stopped"


def test_next_queued_is_the_oldest(ctx, stubs):
    ids = [queued(ctx, "slotted") for _ in range(3)]
    assert lifecycle.next_queued(ctx, "slotted") == ids[0]
    assert launch(ctx, stubs, ids[0])
    assert lifecycle.next_queued(ctx, "slotted") == ids[1]


# -- finish -------------------------------------------------------------------------------


def running(ctx: Context, stubs: dict[str, StubRunner], destination: str = "stub", **fields: object) -> str:
    job_id = queued(ctx, destination, **fields)
    assert launch(ctx, stubs, job_id)
    return job_id


def test_finish_records_the_end(ctx, stubs):
    ok, failed = running(ctx, stubs), running(ctx, stubs)
    assert lifecycle.finish(ctx, stubs["stub"].end(ok, exit_code=0)).moved.job.state == "ok"
    ended = lifecycle.finish(ctx, stubs["stub"].end(failed, exit_code=3))
    assert (ended.moved.job.state, ended.moved.job.reason, ended.moved.job.exit_code) == ("error", "exit code 3", 3)


def test_the_exit_code_the_job_recorded_wins_over_the_runners(ctx, stubs):
    job_id = running(ctx, stubs)
    row = job(ctx, job_id)
    JobDir(Path(row.job_dir)).exit_code_file.write_text(f"0 {row.token}\n")
    stubs["stub"].end(job_id, exit_code=1, report=False)
    finished = lifecycle.finish(ctx, Completion(job_id, exit_code=1, external_id=f"stub-{job_id}"))
    assert finished.moved.job.state == "ok" and finished.moved.job.exit_code == 0


def test_a_completion_without_evidence_changes_nothing(ctx, stubs):
    """A finish message for a job whose directory says nothing of an end (forged, or early):
    the job keeps running, and reconciliation looks at it at its next pass."""
    job_id = running(ctx, stubs)
    before = job(ctx, job_id)
    finished = lifecycle.finish(ctx, Completion(job_id, exit_code=0, external_id=f"stub-{job_id}"))
    assert finished.moved is None and finished.wake is None and finished.resubmitted is None
    after = job(ctx, job_id)
    assert after.state == "running" and after.check_at < before.check_at, "looked at by the next pass"
    assert lifecycle.finish(ctx, stubs["stub"].end(job_id, exit_code=4)).moved.job.exit_code == 4


def test_an_exit_code_of_another_job_is_not_this_ones(ctx, stubs):
    job_id = running(ctx, stubs)
    job_dir = JobDir(Path(job(ctx, job_id).job_dir))
    job_dir.exit_code_file.write_text("0 0123456789abcdef0123456789abcdef\n")  # another token
    assert lifecycle.finish(ctx, Completion(job_id, exit_code=0)).moved is None
    assert job(ctx, job_id).state == "running"


def test_a_confirmed_end_is_taken_as_the_runner_said(ctx, stubs):
    job_id = running(ctx, stubs)
    answer = Completion(job_id, signal=9, reason="killed", runner_state="memory_limit_reached", source="reconcile")
    row = lifecycle.finish(ctx, answer, confirmed=True).moved.job
    assert (row.state, row.signal, row.runner_state) == ("error", 9, "memory_limit_reached")


def test_a_declared_output_that_is_missing_fails_the_job(ctx, stubs):
    job_id = running(ctx, stubs, outputs=["out.txt"])
    row = lifecycle.finish(ctx, stubs["stub"].end(job_id, exit_code=0)).moved.job
    assert row.state == "error" and row.reason == "declared output not produced: out.txt"


def test_a_real_time_signal_is_named_not_a_crash(ctx, stubs):
    job_id = running(ctx, stubs)
    row = lifecycle.finish(ctx, stubs["stub"].end(job_id, signal=40)).moved.job
    assert row.state == "error" and row.signal == 40 and row.reason == "killed by signal SIGRTMIN+6"


def test_a_duplicate_or_late_end_changes_nothing(ctx, stubs):
    job_id = running(ctx, stubs)
    completion = stubs["stub"].end(job_id, exit_code=0)
    assert lifecycle.finish(ctx, completion).moved is not None
    assert lifecycle.finish(ctx, completion).moved is None
    assert lifecycle.finish(ctx, Completion(job_id, exit_code=9)).moved is None
    assert job(ctx, job_id).exit_code == 0 and states(ctx, job_id).count("ok") == 1


def test_the_end_of_a_slotted_job_wakes_its_destination_even_when_cancelled(ctx, stubs):
    free = running(ctx, stubs)
    assert lifecycle.finish(ctx, stubs["stub"].end(free, exit_code=0)).wake is None
    slotted = running(ctx, stubs, "slotted")
    lifecycle.cancel(ctx, slotted)
    finished = lifecycle.finish(ctx, stubs["slotted"].end(slotted, signal=15))
    assert finished.moved is None, "the cancel was the job's end"
    assert finished.wake == "slotted", "its slot is free: the next waiting job may start"


def test_ends_heard_together_are_each_recorded_as_alone(ctx, stubs):
    """A batch of ends: each job reaches its own state with its own reason and exit code,
    its history row says why; a job whose row was read before its launch was recorded, and
    a second end of one job in the same batch, are each recorded once."""
    ok, failed, missing, early = running(ctx, stubs), running(ctx, stubs), running(ctx, stubs, outputs=["x"]), \
        running(ctx, stubs)
    rows = ctx.store.jobs([ok, failed, missing, early])
    assert ctx.store.move(early, S.SUBMITTING, sources=frozenset({S.RUNNING}))  # as the batch read it...
    read_early = job(ctx, early)
    assert ctx.store.move(early, S.RUNNING)  # ...then its launch was recorded
    stub = stubs["stub"]
    ends = [(stub.end(ok, exit_code=0), rows[ok]), (stub.end(failed, exit_code=3), rows[failed]),
            (stub.end(missing, exit_code=0), rows[missing]), (stub.end(early, exit_code=0), read_early),
            (stub.end(ok, exit_code=0), rows[ok])]
    finished = lifecycle.finish_many(ctx, ends)
    assert [f.moved.job.state if f.moved else None for f in finished] == ["ok", "error", "error", "ok", None]
    assert (job(ctx, failed).reason, job(ctx, failed).exit_code) == ("exit code 3", 3)
    assert job(ctx, missing).reason == "declared output not produced: x"
    for job_id in (ok, failed, missing, early):
        changes = ctx.store.history(job_id)
        assert [c.to_state for c in changes].count(job(ctx, job_id).state) == 1
        assert changes[-1].reason == job(ctx, job_id).reason
    assert job(ctx, ok).running_at is not None and job(ctx, ok).external_id == f"stub-{ok}"


def test_ends_read_before_their_launch_was_recorded_are_recorded_together(ctx, stubs, monkeypatch):
    """A burst's short jobs end before their batch records them RUNNING: ends read as
    SUBMITTING whose launch then landed are recorded in one more batch, not one by one."""
    ids = [running(ctx, stubs) for _ in range(3)]
    for job_id in ids:
        assert ctx.store.move(job_id, S.SUBMITTING, sources=frozenset({S.RUNNING}))
    read_early = ctx.store.jobs(ids)
    for job_id in ids:
        assert ctx.store.move(job_id, S.RUNNING)
    monkeypatch.setattr(sys.modules["galaxy_tasks.lifecycle.finish"], "move_giving_back",
                        lambda *a, **k: pytest.fail("an end moved alone"))
    stub = stubs["stub"]
    finished = lifecycle.finish_many(ctx, [(stub.end(job_id, exit_code=code), read_early[job_id])
                                           for job_id, code in zip(ids, (0, 1, 0))])
    assert [f.moved.job.state for f in finished if f.moved] == ["ok", "error", "ok"]
    assert [states(ctx, job_id)[-2:] for job_id in ids] == [["running", "ok"], ["running", "error"], ["running", "ok"]]


def test_a_batch_of_launches_hands_each_job_over_once_and_leaves_the_slotted_to_their_turn(ctx, stubs):
    plain = [queued(ctx) for _ in range(3)]
    slotted = [queued(ctx, "slotted") for _ in range(2)]
    stubs["stub"].fail_next = RunnerError("refused")  # the first hand-over fails that job alone
    done = lifecycle.launch_all_in_turn(ctx, [*plain, *slotted, plain[1]], stubs.__getitem__, owner="m1")
    assert [bool(done[job_id]) for job_id in plain] == [False, True, True]
    assert [job(ctx, job_id).state for job_id in plain] == ["error", "running", "running"]
    assert stubs["stub"].starts == {plain[1]: 1, plain[2]: 1}
    assert sum(job(ctx, job_id).state == "running" for job_id in slotted) == 1, "one slot: one turn"
    assert not any(lifecycle.launch_all_in_turn(ctx, plain, stubs.__getitem__, owner="m2").values())
    assert states(ctx, plain[2]) == ["new", "queued", "submitting", "running"]


def test_a_batch_prepares_each_job_once(ctx):
    ids = [lifecycle.accept(ctx, parse({"tool_id": "t", "command": "true"}))[0].id for _ in range(3)]
    first = lifecycle.prepare_many(ctx, [*ids, ids[0], "no-such-job"])
    assert [bool(first[job_id]) for job_id in ids] == [True, True, True] and not first["no-such-job"]
    assert all(JobDir(Path(job(ctx, job_id).job_dir)).script.exists() for job_id in ids)
    assert not any(lifecycle.prepare_many(ctx, ids).values())
    assert all(states(ctx, job_id) == ["new", "queued"] for job_id in ids)


# -- cancel -------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_needs_no_runner(ctx, stubs):
    job_id = queued(ctx)
    before, stop, *_ = lifecycle.cancel(ctx, job_id)
    assert before is S.QUEUED and stop is None and job(ctx, job_id).state == "deleted"


def test_cancel_of_a_running_job_says_what_to_stop(ctx, stubs):
    job_id = running(ctx, stubs)
    before, stop, *_ = lifecycle.cancel(ctx, job_id)
    assert before is S.RUNNING and stop.tracked.external_id == f"stub-{job_id}" and stop.destination == "stub"
    assert lifecycle.cancel(ctx, job_id)[:3] == (S.DELETED, None, []), "cancelling again changes nothing"


# -- prepare ------------------------------------------------------------------------------


def test_prepare_of_a_job_whose_destination_is_gone_fails_it(ctx):
    job, _ = lifecycle.accept(ctx, parse({"tool_id": "t", "command": "true"}))
    other = Context(ctx.settings, ctx.store, routing.parse({"destinations": {"elsewhere": "local:///"}}))
    assert not lifecycle.prepare(other, job.id)
    row = ctx.store.job(job.id)
    assert row.state == "error" and "destination 'stub' is no longer configured" in row.reason


def test_prepare_that_cannot_write_the_job_directory_fails_the_job(ctx, tmp_path):
    job, _ = lifecycle.accept(ctx, parse({"tool_id": "t", "command": "true"}))
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    settings = config.load({"GALAXY_TASKS_HOME": str(tmp_path), "GALAXY_TASKS_JOBS_DIR": str(blocked)})
    assert not lifecycle.prepare(Context(settings, ctx.store, ctx.routing), job.id)
    row = ctx.store.job(job.id)
    assert row.state == "error" and row.reason.startswith("prepare failed:")


def test_prepare_runs_once(ctx):
    job_id = queued(ctx)
    assert not lifecycle.prepare(ctx, job_id)
    assert states(ctx, job_id) == ["new", "queued"]


# -- reconciliation -----------------------------------------------------------------------


def test_the_reconcile_lease_is_held_until_it_expires(ctx):
    assert lifecycle.acquire_lease(ctx, "reconcile", 0.3)
    assert not lifecycle.acquire_lease(ctx, "reconcile", 0.3), "one pass at a time"
    time.sleep(0.4)
    assert lifecycle.acquire_lease(ctx, "reconcile", 0.3), "an expired lease is taken over"


def test_an_overdue_running_job_is_checked_with_its_runner(ctx, stubs):
    job_id = running(ctx, stubs)
    stubs["stub"].end(job_id, exit_code=0, report=False)  # the event is lost
    later = job(ctx, job_id).check_at
    plan = lifecycle.overdue(ctx, now=later)
    assert [t.job_id for t in plan.check["stub"]] == [job_id]
    completion = stubs["stub"].status(plan.check["stub"])[job_id]
    assert lifecycle.finish(ctx, completion, confirmed=True).moved.job.state == "ok"
    assert lifecycle.overdue(ctx, now=later).size == 0, "the pass pushed its next check out"


# -- job events ---------------------------------------------------------------------------


def test_every_state_change_is_announced_after_it_was_recorded(ctx, stubs):
    heard: list[tuple[str, int, str | None]] = []

    def announce(row: Job) -> None:
        assert ctx.store.job(row.id).event_seq == row.event_seq, "announced only once recorded"
        heard.append((row.state, row.event_seq, row.client_id))

    ctx = Context(ctx.settings, ctx.store, ctx.routing, announce)
    job_id = running(ctx, stubs, events={"queue": "client.events", "client_id": "g42"})
    lifecycle.finish(ctx, stubs["stub"].end(job_id, exit_code=0))
    assert heard == [("new", 1, "g42"), ("queued", 2, "g42"), ("submitting", 3, "g42"), ("running", 4, "g42"),
                     ("ok", 5, "g42")]


def test_a_change_nobody_published_stays_marked_until_it_is(ctx, stubs):
    job_id = running(ctx, stubs, events={"queue": "client.events"})  # the silent context publishes nothing
    row = job(ctx, job_id)
    assert row.unpublished_at is not None
    later = row.unpublished_at + timedelta(seconds=ctx.settings.reconcile_interval + 1)
    assert [j.id for j in lifecycle.unpublished(ctx, now=later)] == [job_id]
    assert not ctx.store.mark_published(job_id, row.event_seq - 1), "an older event clears nothing"
    assert ctx.store.mark_published(job_id, row.event_seq)
    assert lifecycle.unpublished(ctx, now=later) == []


def test_a_job_without_an_events_queue_is_never_in_the_outbox(ctx, stubs):
    job_id = running(ctx, stubs)
    assert job(ctx, job_id).unpublished_at is None and job(ctx, job_id).event_seq == 4


@pytest.mark.parametrize("queue", ["stub", "stub.slotted", "galaxy_tasks", "stub@host-a", "celery"])
def test_an_events_queue_of_our_own_is_refused(ctx, queue):
    with pytest.raises(SpecError) as info:
        lifecycle.accept(ctx, parse({"tool_id": "t", "command": "true", "events": {"queue": queue}}))
    assert info.value.field == "events.queue"
    assert ctx.store.recent() == []
