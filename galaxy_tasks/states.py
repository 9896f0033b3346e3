"""The job lifecycle, written down once: every state and every allowed transition.

Every step moves a job with a compare-and-set on its row (see `store.Store.move`), so a step
that finds its job already past it does nothing, and a duplicated or late message is
harmless.
"""
from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    NEW = "new"  # accepted and recorded; not yet prepared
    QUEUED = "queued"  # job directory ready; waiting on its destination's queue
    LIMITED = "limited"  # ready, but over a concurrency limit: the end of another job releases it
    SUBMITTING = "submitting"  # a runner worker owns the launch (guards a double launch)
    RUNNING = "running"  # handed to the runner; its end arrives as a completion event
    OK = "ok"
    ERROR = "error"
    DELETED = "deleted"  # cancelled

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({JobState.OK, JobState.ERROR, JobState.DELETED})
ACTIVE = frozenset(JobState) - TERMINAL

ALLOWED: dict[JobState, frozenset[JobState]] = {
    # NEW -> OK: a job whose result an earlier job computed ends without running (reuse)
    JobState.NEW: frozenset({JobState.QUEUED, JobState.OK, JobState.ERROR, JobState.DELETED}),
    JobState.QUEUED: frozenset({JobState.SUBMITTING, JobState.LIMITED, JobState.ERROR, JobState.DELETED}),
    JobState.LIMITED: frozenset({JobState.QUEUED, JobState.SUBMITTING, JobState.LIMITED, JobState.ERROR,
                                 JobState.DELETED}),
    # SUBMITTING -> SUBMITTING is a takeover of a launch whose worker died mid-step;
    # SUBMITTING -> QUEUED is a launch the runner had no room for (a full local host);
    # SUBMITTING/RUNNING -> NEW is a resubmission (a resubmit rule matched how it ended).
    JobState.SUBMITTING: frozenset(
        {JobState.QUEUED, JobState.SUBMITTING, JobState.RUNNING, JobState.OK, JobState.ERROR, JobState.DELETED,
         JobState.NEW}
    ),
    JobState.RUNNING: frozenset({JobState.OK, JobState.ERROR, JobState.DELETED, JobState.NEW}),
    JobState.OK: frozenset(),
    JobState.ERROR: frozenset(),
    JobState.DELETED: frozenset(),
}


def sources_of(target: JobState) -> frozenset[JobState]:
    """The states from which `target` may be reached."""
    return frozenset(state for state, targets in ALLOWED.items() if target in targets)


def is_legal_path(states: list[JobState]) -> bool:
    """True if the sequence of states is one a job may go through, from NEW."""
    if not states or states[0] is not JobState.NEW:
        return False
    return all(b in ALLOWED[a] for a, b in zip(states, states[1:]))
