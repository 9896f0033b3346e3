"""Flower's memory (RSS) as finished tasks accumulate, with `--max-tasks` capping them.

Starts `galaxy-tasks flower` (basic auth, the given --max-tasks) and one steps worker on the
broker of the environment (GALAXY_TASKS_BROKER_URL, Redis), with an SQLite database of its
own. Sends `galaxy_tasks.prepare_job` tasks shaped like real ones (a job id and a Tool Shed
tool id; the job does not exist, so the step returns at once) in rounds, waits until Flower
has seen every one succeed, and reads Flower's RSS from /proc after each round.

    GALAXY_TASKS_BROKER_URL=redis://127.0.0.1:6379/4 python ops/bench/flower_memory.py \
        [--rounds 3] [--per-round 10000] [--max-tasks 10000] [--json]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL_ID = "toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa_mem/0.7.17.2"
AUTH = "bench:" + uuid.uuid4().hex


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text)[1]) / 1024


def succeeded(url: str) -> int:
    request = urllib.request.Request(url + "/metrics",
                                     headers={"Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    return int(sum(float(m[1]) for m in re.finditer(
        r'flower_events_total\{task="galaxy_tasks.prepare_job",type="task-succeeded"[^}]*\} (\S+)', text)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=10000)
    parser.add_argument("--max-tasks", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gt-flower-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TASKS_") or k == "GALAXY_TASKS_BROKER_URL"}
    env.update(GALAXY_TASKS_HOME=str(home), PYTHONPATH=str(ROOT), GALAXY_TASKS_FLOWER_BASIC_AUTH=AUTH,
               GALAXY_TASKS_LOG_LEVEL="WARNING")
    if not env.get("GALAXY_TASKS_BROKER_URL", "").startswith("redis"):
        raise SystemExit("set GALAXY_TASKS_BROKER_URL to a Redis database this benchmark may use")
    cli = [sys.executable, "-m", "galaxy_tasks.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    flower = subprocess.Popen([*cli, "flower", "--port", str(port), "--max-tasks", str(args.max_tasks)],
                              env=env, stdout=open(home / "flower.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    worker = subprocess.Popen([*cli, "worker", "-Q", "galaxy_tasks", "-n", "flowerbench@%h", "--concurrency",
                               str(args.concurrency), "--loglevel", "WARNING"], env=env,
                              stdout=open(home / "worker.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    figures = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/healthcheck", timeout=2)
                break
            except OSError:
                if flower.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit((home / "flower.log").read_text()[-2000:])
                time.sleep(0.3)
        time.sleep(3)  # the worker is up and Flower has enabled its events
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        from galaxy_tasks.edge.app import app

        figures.append({"finished_tasks": 0, "rss_mb": round(rss_mb(flower.pid), 1)})
        sent = 0
        for _ in range(args.rounds):
            started = time.monotonic()
            with app.producer_or_acquire() as producer:
                for _ in range(args.per_round):
                    app.send_task("galaxy_tasks.prepare_job", kwargs={"job_id": str(uuid.uuid4()), "tool_id": TOOL_ID},
                                  queue="galaxy_tasks", producer=producer)
            sent += args.per_round
            while succeeded(url) < sent:
                if time.monotonic() - started > 1800:
                    raise SystemExit("Flower did not see every task within 30 minutes")
                time.sleep(1)
            figures.append({"finished_tasks": sent, "rss_mb": round(rss_mb(flower.pid), 1),
                            "kept_in_memory": min(sent, args.max_tasks),
                            "round_s": round(time.monotonic() - started, 1)})
    finally:
        for proc in (worker, flower):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in (worker, flower):
            proc.wait(timeout=120)
    result = {"max_tasks": args.max_tasks, "per_round": args.per_round, "figures": figures}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"Flower --max-tasks {args.max_tasks}")
        for row in figures:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
