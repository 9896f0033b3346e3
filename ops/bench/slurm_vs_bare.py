"""What the Slurm runner costs over Slurm itself.

    ops/slurm-up.sh && . /tmp/galaxy-tasks-slurm/env.sh
    .venv/bin/python ops/bench/slurm_vs_bare.py [--jobs 50] [--rounds 3]

Each round runs, against the same Slurm, one after the other (which goes first alternates):

- runner: N trivial jobs (`true`) through SlurmRunner: real job directories, job.sh, the
  batch script that announces its end; submit them all, wait for every report;
- bare: N `sbatch --wrap true` submissions, waited for the way a script without the runner
  would: one `squeue --jobs=<all>` every 0.1 s until all have ended.

It prints the total time of each (first submission to last end), their ratio (target
<= 1.2; Slurm's own scheduling makes a round's total vary by seconds, so the ratio of the
totals summed over all rounds is the figure to quote), the Slurm commands the runner issued per job (target: 1 sbatch, nothing while a
job runs: every squeue it runs is a confirmation of announced ends, several ends per call
when they come together; a probe counts the commands while 8 jobs run: 0), and the latency from an announcement to its report (p50, p90).
The figures of the median round (by ratio) are printed last, as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from galaxy_tasks import jobdir  # noqa: E402
from galaxy_tasks.runners.base import Completion, Launch  # noqa: E402
from galaxy_tasks.runners.slurm import TERMINAL, SlurmRunner  # noqa: E402


def make_launches(root: Path, count: int) -> list[Launch]:
    launches = []
    for _ in range(count):
        job_id = uuid.uuid4().hex[:12]
        job_root = root / job_id
        env = jobdir.job_environment(jobdir.JobDir(job_root), cores=1, memory_mb=None, spec_env={},
                                     destination_env={}, mesos_url="", job_id=job_id)
        created = jobdir.create(job_root, "true", env, None)
        launches.append(Launch(job_id, job_root, created.script))
    return launches


def through_runner(root: Path, count: int) -> dict:
    """Submit `count` trivial jobs through the runner and wait for all their reports."""
    launches = make_launches(root, count)
    done: dict[str, float] = {}
    cond = threading.Condition()

    def report(completion: Completion) -> None:
        with cond:
            done[completion.job_id] = time.monotonic()
            cond.notify_all()

    runner = SlurmRunner({"listen_host": "127.0.0.1", "announce_host": "127.0.0.1"}, report)
    try:
        began = time.monotonic()
        for launch in launches:
            runner.submit(launch)
        submitted = time.monotonic()
        with cond:
            ok = cond.wait_for(lambda: len(done) == count, timeout=600)
        if not ok:
            raise SystemExit(f"only {len(done)} of {count} jobs reported within 600 s")
        ended = max(done.values())
        calls = runner.calls
        latencies = sorted(runner.latencies)
        return {
            "total_s": ended - began,
            "submit_s": submitted - began,
            "sbatch_per_job": calls["sbatch"] / count,
            "squeue_per_job": calls["squeue"] / count,
            "other_commands": {k: v for k, v in calls.items() if k not in ("sbatch", "squeue")},
            "announcements": runner.listener_stats,
            "latency_p50_ms": 1000 * statistics.median(latencies),
            "latency_p90_ms": 1000 * latencies[int(0.9 * (len(latencies) - 1))],
        }
    finally:
        runner.close()


def while_running(root: Path, count: int = 8, seconds: float = 3.0) -> dict:
    """Slurm commands the runner issues while jobs run: `count` jobs that sleep, watched
    from the moment all have started (claimed) until the first one has ended (its exit_code
    file; the job directories are watched, not Slurm)."""
    launches = make_launches(root, 0)
    for _ in range(count):
        job_id = uuid.uuid4().hex[:12]
        job_root = root / job_id
        env = jobdir.job_environment(jobdir.JobDir(job_root), cores=1, memory_mb=None, spec_env={},
                                     destination_env={}, mesos_url="", job_id=job_id)
        created = jobdir.create(job_root, f"sleep {seconds}", env, None)
        launches.append(Launch(job_id, job_root, created.script))
    reported = threading.Semaphore(0)
    runner = SlurmRunner({"listen_host": "127.0.0.1", "announce_host": "127.0.0.1"}, lambda _: reported.release())
    try:
        for launch in launches:
            runner.submit(launch)
        deadline = time.monotonic() + 120
        while not all((launch.job_dir / "claim").exists() for launch in launches):
            if time.monotonic() > deadline:
                raise SystemExit("the probe's jobs did not all start within 120 s")
            time.sleep(0.05)
        before, began = runner.calls, time.monotonic()
        last, watched = before, 0.0
        # the last look at the counter taken while no job had ended yet (a job writes its
        # exit_code file before it announces its end)
        while not any((launch.job_dir / "exit_code").exists() for launch in launches):
            last, watched = runner.calls, time.monotonic() - began
            time.sleep(0.05)
        during = last - before
        for _ in launches:
            reported.acquire(timeout=120)
        return {"jobs": count, "watched_s": watched, "commands_while_running": dict(during)}
    finally:
        runner.close()


def bare(count: int) -> dict:
    """`sbatch --wrap true` `count` times, then one squeue for all every 0.1 s until all ended."""
    env = {k: v for k, v in os.environ.items() if k.startswith("SLURM_") or k in ("PATH", "HOME", "LANG")}
    began = time.monotonic()
    ids = []
    for _ in range(count):
        out = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "-J", "gt-bench-bare", "--wrap", "true"],
                             capture_output=True, text=True, timeout=60, env=env, check=True).stdout
        ids.append(out.strip().split(";")[0])
    submitted = time.monotonic()
    polls = 0
    while True:
        polls += 1
        out = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}", "-o", "%T"],
                             capture_output=True, text=True, timeout=60, env=env).stdout.split()
        if len(out) == count and all(state in TERMINAL for state in out):
            break
        time.sleep(0.1)
    return {"total_s": time.monotonic() - began, "submit_s": submitted - began, "squeue_polls": polls}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.jobs < 1 or args.rounds < 1:
        parser.error("--jobs and --rounds must be positive")
    rounds = []
    root = Path(tempfile.mkdtemp(prefix="gt-slurm-bench-"))
    try:
        for number in range(args.rounds):
            if number % 2:  # alternate which goes first: Slurm's scheduling has a rhythm of its own
                plain = bare(args.jobs)
                runner = through_runner(root / f"round{number}", args.jobs)
            else:
                runner = through_runner(root / f"round{number}", args.jobs)
                plain = bare(args.jobs)
            ratio = runner["total_s"] / plain["total_s"]
            rounds.append({"ratio": ratio, "runner": runner, "bare": plain})
            print(f"round {number + 1}: runner {runner['total_s']:.2f} s (submit {runner['submit_s']:.2f} s), "
                  f"bare {plain['total_s']:.2f} s (submit {plain['submit_s']:.2f} s): ratio {ratio:.2f}; "
                  f"per job {runner['sbatch_per_job']:.2f} sbatch, {runner['squeue_per_job']:.2f} squeue; "
                  f"announcement -> report p50 {runner['latency_p50_ms']:.0f} ms, "
                  f"p90 {runner['latency_p90_ms']:.0f} ms", flush=True)
        probe = while_running(root / "probe")
        print(f"while {probe['jobs']} jobs ran ({probe['watched_s']:.1f} s watched): "
              f"{sum(probe['commands_while_running'].values())} Slurm commands", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    overall = sum(r["runner"]["total_s"] for r in rounds) / sum(r["bare"]["total_s"] for r in rounds)
    latencies = sorted(r["runner"]["latency_p50_ms"] for r in rounds)
    print(f"ratio of the summed totals over {len(rounds)} rounds: {overall:.2f} (per round: median "
          f"{median['ratio']:.2f}); announcement -> report p50 (median of rounds) "
          f"{latencies[len(latencies) // 2]:.0f} ms")
    print(json.dumps({"jobs": args.jobs, "rounds": args.rounds, "ratio_of_totals": round(overall, 3),
                      "while_running": probe,
                      "ratios": [round(r["ratio"], 3) for r in rounds], "median_round": median}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
