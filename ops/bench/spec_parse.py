"""parse() per spec, this tree's against an earlier revision's, in one run.

    python ops/bench/spec_parse.py                 # against main's galaxy_tasks/spec.py
    python ops/bench/spec_parse.py --base HEAD~3 --specs 100000

The specs are a fixed mix of what clients send (Galaxy-like specs with environments,
inputs, outputs, resources and an events queue; minimal ones; a few refused), made once
and parsed by both versions in alternating rounds; it prints ns per spec for each and the
ratio (this tree / base: below 1.0 is faster).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def specs(count: int) -> list[dict]:
    rng = random.Random(16)
    made = []
    for n in range(count):
        kind = rng.random()
        if kind < 0.2:
            made.append({"tool_id": f"cat{n % 7}", "command": "cat input.txt > out.txt"})
            continue
        spec = {
            "id": f"g-main-{n}",
            "tool_id": f"toolshed.g2.bx.psu.edu/repos/devteam/bwa/bwa_mem/0.7.{n % 20}",
            "tool_version": "0.7.17",
            "user": f"user{n % 100}@example.org",
            "command": "bwa mem -t \"$GALAXY_SLOTS\" ref.fa reads.fq > out/aln.sam && samtools sort out/aln.sam",
            "environment": {"LC_ALL": "C", "GALAXY_JOB_ID": str(n), "TMPDIR": "/tmp/job"},
            "inputs": [f"/data/files/{n % 997}/dataset_{n}.dat", "/data/ref/hg38.fa"],
            "outputs": ["out/aln.sam", "./report.html", "galaxy.json"],
            "cores": 1 + n % 8,
            "memory_mb": 4000,
            "walltime_s": 3600,
            "events": {"queue": "galaxy.main", "client_id": str(n)},
        }
        if kind > 0.98:
            spec["cores"] = 0  # refused
        made.append(spec)
    return made


def load(path: Path, name: str):
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def measure(parse, data: list[dict], error: type) -> float:
    gc.collect()
    started = time.perf_counter_ns()
    for item in data:
        try:
            parse(item)
        except error:
            pass
    return (time.perf_counter_ns() - started) / len(data)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--base", default="main", help="git revision of the baseline spec.py")
    options.add_argument("--specs", type=int, default=100_000)
    options.add_argument("--rounds", type=int, default=5)
    args = options.parse_args()
    sys.path.insert(0, str(ROOT))
    from galaxy_tasks import spec as current
    from galaxy_tasks.errors import SpecError

    text = subprocess.run(["git", "show", f"{args.base}:galaxy_tasks/spec.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spec_base.py").write_text(text)
        base = load(Path(tmp) / "spec_base.py", "spec_base")
    data = specs(args.specs)
    for item in data[:2000]:  # the two agree on what they accept
        a, b = _outcome(base.parse, item, SpecError), _outcome(current.parse, item, SpecError)
        assert a == b, (item, a, b)
    times: dict[str, list[float]] = {"base": [], "this": []}
    for _ in range(args.rounds):
        times["base"].append(measure(base.parse, data, SpecError))
        times["this"].append(measure(current.parse, data, SpecError))
    best = {name: min(values) for name, values in times.items()}
    print(f"specs: {len(data)} x {args.rounds} rounds (best round)")
    print(f"base ({args.base}): {best['base']:8.0f} ns/spec")
    print(f"this tree:   {best['this']:8.0f} ns/spec")
    print(f"ratio this/base: {best['this'] / best['base']:.2f}")


def _outcome(parse, item, error):
    try:
        return ("ok", parse(item).to_json())
    except error as exc:
        return ("refused", exc.field)


if __name__ == "__main__":
    main()
