"""Galaxy's own figures, the baseline the plugin is measured against: submit -> ok of the
trivial tool on Galaxy's local runner (median of N), and the share of it that is the
in-job metadata step; then the same with metadata set in a warm Galaxy Celery worker
(`metadata_strategy: directory_celery`) instead of in the job.

    PYTHONPATH=. .venv/bin/python -m tests.galaxy.measure [--jobs 10] [--no-celery]

The metadata step is timed from the job's own files: the exit code file is written when
the tool command ends, the core metrics' end epoch file when the job script (metadata
included) ends.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.galaxy.server import GalaxyServer, celery_options, ensure_venv
from tests.support.redis_server import RedisServer


def run_jobs(galaxy: GalaxyServer, jobs: int) -> list[tuple[float, float]]:
    """(submit -> ok seconds, metadata-step seconds) of each job, one job at a time."""
    user = galaxy.admin.user_api("bench@example.org")
    history = user.history("measure")
    dataset = user.upload(history, "hello\n")
    figures = []
    for _ in range(jobs):
        started = time.monotonic()
        job_id, _ = user.run_tool(history, "probe_cat", dataset)
        user.wait_job(job_id, want="ok", poll=0.05)
        elapsed = time.monotonic() - started
        number = galaxy.admin.decode(job_id)
        figures.append((elapsed, metadata_seconds(galaxy.working_directory(number), number)))
    return figures


def metadata_seconds(workdir: Path, number: int) -> float:
    """In-job metadata: from the exit code file (tool done) to the end epoch file (script done)."""
    exit_code = workdir / f"galaxy_{number}.ec"
    end = workdir / "__instrument_core_epoch_end"
    if not (exit_code.exists() and end.exists()):
        return 0.0
    return max(0.0, end.stat().st_mtime - exit_code.stat().st_mtime)


def report(name: str, figures: list[tuple[float, float]]) -> None:
    totals = [t for t, _ in figures]
    metadata = [m for _, m in figures]
    median = statistics.median(totals)
    print(f"{name}: submit->ok median {median:.2f} s (min {min(totals):.2f}, max {max(totals):.2f}, n={len(totals)}); "
          f"in-job metadata median {statistics.median(metadata):.2f} s = "
          f"{100 * statistics.median(metadata) / median:.0f}% of it")
    print("  each (total s, in-job metadata s):", ", ".join(f"({t:.2f}, {m:.2f})" for t, m in figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--no-celery", action="store_true", help="only the in-job metadata baseline")
    args = parser.parse_args()
    venv = ensure_venv()
    scratch = Path(tempfile.mkdtemp(prefix="galaxy-measure-"))
    redis_server = RedisServer(scratch).start()
    try:
        galaxy = GalaxyServer(venv, scratch / "local", redis_server.url).start()
        try:
            report("local runner, metadata in the job (metadata_strategy: directory)", run_jobs(galaxy, args.jobs))
        finally:
            galaxy.stop()
        if args.no_celery:
            return
        galaxy = GalaxyServer(venv, scratch / "celery", redis_server.url,
                              galaxy_options=celery_options(redis_server.url))
        galaxy.start_celery()
        try:
            galaxy.start()
            report("local runner, metadata in a warm Celery worker (metadata_strategy: directory_celery)",
                   run_jobs(galaxy, args.jobs))
        finally:
            galaxy.stop()
            galaxy.stop_celery()
    finally:
        redis_server.kill()
        print(f"logs and job directories: {scratch}")


if __name__ == "__main__":
    main()
