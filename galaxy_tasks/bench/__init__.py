"""`galaxy-tasks bench`: the job chain measured against a bare Celery chain, in one run.

Both run on the same broker and the same worker processes, which the benchmark starts
itself: N trivial jobs (`true`) from submit to terminal state, against N chains of four
no-op tasks. Rounds of the two alternate and their medians are compared. It also measures
latency one job at a time (submit -> running, the exit of the job process -> terminal
state), the same exit -> terminal delay of every job during the bursts (with
`--ends-worker`, the ends queue served by a worker of its own; without, by the steps
workers), and the workers' memory. ops/bench/dispatch_bench.py compares both in one run,
beside the polling model, and measures fair share.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from galaxy_tasks.bench.noop import DONE_QUEUE
from galaxy_tasks.edge import runtime
from galaxy_tasks.states import TERMINAL
from galaxy_tasks.store import schema


def main(jobs: int, latency_jobs: int, workers: int, as_json: bool, rounds: int = 3,
         ends_worker: bool = False) -> int:
    ctx = runtime.context()
    if ctx.settings.embedded or ctx.settings.database_url.startswith("sqlite"):
        raise ValueError("bench measures a production set-up: set GALAXY_TASKS_BROKER_URL (Redis or RabbitMQ) "
                         "and GALAXY_TASKS_DATABASE_URL (PostgreSQL)")
    schema.upgrade(ctx.settings.database_url)
    local = sorted({d.queue for d in ctx.routing.destinations.values() if d.runner == "local"})
    queues = ",".join([ctx.settings.steps_queue] + local)
    logs = Path(tempfile.mkdtemp(prefix="galaxy-tasks-bench-"))
    procs = [_start_worker(i, queues, logs) for i in range(workers)]
    if ends_worker:  # job ends on a worker of their own (without it, the steps workers take them)
        procs.append(_start_worker(workers, ctx.settings.ends_queue, logs))
    try:
        _wait_ready(procs, logs)
        _bare_chains(10), _jobs(10)  # warm-up: imports, connections, pool processes
        rss_start = _rss(procs)
        chain_runs, job_runs = [], []
        for _ in range(rounds):  # alternate, so a noisy neighbour hurts both alike
            chain_runs.append(_bare_chains(jobs))
            job_runs.append(_jobs(jobs))
        chain_s = statistics.median(chain_runs)
        job_s = statistics.median(run for run, _, _ in job_runs)
        submit_s = statistics.median(submitted for _, submitted, _ in job_runs)
        ends = _percentiles([delay for _, _, delays in job_runs for delay in delays])
        latency = _latency(latency_jobs)
        floor = _percentiles(_bare_latency(latency_jobs))
        rss_end = _rss(procs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    result = {
        "jobs": jobs,
        "workers": workers,
        "rounds": rounds,
        "baseline_chains_per_s_each_round": [round(jobs / t, 1) for t in chain_runs],
        "jobs_per_s_each_round": [round(jobs / t, 1) for t, _, _ in job_runs],
        "baseline_chains_per_s": round(jobs / chain_s, 1),
        "jobs_per_s": round(jobs / job_s, 1),
        "ratio_to_baseline": round(chain_s / job_s, 3),
        "submit_seconds": round(submit_s, 3),
        "submit_to_running_ms": latency["submit_to_running"],
        "exit_to_terminal_ms": latency["exit_to_terminal"],
        "bare_chain_of_2_ms": floor,
        "ends_worker": ends_worker,
        "burst_exit_to_terminal_ms": ends,
        "worker_rss_kb_start": rss_start,
        "worker_rss_kb_end": rss_end,
        "targets": {
            "ratio_at_least_0.5": chain_s / job_s >= 0.5,
            "submit_to_running_median_under_25ms": latency["submit_to_running"]["p50"] < 25,
            "submit_to_running_median_at_most_15ms": latency["submit_to_running"]["p50"] <= 15,
        },
    }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


def _start_worker(index: int, queues: str, logs: Path) -> subprocess.Popen:
    """One worker process: the solo pool runs each task in the worker process itself."""
    cmd = [sys.executable, "-m", "galaxy_tasks.cli", "worker", "--queues", queues, "--pool", "solo",
           "-n", f"bench{index}-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO", "--without-mingle",
           "--without-gossip"]
    return subprocess.Popen(cmd, stdout=open(logs / f"worker{index}.log", "wb"), stderr=subprocess.STDOUT)


def _wait_ready(procs: list[subprocess.Popen], logs: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for index, proc in enumerate(procs):
        log = logs / f"worker{index}.log"
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench worker {index} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)


def _noop(queue: str, token: str | None = None) -> Any:
    """A no-op task of the baseline; the one given a token announces its start."""
    from galaxy_tasks.edge.app import app

    return app.signature("galaxy_tasks.noop", args=(token,) if token else (), queue=queue, immutable=True)


@contextmanager
def _done_queue() -> Iterator[Any]:
    """The queue the baseline's last no-op announces itself on, emptied first."""
    from kombu.simple import SimpleQueue

    from galaxy_tasks.edge.app import app

    with app.connection_for_read() as connection:
        done = SimpleQueue(connection, DONE_QUEUE)
        done.clear()
        try:
            yield done
        finally:
            done.close()


def _bare_chains(count: int) -> float:
    from celery import chain

    queue = runtime.context().settings.steps_queue
    token = uuid.uuid4().hex
    with _done_queue() as done:
        started = time.perf_counter()
        for _ in range(count):
            chain(_noop(queue), _noop(queue), _noop(queue), _noop(queue, token)).apply_async(queue=queue)
        for _ in range(count):
            done.get(block=True, timeout=120).ack()
        return time.perf_counter() - started


def _bare_latency(count: int) -> list[float]:
    """Milliseconds from sending a chain of two no-op tasks to the second's start, one chain
    at a time: what two Celery hops cost here with no work in them, the floor under a job's
    submit -> running (the submit's hop to prepare, prepare's to launch)."""
    from celery import chain

    queue = runtime.context().settings.steps_queue
    delays = []
    with _done_queue() as done:
        for _ in range(count):
            sent = time.time()
            chain(_noop(queue), _noop(queue, uuid.uuid4().hex)).apply_async(queue=queue)
            message = done.get(block=True, timeout=60)
            message.ack()
            delays.append((message.payload["started"] - sent) * 1000)
    return delays


def _jobs(count: int) -> tuple[float, float, list[float]]:
    """Seconds from the first submit until every job ended, seconds to submit them, and each
    job's time from its process's exit to its end recorded (ms), during that burst."""
    from galaxy_tasks.client import Client

    client = Client()
    started = time.perf_counter()
    ids = [job.id for job in client.submit_many([{"tool_id": "bench_true", "command": "true"}] * count)]
    submitted = time.perf_counter() - started
    store = runtime.context().store
    terminal = {s.value for s in TERMINAL}
    # The measuring must not load the machine it measures: a look at the last job (one
    # key lookup) until it has ended, and only then the count of all of them.
    while getattr(store.job(ids[-1]), "state", None) not in terminal:
        time.sleep(0.02)
    while store.count_ended(ids) != count:
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    ends = [(job.finished_at - job.ended_at).total_seconds() * 1000 for job in store.jobs(ids).values()
            if job.finished_at and job.ended_at]
    return elapsed, submitted, ends


def _latency(count: int) -> dict[str, dict[str, float]]:
    from galaxy_tasks.client import Client

    client = Client()
    to_running, to_terminal = [], []
    for _ in range(count):
        job = client.submit({"tool_id": "bench_latency", "command": "true"})
        job = client.wait([job.id], timeout=60)[job.id]
        assert job.running_at and job.finished_at and job.ended_at, f"job {job.id} did not end: {job.state}"
        to_running.append((job.running_at - job.created_at).total_seconds() * 1000)
        to_terminal.append((job.finished_at - job.ended_at).total_seconds() * 1000)
    return {"submit_to_running": _percentiles(to_running), "exit_to_terminal": _percentiles(to_terminal)}


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(statistics.median(ordered), 1), "p90": round(pick(0.9), 1),
            "p99": round(pick(0.99), 1), "max": round(ordered[-1], 1)}


def _rss(procs: list[subprocess.Popen]) -> int:
    return rss_kb(proc.pid for proc in procs)


def rss_kb(pids: Iterable[int]) -> int:
    """The summed resident set size, in KiB, of these processes (those gone count nothing)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _print(result: dict) -> None:
    print(f"{result['jobs']} jobs, {result['workers']} worker processes, "
          f"median of {result['rounds']} alternating rounds")
    print(f"  bare Celery chain of 4 no-op tasks: {result['baseline_chains_per_s']:8.1f} chains/s")
    print(f"  galaxy-tasks jobs (`true`):         {result['jobs_per_s']:8.1f} jobs/s "
          f"(ratio {result['ratio_to_baseline']:.2f}, target >= 0.5)")
    print(f"  each round: chains/s {result['baseline_chains_per_s_each_round']}, "
          f"jobs/s {result['jobs_per_s_each_round']}")
    for name in ("submit_to_running_ms", "bare_chain_of_2_ms", "exit_to_terminal_ms", "burst_exit_to_terminal_ms"):
        p = result[name]
        print(f"  {name:25} p50 {p['p50']:7.1f}  p90 {p['p90']:7.1f}  p99 {p['p99']:7.1f}  max {p['max']:7.1f}")
    print("  (bare_chain_of_2: two no-op tasks chained, one at a time, sent -> the second's start: two Celery"
          " hops with no work in them)")
    where = "on an ends worker of its own" if result["ends_worker"] else "on the steps workers"
    print(f"  (burst_exit_to_terminal: every burst job's end, {where})")
    print(f"  worker RSS: {result['worker_rss_kb_start']} kB at start, {result['worker_rss_kb_end']} kB at end")
    for target, met in result["targets"].items():
        print(f"  target {target}: {'met' if met else 'NOT met'}")
