"""The runner registry: one line per runner. Everything else about a runner (its params,
the worker that holds it, what its URL means) is declared on its class, and its module is
imported only when a configuration names it (so DRMAA or pymesos are needed only where
their destinations are)."""
from __future__ import annotations

from importlib import import_module

from galaxy_tasks.runners.base import Completion, Launch, Runner, Tracked

REGISTRY = {
    "local": "galaxy_tasks.runners.local:LocalRunner",
    "drmaa": "galaxy_tasks.runners.drmaa:DrmaaRunner",
    "mesos": "galaxy_tasks.runners.mesos:MesosRunner",
    "slurm": "galaxy_tasks.runners.slurm:SlurmRunner",
    "stub": "galaxy_tasks.runners.stub:StubRunner",
}


def runner_class(name: str) -> type[Runner]:
    """The class registered as `name`; KeyError for a name not registered."""
    module, _, attribute = REGISTRY[name].partition(":")
    cls: type[Runner] = getattr(import_module(module), attribute)
    return cls


__all__ = ["REGISTRY", "Completion", "Launch", "Runner", "Tracked", "runner_class"]
