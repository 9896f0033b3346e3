"""Make `runner: slurm` known to this process until the runner registry knows it.

On this branch the names of runners live in two existing modules that must not be edited
here (routing.RUNNERS for the job_conf parser, runners.CLASSES for the runner lookup);
the registry being built on main replaces both. Every process that loads a job_conf with a
slurm destination (the Slurm worker, steps workers, a CLI) must call `register()` before
its job_conf is parsed. Delete this module when the registry lands.
"""
from __future__ import annotations

from galaxy_tasks import routing, runners

NAME = "slurm"
CLASS = "galaxy_tasks.runners.slurm:SlurmRunner"


def register() -> None:
    """Idempotent: add slurm to the runner names of this process."""
    if NAME not in routing.RUNNERS:
        routing.RUNNERS = (*routing.RUNNERS, NAME)  # type: ignore[assignment]  # a bridge, see above
    runners.CLASSES.setdefault(NAME, CLASS)
