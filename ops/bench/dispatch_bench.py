"""Dispatch at scale, in one run: a burst against the Galaxy-style polling model, a job's end
recorded during that burst with and without the ends queue, and fair share while one user
has a long line waiting.

    .venv/bin/python ops/bench/dispatch_bench.py [--burst 1000] [--waiting 10000] [--others 20]

Each part runs on a deployment of its own (ops/bench/deployment.py: a scratch PostgreSQL
database gt_fair_bench_*, Redis database 14), torn down after it:

- burst, ends queue on: one worker of the steps and local queues (`--concurrency 2`) and one
  of the ends queue alone (`--concurrency 1`); BURST jobs of `true` submitted at once. It
  prints jobs/s (first submission to the last end recorded) and, over every job, the time
  from its process's exit to its end recorded (p50, p99, max);
- burst, ends queue off: the same, with GALAXY_TASKS_ENDS_QUEUE set to the steps queue and
  the second worker serving the steps queue too (the same number of processes);
- the polling model (`/work/shared/reference/perf/polling_baseline.py`, a model of Galaxy's
  handler and monitor loops with their 1 s sleeps and batched grabs): the same BURST jobs of
  `true` inserted at once, on a database of its own on the same PostgreSQL; its jobs/s;
- fairness: a local destination of SLOTS slots, one user's WAITING jobs of `sleep RUN`
  submitted and prepared (all waiting), then OTHERS jobs of USERS other users, one every
  0.25 s; each one's start delay (submitted to running), p50 and max.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deployment import _psql, deployment  # ops/bench/deployment.py, beside this script

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 14
POLLING_MODEL = Path("/work/shared/reference/perf")


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(statistics.median(ordered), 1), "p99": round(pick(0.99), 1), "max": round(ordered[-1], 1)}


def wait_ended(client: Any, ids: list[str], timeout: float = 1800) -> None:
    """Until every job has ended: the last one looked at alone (a key lookup), then the count."""
    store, deadline = client.ctx.store, time.monotonic() + timeout
    while getattr(store.job(ids[-1]), "finished_at", None) is None or store.count_ended(ids) != len(ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(ids) - store.count_ended(ids)} jobs did not end in {timeout} s")
        time.sleep(0.05)


def burst(work: Path, jobs: int, ends_queue: bool) -> dict[str, Any]:
    """BURST `true` jobs at once; jobs/s and the exit -> end recorded delays."""
    steps = ("--queues", "galaxy_tasks,local", "--concurrency", "2")
    second = ("--queues", "galaxy_tasks.ends" if ends_queue else "galaxy_tasks", "--concurrency", "1")
    settings = {} if ends_queue else {"GALAXY_TASKS_ENDS_QUEUE": "galaxy_tasks"}
    work.mkdir(parents=True)
    with deployment(work, "fair", REDIS_DB, workers=(steps, second), settings=settings) as client:
        for warm in [client.submit({"tool_id": "warm", "command": "true"}).id for _ in range(20)]:
            wait_ended(client, [warm])
        started = time.perf_counter()
        ids = [job.id for job in client.submit_many([{"tool_id": "burst", "command": "true"}] * jobs)]
        wait_ended(client, ids)
        elapsed = time.perf_counter() - started
        rows = client.ctx.store.jobs(ids).values()
        delays = [(job.finished_at - job.ended_at).total_seconds() * 1000 for job in rows
                  if job.finished_at and job.ended_at]
    return {"jobs_per_s": round(jobs / elapsed, 1), "end_to_recorded_ms": percentiles(delays)}


def polling_model(work: Path, jobs: int) -> float | None:
    """The polling model's jobs/s for the same burst, on a database of its own (None: the
    model is not on this machine)."""
    if not (POLLING_MODEL / "polling_baseline.py").exists():
        return None
    database = f"gt_fair_poll_{os.getpid()}"
    _psql(f"CREATE DATABASE {database}")
    os.environ["PG_DSN"] = f"host=127.0.0.1 port=5432 user=postgres dbname={database}"
    sys.path.insert(0, str(POLLING_MODEL))
    try:
        import polling_baseline  # the reference model, read where it lies

        polling_baseline.JOBDIR = str(work / "poll_jobs")  # not the shared /tmp/poll_jobs
        _, _, span = polling_baseline.run_trial("burst", jobs, None, "true", 1.0)
        return round(jobs / span, 1)
    finally:
        _psql(f"DROP DATABASE {database} WITH (FORCE)", check=False)


def fairness(work: Path, waiting: int, others: int, users: int, slots: int, run_s: float) -> dict[str, Any]:
    """One user's WAITING jobs in line, then OTHERS jobs of USERS users: their start delays."""
    work.mkdir(parents=True)
    conf = work / "job_conf.yml"
    conf.write_text(f"destinations:\n  local: {{runner: local, params: {{max_jobs: {slots}, "
                    f"slots_dir: {work}/slots}}}}\n")
    with deployment(work, "fair", REDIS_DB, conf) as client:
        store = client.ctx.store
        started = time.perf_counter()
        for _ in range(waiting):
            client.submit({"tool_id": "heavy", "command": f"sleep {run_s}", "user": "heavy"})
        while store.count_by_state().get("new", 0):  # every job of the line prepared, waiting
            time.sleep(0.5)
        line_s = time.perf_counter() - started
        waiting_then = store.count_by_state().get("queued", 0)  # (the line runs while it is prepared)
        ids = []
        for index in range(others):
            ids.append(client.submit({"tool_id": "light", "command": f"sleep {run_s}",
                                      "user": f"user{index % users}"}).id)
            time.sleep(0.25)
        deadline = time.monotonic() + 600
        while any(job.running_at is None for job in store.jobs(ids).values()):
            if time.monotonic() > deadline:
                raise SystemExit("the other users' jobs did not all start in 600 s")
            time.sleep(0.1)
        delays = [(job.running_at - job.created_at).total_seconds() for job in store.jobs(ids).values()]
        still_waiting = store.count_by_state().get("queued", 0)
    return {"submitted": waiting, "waiting_then": waiting_then, "line_prepared_s": round(line_s, 1),
            "still_waiting_after": still_waiting,
            "start_delay_s": {"p50": round(statistics.median(delays), 2), "max": round(max(delays), 2)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--waiting", type=int, default=10000)
    parser.add_argument("--others", type=int, default=20)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--run", type=float, default=0.5, help="seconds each fairness job runs")
    parser.add_argument("--skip", choices=["burst", "fairness"], action="append", default=[])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="galaxy-tasks-dispatch-"))
    if "burst" not in args.skip:
        on = burst(work / "on", args.burst, ends_queue=True)
        off = burst(work / "off", args.burst, ends_queue=False)
        model = polling_model(work, args.burst)
        print(f"burst of {args.burst} `true` jobs, one run:")
        print(f"  galaxy-tasks, ends queue on:  {on['jobs_per_s']:8.1f} jobs/s; exit -> end recorded "
              f"{on['end_to_recorded_ms']} ms")
        print(f"  galaxy-tasks, ends queue off: {off['jobs_per_s']:8.1f} jobs/s; exit -> end recorded "
              f"{off['end_to_recorded_ms']} ms")
        if model is not None:
            print(f"  polling model (1 s sleeps):   {model:8.1f} jobs/s; galaxy-tasks / model "
                  f"{on['jobs_per_s'] / model:.2f} (target >= 1.1)")
    if "fairness" not in args.skip:
        fair = fairness(work / "fair", args.waiting, args.others, args.users, args.slots, args.run)
        delay = fair["start_delay_s"]
        print(f"fairness: {args.waiting} jobs of one user submitted to {args.slots} slots (prepared in "
              f"{fair['line_prepared_s']} s; {fair['waiting_then']} still waiting then), then {args.others} jobs of "
              f"{args.users} other users, one every 0.25 s:")
        print(f"  start delay p50 {delay['p50']} s, max {delay['max']} s (target: each within 2 s); "
              f"{fair['still_waiting_after']} of the line still waiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
