"""Jobs through a mesos destination, measured end to end with real workers:

    GALAXY_TASKS_BROKER_URL=redis://127.0.0.1:6379/3 \\
    GALAXY_TASKS_DATABASE_URL=postgresql://postgres@127.0.0.1/bench \\
    python ops/bench/mesos_bench.py [--jobs 200] [--latency-jobs 50] [--agent-cpus 4] [--json]

It starts the Mesos master TEST DOUBLE in this process (tests/mesos_master: 2 simulated
agents whose tasks are local processes; no real Mesos exists here), a steps worker
(`galaxy-tasks worker --queues galaxy_tasks`) and the Mesos worker (`celery -A
workers.mesos worker`), whose pymesos framework talks HTTP to the double. Then:

- throughput: N trivial jobs (`true`) submitted at once, first submit to last terminal state;
- latency, one job at a time: submit -> TASK_RUNNING (the agent's status update) and
  TASK_FINISHED (the agent's status update) -> terminal state in the database.

Job directories, the job_conf and the worker logs go to a temporary directory (printed).
The database named by GALAXY_TASKS_DATABASE_URL is migrated and gets the bench's jobs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

from galaxy_tasks.edge import runtime

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.mesos_master import FakeMesosMaster  # noqa: E402  (the test double: no Mesos exists here)

JOB_CONF = """
destinations:
  mesos:
    runner: mesos
    params:
      master: "{master}"
      refuse_seconds: 0.5
      failover_timeout: 600
default: mesos
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency-jobs", type=int, default=50)
    parser.add_argument("--agent-cpus", type=float, default=4.0, help="cpus of each of the 2 simulated agents")
    parser.add_argument("--mesos-concurrency", type=int, default=4, help="threads of the Mesos worker")
    parser.add_argument("--steps-concurrency", type=int, default=2, help="processes of the steps worker")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for name in ("GALAXY_TASKS_BROKER_URL", "GALAXY_TASKS_DATABASE_URL"):
        if not os.environ.get(name) or os.environ[name].startswith(("memory://", "sqlite")):
            raise SystemExit(f"set {name} (Redis and PostgreSQL): the bench measures a production set-up")

    work = Path(tempfile.mkdtemp(prefix="galaxy-tasks-mesos-bench-"))
    master = FakeMesosMaster(agents=2, cpus=args.agent_cpus, mem=64 * 1024.0, heartbeat_s=5.0,
                             allocation_interval_s=0.01, update_retry_s=10.0, workdir=work / "agents").start()
    (work / "job_conf.yml").write_text(JOB_CONF.format(master=master.address))
    os.environ.update(GALAXY_TASKS_JOB_CONF=str(work / "job_conf.yml"), GALAXY_TASKS_HOME=str(work / "home"),
                      GALAXY_TASKS_JOBS_DIR=str(work / "jobs"), GALAXY_TASKS_MESOS_URL=master.address,
                      GALAXY_TASKS_LOG_LEVEL="WARNING")
    from galaxy_tasks.store import schema

    runtime.reset()
    schema.upgrade(runtime.context().settings.database_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        _start(work / "steps.log", env, [sys.executable, "-m", "galaxy_tasks.cli", "worker", "--queues",
                                         runtime.context().settings.steps_queue, "--concurrency",
                                         str(args.steps_concurrency), "-n", "bench-steps@%h", "--loglevel", "INFO"]),
        _start(work / "mesos.log", env, [sys.executable, "-m", "celery", "-A", "workers.mesos", "worker",
                                         "--concurrency", str(args.mesos_concurrency), "-n", "bench-mesos@%h", "--loglevel", "INFO"]),
    ]
    try:
        for proc, log in workers:
            _wait_ready(proc, log)
        _throughput(5)  # warm-up: imports, connections, the framework's first offers
        throughput = _throughput(args.jobs)
        latency = _latency(master, args.latency_jobs)
        loaded = _latency_of(master, throughput.pop("ids"))
    finally:
        for proc, _ in workers:
            proc.terminate()
        for proc, _ in workers:
            proc.wait(timeout=60)
        master.stop()
    result = {"agents": 2, "agent_cpus": args.agent_cpus, "mesos_worker_threads": args.mesos_concurrency,
              "steps_worker_processes": args.steps_concurrency, **throughput,
              "one_at_a_time": latency, "under_load": loaded, "work_dir": str(work)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


def _start(log: Path, env: dict[str, str], cmd: list[str]) -> tuple[subprocess.Popen, Path]:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT), log


def _wait_ready(proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while b" ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _wait_terminal(ids: list[str], interval: float) -> None:

    store = runtime.context().store
    while store.count_ended(ids) != len(ids):
        time.sleep(interval)


def _throughput(count: int) -> dict:
    from galaxy_tasks.client import Client

    client = Client()
    started = time.perf_counter()
    ids = [client.submit({"tool_id": "bench_true", "command": "true"}).id for _ in range(count)]
    submitted = time.perf_counter() - started
    _wait_terminal(ids, 0.02)
    elapsed = time.perf_counter() - started
    states = {client.get(i).state for i in ids}
    return {"jobs": count, "jobs_per_s": round(count / elapsed, 1), "seconds": round(elapsed, 2),
            "submit_seconds": round(submitted, 3), "states": sorted(states), "ids": ids}


def _latency(master: FakeMesosMaster, count: int) -> dict:
    from galaxy_tasks.client import Client

    client = Client()
    ids = []
    for _ in range(count):
        job = client.submit({"tool_id": "bench_latency", "command": "true"})
        _wait_terminal([job.id], 0.002)
        ids.append(job.id)
    return _latency_of(master, ids)


def _latency_of(master: FakeMesosMaster, ids: list[str]) -> dict:
    """submit (the job row's created_at) -> TASK_RUNNING and TASK_FINISHED -> finished_at,
    from the agent's own status updates (same host, same clock)."""
    from galaxy_tasks.client import Client

    updates: dict[tuple[str, str], float] = {}
    for _, event in master.events_of("UPDATE"):
        status = event["update"]["status"]
        key = (status["task_id"]["value"], status["state"])
        if "uuid" in status:  # the agent's update, not a reconciliation answer
            updates.setdefault(key, status["timestamp"])
    client = Client()
    to_running, to_terminal = [], []
    for job_id in ids:
        job = client.get(job_id)
        task = "gt-" + job_id
        created = job.created_at.replace(tzinfo=UTC).timestamp()
        finished = job.finished_at.replace(tzinfo=UTC).timestamp()
        if (task, "TASK_RUNNING") in updates:
            to_running.append((updates[(task, "TASK_RUNNING")] - created) * 1000)
        if (task, "TASK_FINISHED") in updates:
            to_terminal.append((finished - updates[(task, "TASK_FINISHED")]) * 1000)
    return {"jobs": len(ids), "submit_to_task_running_ms": _percentiles(to_running),
            "task_finished_to_terminal_ms": _percentiles(to_terminal)}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50": round(statistics.median(ordered), 1), "p90": round(pick(0.9), 1),
            "p99": round(pick(0.99), 1), "max": round(ordered[-1], 1)}


def _print(result: dict) -> None:
    print(f"mesos destination, {result['agents']} simulated agents x {result['agent_cpus']:g} cpus "
          f"(Mesos master TEST DOUBLE), Mesos worker {result['mesos_worker_threads']} threads, "
          f"steps worker {result['steps_worker_processes']} processes")
    print(f"  throughput: {result['jobs']} jobs (`true`) in {result['seconds']} s = {result['jobs_per_s']} jobs/s "
          f"(submitting took {result['submit_seconds']} s); end states {result['states']}")
    for title, key in (("one job at a time", "one_at_a_time"), ("under load (the throughput run)", "under_load")):
        figures = result[key]
        print(f"  latency, {title}, {figures['jobs']} jobs:")
        for name in ("submit_to_task_running_ms", "task_finished_to_terminal_ms"):
            p = figures[name]
            if p:
                print(f"    {name:30} p50 {p['p50']:8.1f}  p90 {p['p90']:8.1f}  p99 {p['p99']:8.1f}  max {p['max']:8.1f}")
    print(f"  logs and job directories: {result['work_dir']}")


if __name__ == "__main__":
    sys.exit(main())
