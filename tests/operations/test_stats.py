"""`galaxy-tasks stats` aggregates: exact numbers from known rows, on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Iterator

import pytest
from sqlalchemy import insert

from galaxy_tasks.model import jobs
from galaxy_tasks.operations.stats import duration, parse_by, parse_since, render, stats
from galaxy_tasks.store import Store, schema
from tests.support.deployment import ROOT

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/stats.sqlite"
        schema.upgrade(url)
        yield Store(url)
        return
    from tests.support.services import create_database, drop_database

    url = create_database()
    schema.upgrade(url)
    try:
        yield Store(url)
    finally:
        Store(url).dispose()
        drop_database(url)


def add(store: Store, n: int, tool: str, user: str | None, destination: str, state: str, created_ago_h: float,
        wait_s: float | None = None, run_s: float | None = None, wall: bool = True, cores: int = 1) -> None:
    created = NOW - timedelta(hours=created_ago_h)
    running = created + timedelta(seconds=wait_s) if wait_s is not None else None
    finished = running + timedelta(seconds=run_s) if running is not None and run_s is not None else None
    with store.engine.begin() as connection:
        connection.execute(insert(jobs).values(
            id=f"{tool}-{state}-{n}-{created_ago_h}", tool_id=tool, user=user, command="true", environment={},
            inputs=[], outputs=[], cores=cores, destination=destination, queue=destination, state=state,
            created_at=created, updated_at=created, running_at=running, finished_at=finished,
            wall_time_s=run_s if wall and finished else None, checks=0))


def fill(store: Store) -> None:
    add(store, 1, "bwa_mem", "alice", "sge", "ok", 1, wait_s=10, run_s=100, cores=4)
    add(store, 2, "bwa_mem", "alice", "sge", "ok", 2, wait_s=30, run_s=300, wall=False, cores=4)
    add(store, 3, "bwa_mem", "bob", "sge", "error", 3, wait_s=20, run_s=50, cores=4)
    add(store, 4, "bwa_mem", "bob", "sge", "running", 0.5, wait_s=5)
    add(store, 5, "cat1", "alice", "local", "ok", 5, wait_s=1, run_s=2)
    add(store, 6, "cat1", None, "local", "deleted", 6)
    add(store, 7, "cat1", "carol", "local", "new", 0.1)
    add(store, 8, "fastqc", "carol", "local", "ok", 30, wait_s=1, run_s=1)  # outside a 24 h window


@pytest.mark.integration
def test_stats_by_tool_destination_user(store):
    fill(store)
    result = stats(store, NOW - timedelta(hours=24), ["tool"], until=NOW)
    assert result["jobs"] == 7
    assert result["states"] == {"new": 1, "queued": 0, "limited": 0, "submitting": 0, "running": 1, "ok": 3, "error": 1,
                                "deleted": 1}
    bwa, cat = result["groups"]
    assert (bwa["tool"], bwa["jobs"], bwa["ok"], bwa["error"], bwa["active"], bwa["users"]) == ("bwa_mem", 4, 2, 1, 1, 2)
    assert bwa["queue_avg_s"] == pytest.approx((10 + 30 + 20 + 5) / 4, abs=0.01)
    assert bwa["queue_max_s"] == pytest.approx(30, abs=0.01)
    assert bwa["run_avg_s"] == pytest.approx((100 + 300 + 50) / 3, abs=0.01)  # 300: from timestamps
    assert bwa["run_max_s"] == pytest.approx(300, abs=0.01)
    assert bwa["core_s"] == pytest.approx(4 * 450, abs=0.1)
    assert (cat["tool"], cat["jobs"], cat["deleted"], cat["active"], cat["users"]) == ("cat1", 3, 1, 1, 2)
    assert cat["run_max_s"] == pytest.approx(2, abs=0.01)

    by_destination = stats(store, NOW - timedelta(days=2), ["destination"], until=NOW)
    assert {g["destination"]: (g["jobs"], g["tools"]) for g in by_destination["groups"]} == {
        "sge": (4, 1), "local": (4, 2)}

    which = stats(store, NOW - timedelta(hours=24), ["user", "tool"], until=NOW)
    assert {(g["user"], g["tool"]): g["jobs"] for g in which["groups"]} == {
        ("alice", "bwa_mem"): 2, ("bob", "bwa_mem"): 2, ("alice", "cat1"): 1, (None, "cat1"): 1,
        ("carol", "cat1"): 1}
    text = render(which)
    assert "user" in text and "bwa_mem" in text and "5m00s" in text

    empty = stats(store, NOW + timedelta(hours=1), ["tool"], until=NOW + timedelta(hours=2))
    assert empty["jobs"] == 0 and "(no jobs in this window)" in render(empty)


def test_parsing_windows_and_groups():
    assert parse_since("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_since("90m", NOW) == NOW - timedelta(minutes=90)
    assert parse_since("2w", NOW) == NOW - timedelta(days=14)
    assert parse_since("2024-04-30", NOW) == datetime(2024, 4, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")
    assert parse_by("user,tool") == ["user", "tool"]
    with pytest.raises(ValueError, match="--by: queue"):
        parse_by("queue")
    assert [duration(s) for s in (None, 0.42, 12, 185, 7800, 273600)] == ["-", "0.4s", "12s", "3m05s", "2h10m", "3d04h"]


def test_stats_command_on_the_embedded_database(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GALAXY_TASKS_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "db", "upgrade"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    store = Store(f"sqlite:///{tmp_path}/galaxy-tasks.sqlite")
    add(store, 1, "cat1", "alice", "local", "ok", 0, wait_s=1, run_s=2)
    out = subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "stats", "--since", "2024-04-01", "--by", "user", "--json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["groups"][0]["user"] == "alice"
    bad = subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "stats", "--by", "colour"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--by: colour" in bad.stderr and "Traceback" not in bad.stderr
