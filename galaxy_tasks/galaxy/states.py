"""What each galaxy-tasks state and runner_state means to Galaxy.

Every state a job event can carry is named here, so an event of a state Galaxy has no word
for (`limited`, `submitting`) is applied, not refused; Galaxy's job stays `queued` until
galaxy-tasks says it runs. A runner_state becomes the member of Galaxy's
`JobState.runner_states` its resubmit rules compare with (tests/galaxy checks the names
against a real Galaxy). Plain Python: no Galaxy import.
"""
from __future__ import annotations

from typing import Any

from galaxy_tasks.states import JobState

#: the state of an event that answers a lookup of an id galaxy-tasks has no job for
UNKNOWN = "unknown"

#: galaxy-tasks' state -> the Galaxy job state it means
GALAXY_STATES: dict[str, str] = {
    JobState.NEW.value: "queued",
    JobState.QUEUED.value: "queued",
    JobState.LIMITED.value: "queued",  # waiting on a concurrency limit
    JobState.SUBMITTING.value: "queued",
    JobState.RUNNING.value: "running",
    JobState.OK.value: "ok",
    JobState.ERROR.value: "error",
    JobState.DELETED.value: "deleted",
}
STATES = frozenset(GALAXY_STATES) | {UNKNOWN}
TERMINAL = frozenset({"ok", "error", "deleted"})

#: galaxy-tasks' runner_state -> the name of its member of Galaxy's JobState.runner_states
RUNNER_STATES: dict[str, str] = {
    "walltime_reached": "WALLTIME_REACHED",
    "memory_limit_reached": "MEMORY_LIMIT_REACHED",
    "global_walltime_reached": "GLOBAL_WALLTIME_REACHED",
    "output_size_limit": "OUTPUT_SIZE_LIMIT",
    "tool_timelimit_reached": "TOOL_TIMELIMIT_REACHED",
    "unknown_error": "UNKNOWN_ERROR",
}

#: what Galaxy tells the user about a job galaxy-tasks ended, by runner_state
FAIL_MESSAGES: dict[str, str] = {
    "walltime_reached": "This job was terminated because it ran longer than its walltime.",
    "memory_limit_reached": "This job was terminated because it used more memory than it was allocated.",
    "output_size_limit": "This job was terminated because its output grew too large.",
    "global_walltime_reached": "This job was terminated because it ran longer than the maximum allowed job run time.",
    "tool_timelimit_reached": "This job was terminated because it ran longer than the tool's time limit.",
}


def galaxy_state(state: str) -> str:
    """The Galaxy job state a galaxy-tasks state means (`unknown` is not one: it asks for a resend)."""
    return GALAXY_STATES[state]


def galaxy_runner_state(runner_state: str | None, runner_states: Any) -> str:
    """Galaxy's runner state for galaxy-tasks' (Galaxy's `runner_states` Bunch is passed in);
    none given, or one this plugin does not know, is Galaxy's unknown_error."""
    name = RUNNER_STATES.get(runner_state or "", "UNKNOWN_ERROR")
    return getattr(runner_states, name)


def fail_message(runner_state: str | None, reason: str | None, refused: bool = False) -> str:
    """What Galaxy shows as the job's error: galaxy-tasks' reason in words."""
    if refused:
        return f"galaxy-tasks refused this job: {reason or 'no reason given'}"
    return FAIL_MESSAGES.get(runner_state or "", "The job failed in galaxy-tasks: " + (reason or "unknown reason"))
