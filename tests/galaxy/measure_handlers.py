"""Figures of a Galaxy with two job handler processes sharing one galaxy-tasks, from one run
of one real Galaxy (web process, two `galaxy-main --attach-to-pool job-handlers` handlers,
Galaxy's Celery worker, PostgreSQL) and one real galaxy-tasks deployment (PostgreSQL, a
worker of the steps and local queues, concurrency 2) on a Redis of their own; the trivial
tool sets its metadata in Galaxy's Celery worker on either runner:

- submit -> ok, one job at a time (median of N), with two handlers and with one (the
  other stopped);
- M trivial jobs through Galaxy's API (requests of 100) across both handlers, through
  galaxy-tasks and then on Galaxy's local runner (2 threads per handler): the wall time from
  the first request to the last job ended, and the CPU seconds (utime + stime, all threads)
  of the two handler processes over it; the plugin's check_watched_item calls;
- a job galaxy-tasks refuses: seconds from the tool request to Galaxy's `error` (median of 5).

    PYTHONPATH=. .venv/bin/python -m tests.galaxy.measure_handlers [--jobs 20] [--many 1000]
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

from galaxy_tasks.galaxy import stats
from tests.galaxy.api import wait_all
from tests.galaxy.measure import Measured, cpu_seconds, line, measured_galaxy, submit_to_ok

HANDLERS = ("handler0", "handler1")
#: (what, tool): the trivial tool, metadata in Galaxy's Celery worker, on each runner
MANY = [("galaxy-tasks", "probe_cat_fast"), ("Galaxy's local runner", "probe_cat_local_celery")]
REFUSALS = 5


def many_jobs(run: Measured, tool: str, count: int) -> tuple[float, float, Counter]:
    """`count` jobs of the tool at once: seconds until all ended, the handlers' CPU seconds
    meanwhile, and how many ended in each state."""
    pids = [proc.pid for proc in run.galaxy.handler_procs.values()]
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    started = time.monotonic()
    job_ids = run.user.run_many(run.history, tool, run.dataset, count)
    ended = wait_all(run.user, job_ids, timeout=600 + 3 * count)
    seconds = time.monotonic() - started
    return seconds, sum(cpu_seconds(pid) for pid in pids) - cpu_before, Counter(ended.values())


def refusal_to_error(run: Measured, times: int) -> list[float]:
    figures = []
    for _ in range(times):
        started = time.monotonic()
        job_id, _ = run.user.run_tool(run.history, "probe_refused", run.dataset)
        run.user.wait_job(job_id, want="error", timeout=60, poll=0.05)
        figures.append(time.monotonic() - started)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs of each submit -> ok median")
    parser.add_argument("--many", type=int, default=1000, help="jobs of each burst")
    args = parser.parse_args()
    with measured_galaxy("galaxy-measure-handlers-", "directory_celery", handlers=HANDLERS) as run:
        print(f"submit -> ok of the trivial tool through galaxy-tasks, one job at a time ({args.jobs} each):")
        print(line("two handlers", submit_to_ok(run.user, run.history, run.dataset, "probe_cat_fast", args.jobs)),
              flush=True)
        print(f"{args.many} trivial jobs at once across two handlers:")
        for what, tool in MANY:
            seconds, cpu, ended = many_jobs(run, tool, args.many)
            print(f"  {what}: all ended in {seconds:.1f} s ({args.many / seconds:.1f} jobs/s), {dict(ended)};"
                  f" handlers' CPU {cpu:.1f} s ({1000 * cpu / args.many:.0f} ms a job)", flush=True)
        calls = {name: stats.read(run.galaxy.handler_stats_file(name)).get("check_watched_item", 0)
                 for name in HANDLERS}
        print(f"check_watched_item calls per handler: {calls}")
        print(line("refusal -> Galaxy's error", refusal_to_error(run, REFUSALS)), flush=True)
        run.galaxy.stop_handler(HANDLERS[1])
        print(line("one handler (the other stopped), submit -> ok",
                   submit_to_ok(run.user, run.history, run.dataset, "probe_cat_fast", args.jobs)), flush=True)


if __name__ == "__main__":
    main()
