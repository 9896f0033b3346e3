"""Reconciliation looks only at overdue jobs, in bounded batches, with doubling delays."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert

from galaxy_tasks import config, lifecycle, routing
from galaxy_tasks.context import Context
from galaxy_tasks.model import jobs, utcnow
from galaxy_tasks.spec import parse
from galaxy_tasks.store import Store, schema
from tests.support.services import create_database, drop_database

pytestmark = pytest.mark.integration


@pytest.fixture
def ctx(tmp_path):
    url = create_database()
    schema.upgrade(url)
    settings = config.load({"GALAXY_TASKS_HOME": str(tmp_path), "GALAXY_TASKS_DATABASE_URL": url,
                            "GALAXY_TASKS_RECONCILE_BATCH": "50", "GALAXY_TASKS_CHECK_AFTER": "10",
                            "GALAXY_TASKS_CHECK_AFTER_MAX": "80"})
    yield Context(settings, Store(url, settings.check_after), routing.default_routing())
    drop_database(url)


def _rows(count: int, state: str, check_at, prefix: str) -> list[dict]:
    now = utcnow()
    return [dict(id=f"{prefix}-{i:06d}", tool_id="t", command="true", environment={}, inputs=[], outputs=[],
                 cores=1, destination="local", queue="local", state=state, external_id=f"host:{i}",
                 job_dir=f"/nonexistent/{prefix}-{i}", created_at=now, updated_at=now, check_at=check_at,
                 checks=0) for i in range(count)]


def test_a_pass_reads_only_overdue_jobs_in_one_batch_per_destination(ctx):
    now = utcnow()
    with ctx.store.engine.begin() as session:
        session.execute(insert(jobs), _rows(5000, "running", now + timedelta(seconds=300), "healthy"))
        session.execute(insert(jobs), _rows(120, "running", now - timedelta(seconds=1), "overdue"))
        session.execute(insert(jobs), _rows(3, "ok", None, "done"))
    first = lifecycle.overdue(ctx, now)
    checked = [t.job_id for t in first.check["local"]]
    assert len(checked) == 50, "at most one batch per pass"
    assert all(job_id.startswith("overdue-") for job_id in checked)
    second = lifecycle.overdue(ctx, now)
    third = lifecycle.overdue(ctx, now)
    seen = checked + [t.job_id for t in second.check["local"]] + [t.job_id for t in third.check["local"]]
    assert len(set(seen)) == 120, "each overdue job is looked at once, then pushed out"
    assert lifecycle.overdue(ctx, now).size == 0


def test_the_delay_between_checks_of_one_job_doubles_up_to_the_cap(ctx):
    now = utcnow()
    with ctx.store.engine.begin() as session:
        session.execute(insert(jobs), _rows(1, "running", now, "long"))
    delays, clock = [], now
    for _ in range(6):
        plan = lifecycle.overdue(ctx, clock)
        assert plan.size == 1
        job = ctx.store.job("long-000000")
        delays.append(round((job.check_at - clock).total_seconds()))
        clock = job.check_at
    assert delays == [10, 20, 40, 80, 80, 80]


def test_new_and_queued_jobs_whose_messages_were_lost_are_sent_again(ctx):
    now = utcnow()
    with ctx.store.engine.begin() as session:
        session.execute(insert(jobs), _rows(2, "new", now, "new") + _rows(2, "queued", now, "queued"))
        session.execute(insert(jobs), _rows(2, "submitting", now, "owned"))
    plan = lifecycle.overdue(ctx, now)
    assert sorted(job.id for job in plan.prepare) == ["new-000000", "new-000001"]
    assert sorted(j for j, _ in plan.launch) == ["queued-000000", "queued-000001"]
    # a launch in progress (fresh SUBMITTING with an external id) is checked, not relaunched
    assert sorted(t.job_id for t in plan.check["local"]) == ["owned-000000", "owned-000001"]


def test_cancelled_jobs_are_looked_at_once_more_for_a_process_left_running(ctx):
    now = utcnow()
    with ctx.store.engine.begin() as session:
        session.execute(insert(jobs), _rows(2, "deleted", now - timedelta(seconds=1), "held"))
        never = _rows(1, "deleted", now - timedelta(seconds=1), "never")
        never[0]["external_id"] = None
        session.execute(insert(jobs), never + _rows(1, "deleted", now + timedelta(seconds=60), "later"))
    plan = lifecycle.overdue(ctx, now)
    assert sorted(t.job_id for t in plan.stop["local"]) == ["held-000000", "held-000001"]
    assert plan.settled == ["never-000000"] and not plan.check and not plan.launch
    assert ctx.store.job("never-000000").check_at is None, "nothing to stop: no more looks"
    assert ctx.store.job("held-000000").check_at > now, "looked at again later until known stopped"
    lifecycle.stopped(ctx, ["held-000000"])
    assert ctx.store.job("held-000000").check_at is None
    assert ctx.store.job("held-000001").check_at is not None


def test_a_cancel_keeps_one_more_check_on_the_job(ctx):
    job, _ = lifecycle.accept(ctx, parse({"tool_id": "t", "command": "sleep 100"}))
    before, stop, *_ = lifecycle.cancel(ctx, job.id)
    assert before.value == "new" and stop is None
    cancelled = ctx.store.job(job.id)
    assert cancelled.state == "deleted" and cancelled.finished_at is not None
    assert abs((cancelled.check_at - cancelled.finished_at).total_seconds() - ctx.settings.check_after) < 1


def test_only_one_reconciler_holds_the_lease(ctx):
    assert lifecycle.acquire_lease(ctx, "reconcile", 30)
    assert not lifecycle.acquire_lease(ctx, "reconcile", 30)
