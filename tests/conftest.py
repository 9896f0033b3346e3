"""Shared fixtures: real PostgreSQL and Redis, real worker processes, the real CLI.

A service that is missing skips its tests on a developer's machine but fails them under CI
(CI=true): a green CI run means the real thing was exercised.
"""
from __future__ import annotations

import os
import tempfile

# The test process itself runs in embedded mode; production tests drive subprocesses.
_HOME = tempfile.mkdtemp(prefix="galaxy-tasks-tests-")
for _name in list(os.environ):
    if _name.startswith("GALAXY_TASKS_"):
        del os.environ[_name]
os.environ["GALAXY_TASKS_HOME"] = _HOME

pytest_plugins = ["tests.support.fixtures"]
