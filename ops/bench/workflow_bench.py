"""What a workflow costs over the same jobs submitted on their own, and how soon a step's
end creates its dependents.

    .venv/bin/python ops/bench/workflow_bench.py [--inputs 200] [--steps 5] [--rounds 2]

It starts two `galaxy-tasks worker` processes (concurrency 2 each) on the shared Redis
(database 11) and a scratch PostgreSQL database it creates and drops. Each round (the order
alternates) runs:

- `workflow`: STEPS steps of trivial jobs (`true`), the first mapped over INPUTS values and
  each next one `foreach` the one before (STEPS x INPUTS jobs), from submit to its end;
- `independent`: the same number of the same jobs, each submitted on its own, to the end
  of the last.

It prints, per round, both totals and their ratio, and the scheduling delay: from the end of
an element's job as the database recorded it (finish) to the creation of the job of the
element that needs it (p50, p99, max, in ms).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deployment import deployment  # ops/bench/deployment.py, beside this script

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def document(inputs: int, steps: int) -> dict[str, Any]:
    body: dict[str, Any] = {"s1": {"map": list(range(inputs)), "spec": {"tool_id": "bench", "command": "true"}}}
    for n in range(2, steps + 1):
        body[f"s{n}"] = {"foreach": f"s{n - 1}", "spec": {"tool_id": "bench", "command": "true"}}
    return {"name": "bench", "steps": body}


def run_workflow(client: Any, inputs: int, steps: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    workflow = client.submit_workflow(document(inputs, steps))
    store = client.ctx.store
    while store.workflow(workflow.id).state not in ("ok", "error", "cancelled"):
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    ended = store.workflow(workflow.id)
    if ended.state != "ok":
        raise SystemExit(f"the workflow ended {ended.state}: {ended.reason}")
    elements = store.elements(workflow.id)
    by_key = {(e.step, e.index): e.job_id for e in elements}
    jobs = store.jobs(by_key.values())
    delays = []
    for n in range(2, steps + 1):
        for index in range(inputs):
            before, after = jobs[by_key[(f"s{n - 1}", index)]], jobs[by_key[(f"s{n}", index)]]
            delays.append((after.created_at - before.finished_at).total_seconds() * 1000)
    return elapsed, delays


def run_independent(client: Any, count: int) -> float:
    started = time.perf_counter()
    ids = [client.submit({"tool_id": "bench", "command": "true"}).id for _ in range(count)]
    store = client.ctx.store
    while getattr(store.job(ids[-1]), "state", None) not in ("ok", "error", "deleted"):
        time.sleep(0.05)
    while store.count_ended(ids) != count:
        time.sleep(0.05)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="galaxy-tasks-workflow-bench-"))
    results = []
    with deployment(work, "workflow", 11) as client:
        run_workflow(client, 5, 2)  # warm-up
        total = args.inputs * args.steps
        for round_ in range(args.rounds):
            figures: dict[str, Any] = {"round": round_ + 1, "jobs": total}
            order = ("workflow", "independent") if round_ % 2 == 0 else ("independent", "workflow")
            for kind in order:
                if kind == "workflow":
                    figures["workflow_s"], delays = run_workflow(client, args.inputs, args.steps)
                    figures["workflow_s"] = round(figures["workflow_s"], 2)
                    figures["delay_ms_p50"] = round(percentile(delays, 0.5), 1)
                    figures["delay_ms_p99"] = round(percentile(delays, 0.99), 1)
                    figures["delay_ms_max"] = round(max(delays), 1)
                else:
                    figures["independent_s"] = round(run_independent(client, total), 2)
            figures["workflow_over_independent"] = round(figures["workflow_s"] / figures["independent_s"], 3)
            results.append(figures)
            print(json.dumps(figures), flush=True)
    ratios = [float(r["workflow_over_independent"]) for r in results]
    print(json.dumps({"median_workflow_over_independent": round(statistics.median(ratios), 3),
                      "median_delay_ms_p50": statistics.median(r["delay_ms_p50"] for r in results),
                      "rounds": len(results)}))


if __name__ == "__main__":
    main()
