"""Fixtures for tests against the real single-node Slurm of ops/slurm-up.sh.

    pytest -m slurm tests/slurm

The session fixture starts Slurm with ops/slurm-up.sh when its daemons are not running or
the node is not ready, and loads its env file. A missing prerequisite skips these tests on
a developer machine and fails them in CI (CI=true): CI must never pass by skipping them.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from galaxy_tasks import jobdir
from galaxy_tasks.runners.base import Launch, Tracked
from tests.support.events import Events
from tests.support.slurm import slurm_up


@pytest.fixture(scope="session")
def slurm() -> dict[str, str]:
    """Slurm's client environment (SLURM_CONF, GT_SLURM_JOBCOMP, ...); Slurm is up."""
    env = slurm_up()
    os.environ.update(env)
    return env


@pytest.fixture
def events() -> Events:
    return Events()


class Launches:
    """Makes real job directories (job.sh, command.sh) under tmp_path; at the end of the
    test, cancels whatever Slurm still runs of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[Launch] = []

    def __call__(self, command: str, *, job_id: str | None = None, **fields: Any) -> Launch:
        job_id = job_id or uuid.uuid4().hex[:12]
        root = self.root / job_id
        env = jobdir.job_environment(
            jobdir.JobDir(root), cores=fields.get("cores", 1), memory_mb=fields.get("memory_mb"),
            spec_env={}, destination_env={}, mesos_url="", job_id=job_id,
        )
        created = jobdir.create(root, command, env, None)
        launch = Launch(job_id=job_id, job_dir=root, script=created.script, **fields)
        self.made.append(launch)
        return launch

    def cleanup(self) -> None:
        names = ",".join(launch.external_name for launch in self.made)
        if names:
            subprocess.run(["scancel", f"--name={names}"], capture_output=True, timeout=60)


@pytest.fixture
def make_launch(tmp_path: Path) -> Iterator[Launches]:
    launches = Launches(tmp_path / "jobs")
    yield launches
    launches.cleanup()


def runner_params(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"listen_host": "127.0.0.1", "announce_host": "127.0.0.1",
            "state_file": str(tmp_path / "state" / "slurm.listener"), **extra}


@pytest.fixture
def runner(slurm: dict[str, str], events: Events, tmp_path: Path) -> Iterator[Any]:
    from galaxy_tasks.runners.slurm import SlurmRunner

    instance = SlurmRunner(runner_params(tmp_path), events, destination="slurm")
    yield instance
    instance.close()


@pytest.fixture
def runner_with(runner: Any, events: Events, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Another runner of the same process and listener (as a second slurm destination would
    have), with params of its own."""
    from galaxy_tasks.runners.slurm import SlurmRunner

    made: list[Any] = []

    def make(**params: Any) -> Any:
        made.append(SlurmRunner(runner_params(tmp_path, **params), events, destination=f"slurm{len(made)}"))
        return made[-1]

    yield make
    for instance in made:
        instance.close()


def tracked(launch: Launch, external_id: str) -> Tracked:
    return Tracked(launch.job_id, external_id, launch.job_dir)


def wait_until(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll a condition (a file appearing, a Slurm state) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def slurm_state(external_id: str) -> str:
    out = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={external_id}", "-o", "%T"],
                         capture_output=True, text=True, timeout=60).stdout
    return out.strip()


def show_job(external_id: str) -> dict[str, str]:
    """`scontrol show job` as key=value pairs."""
    import re

    out = subprocess.run(["scontrol", "-o", "show", "job", external_id], capture_output=True, text=True,
                         timeout=60).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


def started(launch: Launch) -> bool:
    return (launch.job_dir / "claim").exists()
