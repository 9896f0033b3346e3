"""Settings from environment variables: the one configuration path next to the job_conf YAML.

Every variable is listed with its default and meaning in one table, `settings.toml` (read
into `VARIABLES`), so the README's table, `galaxy-tasks config` and the code cannot drift apart.
"""
from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping

from galaxy_tasks import freshness

PREFIX = "GALAXY_TASKS_"


def _variables() -> dict[str, tuple[str, str]]:
    """Every variable's (default, meaning), from the table beside this module."""
    table = tomllib.loads(resources.files("galaxy_tasks").joinpath("settings.toml").read_text())
    return {name: (entry["default"], entry["meaning"]) for name, entry in table.items()}


VARIABLES = _variables()

#: the shortest visibility timeout: a message waiting out a countdown is held unacknowledged,
#: and the longest countdown a step waits out is 30 s (a database retry, `edge.tasks.DB_RETRY`);
#: a resubmission's delay is a countdown only up to half the visibility timeout
MIN_VISIBILITY_TIMEOUT = 60

#: the shortest life of a signed message: it is checked when its step starts, so it must
#: outlast the longest countdown a message waits out (60 s: a resubmission's delay)
MIN_MESSAGE_TTL = 120.0

#: the largest bound an operator may give a workflow's jobs: no element is built at submit,
#: but each becomes a row and a job, and status, rerun and a reduce's pass read them all
MAX_WORKFLOW_JOBS = 100_000
#: the most elements an operator may let one workflow pass write (what one task writes)
MAX_PASS_MOST = 10_000

#: variables whose values are secrets: `galaxy-tasks config` says only whether they are set
SECRET_VARIABLES = frozenset({"FLOWER_BASIC_AUTH", "STAGING_SECRET"})


def _raw(name: str, environ: Mapping[str, str]) -> str:
    return environ.get(PREFIX + name, VARIABLES[name][0])


#: GALAXY_TASKS_CLEANUP_JOB's values, as Galaxy's own `cleanup_job`
CLEANUP_CHOICES = ("never", "onsuccess", "always")


@dataclass(frozen=True)
class Settings:
    home: Path
    broker_url: str
    database_url: str
    job_conf: Path | None
    jobs_dir: Path
    steps_queue: str
    ends_queue: str
    events_queue: str
    mesos_url: str
    host: str
    visibility_timeout: int
    queue_type: str
    cleanup_job: str
    reconcile_interval: float
    reconcile_batch: int
    check_after: float
    check_after_max: float
    launch_lease: float
    reuse_trusted_users: frozenset[str]
    signing_key: str
    signing_cert: str
    signing_cert_store: str
    message_ttl: float
    workflow_max_jobs: int
    workflow_pass_most: int
    log_level: str
    staging_secret: str = field(default="", repr=False)
    staging_token_ttl_in: float = 604800.0
    staging_token_ttl_out: float = 2592000.0
    staging_listen: str = "127.0.0.1:8780"
    staging_cert: str = ""
    staging_key: str = ""

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

    visibility_timeout = int(number("VISIBILITY_TIMEOUT", int))
    if visibility_timeout < MIN_VISIBILITY_TIMEOUT:
        raise ValueError(f"{PREFIX}VISIBILITY_TIMEOUT must be at least {MIN_VISIBILITY_TIMEOUT} seconds (the longest "
                         f"countdown a step waits out is 30 s), not {visibility_timeout}")
    message_ttl = number("MESSAGE_TTL")
    if not MIN_MESSAGE_TTL <= message_ttl <= freshness.MAX_TTL_S:
        raise ValueError(f"{PREFIX}MESSAGE_TTL must be {MIN_MESSAGE_TTL:.0f} to {freshness.MAX_TTL_S:.0f} seconds, "
                         f"not {message_ttl:g}")
    workflow_max_jobs = int(number("WORKFLOW_MAX_JOBS", int))
    if workflow_max_jobs > MAX_WORKFLOW_JOBS:
        raise ValueError(f"{PREFIX}WORKFLOW_MAX_JOBS must be at most {MAX_WORKFLOW_JOBS}, not {workflow_max_jobs}")
    workflow_pass_most = int(number("WORKFLOW_PASS_MOST", int))
    if not 1 <= workflow_pass_most <= MAX_PASS_MOST:
        raise ValueError(f"{PREFIX}WORKFLOW_PASS_MOST must be 1 to {MAX_PASS_MOST}, not {workflow_pass_most}")
    job_conf = _raw("JOB_CONF", env)
    return Settings(
        home=home,
        broker_url=_raw("BROKER_URL", env),
        database_url=path_value("DATABASE_URL"),
        job_conf=Path(job_conf) if job_conf else None,
        jobs_dir=Path(path_value("JOBS_DIR")),
        steps_queue=_raw("STEPS_QUEUE", env),
        ends_queue=_raw("ENDS_QUEUE", env),
        events_queue=_raw("EVENTS_QUEUE", env),
        mesos_url=_raw("MESOS_URL", env),
        host=_raw("HOST", env) or socket.gethostname(),
        visibility_timeout=visibility_timeout,
        queue_type=choice("QUEUE_TYPE", ("classic", "quorum")),
        cleanup_job=choice("CLEANUP_JOB", CLEANUP_CHOICES),
        reconcile_interval=number("RECONCILE_INTERVAL"),
        reconcile_batch=int(number("RECONCILE_BATCH", int)),
        check_after=number("CHECK_AFTER"),
        check_after_max=number("CHECK_AFTER_MAX"),
        launch_lease=number("LAUNCH_LEASE"),
        reuse_trusted_users=frozenset(filter(None, (u.strip() for u in _raw("REUSE_TRUSTED_USERS", env).split(",")))),
        signing_key=_raw("SIGNING_KEY", env),
        signing_cert=_raw("SIGNING_CERT", env),
        signing_cert_store=_raw("SIGNING_CERT_STORE", env),
        message_ttl=message_ttl,
        workflow_max_jobs=workflow_max_jobs,
        workflow_pass_most=workflow_pass_most,
        log_level=_raw("LOG_LEVEL", env),
        staging_secret=_raw("STAGING_SECRET", env),
        staging_token_ttl_in=number("STAGING_TOKEN_TTL_IN"),
        staging_token_ttl_out=number("STAGING_TOKEN_TTL_OUT"),
        staging_listen=_raw("STAGING_LISTEN", env),
        staging_cert=_raw("STAGING_CERT", env),
        staging_key=_raw("STAGING_KEY", env),
    )
