"""Shared fixtures: real PostgreSQL and Redis, real worker processes, the real CLI.

A service that is missing skips its tests on a developer's machine but fails them under CI
(CI=true): a green CI run means the real thing was exercised.
"""
from __future__ import annotations

import os
import tempfile

import pytest

from galaxy_tasks.runners.drmaa.tls import has_static_tls, restart_with_static_tls

# The test process itself runs in embedded mode; production tests drive subprocesses.
_HOME = tempfile.mkdtemp(prefix="galaxy-tasks-tests-")
for _name in list(os.environ):
    if _name.startswith("GALAXY_TASKS_"):
        del os.environ[_name]
os.environ["GALAXY_TASKS_HOME"] = _HOME

pytest_plugins = ["tests.support.fixtures", "tests.support.real_user"]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """The DRMAA tests load libdrmaa in this process, which needs a glibc tunable set when
    the process starts: start pytest again with it (its output capture suspended first, so
    the new run writes to the real terminal)."""
    if not has_static_tls():
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=True)
        restart_with_static_tls()
