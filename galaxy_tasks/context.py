"""What every step needs: settings, the store, routing, and who hears of state changes.
The edge builds one per process (`galaxy_tasks.edge.runtime.context`); a test builds its own."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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
