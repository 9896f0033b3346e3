"""Runner classes by name; each runner is a module of its own, imported only when used (so
DRMAA or pymesos are needed only where their destinations are served)."""
from __future__ import annotations

from importlib import import_module

from galaxy_tasks.runners.base import Completion, Launch, Runner, RunnerError, Tracked

CLASSES = {
    "local": "galaxy_tasks.runners.local:LocalRunner",
    "drmaa": "galaxy_tasks.runners.drmaa:DrmaaRunner",
    "mesos": "galaxy_tasks.runners.mesos:MesosRunner",
}


def runner_class(name: str) -> type[Runner]:
    module, _, attribute = CLASSES[name].partition(":")
    return getattr(import_module(module), attribute)


__all__ = ["CLASSES", "Completion", "Launch", "Runner", "RunnerError", "Tracked", "runner_class"]
