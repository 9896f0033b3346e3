"""Fixtures for tests against the real Grid Engine cell of ops/sge-up.sh.

libdrmaa drags in libjemalloc, whose TLS only fits if GLIBC_TUNABLES is set before Python
starts: tests/conftest.py starts pytest again with it when it is not set, and the DRMAA
worker does the same for itself (galaxy_tasks/runners/drmaa/tls.py).

The session fixture starts the cell with ops/sge-up.sh when qstat does not answer or no
execd runs, and loads its env file. A missing prerequisite skips these tests on a developer
machine and fails them in CI (CI=true): CI must never pass by skipping them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from galaxy_tasks import jobdir
from galaxy_tasks.runners.base import Launch
from galaxy_tasks.runners.drmaa.tls import has_static_tls
from tests.support.events import Events
from tests.support.grid_engine import cell_env
from tests.support.services import unavailable

REPO = Path(__file__).resolve().parents[2]
@pytest.fixture(scope="session")
def sge() -> dict[str, str]:
    """The cell's environment; the cell is up and `import drmaa` works."""
    if not has_static_tls():
        unavailable("GLIBC_TUNABLES lacks the static TLS tunable (tests/conftest.py sets it at start)")
    env = cell_env()
    os.environ.update(env)
    try:
        import drmaa  # noqa: F401
    except Exception as exc:  # OSError, RuntimeError: whatever the library loader says
        unavailable(f"import drmaa failed: {exc}")
    return env


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def new_events() -> Callable[[], Events]:
    return Events


@pytest.fixture
def make_launch(tmp_path: Path) -> Callable[..., Launch]:
    """Real job directories (job.sh, command.sh) under tmp_path."""

    def make(command: str, *, job_id: str | None = None, **fields: Any) -> Launch:
        job_id = job_id or uuid.uuid4().hex[:12]
        root = tmp_path / job_id
        env = jobdir.job_environment(
            jobdir.JobDir(root), cores=fields.get("cores", 1), memory_mb=fields.get("memory_mb"),
            spec_env={}, destination_env={}, mesos_url="", job_id=job_id,
        )
        created = jobdir.create(root, command, env, None)
        return Launch(job_id=job_id, job_dir=root, script=created.script, **fields)

    return make


@pytest.fixture
def runner(sge: dict[str, str], events: Events) -> Iterator[Any]:
    from galaxy_tasks.runners.drmaa import DrmaaRunner

    instance = DrmaaRunner({"accounting_flush_s": 2, "wait_timeout_s": 1}, events)
    yield instance
    instance.close()


@pytest.fixture
def runner_with(runner: Any, events: Events) -> Iterator[Callable[..., Any]]:
    """Another runner of the same session (as a second drmaa destination would have), with
    params of its own."""
    from galaxy_tasks.runners.drmaa import DrmaaRunner

    made: list[Any] = []

    def make(**params: Any) -> Any:
        made.append(DrmaaRunner({"accounting_flush_s": 2, "wait_timeout_s": 1, **params}, events))
        return made[-1]

    yield make
    for instance in made:
        instance.close()


# -- real workers: a DRMAA worker (celery -A workers.drmaa), steps worker, beat --------------

TEST_JOB_CONF = """\
destinations:
  local:
    runner: local
  sge:
    runner: drmaa
    queue: drmaa
    params: {parallel_environment: smp, accounting_flush_s: 2, wait_timeout_s: 1}
  sge_rejecting:  # a queue of its own: two destinations never share one
    runner: drmaa
    queue: drmaa_rejecting
    params: {native_specification: "-l no_such_resource=1"}
rules:
  - tool: "drm_*"
    destination: sge
  - tool: "rejected_*"
    destination: sge_rejecting
default: local
"""


class DrmaaDeployment:
    """The `deployment` fixture (Redis, PostgreSQL, job dirs, CLI) with the Grid Engine
    environment and a job_conf, plus DRMAA workers started the documented way."""

    def __init__(self, deployment: Any, sge: dict[str, str], job_conf: Path) -> None:
        self.d = deployment
        deployment.env.update(sge)
        deployment.env["GALAXY_TASKS_JOB_CONF"] = str(job_conf)
        self.beats: list[subprocess.Popen] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.d, name)

    def steps_worker(self) -> Any:
        return self.d.worker("galaxy_tasks,local", f"steps{len(self.d.workers)}@%h")

    def drmaa_worker(self, name: str = "drmaa1", *args: str, env: dict[str, str] | None = None,
                     ready: bool = True) -> Any:
        from tests.support.deployment import Worker

        class DrmaaWorker(Worker):
            def __init__(self, env: dict[str, str], log: Path, name: str, args: list[str]) -> None:
                self.log = log
                cmd = [sys.executable, "-m", "celery", "-A", "workers.drmaa", "worker", "-n", f"{name}@%h",
                       "--loglevel", "INFO", "--without-mingle", "--without-gossip", *args]
                self.handle = open(log, "ab")
                self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self.handle,
                                             stderr=subprocess.STDOUT, start_new_session=True)

        log = self.d.tmp / f"worker-{len(self.d.workers) + 1}-{name}.log"
        worker = DrmaaWorker({**self.d.env, **(env or {})}, log, name, list(args))
        self.d.workers.append(worker)
        return worker.wait_ready() if ready else worker

    def beat(self) -> subprocess.Popen:
        log = open(self.d.tmp / "beat.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "galaxy_tasks.cli", "beat", "--loglevel", "INFO",
                                 "-s", str(self.d.tmp / "beat-schedule")], env=self.d.env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.beats.append(proc)
        return proc

    def drm_calls(self, name: str = "drmaa1") -> dict[str, int]:
        """The worker's DRM calls by kind, asked through Celery's remote control."""
        import socket

        from celery import Celery

        app = Celery(broker=self.d.env["GALAXY_TASKS_BROKER_URL"])
        app.conf.update(accept_content=["json"], task_serializer="json")
        node = f"{name}@{socket.gethostname()}"
        try:
            for _ in range(3):
                replies = app.control.broadcast("drmaa_calls", reply=True, destination=[node], timeout=5)
                for reply in replies:
                    if node in reply:
                        return {"runJob": 0, "wait": 0, "control": 0, "qstat": 0, "accounting": 0, **reply[node]}
        finally:
            app.close()
        raise AssertionError(f"{node} did not answer drmaa_calls")

    def wait_state(self, job_id: str, state: str, timeout: float = 60) -> None:
        self.d.wait_until(lambda: self.d.job(job_id).state == state, timeout, f"{job_id} {state}")

    def drm_jobs(self) -> dict[str, str]:
        """Grid Engine's jobs of this deployment: DRM id by our job id."""
        names = {f"gt-{job.id}": job.id for job in self.d.jobs()}
        out = subprocess.run(["qstat", "-xml"], capture_output=True, text=True, timeout=60).stdout
        import xml.etree.ElementTree as ET

        found = {}
        for job in ET.fromstring(out).iter("job_list"):
            name, number = job.findtext("JB_name"), job.findtext("JB_job_number")
            if name in names and number:
                found[names[name]] = number
        return found

    def close(self) -> None:
        for proc in self.beats:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
        leftovers = list(self.drm_jobs().values())
        if leftovers:
            subprocess.run(["qdel", *leftovers], capture_output=True, timeout=60)


def in_qstat(external_id: str) -> bool:
    return subprocess.run(["qstat", "-j", external_id], capture_output=True, timeout=60).returncode == 0


def in_accounting(external_id: str) -> bool:
    return subprocess.run(["qacct", "-j", external_id], capture_output=True, timeout=60).returncode == 0


@pytest.fixture
def drmaa_deployment(sge: dict[str, str], deployment: Any, tmp_path: Path) -> Iterator[DrmaaDeployment]:
    job_conf = tmp_path / "job_conf.yml"
    job_conf.write_text(TEST_JOB_CONF)
    made = DrmaaDeployment(deployment, sge, job_conf)
    try:
        yield made
    finally:
        made.close()
