"""Every state and runner_state a galaxy-tasks job event can carry is one the Galaxy plugin
accepts and gives a meaning in Galaxy's words (tests/galaxy/test_states.py checks those
words against a real Galaxy)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from galaxy_tasks import events as task_events
from galaxy_tasks import policies
from galaxy_tasks.galaxy import events
from galaxy_tasks.galaxy.states import (
    RUNNER_STATES,
    UNKNOWN,
    fail_message,
    galaxy_runner_state,
    galaxy_state,
)
from galaxy_tasks.states import JobState

#: Galaxy's JobState.runner_states, as galaxy/jobs/runners/util/__init__.py has them
GALAXY_RUNNER_STATES = SimpleNamespace(
    WALLTIME_REACHED="walltime_reached", MEMORY_LIMIT_REACHED="memory_limit_reached",
    JOB_OUTPUT_NOT_RETURNED_FROM_CLUSTER="Job output not returned from cluster", UNKNOWN_ERROR="unknown_error",
    GLOBAL_WALLTIME_REACHED="global_walltime_reached", TOOL_TIMELIMIT_REACHED="tool_timelimit_reached",
    OUTPUT_SIZE_LIMIT="output_size_limit", TOOL_DETECT_ERROR="tool_detected")

EXPECTED_STATES = {"new": "queued", "queued": "queued", "limited": "queued", "submitting": "queued",
                   "running": "running", "ok": "ok", "error": "error", "deleted": "deleted"}


def event_body(**overrides: object) -> dict:
    body = {"event": "job_state", "version": 1, "job_id": "g-main-7", "client_id": "main", "state": "running",
            "seq": 3, "runner_state": None}
    body.update(overrides)
    return body


def test_every_state_galaxy_tasks_has_is_mapped() -> None:
    assert set(EXPECTED_STATES) == {state.value for state in JobState}


@pytest.mark.parametrize("state, galaxy", sorted(EXPECTED_STATES.items()))
def test_each_state_is_accepted_and_means_a_galaxy_state(state: str, galaxy: str) -> None:
    parsed = events.parse(event_body(state=state, waiting_on="user:ada" if state == "limited" else None))
    assert parsed.state == state
    assert parsed.terminal == (galaxy in ("ok", "error", "deleted"))
    assert galaxy_state(state) == galaxy


def test_unknown_asks_for_a_resend_and_is_no_galaxy_state() -> None:
    assert events.parse(event_body(state=UNKNOWN, seq=0)).state == UNKNOWN
    with pytest.raises(KeyError):
        galaxy_state(UNKNOWN)


def test_every_runner_state_galaxy_tasks_reports_is_mapped() -> None:
    # and the tool's time limit, which the plugin names when it was the walltime kept
    assert set(task_events.RUNNER_STATES) == set(RUNNER_STATES) - {"tool_timelimit_reached"} == \
        set(policies.RUNNER_STATES)


@pytest.mark.parametrize("runner_state, galaxy", [
    ("walltime_reached", "walltime_reached"),
    ("memory_limit_reached", "memory_limit_reached"),
    ("global_walltime_reached", "global_walltime_reached"),
    ("output_size_limit", "output_size_limit"),
    ("tool_timelimit_reached", "tool_timelimit_reached"),
    ("unknown_error", "unknown_error"),
])
def test_each_runner_state_is_accepted_and_is_galaxys(runner_state: str, galaxy: str) -> None:
    parsed = events.parse(event_body(state="error", runner_state=runner_state, signal=9))
    assert parsed.runner_state == runner_state
    assert galaxy_runner_state(parsed.runner_state, GALAXY_RUNNER_STATES) == galaxy


def test_an_error_without_a_runner_state_is_galaxys_unknown_error() -> None:
    assert galaxy_runner_state(None, GALAXY_RUNNER_STATES) == "unknown_error"
    assert fail_message(None, "the launch failed") == "The job failed in galaxy-tasks: the launch failed"


def test_a_runner_state_this_plugin_does_not_know_still_ends_the_job_as_unknown_error() -> None:
    """An event from a newer galaxy-tasks: the job ends in Galaxy (refusing the event would
    leave it running there for good), as Galaxy's unknown_error."""
    parsed = events.parse(event_body(state="error", runner_state="output_size_limit_reached"))
    assert parsed.terminal and galaxy_runner_state(parsed.runner_state, GALAXY_RUNNER_STATES) == "unknown_error"
