"""What Galaxy's per-user concurrency limit costs, against the host's job slots.

    .venv/bin/python ops/bench/limits_bench.py [--jobs 200] [--users 5] [--limit 2] [--rounds 2]

It starts two `galaxy-tasks worker` processes (concurrency 2 each) on the shared Redis
(database 9) and a scratch PostgreSQL database it creates and drops, with one job_conf of
two local destinations:

- `limited`: `destination_user_concurrent_jobs` of LIMIT for each user, counted in the
  database; the end of a job wakes the next waiting one of its user;
- `slots`: the local runner's host slots (`max_jobs` = USERS x LIMIT), the same number of
  jobs at once, with no count per user (the baseline).

Each round (the order alternates) runs JOBS jobs (`sleep 0.5`, USERS users in turn) on
each destination. Each command writes when it started and ended. It prints, per round:
the total time of each (first submission to the last command's end) and their ratio; the most of one user's jobs running at once under
`limited` (must be LIMIT); and, for `limited`, the time from the end of a user's job to
the start of the job its place released (p50, p99), against the same gap between any end
and the next start under `slots`; and the same gap as the database recorded it (the end
recorded by finish to the recorded start of the job it released), which leaves out the job's own
process exit and shell start-up; and the time from a job's exit (as its runner saw it) to
its end recorded.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from deployment import deployment  # ops/bench/deployment.py, beside this script

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CONF = """
destinations:
  limited: {{runner: local, params: {{max_jobs: 100, slots_dir: {slots}/limited}}}}
  slots: {{runner: local, params: {{max_jobs: {slots_n}, slots_dir: {slots}/slots}}}}
default: slots
limits:
  - type: destination_user_concurrent_jobs
    id: limited
    value: {limit}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def read_marks(ledger: Path) -> dict[str, list[tuple[float, str]]]:
    """Per user: (time, 'start'|'end') of every command."""
    marks: dict[str, list[tuple[float, str]]] = {}
    for line in ledger.read_text().splitlines():
        kind, at, user = line.split()
        marks.setdefault(user, []).append((float(at), kind))
    return marks


def peak(marks: list[tuple[float, str]]) -> int:
    running = top = 0
    for _, kind in sorted(marks, key=lambda m: (m[0], m[1] == "start")):
        running += 1 if kind == "start" else -1
        top = max(top, running)
    return top


def release_gaps(marks: list[tuple[float, str]], limit: int) -> list[float]:
    """With a user's jobs waiting on their limit, the k-th start (k > limit) is released by
    the (k - limit)-th end: the gaps between the two, in ms."""
    starts = sorted(at for at, kind in marks if kind == "start")
    ends = sorted(at for at, kind in marks if kind == "end")
    return [(starts[k] - ends[k - limit]) * 1000 for k in range(limit, len(starts))]


def recorded_gaps(client, ids: list[str], users: dict[str, str], per: int) -> list[float]:
    """The same gaps as the database saw them: from a job's end recorded (finish) to the
    recorded start of the job its place released (launch), in ms; `per` at once in a group."""
    marks: dict[str, list[tuple[float, str]]] = {}
    for change in client.changes_since(0, ids):
        kind = {"running": "start", "ok": "end"}.get(change.to_state)
        if kind:
            marks.setdefault(users[change.job_id], []).append((change.at.timestamp(), kind))
    return [g for m in marks.values() for g in release_gaps(m, per)]


def run(client, destination: str, jobs: int, users: int, ledger: Path) -> tuple[float, list[str]]:
    from galaxy_tasks.states import TERMINAL

    started = time.time()
    ids = []
    for n in range(jobs):
        user = f"user{n % users}"
        line = f'"$(date +%s.%N) {user}" >> {ledger}'
        ids.append(client.submit({"tool_id": "bench", "user": user, "destination": destination,
                                  "command": f"echo start {line}; sleep 0.5; echo end {line}"}).id)
    done = client.wait(ids, timeout=600)
    elapsed = max(at for m in read_marks(ledger).values() for at, kind in m if kind == "end") - started
    failed = [job.id for job in done.values() if job.state != "ok" or job.state not in {s.value for s in TERMINAL}]
    if failed:
        raise SystemExit(f"{len(failed)} jobs did not end ok on {destination}: {done[failed[0]].reason}")
    return elapsed, ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="galaxy-tasks-limits-bench-"))
    conf = work / "job_conf.yml"
    conf.write_text(CONF.format(slots=work / "slots", slots_n=args.users * args.limit, limit=args.limit))
    results = []
    with deployment(work, "limits", 9, conf) as client:
        run(client, "slots", 10, args.users, work / "warm-up")
        for round_ in range(args.rounds):
            order = ("limited", "slots") if round_ % 2 == 0 else ("slots", "limited")
            figures: dict[str, object] = {"round": round_ + 1}
            for destination in order:
                ledger = work / f"ledger-{destination}-{round_}"
                elapsed, ids = run(client, destination, args.jobs, args.users, ledger)
                figures[f"{destination}_s"] = round(elapsed, 2)
                marks = read_marks(ledger)
                if destination == "limited":
                    figures["most_of_a_user_at_once"] = max(peak(m) for m in marks.values())
                    gaps = [g for m in marks.values() for g in release_gaps(m, args.limit)]
                    users = {job_id: f"user{n % args.users}" for n, job_id in enumerate(ids)}
                    recorded = recorded_gaps(client, ids, users, args.limit)
                else:
                    everything = [mark for m in marks.values() for mark in m]
                    figures["most_at_once"] = peak(everything)
                    gaps = release_gaps(everything, args.users * args.limit)
                    recorded = recorded_gaps(client, ids, dict.fromkeys(ids, "all"), args.users * args.limit)
                rows = client.ctx.store.jobs(ids).values()
                exit_to_recorded = [(j.finished_at - j.ended_at).total_seconds() * 1000 for j in rows
                                    if j.finished_at and j.ended_at]
                for name, values in (("end_to_next_start", gaps), ("recorded_end_to_next_running", recorded),
                                     ("exit_to_end_recorded", exit_to_recorded)):
                    figures[f"{destination}_{name}_ms_p50"] = round(percentile(values, 0.5), 1)
                    figures[f"{destination}_{name}_ms_p99"] = round(percentile(values, 0.99), 1)
            figures["limited_over_slots"] = round(float(figures["limited_s"]) / float(figures["slots_s"]), 3)
            results.append(figures)
            print(json.dumps(figures), flush=True)
    ratios = [float(r["limited_over_slots"]) for r in results]
    print(json.dumps({"median_limited_over_slots": round(statistics.median(ratios), 3),
                      "rounds": len(results)}))


if __name__ == "__main__":
    main()
