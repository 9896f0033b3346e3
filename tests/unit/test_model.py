"""A job as clients see it (`status --json`, `list --json`): the fields they are shown, in
a fixed order, times in ISO 8601, and nothing of the row that is not theirs to see."""
from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, fields
from datetime import UTC, datetime

import pytest

from galaxy_tasks.model import Job

AT = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)


def finished_job() -> Job:
    return Job(id="j-1", tool_id="cat1", command="cat secret.txt", destination="local", queue="local", state="ok",
               created_at=AT, finished_at=AT, exit_code=0, stdout_tail="out\n", stderr_tail="", token="t0k3n",
               environment={"API_KEY": "x"}, owner="task-9", check_at=AT)


def test_a_job_as_clients_see_it():
    view = finished_job().to_json()
    assert list(view)[:6] == ["id", "state", "exit_code", "signal", "reason", "runner_state"]
    assert list(view)[-2:] == ["stdout", "stderr"]
    assert view["id"] == "j-1" and view["state"] == "ok" and view["exit_code"] == 0 and view["cores"] == 1
    assert view["created_at"] == view["finished_at"] == "2026-12-06T12:30:00+00:00"
    assert view["queued_at"] is None and view["running_at"] is None
    assert view["stdout"] == "out\n" and view["stderr"] == ""
    assert view["attempts"] == []
    assert json.loads(json.dumps(view)) == view


def test_what_clients_are_not_shown():
    view = finished_job().to_json()
    assert not {"command", "environment", "token", "owner", "check_at", "stdout_tail", "stderr_tail"} & set(view)


def test_a_job_read_from_a_row_is_the_job_the_row_holds():
    """A row of every column becomes the same job __init__ would build (and stays frozen);
    a row of fewer columns gets the defaults of the others."""
    job = finished_job()
    row = {f.name: getattr(job, f.name) for f in fields(Job)}
    read = Job.from_row(row)
    assert read == job and read.environment == {"API_KEY": "x"} and read.check_at == AT
    with pytest.raises(FrozenInstanceError):
        read.state = "error"  # type: ignore[misc]
    partial = Job.from_row({k: row[k] for k in ("id", "tool_id", "command", "destination", "queue", "state")})
    assert partial.id == "j-1" and partial.exit_code is None and partial.cores == 1 and partial.attempt == 1
