"""An embedded-mode context on SQLite under a test's own directory: what the unit tests of
the lifecycle, policies, workflows and reuse run their steps against (with the stub runner)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from galaxy_tasks import config, routing
from galaxy_tasks.context import Context
from galaxy_tasks.store import Store, schema


@contextmanager
def embedded_context(home: Path, job_conf: str, **settings: str) -> Iterator[Context]:
    """A context whose job_conf is `job_conf`, its database new; extra GALAXY_TASKS_*
    settings by their names without the prefix (LAUNCH_LEASE="0.3")."""
    (home / "job_conf.yml").write_text(job_conf)
    loaded = config.load({"GALAXY_TASKS_HOME": str(home), "GALAXY_TASKS_JOB_CONF": str(home / "job_conf.yml"),
                          **{f"GALAXY_TASKS_{name}": value for name, value in settings.items()}})
    schema.upgrade(loaded.database_url)
    store = Store(loaded.database_url, loaded.check_after)
    try:
        yield Context(loaded, store, routing.load(loaded.job_conf))
    finally:
        store.dispose()
