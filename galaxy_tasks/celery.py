"""The Celery application (`celery -A galaxy_tasks ...` finds it here, in `galaxy_tasks.celery`)."""
from __future__ import annotations

from celery import Celery

from galaxy_tasks import config, logs, security

app = Celery("galaxy_tasks", task_cls="galaxy_tasks.guard:GuardedTask")
app.config_from_object("celeryconfig")
security.apply(app, config.load())
logs.install(config.load().log_level)
app.conf.imports = ("galaxy_tasks.tasks", "galaxy_tasks.bench.noop")
