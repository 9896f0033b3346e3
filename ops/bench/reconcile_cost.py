"""Cost of one reconciliation pass against the number of healthy running jobs.

Usage: python ops/bench/reconcile_cost.py postgresql://postgres@127.0.0.1/SCRATCH_DB
(the database is emptied). With 100 overdue jobs each time, the pass's time should not
grow with the healthy jobs beside them: it reads an index range of due rows only.
"""
from __future__ import annotations

import statistics
import sys
import time
from datetime import timedelta

from sqlalchemy import delete, insert

from galaxy_tasks import config, lifecycle, routing
from galaxy_tasks.context import Context
from galaxy_tasks.model import jobs, state_changes, utcnow
from galaxy_tasks.store import Store, schema


def rows(count: int, offset: int, check_at, prefix: str) -> list[dict]:
    now = utcnow()
    return [dict(id=f"{prefix}-{offset + i:07d}", tool_id="t", command="true", environment={}, inputs=[],
                 outputs=[], cores=1, destination="local", queue="local", state="running",
                 external_id=f"h:{i}", job_dir="/nonexistent", created_at=now, updated_at=now,
                 check_at=check_at, checks=0) for i in range(count)]


def main(url: str) -> None:
    schema.upgrade(url)
    settings = config.load({"GALAXY_TASKS_DATABASE_URL": url, "GALAXY_TASKS_RECONCILE_BATCH": "500"})
    ctx = Context(settings, Store(url), routing.default_routing())
    with ctx.store.engine.begin() as session:
        session.execute(delete(state_changes))
        session.execute(delete(jobs))
    healthy = 0
    print("healthy_running  overdue  pass_ms(median of 5)")
    for target in (0, 10_000, 100_000):
        with ctx.store.engine.begin() as session:
            future = utcnow() + timedelta(days=1)
            for start in range(healthy, target, 10_000):
                session.execute(insert(jobs), rows(min(10_000, target - start), start, future, "healthy"))
        healthy = target
        timings = []
        for _ in range(5):
            with ctx.store.engine.begin() as session:
                session.execute(delete(jobs).where(jobs.c.id.like("overdue-%")))
                session.execute(insert(jobs), rows(100, 0, utcnow() - timedelta(seconds=1), "overdue"))
            started = time.perf_counter()
            plan = lifecycle.overdue(ctx)
            timings.append((time.perf_counter() - started) * 1000)
            assert plan.size == 100
        print(f"{healthy:15d}  {100:7d}  {statistics.median(timings):8.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
