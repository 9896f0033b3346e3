"""What every step needs, built once per process from the environment."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

from galaxy_tasks import config, routing
from galaxy_tasks.config import Settings
from galaxy_tasks.model import Job
from galaxy_tasks.routing import Routing
from galaxy_tasks.store import Store


def _silent(job: Job) -> None:
    """No one hears of state changes (tests of the lifecycle alone); the outbox mark on the
    row still lets reconciliation publish what a client must hear."""


@dataclass(frozen=True)
class Context:
    settings: Settings
    store: Store
    routing: Routing
    #: called with the job's row after each state change the database recorded
    announce: Callable[[Job], None] = field(default=_silent)


@functools.lru_cache(maxsize=1)
def current() -> Context:
    from galaxy_tasks.messages import Announcer  # messages itself needs the context

    settings = config.load()
    store = Store(settings.database_url, settings.check_after)
    return Context(settings, store, routing.load(settings.job_conf), Announcer(store, settings))


def reset() -> None:
    """Forget the cached context (tests and the embedded runner change the environment)."""
    current.cache_clear()
