"""Galaxy's own figures with and without galaxy-tasks, from one run of one real Galaxy (its
Celery worker up, PostgreSQL) and one real galaxy-tasks deployment (PostgreSQL, a worker of the steps
and local queues) on a Redis of its own:

- submit -> ok of the trivial tool, one job at a time (median of N), on Galaxy's local
  runner and through galaxy-tasks, with metadata in the job (Galaxy's default) and in
  Galaxy's warm Celery worker (`metadata_strategy: directory_celery`);
- check_watched_item calls per job of the plugin (Galaxy's per-job status poll; target 0);
- the CPU seconds of the Galaxy process (utime + stime of /proc/<pid>/stat, all its
  threads) over a fixed window while B jobs (`sleep 600`) run, through galaxy-tasks and on
  Galaxy's local runner (B worker threads, so all B run at once).

    PYTHONPATH=. .venv/bin/python -m tests.galaxy.measure [--jobs 10] [--burst 200] [--window 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from galaxy_tasks.galaxy import stats
from tests.galaxy.api import GalaxyApi
from tests.galaxy.server import GalaxyServer, celery_options, ensure_venv
from tests.support.deployment import Deployment
from tests.support.redis_server import RedisServer
from tests.support.services import create_database, drop_database

#: (what, tool): the trivial tool in each environment of tests/galaxy/server.py
LATENCY = [
    ("Galaxy's local runner, metadata in the job", "probe_cat"),
    ("galaxy-tasks, metadata in the job", "probe_cat_gt"),
    ("Galaxy's local runner, metadata in Galaxy's Celery worker", "probe_cat_local_celery"),
    ("galaxy-tasks, metadata in Galaxy's Celery worker", "probe_cat_fast"),
]
SLEEPERS = [("galaxy-tasks", "probe_sleep_gt"), ("Galaxy's local runner", "probe_sleep_local")]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def submit_to_ok(user: GalaxyApi, history: str, dataset: str, tool: str, jobs: int) -> list[float]:
    """Seconds from the tool's submission to `ok` in Galaxy, one job at a time."""
    figures = []
    for _ in range(jobs):
        started = time.monotonic()
        job_id, _ = user.run_tool(history, tool, dataset)
        user.wait_job(job_id, want="ok", poll=0.05)
        figures.append(time.monotonic() - started)
    return figures


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, every thread of it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def states(user: GalaxyApi, job_ids: list[str]) -> dict[str, str]:
    wanted = set(job_ids)
    jobs = user.call("GET", f"/api/jobs?limit={len(job_ids) + 1000}&order_by=create_time")
    return {job["id"]: job["state"] for job in jobs if job["id"] in wanted}


def wait_states(user: GalaxyApi, job_ids: list[str], wanted: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = states(user, job_ids)
        if len(now) == len(job_ids) and set(now.values()) <= wanted:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all {len(job_ids)} jobs {sorted(wanted)} after {timeout} s: "
                               f"{statistics.multimode(now.values())}")
        time.sleep(2)


def handler_cpu(galaxy: GalaxyServer, user: GalaxyApi, history: str, dataset: str, tool: str, burst: int,
                window: float) -> float:
    """Galaxy's CPU seconds over `window` while `burst` jobs of the tool run; then cancels them."""
    with ThreadPoolExecutor(4) as pool:
        job_ids = [job_id for job_id, _ in pool.map(lambda _: user.run_tool(history, tool, dataset), range(burst))]
    try:
        wait_states(user, job_ids, {"running"}, timeout=540)
        time.sleep(5)
        assert galaxy.proc is not None
        before = cpu_seconds(galaxy.proc.pid)
        time.sleep(window)
        used = cpu_seconds(galaxy.proc.pid) - before
        assert set(states(user, job_ids).values()) == {"running"}, "a job ended inside the window"
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(user.cancel, job_ids))
        # `deleting` is not enough: Galaxy kills a local job's process after it says so
        wait_states(user, job_ids, {"deleted", "error", "ok"}, timeout=600)
    return used


def line(what: str, figures: list[float]) -> str:
    return (f"  {what}: median {statistics.median(figures):.2f} s (min {min(figures):.2f}, max {max(figures):.2f},"
            f" n={len(figures)})")


@dataclass
class Measured:
    galaxy: GalaxyServer
    tasks: Deployment
    user: GalaxyApi
    history: str
    dataset: str


@contextmanager
def measured_galaxy(prefix: str, metadata_strategy: str, local_workers: int = 2,
                    handlers: tuple[str, ...] = ()) -> Iterator[Measured]:
    """A Galaxy on PostgreSQL (SQLite refuses Galaxy's concurrent writes: "database is
    locked") with its Celery worker, `handlers` job handler processes if any, and a
    galaxy-tasks deployment (a worker of the steps and local queues, concurrency 2) on a Redis
    of their own; a user with a history holding one small dataset. All stopped after."""
    venv = ensure_venv()
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    redis_server = RedisServer(scratch).start()
    database, galaxy_database = create_database(), create_database()
    (scratch / "tasks").mkdir()
    tasks = Deployment(scratch / "tasks", database, redis_server.url)
    options = {**celery_options(redis_server.url, metadata_strategy=metadata_strategy),
               "database_connection": galaxy_database}
    galaxy = GalaxyServer(venv, scratch / "galaxy", redis_server.url, local_workers=local_workers,
                          galaxy_options=options, handlers=bool(handlers))
    try:
        tasks.worker("galaxy_tasks,local", "measure@%h", "--concurrency", "2")
        galaxy.start_celery()
        galaxy.start()
        for name in handlers:
            galaxy.start_handler(name)
        user = galaxy.admin.user_api("bench@example.org")
        history = user.history("measure")
        yield Measured(galaxy, tasks, user, history, user.upload(history, "hello\n"))
    finally:
        galaxy.stop()
        galaxy.stop_celery()
        tasks.close()
        drop_database(database)
        drop_database(galaxy_database)
        redis_server.kill()
        print(f"logs and job directories: {scratch}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--window", type=float, default=30)
    parser.add_argument("--no-cpu", action="store_true", help="only submit -> ok and check_watched_item")
    args = parser.parse_args()
    with measured_galaxy("galaxy-measure-", "directory", local_workers=max(2, args.burst)) as run:
        galaxy, user, history, dataset = run.galaxy, run.user, run.history, run.dataset
        print(f"submit -> ok of the trivial tool, one job at a time ({args.jobs} each):")
        for what, tool in LATENCY:
            print(line(what, submit_to_ok(user, history, dataset, tool, args.jobs)), flush=True)
        figures = stats.read(galaxy.stats_file)
        print(f"check_watched_item calls: {figures.get('check_watched_item', 0)} for "
              f"{figures.get('submitted', 0)} jobs through galaxy-tasks")
        if not args.no_cpu:
            print(f"Galaxy process CPU seconds over {args.window:.0f} s while {args.burst} jobs (sleep 600) run:")
            for what, tool in SLEEPERS:
                used = handler_cpu(galaxy, user, history, dataset, tool, args.burst, args.window)
                print(f"  {what}: {used:.2f} CPU s ({100 * used / args.window:.1f}% of a core)", flush=True)

if __name__ == "__main__":
    main()
