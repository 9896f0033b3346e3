"""The task that accepts a workflow: its time and peak memory for a workflow of many seeds.

    python ops/bench/workflow_submit.py                    # 20,000 and 100,000 seeds
    python ops/bench/workflow_submit.py --seeds 5000

Each size runs in a fresh process on SQLite (the embedded mode, a new database under a
temporary directory), with GALAXY_TASKS_WORKFLOW_MAX_JOBS set to the size: `schedule.submit`
(check, record, the first pass), timed (wall and this process's CPU: on a loaded machine
the CPU time is the steadier figure), with tracemalloc's peak during it (tracing slows it)
and the process's ru_maxrss after. A step has at most 10,000 seeds, so the workflow is steps of 10,000.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PER_STEP = 10_000


def one(seeds: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from galaxy_tasks.workflows import schedule
    from tests.support.embedded import embedded_context

    steps = {f"s{n}": {"seeds": min(PER_STEP, seeds - n * PER_STEP),
                       "spec": {"tool_id": "t", "command": "echo ${seed} > out.txt", "outputs": ["out.txt"]}}
             for n in range((seeds + PER_STEP - 1) // PER_STEP)}
    with tempfile.TemporaryDirectory() as home, \
            embedded_context(Path(home), "destinations: {stub: {runner: stub}}\ndefault: stub\n",
                             WORKFLOW_MAX_JOBS=str(seeds)) as ctx:
        tracemalloc.start()
        started, cpu = time.perf_counter(), time.process_time()
        submitted = schedule.submit(ctx, {"name": "seeds", "steps": steps})
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        jobs = len(submitted[1].start) if hasattr(submitted[1], "start") else len(submitted[1])
    return {"seeds": seeds, "seconds": round(took, 2), "cpu_seconds": round(cpu, 2), "peak_mib": round(peak / 2**20, 1),
            "maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "jobs_created": jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[20_000, 100_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    for seeds in args.seeds:
        done = subprocess.run([sys.executable, __file__, "--one", str(seeds)], capture_output=True, text=True,
                              check=True)
        print(done.stdout.strip())


if __name__ == "__main__":
    main()
