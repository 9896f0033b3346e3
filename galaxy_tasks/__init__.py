"""galaxy-tasks: Galaxy's jobs as chained Celery tasks, with the database as the truth."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `celery -A galaxy_tasks` looks up `galaxy_tasks.app`; importing the package for its
    # spec parser or model does not build a Celery app.
    if name == "app":
        from galaxy_tasks.edge.app import app

        return app
    raise AttributeError(name)
