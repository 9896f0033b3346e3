"""The Celery application (`celery -A galaxy_tasks ...` finds it here, in `galaxy_tasks.edge.app`).

Celery's task decorators and `celery -A` need the application as a module attribute, so this
is the one object of the edge that exists from import: built once, by `build`, from the
environment's settings. Logging is not touched here: a worker redacts its logs once Celery
has set them up (`hooks`), and a process that only sends messages keeps its own logging.
"""
from __future__ import annotations

from celery import Celery

from galaxy_tasks import config
from galaxy_tasks.config import Settings
from galaxy_tasks.edge import security


def build(settings: Settings) -> Celery:
    """A Celery application for `settings`: the broker and serializers of `celeryconfig`,
    message signing when the settings configure it, the project's tasks."""
    celery = Celery("galaxy_tasks", task_cls="galaxy_tasks.edge.message_checks:GuardedTask")
    celery.config_from_object("celeryconfig")
    security.apply(celery, settings)
    celery.conf.imports = ("galaxy_tasks.edge.tasks", "galaxy_tasks.bench.noop")
    return celery


app = build(config.load())
