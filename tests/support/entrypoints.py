"""Is a deployment file's command a real entry point of this project, with valid options?

Used by the docker-compose and systemd tests: `galaxy-tasks ...` is parsed by the real CLI
parser (and a worker's Celery options by Celery's own `worker` command), `celery -A <app>`
must name a module of this project that binds `app`, `python -m <module>` a module whose
parser accepts the arguments, `python -c` code must compile.
"""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import click

from tests.support.deployment import ROOT


@dataclass
class Entry:
    kind: str  # galaxy-tasks subcommand, "celery worker", "python -m <module>", "python -c"
    queues: list[str] = field(default_factory=list)
    node: str | None = None
    params: dict = field(default_factory=dict)


def _celery_worker(args: list[str], app_module: str = "galaxy_tasks") -> dict:
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker

    from galaxy_tasks.edge.app import app

    try:
        ctx = worker.make_context("worker", list(args), obj=CLIContext(app=app, no_color=True, workdir=None, quiet=True))
    except click.ClickException as exc:
        raise AssertionError(f"celery -A {app_module} worker {' '.join(args)}: {exc.format_message()}") from None
    return ctx.params


def _module_binds_app(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"-A {module}: no such module"
    assert Path(spec.origin).resolve().is_relative_to(ROOT), f"-A {module}: not a module of this project"
    tree = ast.parse(Path(spec.origin).read_text())
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Assign):
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    assert "app" in bound, f"-A {module}: the module binds no `app`"


def check(argv: list[str]) -> Entry:
    """Validate one command line; AssertionError says what is wrong."""
    assert argv, "empty command"
    program, args = Path(argv[0]).name, list(argv[1:])
    if program == "galaxy-tasks":
        from galaxy_tasks.cli import _parser

        try:
            parsed, extra = _parser().parse_known_args(args)
        except SystemExit:
            raise AssertionError(f"galaxy-tasks {' '.join(args)}: refused by the CLI parser") from None
        entry = Entry(f"galaxy-tasks {parsed.command}")
        if parsed.command == "worker":
            params = _celery_worker(extra)
            entry.queues = parsed.queues.split(",") if parsed.queues else []
            entry.node, entry.params = params["hostname"], params
        elif parsed.command == "flower":
            assert not parsed.unauthenticated, "Flower must not run unauthenticated"
            assert all(arg.lstrip("-").split("=")[0].replace("-", "_") in _flower_options() for arg in extra), extra
        else:
            assert not extra, f"galaxy-tasks {parsed.command}: unknown arguments {extra}"
        return entry
    if program == "celery":
        assert args[:1] == ["-A"] and len(args) >= 3, f"celery needs -A <app> <command>: {argv}"
        module, command, rest = args[1], args[2], args[3:]
        _module_binds_app(module)
        assert command == "worker", f"celery -A {module} {command}: only workers are run through celery"
        params = _celery_worker(rest, module)
        return Entry("celery worker", queues=list(params.get("queues") or []), node=params["hostname"],
                     params=params)
    if program.startswith("python"):
        if args[:1] == ["-c"]:
            compile(args[1], "<command>", "exec")
            return Entry("python -c")
        assert args[:1] == ["-m"], f"python must run a module (-m) or code (-c): {argv}"
        module = args[1]
        assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"
        if module == "galaxy_tasks.operations.health":
            from galaxy_tasks.operations.health import parser

            try:
                parsed = parser().parse_args(args[2:])
            except SystemExit:
                raise AssertionError(f"python -m {module} {' '.join(args[2:])}: refused") from None
            return Entry(f"python -m {module}", node=parsed.node)
        raise AssertionError(f"python -m {module}: not an entry point this check knows")
    raise AssertionError(f"{argv[0]}: not an entry point of this project")


def _flower_options() -> set[str]:
    from flower.options import default_options

    return set(default_options._options) | {name.replace("-", "_") for name in default_options._options}
