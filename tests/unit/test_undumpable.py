"""A process closed with galaxy_tasks.undumpable is unreadable to another process of its user
(what a job is to its worker), while an open one is readable: real processes of an
unprivileged user, as a worker should run (root may read anything)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.services import unavailable

MODULE = Path(__file__).resolve().parents[2] / "galaxy_tasks" / "undumpable.py"
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def readable_copy():
    """The module, where an unprivileged user can read it (wherever this checkout is)."""
    where = tempfile.mkdtemp(prefix="gt-closed-", dir="/tmp")
    os.chmod(where, 0o755)
    shutil.copy(MODULE, Path(where) / "undumpable.py")
    os.chmod(Path(where) / "undumpable.py", 0o644)
    yield where
    shutil.rmtree(where)


def started_as_nobody(code: str, path: str) -> subprocess.Popen:
    return subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON, "-c", code],
                            env={"PYTHONPATH": path, "SECRET": "db-password-42", "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.PIPE, text=True, cwd="/")


def readable_by_nobody(pid: int) -> bool:
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
                            f"/proc/{pid}/environ"], capture_output=True)
    return b"db-password-42" in probe.stdout


def test_a_closed_process_environment_is_unreadable_to_its_own_user(readable_copy):
    if shutil.which("setpriv") is None or not Path(SYSTEM_PYTHON).exists():
        unavailable("setpriv and /usr/bin/python3 are needed (util-linux, python3)")
    closed = started_as_nobody("from undumpable import undumpable; import time; "
                               "print(undumpable(), flush=True); time.sleep(30)", readable_copy)
    control = started_as_nobody("import time; print('open', flush=True); time.sleep(30)", readable_copy)
    try:
        assert closed.stdout.readline().strip() == "True"
        assert control.stdout.readline().strip() == "open"
        assert readable_by_nobody(control.pid), "the control process is readable (the test can fail)"
        assert not readable_by_nobody(closed.pid), "a job of the worker's user read its environment"
    finally:
        for proc in (closed, control):
            proc.kill()
            proc.wait()

