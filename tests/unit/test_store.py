"""The store on a real SQLite file and on the real PostgreSQL (where every move is one
statement on an autocommit connection): accept records a job, every move is a
compare-and-set."""
from __future__ import annotations

import random
import threading
from datetime import timedelta
from typing import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event

from galaxy_tasks import config, routing
from galaxy_tasks.context import Context
from galaxy_tasks.errors import SpecError
from galaxy_tasks.lifecycle import accept, accept_many
from galaxy_tasks.model import Job, metadata
from galaxy_tasks.spec import parse
from galaxy_tasks.states import JobState
from galaxy_tasks.store import Store, schema
from galaxy_tasks.store.engines import engine
from tests.support.services import create_database, drop_database

S = JobState


@pytest.fixture(params=["sqlite", "postgresql"])
def ctx(request, tmp_path) -> Iterator[Context]:
    env = {"GALAXY_TASKS_HOME": str(tmp_path)}
    if request.param == "postgresql":
        env["GALAXY_TASKS_DATABASE_URL"] = create_database(template=request.getfixturevalue("database_template"))
    settings = config.load(env)
    schema.upgrade(settings.database_url)
    store = Store(settings.database_url, settings.check_after)
    yield Context(settings, store, routing.default_routing())
    if request.param == "postgresql":
        store.dispose()
        drop_database(settings.database_url)


def new_job(ctx: Context, **fields) -> str:
    data = {"tool_id": "cat1", "command": "echo hi"}
    data.update(fields)
    job, created = accept(ctx, parse(data))
    assert created
    return job.id


def move(ctx: Context, job_id: str, target: JobState, **kwargs) -> JobState | None:
    """The state the job left, or None if the move did not happen."""
    moved = ctx.store.move(job_id, target, **kwargs)
    return moved.before if moved else None


def history(ctx: Context, job_id: str) -> list[tuple[str | None, str]]:
    return [(change.from_state, change.to_state) for change in ctx.store.history(job_id)]


def running_job(ctx: Context) -> str:
    job_id = new_job(ctx)
    for target in (S.QUEUED, S.SUBMITTING, S.RUNNING):
        assert move(ctx, job_id, target) is not None
    return job_id


# -- accept ------------------------------------------------------------------------------


def test_accept_records_a_new_job(ctx):
    spec = parse({"tool_id": "bwa", "command": "bwa mem", "user": "alice", "cores": 2,
                  "environment": {"A": "1"}, "outputs": ["out/x"]})
    job, created = accept(ctx, spec)
    assert created
    stored = ctx.store.job(job.id)
    assert stored.state == "new"
    assert (stored.tool_id, stored.command, stored.user, stored.cores) == ("bwa", "bwa mem", "alice", 2)
    assert stored.environment == {"A": "1"} and stored.outputs == ["out/x"]
    assert stored.destination == "local" and stored.queue == "local"
    assert stored.check_at is not None and stored.check_at > stored.created_at
    assert history(ctx, job.id) == [(None, "new")]


def test_accept_generates_distinct_ids(ctx):
    assert len({new_job(ctx) for _ in range(5)}) == 5


def test_accept_same_client_id_twice_returns_the_first_job(ctx):
    spec = parse({"id": "fixed-1", "tool_id": "t", "command": "echo 1"})
    first, created = accept(ctx, spec)
    again, created_again = accept(ctx, spec)
    assert created and not created_again
    assert again.id == first.id == "fixed-1"
    assert history(ctx, "fixed-1") == [(None, "new")]


def test_accept_id_reused_for_another_job_is_refused(ctx):
    accept(ctx, parse({"id": "fixed-2", "tool_id": "t", "command": "echo 1"}))
    with pytest.raises(SpecError) as info:
        accept(ctx, parse({"id": "fixed-2", "tool_id": "t", "command": "echo 2"}))
    assert info.value.field == "id"
    assert ctx.store.job("fixed-2").command == "echo 1"


def test_accept_refused_spec_records_nothing(ctx):
    with pytest.raises(SpecError) as info:
        accept(ctx, parse({"id": "huge", "tool_id": "t", "command": "true", "cores": 100_000}))
    assert info.value.field == "cores"
    assert ctx.store.job("huge") is None
    assert history(ctx, "huge") == []


# -- move: compare-and-set ---------------------------------------------------------


def test_move_returns_the_state_it_left(ctx):
    job_id = new_job(ctx)
    assert move(ctx, job_id, S.QUEUED, job_dir="/jobs/x") is S.NEW
    job = ctx.store.job(job_id)
    assert job.state == "queued" and job.job_dir == "/jobs/x"
    assert job.queued_at is not None


def test_move_returns_the_row_as_it_left_it(ctx):
    job_id = new_job(ctx, environment={"A": "1"}, outputs=["out/x"])
    moved = ctx.store.move(job_id, S.QUEUED, job_dir="/jobs/y")
    assert moved.before is S.NEW
    job = moved.job
    assert (job.id, job.state, job.job_dir, job.command) == (job_id, "queued", "/jobs/y", "echo hi")
    assert job.environment == {"A": "1"} and job.outputs == ["out/x"]
    assert job.queued_at == job.updated_at and job.queued_at.tzinfo is not None
    assert ctx.store.job(job_id) == job


def test_second_identical_move_does_nothing(ctx):
    job_id = new_job(ctx)
    assert move(ctx, job_id, S.QUEUED) is S.NEW
    before = ctx.store.job(job_id)
    assert move(ctx, job_id, S.QUEUED, job_dir="/elsewhere") is None
    after = ctx.store.job(job_id)
    assert after.state == "queued"
    assert after.job_dir == before.job_dir
    assert after.updated_at == before.updated_at
    assert history(ctx, job_id) == [(None, "new"), ("new", "queued")]


@pytest.mark.parametrize(
    "setup, target",
    [
        ([], S.RUNNING),
        ([S.QUEUED], S.OK),
        ([], S.SUBMITTING),
        ([S.QUEUED], S.RUNNING),
        ([S.QUEUED, S.SUBMITTING, S.RUNNING], S.QUEUED),
        ([S.QUEUED, S.SUBMITTING, S.RUNNING, S.OK], S.RUNNING),
        ([S.QUEUED, S.SUBMITTING, S.RUNNING, S.OK], S.ERROR),
        ([S.DELETED], S.QUEUED),
        ([S.ERROR], S.DELETED),
    ],
)
def test_illegal_move_changes_nothing(ctx, setup, target):
    job_id = new_job(ctx)
    for state in setup:
        assert move(ctx, job_id, state) is not None
    before = ctx.store.job(job_id)
    rows = history(ctx, job_id)
    assert move(ctx, job_id, target, reason="should not stick", exit_code=9) is None
    after = ctx.store.job(job_id)
    assert after.state == before.state
    assert after.updated_at == before.updated_at
    assert after.reason == before.reason and after.exit_code == before.exit_code
    assert history(ctx, job_id) == rows


def test_move_of_an_unknown_job_is_none(ctx):
    assert move(ctx, "no-such-job", S.QUEUED) is None


def test_explicit_sources_restrict_the_move(ctx):
    job_id = running_job(ctx)
    assert move(ctx, job_id, S.ERROR, sources=frozenset({S.NEW})) is None
    assert ctx.store.job(job_id).state == "running"
    assert move(ctx, job_id, S.ERROR, sources=frozenset({S.RUNNING})) is S.RUNNING


def test_history_records_every_move(ctx):
    job_id = running_job(ctx)
    assert move(ctx, job_id, S.OK, reason="done", exit_code=0) is S.RUNNING
    assert history(ctx, job_id) == [
        (None, "new"), ("new", "queued"), ("queued", "submitting"), ("submitting", "running"), ("running", "ok"),
    ]
    assert ctx.store.history(job_id)[-1].reason == "done"


def test_terminal_move_stamps_finish_and_stops_checks(ctx):
    job_id = running_job(ctx)
    running = ctx.store.job(job_id)
    assert running.running_at is not None and running.check_at is not None and running.finished_at is None
    move(ctx, job_id, S.OK, exit_code=0, wall_time_s=1.5)
    done = ctx.store.job(job_id)
    assert done.state == "ok" and done.exit_code == 0 and done.wall_time_s == 1.5
    assert done.finished_at is not None and done.check_at is None


def test_active_move_schedules_the_next_check(ctx):
    job_id = new_job(ctx)
    move(ctx, job_id, S.QUEUED)
    job = ctx.store.job(job_id)
    expected = job.updated_at + timedelta(seconds=ctx.settings.check_after)
    assert abs((job.check_at - expected).total_seconds()) < 1


def run_threads(count: int, work) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list = []

    def body(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work(index)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def test_concurrent_completion_has_exactly_one_winner(ctx):
    job_id = running_job(ctx)
    results = run_threads(8, lambda i: move(ctx, job_id, S.OK, exit_code=i))
    winners = [i for i, result in enumerate(results) if result is not None]
    assert len(winners) == 1
    assert results[winners[0]] is S.RUNNING
    job = ctx.store.job(job_id)
    assert job.state == "ok" and job.exit_code == winners[0]
    assert history(ctx, job_id).count(("running", "ok")) == 1


def test_concurrent_conflicting_ends_have_one_terminal_state(ctx):
    job_id = running_job(ctx)
    targets = [S.OK, S.ERROR, S.DELETED, S.OK, S.ERROR, S.DELETED, S.OK, S.ERROR]
    results = run_threads(8, lambda i: move(ctx, job_id, targets[i], reason=f"thread {i}"))
    winners = [i for i, result in enumerate(results) if result is not None]
    assert len(winners) == 1
    job = ctx.store.job(job_id)
    assert job.state == targets[winners[0]].value and job.reason == f"thread {winners[0]}"
    assert [row for row in history(ctx, job_id) if row[0] == "running"] == [("running", job.state)]


# -- move_many: a batch's moves in one statement ------------------------------------------


def test_move_many_moves_each_job_in_the_source_once_with_its_own_values(ctx):
    first, second, ahead = new_job(ctx), new_job(ctx), new_job(ctx)
    move(ctx, ahead, S.QUEUED, job_dir="/jobs/ahead")
    given = {job_id: {"job_dir": f"/jobs/{job_id}"} for job_id in (first, second, ahead, "no-such-job")}
    moved = ctx.store.move_many(given, S.QUEUED, S.NEW)
    assert sorted(moved) == sorted([first, second])
    for job_id in (first, second):
        assert moved[job_id].before is S.NEW
        job = moved[job_id].job
        assert (job.state, job.job_dir) == ("queued", f"/jobs/{job_id}")
        assert job.event_seq == ctx.store.job(ahead).event_seq  # counted as one move counts it
        assert job.queued_at is not None and job.check_at is not None
        assert ctx.store.job(job_id) == job
        assert history(ctx, job_id) == [(None, "new"), ("new", "queued")]
    assert ctx.store.job(ahead).job_dir == "/jobs/ahead"
    assert history(ctx, ahead) == [(None, "new"), ("new", "queued")]
    assert ctx.store.move_many(given, S.QUEUED, S.NEW) == {}


def test_move_many_sets_common_values_and_moves_only_from_its_source(ctx):
    queued = new_job(ctx)
    move(ctx, queued, S.QUEUED)
    still_new = new_job(ctx)
    moved = ctx.store.move_many({queued: {}, still_new: {}}, S.SUBMITTING, S.QUEUED, owner="message-1")
    assert list(moved) == [queued]
    assert moved[queued].job.owner == "message-1" and moved[queued].job.state == "submitting"
    assert ctx.store.job(still_new).state == "new"


def test_concurrent_batches_move_each_job_once(ctx):
    """Batches that share jobs, each listing them in its own order: every job moves once,
    and no two batches deadlock (each locks its rows in the order of their ids)."""
    ids = [new_job(ctx) for _ in range(60)]
    for job_id in ids:
        move(ctx, job_id, S.QUEUED)
    orders = [random.Random(seed).sample(ids, len(ids)) for seed in range(6)]
    results = run_threads(6, lambda i: ctx.store.move_many(
        {job_id: {"external_id": f"ext-{i}"} for job_id in orders[i]}, S.RUNNING, S.QUEUED))
    winners = [job_id for result in results for job_id in result]
    assert sorted(winners) == sorted(ids)
    for result in results:
        for job_id, moved in result.items():
            assert ctx.store.job(job_id).external_id == moved.job.external_id
            assert history(ctx, job_id).count(("queued", "running")) == 1


@pytest.mark.parametrize("ctx", ["postgresql"], indirect=True)
def test_a_batch_finds_its_jobs_by_their_ids_whatever_the_statistics_say_of_their_state(ctx):
    """A burst puts thousands of jobs in one state before PostgreSQL's statistics know it
    (they say no job is new): a batch move, a single move and a count of ended jobs still
    find their jobs by their ids. The plan that stale statistics favour reads every job in the state through
    the state's index, once per batch: a 10,000-job burst read every waiting job each time."""
    for job_id in [new_job(ctx) for _ in range(50)]:
        move(ctx, job_id, S.QUEUED)
    single = ctx.store._single
    with single.connect() as connection:
        connection.exec_driver_sql("ANALYZE gt_job")
    burst = [a.job.id for a in accept_many(ctx, [parse({"tool_id": "t", "command": "true"})] * 2000)]
    sent: list[tuple[str, dict]] = []
    catch = lambda conn, cursor, statement, params, context, many: sent.append((statement, params))  # noqa: E731
    event.listen(single, "before_cursor_execute", catch)
    try:
        moved = ctx.store.move_many({job_id: {"job_dir": f"/j/{job_id}"} for job_id in burst[:5]}, S.QUEUED, S.NEW)
        assert len(moved) == 5 and ctx.store.count_ended(burst[:5]) == 0
        assert ctx.store.move(burst[5], S.QUEUED) and ctx.store.move_many({burst[6]: {}}, S.QUEUED, S.NEW)
    finally:
        event.remove(single, "before_cursor_execute", catch)
    plans = []
    with single.connect() as connection:
        for statement, params in sent:
            plans.append("\n".join(connection.exec_driver_sql("EXPLAIN " + statement, params).scalars()))
    assert sum("Update on gt_job" in plan for plan in plans) == 3, "the batch move and both single moves"
    for plan in plans:
        assert "gt_job_pkey" in plan, plan
        assert not any(index in plan for index in ("ix_gt_job_waiting", "ix_gt_job_state_check_at", "ix_gt_job_line")), plan


# -- claim_stale ------------------------------------------------------------------------


def submitting_job(ctx: Context) -> str:
    job_id = new_job(ctx)
    move(ctx, job_id, S.QUEUED)
    move(ctx, job_id, S.SUBMITTING)
    return job_id


def claim(ctx, job_id, state, seen) -> bool:
    return ctx.store.claim_stale(job_id, state, seen)


def test_claim_stale_only_for_the_caller_that_saw_the_current_row(ctx):
    job_id = submitting_job(ctx)
    seen = ctx.store.job(job_id).updated_at
    assert claim(ctx, job_id, S.SUBMITTING, seen) is True
    assert ctx.store.job(job_id).updated_at > seen
    # a second caller that saw the same (now old) row loses
    assert claim(ctx, job_id, S.SUBMITTING, seen) is False
    # one that looks again may take it over
    fresh = ctx.store.job(job_id).updated_at
    assert claim(ctx, job_id, S.SUBMITTING, fresh) is True


def test_claim_stale_refuses_a_wrong_state(ctx):
    job_id = submitting_job(ctx)
    seen = ctx.store.job(job_id).updated_at
    assert claim(ctx, job_id, S.RUNNING, seen) is False
    assert claim(ctx, job_id, S.QUEUED, seen) is False
    assert ctx.store.job(job_id).updated_at == seen


def test_claim_stale_refuses_after_the_job_moved(ctx):
    job_id = submitting_job(ctx)
    seen = ctx.store.job(job_id).updated_at
    move(ctx, job_id, S.RUNNING)
    assert claim(ctx, job_id, S.SUBMITTING, seen) is False
    assert ctx.store.job(job_id).state == "running"


def test_claim_stale_concurrently_has_one_winner(ctx):
    job_id = submitting_job(ctx)
    seen = ctx.store.job(job_id).updated_at
    results = run_threads(8, lambda i: claim(ctx, job_id, S.SUBMITTING, seen))
    assert results.count(True) == 1 and results.count(False) == 7


def test_schema_upgrade_is_idempotent(ctx):
    schema.upgrade(ctx.settings.database_url)
    assert schema.current(ctx.settings.database_url) is not None
    assert isinstance(ctx.store.job(new_job(ctx)), Job)


def test_the_migrations_make_the_tables_the_records_declare(ctx):
    """The tables are built from the records' fields (model.py); what the migrations made
    must be the same, column for column (type, NULL, server default) and index for index."""
    with engine(ctx.settings.database_url).connect() as connection:
        migrated = MigrationContext.configure(connection, opts={"compare_type": True,
                                                                "compare_server_default": True})
        assert compare_metadata(migrated, metadata) == []


def test_a_signed_message_id_is_taken_once_and_forgotten_after_its_message_expires(ctx):
    """The seen-id window of signed messages: the first taking of an id is the only one;
    ids whose message has expired are dropped (later copies are refused as expired), so the
    table holds no more than one message life of ids."""
    from galaxy_tasks.model import seen_messages, utcnow
    from galaxy_tasks.store import deliveries

    store = ctx.store
    later = utcnow() + timedelta(minutes=10)
    assert store.first_taking("a" * 32, later) is True
    assert store.first_taking("a" * 32, later) is False, "a second copy of the same message"
    assert store.first_taking("b" * 32, utcnow() - timedelta(seconds=1)) is True
    store._pruned_at -= deliveries.PRUNE_EVERY_S + 1
    assert store.first_taking("c" * 32, later) is True
    with store.engine.connect() as connection:
        kept = sorted(row.message_id for row in connection.execute(seen_messages.select()))
    assert kept == ["a" * 32, "c" * 32], "the expired id was dropped, the live ones kept"


def test_a_destinations_turn_is_held_by_one_store_at_a_time_and_others_are_not_held_up(ctx):
    other = Store(ctx.settings.database_url, ctx.settings.check_after)  # another process's store
    inside, held, waited = threading.Event(), threading.Event(), []

    def second() -> None:
        inside.wait(5)
        with other.turn("busy"):
            waited.append(held.is_set())

    thread = threading.Thread(target=second)
    thread.start()
    try:
        with ctx.store.turn("busy"):
            inside.set()
            with other.turn("wide"):  # another destination's turn is not this one's
                pass
            thread.join(0.5)
            assert thread.is_alive() and not waited, "the second took the turn while the first held it"
            held.set()
        thread.join(5)
        assert waited == [True], "the second took the turn once the first let it go"
    finally:
        held.set()
        thread.join(5)
        other.dispose()


def test_a_turn_whose_connection_is_lost_while_held_ends_without_an_error_and_frees_the_turn(database_template):
    url = create_database(template=database_template)
    store, other = Store(url), Store(url)
    try:
        with store.turn("busy"):
            with other.engine.connect() as connection:  # the database drops the turn's connection
                connection.exec_driver_sql(  # this database's lock only: the server is shared
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        done = threading.Event()

        def take() -> None:
            with other.turn("busy"):
                done.set()

        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        assert done.wait(5), "the lost turn still held its lock"
        thread.join(5)
    finally:
        store.dispose()
        other.dispose()
        drop_database(url)
