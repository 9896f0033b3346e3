"""Galaxy's job policies: limits and resubmit rules in Galaxy's words, checked when the
job_conf loads; concurrency counted exactly in the database (SQLite here, PostgreSQL in
the integration tier); resubmission keeps the job's id and every attempt."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from galaxy_tasks import expressions, lifecycle, routing
from galaxy_tasks.context import Context
from galaxy_tasks.errors import ConfigError
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.policies import condition_names, duration_s, size_bytes
from galaxy_tasks.runners.base import Completion
from galaxy_tasks.runners.stub import StubRunner
from galaxy_tasks.spec import parse
from galaxy_tasks.states import JobState
from tests.support.embedded import embedded_context

JOB_CONF = """
destinations:
  small: {runner: stub, tags: [cluster]}
  big:
    runner: stub
    tags: [cluster]
    limits: [{type: walltime, value: '01:00:00'}]
    resubmit:
      - condition: walltime_reached
        destination: longer
  global_only:
    runner: stub
    resubmit:
      - condition: walltime_reached or tool_detected_failure
        destination: longer
  longer:
    runner: stub
    resubmit:
      - condition: memory_limit_reached and attempt < 3
        delay: attempt * 10
  plain: {runner: stub}
  capped:
    runner: stub
    limits: [{type: output_size, value: 1000}]
default: small
limits:
  - type: registered_user_concurrent_jobs
    value: 2
  - type: anonymous_user_concurrent_jobs
    value: 1
  - type: environment_total_concurrent_jobs
    tag: cluster
    value: 3
  - type: walltime
    value: '02:00:00'
"""


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    with embedded_context(tmp_path, JOB_CONF) as context:
        yield context


@pytest.fixture
def stubs(ctx: Context) -> dict[str, StubRunner]:
    return {name: StubRunner(d.params, lambda c: None, destination=name) for name, d in ctx.routing.destinations.items()}


def queued(ctx: Context, user: str | None, destination: str = "small", **fields: object) -> str:
    job, _ = lifecycle.accept(ctx, parse({"tool_id": "t", "command": "true", "user": user,
                                          "destination": destination, **fields}))
    assert lifecycle.prepare(ctx, job.id)
    return job.id


def row(ctx: Context, job_id: str) -> Job:
    found = ctx.store.job(job_id)
    assert found is not None
    return found


def launch(ctx: Context, stubs: dict[str, StubRunner], job_id: str) -> bool:
    return bool(lifecycle.launch(ctx, job_id, stubs.__getitem__, owner=f"m-{job_id}"))


# -- concurrency --------------------------------------------------------------------------


def test_a_users_third_job_waits_limited_and_the_end_of_one_releases_it(ctx, stubs):
    first, second, third = (queued(ctx, "alice") for _ in range(3))
    assert launch(ctx, stubs, first) and launch(ctx, stubs, second)
    assert not launch(ctx, stubs, third)
    waiting = row(ctx, third)
    assert waiting.state == "limited" and waiting.waiting_on == "user:alice"
    assert "user:alice has 2 of 2 places taken" in waiting.reason
    finished = lifecycle.finish(ctx, stubs["small"].end(first, exit_code=0))
    assert finished.waiting == [(third, waiting.queue)], "the end of a job releases the oldest waiting one"
    assert launch(ctx, stubs, third)
    assert row(ctx, third).state == "running"


def test_two_places_given_back_together_wake_two_jobs_not_one_twice(ctx, stubs):
    running = [queued(ctx, "alice") for _ in range(2)]
    waiting = [queued(ctx, "alice") for _ in range(3)]
    assert all(launch(ctx, stubs, job_id) for job_id in running)
    assert not any(launch(ctx, stubs, job_id) for job_id in waiting)
    first_queued = row(ctx, waiting[0]).queued_at
    woken = [lifecycle.finish(ctx, stubs["small"].end(job_id, exit_code=0)).waiting for job_id in running]
    assert [ids for ids, _ in sum(woken, [])] == waiting[:2], "the two oldest, one each"
    assert [row(ctx, job_id).state for job_id in waiting] == ["queued", "queued", "limited"]
    assert [c.to_state for c in ctx.store.history(waiting[0])][-2:] == ["limited", "queued"]
    assert all(launch(ctx, stubs, job_id) for job_id in waiting[:2])
    assert row(ctx, waiting[0]).queued_at == first_queued, "a woken job keeps the time it was first queued"
    assert row(ctx, waiting[0]).waiting_on is None


def test_limits_of_a_user_a_tag_and_anonymous_apply_together(ctx, stubs):
    ids = [queued(ctx, user, destination) for user, destination in
           (("alice", "small"), ("bob", "big"), ("carol", "small"), ("dave", "big"))]
    assert [launch(ctx, stubs, job_id) for job_id in ids] == [True, True, True, False]
    assert row(ctx, ids[3]).waiting_on == "tag:cluster", "three jobs on destinations tagged cluster"
    anonymous = [queued(ctx, None, "plain") for _ in range(2)]
    assert [launch(ctx, stubs, job_id) for job_id in anonymous] == [True, False]
    assert row(ctx, anonymous[1]).waiting_on == "anonymous"
    assert ctx.store.limit_usage(["tag:cluster", "anonymous", "user:alice"]) == {
        "tag:cluster": 3, "anonymous": 1, "user:alice": 1}


def test_places_are_given_back_exactly_once_whatever_ends_a_job(ctx, stubs):
    ids = [queued(ctx, "alice") for _ in range(2)]
    assert all(launch(ctx, stubs, job_id) for job_id in ids)
    usage = lambda: ctx.store.limit_usage(["user:alice"])["user:alice"]  # noqa: E731
    assert usage() == 2
    completion = stubs["small"].end(ids[0], exit_code=0)
    lifecycle.finish(ctx, completion)
    assert usage() == 1
    lifecycle.finish(ctx, completion)  # a duplicate end gives nothing back twice
    assert usage() == 1
    lifecycle.cancel(ctx, ids[1])
    assert usage() == 1, "a cancelled job holds its place until its process has ended"
    lifecycle.finish(ctx, Completion(ids[1], signal=15))  # a bare message is no evidence of that
    assert usage() == 1
    lifecycle.finish(ctx, stubs["small"].end(ids[1], signal=15))  # its runner saw the process end
    assert usage() == 0
    lifecycle.finish(ctx, stubs["small"].end(ids[1], signal=15))
    assert usage() == 0


def test_a_place_given_back_by_two_at_once_is_given_back_once(ctx, stubs):
    """(SQLite: a transaction takes the write lock at once; PostgreSQL: the row is locked.)"""
    for trial in range(20):
        holder, ended = queued(ctx, f"u{trial}", "plain"), queued(ctx, f"u{trial}", "plain")
        assert launch(ctx, stubs, holder) and launch(ctx, stubs, ended)
        ctx.store.move(ended, JobState.OK, sources=frozenset({JobState.RUNNING}))  # as a finish that died
        barrier = threading.Barrier(2)

        def give_back() -> None:
            barrier.wait()
            ctx.store.release_places(ended)

        threads = [threading.Thread(target=give_back) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert ctx.store.limit_usage([f"user:u{trial}"]) == {f"user:u{trial}": 1}, f"trial {trial}"


def test_one_end_launches_a_bounded_number_of_jobs_however_many_wait(tmp_path):
    """40 of alice's jobs wait on her limit. One of hers ends, but before the one it woke
    launches, a newcomer takes the destination's last place: the woken job, refused, passes
    its wake-up on once, and the chain stops there instead of running down the queue."""
    with embedded_context(tmp_path, (
        "destinations:\n  d: {runner: stub}\nlimits:\n  - {type: registered_user_concurrent_jobs, value: 2}\n"
        "  - {type: destination_total_concurrent_jobs, id: d, value: 3}\n"
    )) as ctx:
        stub = StubRunner(ctx.routing.destinations["d"].params, lambda c: None, destination="d")

        def start(job_id: str) -> lifecycle.Launched:
            return lifecycle.launch(ctx, job_id, lambda _: stub, owner=f"m-{job_id}-{len(stub.starts)}")

        alice = [queued(ctx, "alice", "d") for _ in range(42)]
        assert start(alice[0]) and start(alice[1])
        assert not any(start(job_id) for job_id in alice[2:])
        assert {row(ctx, job_id).waiting_on for job_id in alice[2:]} == {"user:alice"}
        bob = queued(ctx, "bob", "d")
        assert start(bob)  # d: 3 of 3
        woken = lifecycle.finish(ctx, stub.end(alice[0], exit_code=0)).waiting  # d: 2 of 3, alice: 1 of 2
        assert [job_id for job_id, _ in woken] == [alice[2]]
        assert start(queued(ctx, "cy", "d"))  # the newcomer: d 3 of 3
        launches, sent = 0, woken
        while sent and launches < 50:
            following = []
            for job_id, _queue in sent:
                launches += 1
                following += start(job_id).wake
            sent = following
        assert launches == 2, "the woken job, and the one it passed its wake-up on to"
        assert sum(row(ctx, job_id).state == "limited" for job_id in alice) == 40


def test_a_job_refused_again_on_the_key_it_waits_on_records_no_new_change(ctx, stubs):
    ids = [queued(ctx, "alice") for _ in range(3)]
    assert launch(ctx, stubs, ids[0]) and launch(ctx, stubs, ids[1]) and not launch(ctx, stubs, ids[2])
    before = len(ctx.store.history(ids[2]))
    assert not launch(ctx, stubs, ids[2])  # reconciliation's look, with the limit still full
    assert len(ctx.store.history(ids[2])) == before and row(ctx, ids[2]).state == "limited"


def test_a_woken_job_cancelled_before_its_launch_passes_the_wake_up_on(ctx, stubs):
    ids = [queued(ctx, "alice") for _ in range(4)]
    assert launch(ctx, stubs, ids[0]) and launch(ctx, stubs, ids[1])
    assert not launch(ctx, stubs, ids[2]) and not launch(ctx, stubs, ids[3])
    finished = lifecycle.finish(ctx, stubs["small"].end(ids[0], exit_code=0))
    assert [job_id for job_id, _ in finished.waiting] == [ids[2]]
    cancelled = lifecycle.cancel(ctx, ids[2])
    assert [job_id for job_id, _ in cancelled.woken] == [ids[3]]
    assert launch(ctx, stubs, ids[3])


def test_a_late_end_of_the_earlier_attempt_is_not_taken_for_this_ones(ctx, stubs):
    job_id = queued(ctx, "alice", "big")
    assert launch(ctx, stubs, job_id)
    first = row(ctx, job_id).external_id
    assert _walltime_end(ctx, stubs, job_id, "big").resubmitted is not None
    assert lifecycle.prepare(ctx, job_id) and launch(ctx, stubs, job_id)
    late = Completion(job_id, exit_code=1, external_id=first)
    assert lifecycle.finish(ctx, late, confirmed=True).moved is None
    assert row(ctx, job_id).state == "running" and row(ctx, job_id).attempt == 2


def test_jobs_left_limited_launch_once_the_limits_are_gone(ctx, stubs, tmp_path):
    ids = [queued(ctx, "alice") for _ in range(3)]
    assert launch(ctx, stubs, ids[0]) and launch(ctx, stubs, ids[1]) and not launch(ctx, stubs, ids[2])
    unlimited = Context(ctx.settings, ctx.store, routing.parse({"destinations": {"small": {"runner": "stub"}}}))
    assert lifecycle.launch(unlimited, ids[2], stubs.__getitem__, owner="after")


def test_a_launch_for_a_destination_no_longer_configured_ends_the_job(ctx, stubs):
    job_id = queued(ctx, "alice", "plain")
    gone = Context(ctx.settings, ctx.store, routing.parse({"destinations": {"small": {"runner": "stub"}},
                                                           "limits": [{"type": "registered_user_concurrent_jobs",
                                                                       "value": 2}]}))
    assert not lifecycle.launch(gone, job_id, stubs.__getitem__, owner="o")
    assert row(ctx, job_id).state == "error" and "no longer configured" in (row(ctx, job_id).reason or "")


def test_the_limit_holds_exactly_with_threads_racing(ctx, stubs):
    ids = [queued(ctx, "racer") for _ in range(12)]
    results: list[bool] = []
    barrier = threading.Barrier(len(ids))

    def go(job_id: str) -> None:
        barrier.wait()
        results.append(launch(ctx, stubs, job_id))

    threads = [threading.Thread(target=go, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results.count(True) == 2
    assert sum(row(ctx, job_id).state == "limited" for job_id in ids) == 10


def test_reconciliation_gives_back_what_a_crash_left_and_retries_the_limited(ctx, stubs):
    first, second = queued(ctx, "alice"), queued(ctx, "alice")
    third = queued(ctx, "alice")
    assert launch(ctx, stubs, first) and launch(ctx, stubs, second) and not launch(ctx, stubs, third)
    # the end was recorded but the worker died before it gave the places back
    stubs["small"].end(first, exit_code=0, report=False)
    ctx.store.move(first, JobState.OK, exit_code=0, check_at=row(ctx, first).check_at)
    later = max(row(ctx, j).check_at for j in (first, third))
    plan = lifecycle.overdue(ctx, now=later)
    assert ctx.store.limit_usage(["user:alice"]) == {"user:alice": 1}
    assert (third, row(ctx, third).queue) in plan.wake or (third, row(ctx, third).queue) in plan.launch


# -- resubmission ----------------------------------------------------------------------


def test_a_walltime_kill_is_resubmitted_to_the_rules_destination_as_the_next_attempt(ctx, stubs):
    job_id = queued(ctx, "alice", "big")
    assert launch(ctx, stubs, job_id)
    ended = stubs["big"].end(job_id, signal=15, reason="the job reached its walltime and was stopped")
    JobDir(Path(row(ctx, job_id).job_dir)).write_end_note(ended.note().__class__(
        signal=15, reason="the job reached its walltime and was stopped", runner_state="walltime_reached"))
    finished = lifecycle.finish(ctx, ended)
    again = finished.resubmitted
    assert again is not None and again.id == job_id and again.state == "new"
    assert (again.destination, again.attempt) == ("longer", 2)
    assert again.attempts[0]["runner_state"] == "walltime_reached" and again.attempts[0]["destination"] == "big"
    assert "resubmitted to longer (attempt 2) because walltime_reached" in again.reason
    assert lifecycle.prepare(ctx, job_id) and launch(ctx, stubs, job_id)
    assert stubs["longer"].running[job_id].external_name == f"gt-{job_id}.a2"
    lifecycle.finish(ctx, stubs["longer"].end(job_id, exit_code=0))
    done = row(ctx, job_id)
    assert (done.state, done.attempt, len(done.attempts)) == ("ok", 2, 1)
    history = [change.to_state for change in ctx.store.history(job_id)]
    assert history == ["new", "queued", "submitting", "running", "new", "queued", "submitting", "running", "ok"]


def _walltime_end(ctx, stubs, job_id, destination):
    ended = stubs[destination].end(job_id, signal=15, reason="the job reached its walltime and was stopped")
    JobDir(Path(row(ctx, job_id).job_dir)).write_end_note(ended.note().__class__(
        signal=15, reason="the job reached its walltime and was stopped", runner_state="walltime_reached"))
    return lifecycle.finish(ctx, ended)


def test_the_global_walltime_is_not_resubmitted_as_in_galaxy(ctx, stubs):
    """Its destination has no walltime of its own: the global one stopped it, and no other
    destination would give it more."""
    job_id = queued(ctx, "alice", "global_only")
    assert launch(ctx, stubs, job_id)
    finished = _walltime_end(ctx, stubs, job_id, "global_only")
    assert finished.resubmitted is None
    assert (row(ctx, job_id).state, row(ctx, job_id).runner_state) == ("error", "global_walltime_reached")


def test_a_tools_own_failure_is_tool_detected_not_unknown_error(ctx, stubs):
    job_id = queued(ctx, "alice", "global_only")
    assert launch(ctx, stubs, job_id)
    finished = lifecycle.finish(ctx, stubs["global_only"].end(job_id, exit_code=2))
    assert finished.resubmitted is not None and "tool_detected_failure" in finished.resubmitted.reason
    names = condition_names(None, 2, None, 1, 0.0, 0.0)
    assert names["tool_detected_failure"] and not names["unknown_error"]
    assert condition_names(None, None, 9, 1, 0.0, 0.0)["unknown_error"], "killed, no exit code: unknown"


def test_an_output_too_large_is_never_resubmitted(tmp_path):
    with embedded_context(tmp_path, (
        "destinations:\n  a:\n    runner: stub\n    limits: [{type: output_size, value: 100}]\n"
        "    resubmit: [{destination: a}]\n")) as ctx:
        stub = StubRunner(ctx.routing.destinations["a"].params, lambda c: None, destination="a")
        job_id = queued(ctx, "alice", "a")
        assert lifecycle.launch(ctx, job_id, lambda _: stub, owner="o")
        (Path(row(ctx, job_id).job_dir or "") / "working" / "big.dat").write_bytes(b"x" * 101)
        finished = lifecycle.finish(ctx, stub.end(job_id, exit_code=0))
        assert finished.resubmitted is None and row(ctx, job_id).runner_state == "output_size_limit"


def test_a_rule_that_does_not_match_lets_the_job_fail(ctx, stubs):
    job_id = queued(ctx, None, "big")
    assert launch(ctx, stubs, job_id)
    finished = lifecycle.finish(ctx, stubs["big"].end(job_id, exit_code=3))
    assert finished.resubmitted is None and finished.moved.job.state == "error"


def test_a_delay_and_attempt_condition_are_evaluated(ctx, stubs):
    job_id = queued(ctx, None, "longer")
    for attempt in (1, 2):
        assert lifecycle.prepare(ctx, job_id) or attempt == 1
        assert launch(ctx, stubs, job_id)
        ended = stubs["longer"].end(job_id, signal=9)
        JobDir(Path(row(ctx, job_id).job_dir)).write_end_note(ended.note().__class__(
            signal=9, runner_state="memory_limit_reached"))
        finished = lifecycle.finish(ctx, ended)
        assert finished.resubmitted is not None and finished.delay_s == attempt * 10
    assert lifecycle.prepare(ctx, job_id) and launch(ctx, stubs, job_id)
    ended = stubs["longer"].end(job_id, signal=9)
    JobDir(Path(row(ctx, job_id).job_dir)).write_end_note(ended.note().__class__(
        signal=9, runner_state="memory_limit_reached"))
    assert lifecycle.finish(ctx, ended).resubmitted is None, "attempt < 3 no longer holds"
    assert row(ctx, job_id).state == "error" and row(ctx, job_id).attempt == 3


@pytest.mark.parametrize("visibility_s, countdown", [("300", True), ("60", False)])
def test_a_delay_longer_than_half_the_visibility_timeout_waits_in_the_row_not_the_broker(tmp_path, visibility_s,
                                                                                          countdown):
    """A countdown is a message held unacknowledged until it is due: a resubmit delay (40 s
    here) is sent as one only while it is within half the broker's visibility timeout; a
    longer one is the row's due time (`check_at`), which reconciliation acts on."""
    conf = JOB_CONF.replace("attempt * 10", "attempt * 40")
    with embedded_context(tmp_path, conf, VISIBILITY_TIMEOUT=visibility_s) as ctx:
        runner = StubRunner(ctx.routing.destinations["longer"].params, lambda c: None, destination="longer")
        job_id = queued(ctx, None, "longer")
        assert launch(ctx, {"longer": runner}, job_id)
        ended = runner.end(job_id, signal=9)
        JobDir(Path(row(ctx, job_id).job_dir)).write_end_note(ended.note().__class__(
            signal=9, runner_state="memory_limit_reached"))
        before = utcnow()
        finished = lifecycle.finish(ctx, ended)
        waiting = row(ctx, job_id)
        assert waiting.state == "new" and waiting.attempt == 2 and finished.delay_s == 40
        assert (finished.resubmitted is not None) is countdown
        if not countdown:
            assert 39 <= (waiting.check_at - before).total_seconds() <= 41, "due when the delay is over"


def test_the_walltime_limit_bounds_what_a_job_gets(ctx):
    assert ctx.routing.walltime_s("small", None) == 7200
    assert ctx.routing.walltime_s("small", 60) == 60
    assert ctx.routing.walltime_s("small", 90000) == 7200


# -- expressions: parsed, never eval'ed ------------------------------------------------


@pytest.mark.parametrize("text", ["__import__('os').system('x')", "attempt.__class__", "open('f')",
                                  "attempt ** 99999999", "[1][0]", "lambda: 1", "'text' == 'text'",
                                  "unknown_name > 1", "attempt <", ""])
def test_an_expression_that_is_not_plain_arithmetic_is_refused(text):
    with pytest.raises(expressions.ExpressionError):
        expressions.parse(text, frozenset({"attempt"}))


def test_expressions_evaluate_like_galaxys():
    condition = expressions.parse("memory_limit_reached and attempt < 3 or seconds_running > 3600",
                                  frozenset({"memory_limit_reached", "attempt", "seconds_running"}))
    assert condition.evaluate({"memory_limit_reached": True, "attempt": 2, "seconds_running": 1})
    assert not condition.evaluate({"memory_limit_reached": True, "attempt": 3, "seconds_running": 1})
    assert expressions.parse("attempt * 30 + 5", frozenset({"attempt"})).evaluate({"attempt": 2}) == 65


@pytest.mark.parametrize("text, seconds", [("24:00:00", 86400), ("1-00:00:00", 86400), ("90:00", 5400),
                                           ("45", 45), (3600, 3600)])
def test_walltimes_in_galaxys_notation(text, seconds):
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text, size", [("10GB", 10 * 10**9), ("512M", 512 * 10**6), ("1.5 TB", int(1.5 * 10**12)),
                                        ("4 KiB", 4096), ("1MiB", 1024**2), (1000, 1000)])
def test_sizes_in_galaxys_notation(text, size):
    """Decimal, as galaxy.util.size_to_bytes reads them; `iB` for binary."""
    assert size_bytes(text) == size


def test_a_user_limit_of_zero_is_no_limit_as_in_galaxy():
    limits = routing.parse({"destinations": {"a": "local:///"},
                            "limits": [{"type": "registered_user_concurrent_jobs", "value": 0},
                                       {"type": "destination_total_concurrent_jobs", "id": "a", "value": 0}]}).limits
    assert [limit.kind for limit in limits.concurrency] == ["destination_total_concurrent_jobs"]


def test_an_expression_that_overflows_does_not_hold():
    from galaxy_tasks.policies import ResubmitRule

    huge = " * ".join(["999999999999"] * 27)  # 10^324: past the largest float
    rule = ResubmitRule(expressions.parse(f"attempt / ({huge} * 1.0) > 1", frozenset({"attempt"})), None,
                        expressions.parse(f"attempt * {huge} * 1.0", frozenset({"attempt"})))
    assert rule.matches({"attempt": 1}) is False
    assert rule.delay_s(1) == 86400.0


# -- bad configuration, refused with its line -------------------------------------------


@pytest.mark.parametrize("text, named", [
    ("destinations: {a: local:///}\nlimits:\n  - type: registered_user_concurrent_jobs\n    value: -1\n",
     "job_conf.yml:4: limits[0].value: must be a whole number of at least 0"),
    ("destinations: {a: local:///}\nlimits:\n  - type: gpu_hours\n    value: 1\n",
     "job_conf.yml:3: limits[0].type: unknown limit type 'gpu_hours'"),
    ("destinations: {a: local:///}\nlimits:\n  - type: destination_total_concurrent_jobs\n    id: nowhere\n"
     "    value: 1\n", "job_conf.yml:4: limits[0].id: unknown destination 'nowhere'"),
    ("destinations: {a: local:///}\nlimits:\n  - type: walltime\n    value: soon\n",
     "job_conf.yml:4: limits[0].value: must be a duration"),
    ("destinations:\n  a:\n    runner: local\n    resubmit:\n      - condition: walltime_reached\n"
     "        destination: nowhere\n", "job_conf.yml:6: destinations.a.resubmit[0].destination: unknown destination"),
    ("destinations:\n  a:\n    runner: local\n    resubmit:\n      - condition: \"attempt <\"\n",
     "job_conf.yml:5: destinations.a.resubmit[0].condition: 'attempt <' does not parse"),
    ("destinations:\n  a:\n    runner: local\n    resubmit:\n      - condition: __import__('os')\n",
     "destinations.a.resubmit[0].condition"),
    ("destinations:\n  a:\n    runner: local\n    limits:\n      - type: registered_user_concurrent_jobs\n"
     "        value: 1\n", "a destination's own limits are walltime and output_size"),
])
def test_bad_policies_are_refused_naming_the_line(tmp_path, text, named):
    path = tmp_path / "job_conf.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        routing.load(path)
    assert named in str(info.value), str(info.value)


# -- output size ---------------------------------------------------------------------------


def test_output_size_holds_for_each_file_the_job_wrote_not_for_links_out_of_it(ctx, stubs, tmp_path):
    outside = tmp_path / "outside.dat"
    outside.write_bytes(b"x" * 5000)
    ids = [queued(ctx, user, "capped") for user in ("ann", "ben", "cat")]
    for job_id in ids:
        assert launch(ctx, stubs, job_id)
    working = [Path(row(ctx, job_id).job_dir or "") / "working" for job_id in ids]
    (working[0] / "sub").mkdir()
    (working[0] / "sub" / "big.dat").write_bytes(b"x" * 1500)  # a cluster job: nothing stopped it at the limit
    (working[1] / "a.dat").write_bytes(b"x" * 900)
    (working[1] / "b.dat").write_bytes(b"x" * 900)
    (working[2] / "link.dat").symlink_to(outside)
    for job_id in ids:
        lifecycle.finish(ctx, stubs["capped"].end(job_id, exit_code=0))
    big, pair, linked = (row(ctx, job_id) for job_id in ids)
    assert big.state == "error" and big.runner_state == "output_size_limit"
    assert "'sub/big.dat' grew too large (1500 bytes; the output_size limit is 1000 bytes)" in (big.reason or "")
    assert pair.state == "ok", "the limit is per file, as Galaxy's"
    assert linked.state == "ok", "a link out of the job's directory is not the job's file"


# -- the admin's view ---------------------------------------------------------------------


def test_route_explain_names_the_rule_the_limits_in_use_and_the_resubmit_path(ctx, stubs, tmp_path,
                                                                               monkeypatch, capsys):
    from galaxy_tasks import cli
    from galaxy_tasks.edge import runtime

    launch(ctx, stubs, queued(ctx, "alice", "big"))
    spec = tmp_path / "spec.json"
    spec.write_text('{"tool_id": "t", "command": "true", "user": "alice", "destination": "big"}')
    monkeypatch.setenv("GALAXY_TASKS_HOME", str(tmp_path))
    monkeypatch.setenv("GALAXY_TASKS_JOB_CONF", str(tmp_path / "job_conf.yml"))
    runtime.reset()  # the command builds this process's context from these settings, not an earlier test's
    try:
        assert cli.main(["route", "--explain", str(spec)]) == 0
    finally:
        runtime.reset()
    out = capsys.readouterr().out
    assert "destination  big (runner stub" in out
    assert "limit        user:alice: 1 of 2 places taken" in out
    assert "limit        tag:cluster: 1 of 3 places taken" in out
    assert "resubmit     on a failure, if walltime_reached -> longer (at most 10 attempts)" in out
    assert "walltime_s   3600" in out, "the destination's own walltime, within the global one"


def test_a_job_no_limit_applies_to_launches_beside_limited_ones(tmp_path):
    with embedded_context(tmp_path, (
        "destinations:\n  limited: {runner: stub}\n  free: {runner: stub}\ndefault: free\n"
        "limits:\n  - type: destination_total_concurrent_jobs\n    id: limited\n    value: 1\n")) as ctx:
        stubs = {name: StubRunner(d.params, lambda c: None, destination=name) for name, d in ctx.routing.destinations.items()}
        free = [queued(ctx, "alice", "free") for _ in range(3)]
        assert all(launch(ctx, stubs, job_id) for job_id in free)
        assert all(row(ctx, job_id).limit_keys is None for job_id in free)
        first, second = queued(ctx, "alice", "limited"), queued(ctx, "bob", "limited")
        assert launch(ctx, stubs, first) and not launch(ctx, stubs, second)
        assert row(ctx, second).waiting_on == "destination:limited"
        lifecycle.finish(ctx, stubs["free"].end(free[0], exit_code=0))
        assert row(ctx, free[0]).state == "ok"


def test_a_job_whose_give_back_was_lost_is_not_counted_twice_when_it_launches_again(ctx, stubs):
    """A launch that found its runner full went back to queued but died before giving its
    places back: its next launch keeps the places it holds instead of taking them again."""
    job_id = queued(ctx, "alice")
    assert launch(ctx, stubs, job_id)
    ctx.store.move(job_id, JobState.QUEUED, sources=frozenset({JobState.RUNNING}))  # as if runner-full, then a crash
    assert row(ctx, job_id).limit_keys == ["tag:cluster", "user:alice"]
    assert launch(ctx, stubs, job_id)
    assert ctx.store.limit_usage(["user:alice", "tag:cluster"]) == {"user:alice": 1, "tag:cluster": 1}
    lifecycle.finish(ctx, stubs["small"].end(job_id, exit_code=0))
    assert ctx.store.limit_usage(["user:alice", "tag:cluster"]) == {"user:alice": 0, "tag:cluster": 0}
