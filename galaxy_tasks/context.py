"""What every step needs, built once per process from the environment."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from galaxy_tasks import config, routing
from galaxy_tasks.config import Settings
from galaxy_tasks.routing import Routing
from galaxy_tasks.store import Store


@dataclass(frozen=True)
class Context:
    settings: Settings
    store: Store
    routing: Routing


@functools.lru_cache(maxsize=1)
def current() -> Context:
    settings = config.load()
    return Context(settings, Store(settings.database_url, settings.check_after), routing.load(settings.job_conf))


def reset() -> None:
    """Forget the cached context (tests and the embedded runner change the environment)."""
    current.cache_clear()
