"""The one door to SQL: engines, the steps' compare-and-set moves, named queries, leases
and operators' aggregates. Nothing outside this package writes a query or opens a
session; every job leaves it as a `galaxy_tasks.model.Job`."""
from __future__ import annotations

from sqlalchemy.exc import InterfaceError, OperationalError

from galaxy_tasks.store.deliveries import Deliveries
from galaxy_tasks.store.engines import dispose_after_fork, normalize_url
from galaxy_tasks.store.leases import Leases
from galaxy_tasks.store.limits import LimitPlaces, Refused, Released
from galaxy_tasks.store.line import Line, Lines
from galaxy_tasks.store.moves import Moved
from galaxy_tasks.store.queries import Queries
from galaxy_tasks.store.reports import ActiveCounts, ChangesRead, Reports
from galaxy_tasks.store.workflows import Workflows

#: errors of a database that went away for a while (restart, failover, a killed
#: connection): a step that meets one is retried on fresh connections
TRANSIENT_ERRORS = (OperationalError, InterfaceError)


class Store(LimitPlaces, Lines, Queries, Leases, Reports, Workflows, Deliveries):
    """One per database URL per process (see `galaxy_tasks.context`)."""


__all__ = ["TRANSIENT_ERRORS", "ActiveCounts", "ChangesRead", "Line", "Moved", "Refused", "Released", "Store",
           "dispose_after_fork", "normalize_url"]
