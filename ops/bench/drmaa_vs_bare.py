#!/usr/bin/env python3
"""N trivial jobs through the DRMAA destination (real workers: a steps worker and
`celery -A workers.drmaa worker`, Redis, PostgreSQL), against N jobs of a bare python-drmaa
loop (ops/bench/bare_drmaa.py) on the same Grid Engine cell, in the same run.

    . /tmp/galaxy-tasks-sge/env.sh            # ops/sge-up.sh writes it (GLIBC_TUNABLES, SGE_ROOT, ...)
    GALAXY_TASKS_BROKER_URL=redis://127.0.0.1:6379/3 \\
    GALAXY_TASKS_DATABASE_URL=postgresql://postgres@127.0.0.1/bench \\
    python ops/bench/drmaa_vs_bare.py --jobs 50 [--rounds 2] [--json]

Each round runs both, in alternating order. Totals are from the first submission to the end
of the last job (for ours: its terminal state in the database). DRM calls per job come from
the DRMAA worker's own counter (`inspect drmaa_calls`): runJob, wait (wait-any, timeouts
included), control, qstat, accounting reads.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from galaxy_tasks.edge import runtime

ROOT = Path(__file__).resolve().parents[2]
JOB_CONF = """\
destinations:
  local: {runner: local}
  sge: {runner: drmaa, queue: drmaa}
rules:
  - {tool: "bench_*", destination: sge}
default: local
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if "optional_static_tls" not in os.environ.get("GLIBC_TUNABLES", "") or "SGE_ROOT" not in os.environ:
        sys.exit("source ops/sge-up.sh's env.sh first (GLIBC_TUNABLES, SGE_ROOT, DRMAA_LIBRARY_PATH)")
    broker, database = os.environ.get("GALAXY_TASKS_BROKER_URL", ""), os.environ.get("GALAXY_TASKS_DATABASE_URL", "")
    if not broker.startswith(("redis://", "amqp://")) or not database.startswith("postgresql"):
        sys.exit("set GALAXY_TASKS_BROKER_URL (Redis/RabbitMQ) and GALAXY_TASKS_DATABASE_URL (PostgreSQL)")
    work = Path(tempfile.mkdtemp(prefix="galaxy-tasks-drmaa-bench-"))
    (work / "job_conf.yml").write_text(JOB_CONF)
    os.environ.update(GALAXY_TASKS_JOB_CONF=str(work / "job_conf.yml"), GALAXY_TASKS_HOME=str(work / "home"),
                      GALAXY_TASKS_JOBS_DIR=str(work / "jobs"), PYTHONPATH=str(ROOT))

    from galaxy_tasks.store import schema

    schema.upgrade(runtime.context().settings.database_url)
    node = f"bench-drmaa-{uuid.uuid4().hex[:6]}"
    procs = [
        _start(work, "steps", [sys.executable, "-m", "galaxy_tasks.cli", "worker", "--queues", "galaxy_tasks",
                               "-n", f"bench-steps-{uuid.uuid4().hex[:6]}@%h", "--concurrency", "2"]),
        _start(work, "drmaa", [sys.executable, "-m", "celery", "-A", "workers.drmaa", "worker", "-n", f"{node}@%h",
                               "--concurrency", "4"]),
    ]
    node = f"{node}@{socket.gethostname()}"
    try:
        _ready(work, procs)
        _ours(5), _bare(5)  # warm-up: imports, connections, the cell's first dispatches
        rounds = []
        for number in range(args.rounds):
            before = _calls(node)
            if number % 2 == 0:
                ours, bare = _ours(args.jobs), _bare(args.jobs)
            else:
                bare, ours = _bare(args.jobs), _ours(args.jobs)
            after = _calls(node)
            calls = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in after}
            rounds.append({"ours_s": round(ours, 3), "bare_s": round(bare, 3), "ratio": round(ours / bare, 3),
                           "drm_calls": calls,
                           "drm_calls_per_job": round(sum(calls.values()) / args.jobs, 2)})
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
    ours_total, bare_total = sum(r["ours_s"] for r in rounds), sum(r["bare_s"] for r in rounds)
    result = {
        "jobs": args.jobs, "rounds": rounds,
        "ours_s": round(ours_total, 3), "bare_s": round(bare_total, 3),
        "ratio": round(ours_total / bare_total, 3),
        "drm_calls_per_job": round(sum(sum(r["drm_calls"].values()) for r in rounds) / (args.jobs * len(rounds)), 2),
        "slots": _slots(),
        "targets": {"ratio_at_most_1.2": ours_total / bare_total <= 1.2},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for number, r in enumerate(rounds, 1):
            print(f"round {number}: {args.jobs} jobs  ours {r['ours_s']:.2f} s  bare {r['bare_s']:.2f} s  "
                  f"ratio {r['ratio']:.3f}  DRM calls {r['drm_calls']} = {r['drm_calls_per_job']}/job")
        print(f"total: ours {result['ours_s']:.2f} s, bare python-drmaa {result['bare_s']:.2f} s, "
              f"ratio {result['ratio']:.3f} (target <= 1.2), {result['drm_calls_per_job']} DRM calls/job, "
              f"{result['slots']} slots")
    return 0


def _ours(jobs: int) -> float:
    """Submit `jobs` trivial jobs routed to the drmaa destination; seconds until all ended."""
    from galaxy_tasks.client import Client

    client, ctx = Client(), runtime.context()
    started = time.perf_counter()
    ids = [client.submit({"tool_id": "bench_true", "command": "true"}).id for _ in range(jobs)]
    while ctx.store.count_ended(ids) != jobs:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    failed = sum(1 for job in ctx.store.jobs(ids).values() if job.state != "ok")
    if failed:
        raise SystemExit(f"{failed} of our jobs did not end ok")
    return elapsed


def _bare(jobs: int) -> float:
    out = subprocess.run([sys.executable, str(ROOT / "ops" / "bench" / "bare_drmaa.py"), "--jobs", str(jobs)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"bare_drmaa.py failed: {out.stderr or out.stdout}")
    return float(json.loads(out.stdout)["total_s"])


def _calls(node: str) -> dict[str, int]:
    from galaxy_tasks.edge.app import app

    for _ in range(5):
        for reply in app.control.broadcast("drmaa_calls", reply=True, destination=[node], timeout=5):
            if node in reply:
                return reply[node]
    raise SystemExit(f"{node} does not answer drmaa_calls")


def _start(work: Path, name: str, cmd: list[str]) -> subprocess.Popen:
    log = open(work / f"{name}.log", "wb")
    return subprocess.Popen(cmd + ["--loglevel", "INFO", "--without-mingle", "--without-gossip"], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def _ready(work: Path, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for name, proc in zip(("steps", "drmaa"), procs):
        log = work / f"{name}.log"
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {name} worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)


def _slots() -> int | None:
    out = subprocess.run(["qstat", "-g", "c"], capture_output=True, text=True).stdout.splitlines()
    for line in out:
        if line.startswith("all.q"):
            return int(line.split()[-3]) if line.split()[-3].isdigit() else None
    return None


if __name__ == "__main__":
    sys.exit(main())
