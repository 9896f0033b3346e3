"""What a health check costs: `galaxy-tasks health --node` against `celery inspect ping`.

Starts one worker of its own (steps queue, prefork, concurrency 1) on the broker and
database of the environment (GALAXY_TASKS_BROKER_URL, GALAXY_TASKS_DATABASE_URL), then
times each way of asking it whether it is alive: wall time and the CPU time of the checking
process (median of --runs), and the ping round trip alone, inside one process.

    GALAXY_TASKS_BROKER_URL=redis://127.0.0.1:6379/4 python ops/bench/health_cost.py [--runs 10] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pings", type=int, default=200, help="in-process pings for the round trip alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    home = tempfile.mkdtemp(prefix="gt-health-bench-")
    env.setdefault("GALAXY_TASKS_HOME", home)
    node = f"healthbench@{socket.gethostname()}"
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "galaxy-tasks"), "db", "upgrade"], env=env, check=True, capture_output=True)
    log = Path(home) / "worker.log"
    worker = subprocess.Popen([str(bin_dir / "galaxy-tasks"), "worker", "-Q", env.get("GALAXY_TASKS_STEPS_QUEUE", "galaxy_tasks"),
                               "-n", node, "--concurrency", "1", "--loglevel", "INFO"],
                              env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        ways = {
            "galaxy-tasks health --node": [str(bin_dir / "galaxy-tasks"), "health", "--node", node, "-q"],
            "python -m ...operations.health": [sys.executable, "-m", "galaxy_tasks.operations.health", "-n", node, "-q"],
            "celery inspect ping -d": [str(bin_dir / "celery"), "-A", "galaxy_tasks", "inspect", "ping", "-d", node],
            "celery inspect ping (all)": [str(bin_dir / "celery"), "-A", "galaxy_tasks", "inspect", "ping"],
            "python start-up alone": [sys.executable, "-c", "pass"],
        }
        results = {}
        for name, cmd in ways.items():
            runs = [timed(cmd, env) for _ in range(args.runs)]
            failures = sum(1 for _, _, code in runs if code != 0)
            results[name] = {"wall_s": round(statistics.median(w for w, _, _ in runs), 3),
                             "cpu_s": round(statistics.median(c for _, c, _ in runs), 3), "failures": failures}
        sys.path.insert(0, str(ROOT))
        os.environ.update(env)
        from galaxy_tasks.edge.app import app

        app.control.ping(destination=[node], timeout=5)  # connect once
        rtts = []
        for _ in range(args.pings):
            started = time.perf_counter()
            reply = app.control.ping(destination=[node], timeout=5)
            rtts.append(time.perf_counter() - started)
            assert reply, "no pong"
        rtts.sort()
        results["ping round trip, in process"] = {
            "median_ms": round(statistics.median(rtts) * 1000, 2),
            "p99_ms": round(rtts[int(len(rtts) * 0.99) - 1] * 1000, 2)}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, figures in results.items():
            print(f"{name:32} " + "  ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
