"""A workflow's states and the moves between them, written down once."""
from __future__ import annotations

from enum import Enum


class WorkflowState(str, Enum):
    RUNNING = "running"  # its elements become jobs as their inputs exist
    PAUSED = "paused"  # no new job starts; those already created run to their end
    OK = "ok"  # every element's job ended ok
    ERROR = "error"  # it can go no further: an element's job failed (rerun runs it again)
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


#: the states each state may be reached from
SOURCES: dict[WorkflowState, frozenset[WorkflowState]] = {
    WorkflowState.RUNNING: frozenset({WorkflowState.PAUSED, WorkflowState.ERROR, WorkflowState.CANCELLED}),
    WorkflowState.PAUSED: frozenset({WorkflowState.RUNNING}),
    WorkflowState.OK: frozenset({WorkflowState.RUNNING}),
    WorkflowState.ERROR: frozenset({WorkflowState.RUNNING}),
    WorkflowState.CANCELLED: frozenset({WorkflowState.RUNNING, WorkflowState.PAUSED}),
}
ENDED = frozenset({WorkflowState.OK, WorkflowState.ERROR, WorkflowState.CANCELLED})


def sources(target: WorkflowState) -> list[str]:
    return sorted(state.value for state in SOURCES[target])
