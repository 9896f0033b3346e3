"""Fixtures for the Mesos runner tests: the real pymesos driver inside MesosRunner, talking
HTTP to the Mesos master TEST DOUBLE in tests/mesos_master (2 simulated agents)."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds mesos_master

from mesos_master import FakeMesosMaster  # noqa: E402

from galaxy_tasks import jobdir  # noqa: E402
from galaxy_tasks.runners.base import Completion, Launch  # noqa: E402
from galaxy_tasks.runners.mesos import MesosRunner  # noqa: E402


class Reports:
    """The runner's `report` callback: records completions; can be slow or fail, to check
    that Mesos acknowledgements wait for it."""

    def __init__(self, delay_s: float = 0.0, failures: int = 0) -> None:
        self.delay_s, self.failures = delay_s, failures
        self.calls = 0
        self.completions: list[Completion] = []
        self.returned_at: dict[str, float] = {}
        self._cond = threading.Condition()

    def __call__(self, completion: Completion) -> None:
        with self._cond:
            self.calls += 1
            if self.failures > 0:
                self.failures -= 1
                raise RuntimeError("database unavailable (test)")
        time.sleep(self.delay_s)
        with self._cond:
            self.completions.append(completion)
            self.returned_at[completion.job_id] = time.time()
            self._cond.notify_all()

    def wait(self, job_id: str, timeout: float = 30.0) -> Completion:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.of(job_id), timeout)
            assert ok, f"no completion reported for {job_id} within {timeout}s"
            return self.of(job_id)[0]

    def of(self, job_id: str) -> list[Completion]:
        return [c for c in self.completions if c.job_id == job_id]


@pytest.fixture
def master(tmp_path: Path) -> Iterator[FakeMesosMaster]:
    m = FakeMesosMaster(agents=2, cpus=2.0, mem=1024.0, heartbeat_s=1.0, update_retry_s=1.0,
                        allocation_interval_s=0.05, workdir=tmp_path / "agents")
    m.start()
    yield m
    m.stop()


@pytest.fixture
def make_runner(master: FakeMesosMaster, tmp_path: Path) -> Iterator[Callable[..., MesosRunner]]:
    runners: list[MesosRunner] = []

    def make(report: Reports, address: str | None = None, **params: Any) -> MesosRunner:
        full = {"master": address or master.address, "refuse_seconds": 0.5,
                "failover_timeout": 60, "framework_id_file": str(tmp_path / "framework_id"),
                **params}
        runner = MesosRunner(full, report)
        runners.append(runner)
        assert runner.wait_registered(15), "runner did not register with the test master"
        return runner

    yield make
    for runner in runners:
        runner.close()


@pytest.fixture
def make_launch(tmp_path: Path) -> Callable[..., Launch]:
    def make(job_id: str, command: str, cores: int = 1, memory_mb: int | None = None,
             walltime_s: int | None = None) -> Launch:
        root = tmp_path / "jobs" / job_id
        jd = jobdir.JobDir(root)
        env = jobdir.job_environment(jd, cores=cores, memory_mb=memory_mb, spec_env={},
                                     destination_env={}, mesos_url="", job_id=job_id)
        jobdir.create(root, command, env, None)
        return Launch(job_id=job_id, job_dir=root, script=jd.script, cores=cores,
                      memory_mb=memory_mb, walltime_s=walltime_s)

    return make


@pytest.fixture
def make_reports() -> type[Reports]:
    return Reports
