"""Where the CPU of a job goes, against a bare Celery chain: CPU milliseconds per job (and
per chain) of every process on the machine, grouped by process.

Starts the same worker processes as `galaxy-tasks bench` (solo pool, the steps and local
queues) on the broker and database of the environment, runs N bare chains of four no-op
tasks and then N trivial jobs, and reads /proc before and after each: the workers' own CPU,
their reaped children (the jobs' `sh` processes), PostgreSQL, Redis, this process (the
submitting client) and anything else that ran. On a CPU-bound machine the ratio of the two
totals is the throughput ratio `galaxy-tasks bench` reports.

    GALAXY_TASKS_BROKER_URL=redis://127.0.0.1:6379/3 \\
    GALAXY_TASKS_DATABASE_URL=postgresql://postgres@127.0.0.1/bench python ops/bench/cpu_split.py [--jobs 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from galaxy_tasks import bench
from galaxy_tasks.edge import runtime
from galaxy_tasks.store import schema

TICKS = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (name, own CPU ticks, reaped children's CPU ticks)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry)] = (name, int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return found


def split(run: Callable[[int], object], count: int, workers: set[int]) -> dict[str, float]:
    """CPU ms per unit by group while `run(count)` runs (processes alive at both ends)."""
    before = processes()
    run(count)
    after = processes()
    ticks: Counter[str] = Counter()
    for pid, (name, own, children) in after.items():
        if pid not in before:
            continue
        _, own_before, children_before = before[pid]
        group = "client" if pid == os.getpid() else "workers" if pid in workers else name
        ticks[group] += own - own_before
        ticks[f"{group} (children)"] += children - children_before
    return {group: round(1000 * value / TICKS / count, 2) for group, value in ticks.most_common() if value > 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ctx = runtime.context()
    schema.upgrade(ctx.settings.database_url)
    local = sorted({d.queue for d in ctx.routing.destinations.values() if d.runner == "local"})
    logs = Path(tempfile.mkdtemp(prefix="galaxy-tasks-cpu-"))
    procs = [bench._start_worker(i, ",".join([ctx.settings.steps_queue] + local), logs) for i in range(args.workers)]
    try:
        bench._wait_ready(procs, logs)
        bench._bare_chains(50), bench._jobs(50)  # warm-up
        pids = {proc.pid for proc in procs}
        started = time.perf_counter()
        chains = split(bench._bare_chains, args.jobs, pids)
        chain_s = time.perf_counter() - started
        started = time.perf_counter()
        jobs = split(bench._jobs, args.jobs, pids)
        job_s = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    result = {"units": args.jobs, "chain_cpu_ms": chains, "job_cpu_ms": jobs,
              "chain_total_ms": round(sum(chains.values()), 2), "job_total_ms": round(sum(jobs.values()), 2),
              "chains_per_s": round(args.jobs / chain_s, 1), "jobs_per_s": round(args.jobs / job_s, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for label, key in (("bare chain of 4 no-op tasks", "chain"), ("job (`true`)", "job")):
        rate = result["chains_per_s" if key == "chain" else "jobs_per_s"]
        print(f"{label}: {result[f'{key}_total_ms']:.1f} ms of CPU each ({rate}/s)")
        for group, ms in result[f"{key}_cpu_ms"].items():
            if ms >= 0.05:
                print(f"  {group:32} {ms:6.2f} ms")
    print(f"CPU ratio chain/job: {result['chain_total_ms'] / result['job_total_ms']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
