"""`galaxy-tasks flower`: Flower for this project's Celery app, never open by accident.

Basic auth comes from configuration (`GALAXY_TASKS_FLOWER_BASIC_AUTH`, or a file named by
`GALAXY_TASKS_FLOWER_BASIC_AUTH_FILE`, or Flower's own `FLOWER_BASIC_AUTH`) and reaches
Flower through its environment, so no password is on a command line `ps` shows. Without
credentials Flower is not started, unless `--unauthenticated` asks for exactly that.

Flower 2.x serves `/metrics` without authentication; with basic auth on, this wrapper puts
`/metrics` behind the same credentials (Prometheus scrapes it with `basic_auth`), and only
`/healthcheck` (which says "OK" and nothing else) stays open for container health checks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from galaxy_tasks import config

#: what the tasks page shows: the task name and (in kwargs, see `format_task`) the tool id
#: and job id it carries; every step task takes keyword arguments only
TASKS_COLUMNS = "name,state,kwargs,worker,received,runtime"
#: the order in which `format_task` shows the arguments that identify a job
_LEADING = ("tool_id", "job_id", "destination")


class AuthError(ValueError):
    """Flower would start without credentials; the message says how to give them."""


def credentials(environ: Mapping[str, str] | None = None) -> list[str]:
    """The `user:password` pairs Flower accepts, from the first place that has any."""
    env = os.environ if environ is None else environ
    inline = env.get(config.PREFIX + "FLOWER_BASIC_AUTH", "").strip()
    path = env.get(config.PREFIX + "FLOWER_BASIC_AUTH_FILE", "").strip()
    if inline:
        pairs, origin = inline.split(","), config.PREFIX + "FLOWER_BASIC_AUTH"
    elif path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise AuthError(f"{config.PREFIX}FLOWER_BASIC_AUTH_FILE: cannot read {path}: {exc.strerror}") from None
        pairs = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        origin = path
    elif env.get("FLOWER_BASIC_AUTH", "").strip():
        pairs, origin = env["FLOWER_BASIC_AUTH"].split(","), "FLOWER_BASIC_AUTH"
    else:
        return []
    pairs = [pair.strip() for pair in pairs]
    for number, pair in enumerate(pairs, 1):
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise AuthError(f"{origin}: entry {number} must be user:password with both parts set")
        if "," in pair:
            raise AuthError(f"{origin}: entry {number}: Flower cannot take a ',' in a user or password")
    if not pairs:
        raise AuthError(f"{origin}: no user:password entry")
    return pairs


def _given(extra: Sequence[str], name: str) -> bool:
    return _value(extra, name) is not None


def _value(extra: Sequence[str], name: str) -> str | None:
    """The value given to `--name` (`--name=v` or `--name v`); None if not given."""
    names = {f"--{name}", f"--{name.replace('_', '-')}"}
    for index, arg in enumerate(extra):
        option, sep, value = arg.partition("=")
        if option in names:
            if sep:
                return value
            return extra[index + 1] if index + 1 < len(extra) else ""
    return None


def flower_argv(extra: Sequence[str], *, port: int, address: str, max_tasks: int | None) -> list[str]:
    """Flower's options: this project's defaults first, the operator's own after (later wins)."""
    settings_max = int(os.environ.get(config.PREFIX + "FLOWER_MAX_TASKS") or config.VARIABLES["FLOWER_MAX_TASKS"][0])
    argv = [
        f"--port={port}",
        f"--max_tasks={max_tasks if max_tasks is not None else settings_max}",
        f"--tasks_columns={TASKS_COLUMNS}",
        "--purge_offline_workers=3600",
    ]
    if address:
        argv.append(f"--address={address}")
    return argv + list(extra)


def run(extra: Sequence[str], *, port: int, address: str, max_tasks: int | None, unauthenticated: bool) -> int:
    """Start Flower in this process (it serves until SIGTERM)."""
    oauth = _given(extra, "auth")
    if oauth and not (_value(extra, "auth") or "").strip():
        raise AuthError("--auth needs a value (a regular expression of the e-mail addresses Flower's OAuth lets in): "
                        "an empty one would open Flower to anyone")
    if _given(extra, "basic_auth"):
        raise AuthError("give Flower's credentials through GALAXY_TASKS_FLOWER_BASIC_AUTH or "
                        "GALAXY_TASKS_FLOWER_BASIC_AUTH_FILE, not on the command line (ps shows it)")
    pairs = credentials()
    if not pairs and not oauth and not unauthenticated:
        raise AuthError("Flower needs credentials: set GALAXY_TASKS_FLOWER_BASIC_AUTH=user:password or "
                        "GALAXY_TASKS_FLOWER_BASIC_AUTH_FILE=<file of user:password lines>, "
                        "or pass --unauthenticated to open it to anyone who can reach the port")
    if unauthenticated and (pairs or oauth):
        raise AuthError("--unauthenticated given while credentials are configured: choose one")
    os.environ.pop("FLOWER_BASIC_AUTH", None)
    if pairs:
        os.environ["FLOWER_BASIC_AUTH"] = ",".join(pairs)
    if pairs or oauth:
        protect_metrics()
    from flower.options import options

    from galaxy_tasks.edge import security

    security.undumpable()  # Flower's credentials are in this process's environment
    options.format_task = format_task
    from galaxy_tasks.edge.app import app

    # kombu's own transport: Flower reads queue lengths by the broker URL's scheme, and holds
    # no message that the workers' Redis transport (galaxy_tasks/edge/brokers.py) must restore
    app.conf.broker_transport = None
    app.start(["flower", *flower_argv(extra, port=port, address=address, max_tasks=max_tasks)])
    return 0


def protect_metrics() -> None:
    """Serve Flower's `/metrics` only to authenticated clients."""
    import tornado.web
    from flower import urls
    from flower.views import monitor

    class AuthenticatedMetrics(monitor.Metrics):
        @tornado.web.authenticated
        async def get(self) -> None:
            await super().get()

    for index, handler in enumerate(urls.handlers):
        if isinstance(handler, tuple) and handler[0] == r"/metrics":
            urls.handlers[index] = (r"/metrics", AuthenticatedMetrics)


def format_task(task: Any) -> Any:
    """Show a step's arguments as `tool_id=bwa_mem job_id=8b0c...` on Flower's pages: the
    tool first (the job id is long), a finish step's exit code (and reason) before its job
    id instead of the whole completion record, and a check's number of jobs, not the list."""
    import ast

    try:
        kwargs = ast.literal_eval(task.kwargs) if isinstance(task.kwargs, str) else dict(task.kwargs or {})
    except (ValueError, SyntaxError, TypeError):
        return task
    if not isinstance(kwargs, dict):
        return task
    shown: dict[str, object] = {"tool_id": kwargs["tool_id"]} if "tool_id" in kwargs else {}
    completion = kwargs.get("completion")
    if isinstance(completion, dict):
        shown.update({k: completion[k] for k in ("exit_code", "signal", "reason") if completion.get(k) is not None})
        if completion.get("source") not in (None, "runner"):  # found by reconciliation, say so
            shown["source"] = completion["source"]
    shown.update({k: kwargs[k] for k in _LEADING if k in kwargs and k not in shown})
    job = kwargs.get("job")
    if isinstance(job, dict) and "job_id" in job:
        shown["job_id"] = job["job_id"]
    if isinstance(kwargs.get("jobs"), list):
        shown["jobs"] = len(kwargs["jobs"])
    for key, value in kwargs.items():
        if key not in shown and key not in ("completion", "job", "jobs"):
            shown[key] = value
    task.kwargs = " ".join(f"{key}={value}" for key, value in shown.items())
    return task
