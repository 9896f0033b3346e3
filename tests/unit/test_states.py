"""The state machine: terminal states are final, every job can end, and only legal paths."""
from __future__ import annotations

import pytest

from galaxy_tasks.states import ACTIVE, ALLOWED, TERMINAL, JobState, is_legal_path, sources_of

S = JobState


def reachable(start: JobState) -> set[JobState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in ALLOWED[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_has_an_entry():
    assert set(ALLOWED) == set(JobState)
    assert TERMINAL | ACTIVE == set(JobState) and not (TERMINAL & ACTIVE)


def test_terminal_states():
    assert TERMINAL == {S.OK, S.ERROR, S.DELETED}


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_have_no_way_out(state):
    assert ALLOWED[state] == frozenset()
    assert reachable(state) == {state}
    for other in JobState:
        assert not is_legal_path([S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, state, other])


@pytest.mark.parametrize("state", sorted(ACTIVE))
def test_every_active_state_can_end_every_way(state):
    # an active job can always fail or be cancelled, and can reach success
    assert S.ERROR in ALLOWED[state]
    assert S.DELETED in ALLOWED[state]
    assert S.OK in reachable(state)


def test_every_state_is_reachable_from_new():
    assert reachable(S.NEW) == set(JobState)


def test_only_a_resubmission_leads_back_to_new():
    """A job a resubmit rule sends again starts over from NEW (a new attempt, a new job
    directory); only a job that was handed to a runner can be resubmitted."""
    assert sources_of(S.NEW) == frozenset({S.SUBMITTING, S.RUNNING})
    assert is_legal_path([S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, S.OK])


def test_a_limited_job_waits_then_launches():
    assert is_legal_path([S.NEW, S.QUEUED, S.LIMITED, S.LIMITED, S.SUBMITTING, S.RUNNING, S.OK])
    assert is_legal_path([S.NEW, S.QUEUED, S.LIMITED, S.DELETED])
    assert not is_legal_path([S.NEW, S.LIMITED])


def test_sources_of_running():
    assert sources_of(S.RUNNING) == {S.SUBMITTING}
    assert sources_of(S.OK) == {S.NEW, S.SUBMITTING, S.RUNNING}  # NEW: a job whose result is reused
    assert sources_of(S.QUEUED) == {S.NEW, S.SUBMITTING, S.LIMITED}  # back in line: no room, or woken


def test_submitting_may_be_taken_over():
    assert S.SUBMITTING in ALLOWED[S.SUBMITTING]


def test_states_are_their_values():
    assert str(S.RUNNING) == "running"
    assert S("ok") is S.OK


@pytest.mark.parametrize(
    "path",
    [
        [S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, S.OK],
        [S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, S.ERROR],
        [S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, S.DELETED],
        [S.NEW, S.DELETED],
        [S.NEW, S.ERROR],
        [S.NEW, S.QUEUED, S.SUBMITTING, S.OK],
        [S.NEW, S.OK],  # a job whose result an earlier job computed: reused, not run
        [S.NEW, S.QUEUED, S.SUBMITTING, S.SUBMITTING, S.RUNNING, S.OK],
        [S.NEW, S.QUEUED, S.SUBMITTING, S.QUEUED, S.SUBMITTING, S.RUNNING, S.OK],
        [S.NEW, S.QUEUED, S.DELETED],
        [S.NEW],
    ],
)
def test_legal_paths(path):
    assert is_legal_path(path)


@pytest.mark.parametrize(
    "path",
    [
        [],
        [S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, S.OK, S.RUNNING],
        [S.NEW, S.RUNNING, S.OK],
        [S.NEW, S.SUBMITTING],
        [S.QUEUED, S.SUBMITTING, S.RUNNING, S.OK],
        [S.RUNNING, S.OK],
        [S.OK],
        [S.NEW, S.NEW],
        [S.NEW, S.QUEUED, S.QUEUED],
        [S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, S.RUNNING],
        [S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, S.SUBMITTING],
        [S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, S.QUEUED],
        [S.NEW, S.ERROR, S.OK],
        [S.NEW, S.DELETED, S.QUEUED],
        [S.NEW, S.QUEUED, S.SUBMITTING, S.RUNNING, S.OK, S.ERROR],
    ],
)
def test_illegal_paths(path):
    assert not is_legal_path(path)


def test_only_one_terminal_state_per_path():
    # walk every path from NEW up to a bounded length: a terminal state is always last
    def walk(path):
        yield path
        if len(path) < 8:
            for nxt in ALLOWED[path[-1]]:
                yield from walk(path + [nxt])

    count = 0
    for path in walk([S.NEW]):
        count += 1
        assert is_legal_path(path)
        terminals = [state for state in path if state in TERMINAL]
        assert len(terminals) <= 1
        if terminals:
            assert path[-1] in TERMINAL
    assert count > 20
