"""Cost flat in the work: the same burst of `true` jobs at two sizes (by default 1,000 and
100,000), each on a deployment of its own, and what each job cost at each size.

    .venv/bin/python ops/bench/scale_bench.py [--sizes 1000,100000]

For each size, one run (ops/bench/deployment.py: a scratch PostgreSQL database, Redis
database 12, a worker of the steps and local queues with two pool processes and one of the
ends queue with one; job directories removed once each job's end is recorded, as
`GALAXY_TASKS_CLEANUP_JOB=always` does in production):

- jobs/s, first submission to the last end recorded;
- CPU per job of the workers (pool processes and the jobs they ran included) and of
  PostgreSQL, from /proc before and after: a step whose cost grew with the work would show
  here;
- the workers' memory: the largest summed RSS of every worker process, sampled each second,
  against the same before the burst;
- the database's bytes per job (its size after, less before, over the jobs);
- rows of gt_job read during the burst, by sequential scans and through each index, per job
  (the table analyzed before the burst, as a production table is: its statistics say no job
  is new or queued, and the burst's plans are made on them). A query that found its jobs by
  reading every job in their state would read about as many entries as there are jobs, at
  each batch: its count per job would grow with the size.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from deployment import deployment  # ops/bench/deployment.py, beside this script

from galaxy_tasks.bench import rss_kb

REDIS_DB = 12
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pids: list[int]) -> float:
    """User and system seconds of these processes and their reaped children."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15]) / TICK
    return total


def _rss_mb(pids: list[int]) -> float:
    return rss_kb(pids) / 1024


def _pids(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def _workers() -> list[int]:
    """The workers' processes: the two `galaxy-tasks worker` mains (children of this bench)
    and their pool processes, not the jobs they start (a job's process matches their
    command line, and shares their memory, in the moment between its spawn and its exec)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    named = set(_pids("scale[12]@"))
    mains = [pid for pid in named if parents.get(pid) == os.getpid()]
    return mains + [pid for pid, parent in parents.items() if parent in mains and pid in named]


def _sql(database: str, query: str) -> str:
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-tAc", query],
                          capture_output=True, text=True, check=True).stdout.strip()


def run(work: Path, jobs: int) -> dict[str, Any]:
    work.mkdir(parents=True)
    steps = ("--queues", "galaxy_tasks,local", "--concurrency", "2")
    ends = ("--queues", "galaxy_tasks.ends", "--concurrency", "1")
    with deployment(work, "scale", REDIS_DB, workers=(steps, ends),
                    settings={"GALAXY_TASKS_CLEANUP_JOB": "always"}) as client:
        store = client.ctx.store
        database = store.engine.url.database or ""
        workers = _workers()
        postgres = _pids(f"postgres: .*postgres {database} ")
        warm = [client.submit({"tool_id": "warm", "command": "true"}).id for _ in range(20)]
        while store.count_ended(warm) != len(warm):
            time.sleep(0.05)
        # statistics taken before the burst, as a production table's are: they say no job is
        # new, queued or running, and the burst's plans are made on them
        _sql(database, "ANALYZE gt_job")
        rss_before = _rss_mb(workers)
        size_before = int(_sql(database, "SELECT pg_database_size(current_database())"))
        scans = "SELECT seq_scan, seq_tup_read FROM pg_stat_user_tables WHERE relname = 'gt_job'"
        indexes = "SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes WHERE relname = 'gt_job'"
        scans_before, read_before = map(int, _sql(database, scans).split("|"))
        index_before = {name: int(n) for name, n in (line.split("|") for line in _sql(database, indexes).splitlines())}
        cpu_before = _cpu_s(workers), _cpu_s(postgres)
        peak = [rss_before]
        each_before = {pid: _rss_mb([pid]) for pid in workers}
        each_peak = dict(each_before)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(1.0):
                found = _workers()
                peak.append(_rss_mb(found))
                for pid in found:
                    each_peak[pid] = max(each_peak.get(pid, 0.0), _rss_mb([pid]))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        ids = []
        for at in range(0, jobs, 10_000):  # the client's own list of specs stays small
            ids += [job.id for job in client.submit_many([{"tool_id": "burst", "command": "true"}]
                                                         * min(10_000, jobs - at))]
        submitted_s = time.perf_counter() - started
        # counted from the history rows, so the wait itself never reads gt_job
        ended = ("SELECT count(*) FROM gt_job_state_change WHERE to_state IN ('ok', 'error', 'deleted') "
                 "AND from_state IS NOT NULL")
        deadline = time.monotonic() + 4 * 3600
        while (left := len(ids) + len(warm) - int(_sql(database, ended))) > 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"{left} jobs did not end")
            time.sleep(1.0)
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        postgres = sorted(set(postgres) | set(_pids(f"postgres: .*postgres {database} ")))
        cpu_after = _cpu_s(_workers()), _cpu_s(postgres)
        size_after = int(_sql(database, "SELECT pg_database_size(current_database())"))
        scans_after, read_after = map(int, _sql(database, scans).split("|"))
        index_after = {name: int(n) for name, n in (line.split("|") for line in _sql(database, indexes).splitlines())}
        by_state = dict(line.split("|") for line in _sql(
            database, "SELECT state, count(*) FROM gt_job GROUP BY state").splitlines())
    return {
        "jobs": jobs, "submit_s": round(submitted_s, 1), "jobs_per_s": round(jobs / elapsed, 1),
        "worker_cpu_ms_per_job": round(1000 * (cpu_after[0] - cpu_before[0]) / jobs, 2),
        "postgres_cpu_ms_per_job": round(1000 * (cpu_after[1] - cpu_before[1]) / jobs, 2),
        "worker_rss_mb_before": round(rss_before, 1), "worker_rss_mb_peak": round(max(peak), 1),
        "each_worker_rss_mb_before_peak": {pid: (round(each_before.get(pid, 0.0)), round(mb))
                                           for pid, mb in each_peak.items()},
        "db_bytes_per_job": round((size_after - size_before) / jobs),
        "gt_job_seq_scans": scans_after - scans_before,
        "gt_job_rows_seq_read_per_job": round((read_after - read_before) / jobs, 2),
        "gt_job_index_entries_read_per_job": {name: round((n - index_before.get(name, 0)) / jobs, 1)
                                              for name, n in sorted(index_after.items())
                                              if n - index_before.get(name, 0)},
        "states": by_state,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="galaxy-tasks-scale-"))
    for size in (int(value) for value in args.sizes.split(",")):
        found = run(work / str(size), size)
        print(" ".join(f"{key}={value}" for key, value in found.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
