"""Settings from environment variables: the one configuration path next to the job_conf YAML.

Every variable is listed in `VARIABLES` with its default and meaning, so the README's table,
`galaxy-tasks config` and the code cannot drift apart.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

PREFIX = "GALAXY_TASKS_"

VARIABLES: dict[str, tuple[str, str]] = {
    "HOME": ("~/.galaxy-tasks", "where the embedded database and job directories live"),
    "BROKER_URL": ("memory://", "Celery broker (redis://..., amqp://...); memory:// is embedded mode"),
    "DATABASE_URL": ("sqlite:///$HOME/galaxy-tasks.sqlite", "SQLAlchemy URL of the job database"),
    "JOB_CONF": ("", "job_conf YAML: destinations and routing rules (default: one local destination)"),
    "JOBS_DIR": ("$HOME/jobs", "parent of the job working directories (shared with runner hosts)"),
    "STEPS_QUEUE": ("galaxy_tasks", "queue of the steps that need the database and job directories"),
    "EVENTS_QUEUE": ("", "where the events of a job go whose spec names no events queue (empty: nowhere)"),
    "MESOS_URL": ("", "handed to every job as MESOS_URL, for tools that start their own Spark/MPI"),
    "HOST": ("", "this host's name in local jobs' ids and control queue <queue>@<host> (default: hostname)"),
    "VISIBILITY_TIMEOUT": ("43200", "seconds before the broker redelivers an unacknowledged message"),
    "QUEUE_TYPE": ("classic", "RabbitMQ type of the task queues: classic or quorum (clients must declare the same)"),
    "RECONCILE_INTERVAL": ("60", "seconds between reconciliation passes"),
    "RECONCILE_BATCH": ("500", "most jobs looked at per reconciliation pass"),
    "CHECK_AFTER": ("300", "seconds without an event before an active job counts as overdue"),
    "CHECK_AFTER_MAX": ("3600", "cap of the doubling delay between checks of one long job"),
    "LAUNCH_LEASE": ("60", "seconds a launch may hold its claim before another message may take it over"),
    "SIGNING_KEY": ("", "private key (PEM) to sign messages with Celery's auth serializer"),
    "SIGNING_CERT": ("", "certificate (PEM) matching the signing key"),
    "SIGNING_CERT_STORE": ("", "directory of certificates whose signatures are trusted"),
    "LOG_LEVEL": ("INFO", "log level of galaxy_tasks' structured logs"),
    "FLOWER_BASIC_AUTH": ("", "Flower's basic auth, user:password (several: comma-separated); never shown"),
    "FLOWER_BASIC_AUTH_FILE": ("", "file of user:password lines for Flower (instead of FLOWER_BASIC_AUTH)"),
    "FLOWER_MAX_TASKS": ("10000", "most finished tasks Flower keeps in memory"),
}

#: variables whose values are secrets: `galaxy-tasks config` says only whether they are set
SECRET_VARIABLES = frozenset({"FLOWER_BASIC_AUTH"})


def _raw(name: str, environ: Mapping[str, str]) -> str:
    return environ.get(PREFIX + name, VARIABLES[name][0])


@dataclass(frozen=True)
class Settings:
    home: Path
    broker_url: str
    database_url: str
    job_conf: Path | None
    jobs_dir: Path
    steps_queue: str
    events_queue: str
    mesos_url: str
    host: str
    visibility_timeout: int
    queue_type: str
    reconcile_interval: float
    reconcile_batch: int
    check_after: float
    check_after_max: float
    launch_lease: float
    signing_key: str
    signing_cert: str
    signing_cert_store: str
    log_level: str

    @property
    def embedded(self) -> bool:
        return self.broker_url.startswith("memory://")


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings; a value that is not a number where one is needed is named."""
    env = os.environ if environ is None else environ
    home = Path(os.path.expanduser(_raw("HOME", env)))

    def path_value(name: str) -> str:
        return _raw(name, env).replace("$HOME", str(home))

    def number(name: str, kind: type = float) -> float:
        value = _raw(name, env)
        try:
            result = kind(value)
        except ValueError:
            raise ValueError(f"{PREFIX}{name} must be a number, not {value!r}") from None
        if result <= 0:
            raise ValueError(f"{PREFIX}{name} must be positive, not {value!r}")
        return result

    def choice(name: str, allowed: tuple[str, ...]) -> str:
        value = _raw(name, env)
        if value not in allowed:
            raise ValueError(f"{PREFIX}{name} must be one of {', '.join(allowed)}, not {value!r}")
        return value

    job_conf = _raw("JOB_CONF", env)
    return Settings(
        home=home,
        broker_url=_raw("BROKER_URL", env),
        database_url=path_value("DATABASE_URL"),
        job_conf=Path(job_conf) if job_conf else None,
        jobs_dir=Path(path_value("JOBS_DIR")),
        steps_queue=_raw("STEPS_QUEUE", env),
        events_queue=_raw("EVENTS_QUEUE", env),
        mesos_url=_raw("MESOS_URL", env),
        host=_raw("HOST", env) or socket.gethostname(),
        visibility_timeout=int(number("VISIBILITY_TIMEOUT", int)),
        queue_type=choice("QUEUE_TYPE", ("classic", "quorum")),
        reconcile_interval=number("RECONCILE_INTERVAL"),
        reconcile_batch=int(number("RECONCILE_BATCH", int)),
        check_after=number("CHECK_AFTER"),
        check_after_max=number("CHECK_AFTER_MAX"),
        launch_lease=number("LAUNCH_LEASE"),
        signing_key=_raw("SIGNING_KEY", env),
        signing_cert=_raw("SIGNING_CERT", env),
        signing_cert_store=_raw("SIGNING_CERT_STORE", env),
        log_level=_raw("LOG_LEVEL", env),
    )
