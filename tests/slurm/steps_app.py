"""The steps worker's Celery app for the Slurm end-to-end tests: galaxy_tasks' own app, in a
process that knows `runner: slurm` (until the runner registry does; see slurm_bridge).

    celery -A tests.slurm.steps_app worker -Q galaxy_tasks,local
"""
from galaxy_tasks.runners import slurm_bridge

slurm_bridge.register()

from galaxy_tasks.celery import app  # noqa: E402

__all__ = ["app"]
