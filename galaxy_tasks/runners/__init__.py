"""The runner registry: one line per runner. Everything else about a runner (its params,
the worker that holds it, what its URL means) is declared on its class, and its module is
imported only when a configuration names it (so DRMAA or pymesos are needed only where
their destinations are)."""
from __future__ import annotations

from importlib import import_module

from galaxy_tasks.runners import params
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



def params_markdown() -> str:
    """Every registered runner's params as Markdown tables (docs/configuration.md has them)."""
    out: list[str] = []
    for name in REGISTRY:
        out += [f"### `{name}`", "", "| param | type | default | meaning |", "|---|---|---|---|"]
        for param_name, kind, default, doc in params.describe(runner_class(name).Params):
            shown = "(none)" if default in (None, "") else f"`{default}`"
            out.append(f"| `{param_name}` | {kind} | {shown} | {doc} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


__all__ = ["REGISTRY", "Completion", "Launch", "Runner", "Tracked", "params_markdown", "runner_class"]
