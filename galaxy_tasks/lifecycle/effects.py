"""What must follow a step, as one value.

A lifecycle step decides; it never sends. Each step's result carries an `Effects`: the
chains to start, the launches to try, the destinations whose freed slot may take their next
job, the running jobs to stop, the overdue jobs to ask their runner about, the workflow
passes to run, and the workflows whose bounded pass left ready work for the next one. The
edge's one interpreter (`galaxy_tasks.edge.messages.carry_out`) turns it into messages,
whoever ran the step: a task, the client, the embedded mode, a test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

from galaxy_tasks.model import Job
from galaxy_tasks.runners.base import Tracked


class ToStop(NamedTuple):
    """A cancelled job its runner still holds: what to stop, and on which destination."""

    tracked: Tracked
    destination: str


@dataclass(frozen=True)
class Effects:
    #: new jobs whose whole chain (prepare, then launch) is sent
    start: Sequence[Job] = ()
    #: jobs sent again by a resubmit rule, each after its delay in seconds
    start_later: Sequence[tuple[Job, float]] = ()
    #: launches to try now: (job id, destination queue)
    launch: Sequence[tuple[str, str]] = ()
    #: destinations whose oldest waiting job may take a freed slot
    wake: Sequence[str] = ()
    #: cancelled jobs whose process must be stopped
    stop: Sequence[ToStop] = ()
    #: overdue launched jobs to ask their runner about, per destination
    check: Mapping[str, Sequence[Tracked]] = field(default_factory=dict)
    #: cancelled jobs to look at again (stop if still alive), per destination
    recheck_stopped: Mapping[str, Sequence[Tracked]] = field(default_factory=dict)
    #: ended or cancelled jobs of a workflow: the workflow's pass runs for each
    passes: Sequence[Job] = ()
    #: workflows whose pass stopped at its bound with ready elements left: their next pass
    advance: Sequence[str] = ()

    def __add__(self, other: Effects) -> Effects:
        return Effects(
            start=[*self.start, *other.start],
            start_later=[*self.start_later, *other.start_later],
            launch=[*self.launch, *other.launch],
            wake=[*self.wake, *other.wake],
            stop=[*self.stop, *other.stop],
            check=_joined(self.check, other.check),
            recheck_stopped=_joined(self.recheck_stopped, other.recheck_stopped),
            passes=[*self.passes, *other.passes],
            advance=[*self.advance, *other.advance],
        )

    def __bool__(self) -> bool:
        return any((self.start, self.start_later, self.launch, self.wake, self.stop, self.passes, self.advance,
                    any(self.check.values()), any(self.recheck_stopped.values())))

    @property
    def size(self) -> int:
        """How many things follow (a reconciliation pass reports it)."""
        return (len(self.start) + len(self.start_later) + len(self.launch) + len(self.wake) + len(self.stop)
                + len(self.passes) + len(self.advance) + sum(len(v) for v in self.check.values())
                + sum(len(v) for v in self.recheck_stopped.values()))


NOTHING = Effects()


def _joined(a: Mapping[str, Sequence[Tracked]], b: Mapping[str, Sequence[Tracked]]) -> dict[str, list[Tracked]]:
    joined: dict[str, list[Tracked]] = {key: list(value) for key, value in a.items()}
    for key, value in b.items():
        joined.setdefault(key, []).extend(value)
    return joined
