"""Fixtures for tests against the real Grid Engine cell of ops/sge-up.sh.

libdrmaa drags in libjemalloc, whose TLS only fits if GLIBC_TUNABLES is set before Python
starts, so the test command must export it (ops/sge-up.sh's env.sh does):

    GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096 pytest tests/drmaa

The session fixture starts the cell with ops/sge-up.sh when qstat does not answer, and
loads its env file. A missing prerequisite skips these tests on a developer machine and
fails them in CI (CI=true): CI must never pass by skipping them.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from galaxy_tasks import jobdir
from galaxy_tasks.runners.base import Completion, Launch

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("GT_SGE_RUN_DIR", "/tmp/galaxy-tasks-sge"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ENV_KEYS = ("SGE_ROOT", "SGE_CELL", "DRMAA_LIBRARY_PATH", "PATH")


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _env_file_vars() -> dict[str, str]:
    env_file = RUN_DIR / "env.sh"
    if not env_file.exists():
        return {}
    out = subprocess.run(["bash", "-c", f'. "{env_file}" && env -0'], capture_output=True, text=True, check=True).stdout
    pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in pairs if k in ENV_KEYS}


def _qstat_works(env: dict[str, str]) -> bool:
    try:
        return subprocess.run(["qstat"], env={**os.environ, **env}, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def sge() -> dict[str, str]:
    """The cell's environment; the cell is up and `import drmaa` works."""
    if "optional_static_tls" not in os.environ.get("GLIBC_TUNABLES", ""):
        _unavailable("export GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096 before pytest starts "
                     "(libdrmaa cannot be loaded otherwise)")
    env = _env_file_vars()
    if not env or not _qstat_works(env):
        proc = subprocess.run([str(REPO / "ops" / "sge-up.sh")], capture_output=True, text=True, timeout=1500)
        if proc.returncode != 0:
            _unavailable(f"ops/sge-up.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        env = _env_file_vars()
    os.environ.update(env)
    try:
        import drmaa  # noqa: F401
    except Exception as exc:  # OSError, RuntimeError: whatever the library loader says
        _unavailable(f"import drmaa failed: {exc}")
    return env


class Events:
    """The report callback: collects completions, lets a test wait for one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[Completion] = []

    def __call__(self, completion: Completion) -> None:
        with self._cond:
            self.items.append(completion)
            self._cond.notify_all()

    def of(self, job_id: str) -> list[Completion]:
        with self._cond:
            return [c for c in self.items if c.job_id == job_id]

    def wait_for(self, job_id: str, timeout: float = 90) -> Completion:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self.items if c.job_id == job_id]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no completion for {job_id} within {timeout}s; got {self.items}")
                self._cond.wait(left)


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
        return Launch(job_id=job_id, job_dir=root, script=created.script, env=env, **fields)

    return make


@pytest.fixture
def runner(sge: dict[str, str], events: Events) -> Iterator[Any]:
    from galaxy_tasks.runners.drmaa import DrmaaRunner

    instance = DrmaaRunner({"accounting_flush_s": 2, "wait_timeout_s": 1}, events)
    yield instance
    instance.close()
