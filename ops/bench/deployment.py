"""A bench's own small production deployment: a scratch PostgreSQL database, a Redis
database of the bench's choosing and two `galaxy-tasks worker` processes (concurrency 2),
torn down whatever happens. The limits and workflow benches measure against it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from galaxy_tasks.edge import runtime

if TYPE_CHECKING:
    from galaxy_tasks.client import Client

ROOT = Path(__file__).resolve().parents[2]


def _psql(statement: str, check: bool = True) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", statement], check=check)


def _ahead(options: Sequence[str]) -> list[str]:
    """`nice -n -5` for a worker of the ends queue alone, as its systemd unit runs it
    (ops/systemd/galaxy-tasks-worker@galaxy_tasks.ends.service.d/ahead.conf), where this
    process may raise a priority; nothing otherwise."""
    queues = list(options)[list(options).index("--queues") + 1] if "--queues" in options else None
    return ["nice", "-n", "-5"] if queues == "galaxy_tasks.ends" and os.geteuid() == 0 else []


@contextmanager
def deployment(work: Path, name: str, redis_db: int, job_conf: Path | None = None,
               workers: Sequence[Sequence[str]] = (("--concurrency", "2"), ("--concurrency", "2")),
               settings: Mapping[str, str] | None = None) -> Iterator[Client]:
    """A client of fresh workers (by default two, each serving every queue with two pool
    processes; `workers`: each one's `galaxy-tasks worker` options); `name` prefixes the
    database and the workers' names; `settings`: more GALAXY_TASKS_* variables."""
    database = f"gt_{name}_bench_{uuid.uuid4().hex[:8]}"
    _psql(f"CREATE DATABASE {database}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TASKS_")}
    env.update(GALAXY_TASKS_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}",
               GALAXY_TASKS_DATABASE_URL=f"postgresql+psycopg2://postgres@127.0.0.1/{database}",
               GALAXY_TASKS_JOBS_DIR=str(work / "jobs"), GALAXY_TASKS_HOME=str(work / "home"),
               PYTHONPATH=str(ROOT))
    if job_conf is not None:
        env["GALAXY_TASKS_JOB_CONF"] = str(job_conf)
    env.update(settings or {})
    os.environ.update(env)  # before galaxy_tasks reads its settings
    sys.path.insert(0, str(ROOT))
    from galaxy_tasks.client import Client
    from galaxy_tasks.store import schema

    schema.upgrade(env["GALAXY_TASKS_DATABASE_URL"])
    numbers = range(1, len(workers) + 1)
    started = [subprocess.Popen([*_ahead(options), sys.executable, "-m", "galaxy_tasks.cli", "worker", "-n",
                                 f"{name}{i}@%h", *options, "--loglevel", "INFO"], env=env, cwd=ROOT,
                                stdout=open(work / f"worker{i}.log", "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True) for i, options in zip(numbers, workers)]
    try:
        deadline = time.monotonic() + 60
        while not all(b" ready." in (work / f"worker{i}.log").read_bytes() for i in numbers):
            if any(w.poll() is not None for w in started) or time.monotonic() > deadline:
                raise SystemExit(f"a worker did not start; see {work}/worker*.log")
            time.sleep(0.2)
        yield Client(runtime.context())
    finally:
        for worker in started:
            os.killpg(worker.pid, 15)
        for worker in started:
            worker.wait(timeout=60)
        runtime.reset()
        _psql(f"DROP DATABASE {database} WITH (FORCE)", check=False)
