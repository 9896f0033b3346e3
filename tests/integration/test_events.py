"""Job events for real: a client that submits through the task contract hears every state
change of its job on its own durable queue, in order, with its own id; an event a crash
swallowed is published by reconciliation; a client can ask what became of its ids; `wait`
and `events --follow` hear events instead of reading the database."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue

from tests.support.deployment import ROOT, Deployment
from tests.support.ledger import gated

pytestmark = [pytest.mark.integration, pytest.mark.both_brokers]

TERMINAL = {"ok", "error", "deleted"}


class EventQueue:
    """A client's durable events queue, read the way a client that does not import this
    project reads it: plain kombu, JSON bodies, acknowledged one by one."""

    def __init__(self, broker: str, name: str) -> None:
        self.connection = Connection(broker)
        self.queue = Queue(name, Exchange(""), routing_key=name, durable=True)
        self.simple = self.connection.SimpleQueue(self.queue)

    def take(self, until: Any, timeout: float = 60) -> list[dict[str, Any]]:
        """Events until `until(events)` holds."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not until(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"events so far: {got}")
            try:
                message = self.simple.get(block=True, timeout=min(left, 1))
            except self.simple.Empty:
                continue
            assert message.content_type == "application/json"
            got.append(message.payload)
            message.ack()
        return got

    def close(self) -> None:
        self.simple.close()
        self.connection.release()


def client(deployment: Deployment) -> Celery:
    app = Celery(broker=deployment.env["GALAXY_TASKS_BROKER_URL"])
    app.conf.update(task_serializer="json", accept_content=["json"])
    return app


def ended(job_id: str):
    return lambda got: any(e["job_id"] == job_id and e["state"] in TERMINAL for e in got)


def test_a_client_hears_every_state_of_its_job_in_order(deployment, tmp_path):
    deployment.worker()
    events = EventQueue(deployment.env["GALAXY_TASKS_BROKER_URL"], "galaxy.test")
    try:
        client(deployment).send_task("galaxy_tasks.submit_job", queue="galaxy_tasks", kwargs={
            "id": "g-test-1", "tool_id": "cat1", "command": "echo hi; exit 3",
            "events": {"queue": "galaxy.test", "client_id": "1"}})
        got = events.take(ended("g-test-1"))
    finally:
        events.close()
    assert [e["state"] for e in got] == ["new", "queued", "submitting", "running", "error"]
    assert [e["seq"] for e in got] == [1, 2, 3, 4, 5]
    last = got[-1]
    assert (last["job_id"], last["client_id"], last["exit_code"], last["reason"]) == ("g-test-1", "1", 3, "exit code 3")
    assert last["event"] == "job_state" and last["version"] == 1 and last["destination"] == "local"
    assert last["times"]["running_at"] <= last["times"]["finished_at"]
    # the outbox mark is cleared once the broker confirmed the last event, a moment after the
    # client may already hold it
    deployment.wait_until(lambda: deployment.job("g-test-1").unpublished_at is None, 30, "every event in its queue")


def test_an_event_a_crash_swallowed_is_published_by_reconciliation(make_deployment, tmp_path):
    deployment = make_deployment(GALAXY_TASKS_CRASH_POINTS="publish-ok", GALAXY_TASKS_CRASH_DIR=str(tmp_path),
                                 GALAXY_TASKS_RECONCILE_INTERVAL="1")
    deployment.worker()
    deployment.beat()
    events = EventQueue(deployment.env["GALAXY_TASKS_BROKER_URL"], "galaxy.crash")
    try:
        client(deployment).send_task("galaxy_tasks.submit_job", queue="galaxy_tasks", kwargs={
            "id": "g-crash-1", "tool_id": "t", "command": "true", "events": {"queue": "galaxy.crash"}})
        got = events.take(ended("g-crash-1"), timeout=90)
    finally:
        events.close()
    assert (tmp_path / "crashed-publish-ok-g-crash-1").exists(), "the worker died between the end and its event"
    assert got[-1]["state"] == "ok" and got[-1]["seq"] == 5
    # the outbox mark is cleared just after the event is published: not in the same instant
    deployment.wait_until(lambda: deployment.job("g-crash-1").unpublished_at is None, 10, "the outbox mark cleared")


def test_a_client_learns_what_became_of_its_ids(deployment):
    deployment.worker()
    known = deployment.submit("true", "t")
    deployment.wait_terminal([known])
    events = EventQueue(deployment.env["GALAXY_TASKS_BROKER_URL"], "galaxy.lookup")
    try:
        client(deployment).send_task("galaxy_tasks.announce_jobs", queue="galaxy_tasks",
                                     kwargs={"job_ids": [known, "never-sent"], "queue": "galaxy.lookup"})
        got = events.take(lambda got: len(got) == 2)
    finally:
        events.close()
    by_id = {e["job_id"]: e for e in got}
    assert by_id[known]["state"] == "ok" and by_id[known]["seq"] == 5
    assert by_id["never-sent"]["state"] == "unknown"


@pytest.mark.parametrize("queue", ["galaxy_tasks", "local", "local@somehost", "celeryev.x", "bad queue"])
def test_an_events_queue_galaxy_tasks_consumes_is_refused(deployment, tmp_path, queue):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"tool_id": "t", "command": "true", "events": {"queue": queue}}))
    result = deployment.cli("submit", "--spec", str(spec))
    assert result.returncode == 2 and "events.queue" in result.stderr, result.stderr
    assert deployment.jobs() == []


LISTEN_AT_ONCE = """
from galaxy_tasks.edge import messages
from galaxy_tasks.edge.listen import JobEvents

missed = 0
for n in range(20):
    with JobEvents() as heard:
        messages.broadcast([{"job_id": f"right-away-{n}", "state": "ok"}])
        got = heard.next(3.0)
    missed += not any(item.get("job_id") == f"right-away-{n}" for item in got)
print(missed)
"""


def test_a_listener_hears_an_event_sent_the_moment_it_opened(deployment):
    """`wait` opens its listener, then reads the rows: an end between the two must be heard.
    On Redis a consumer subscribes only at its first poll, so opening waits to hear itself."""
    result = subprocess.run([sys.executable, "-c", LISTEN_AT_ONCE], env=deployment.env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"], "events sent right after the listener opened were missed"


def test_wait_hears_the_end_instead_of_polling(deployment, tmp_path):
    """`wait` reads the rows when it starts, then only every 10 s (RECHECK_S): a wait that
    prints the job's end within a few seconds of it was told by the job's event (its first
    recheck comes 8 s or more after the end). Its line is timed when printed (unbuffered),
    not when its process has exited, which takes a while on a busy machine."""
    gate = tmp_path / "gate"
    deployment.worker()
    job_id = deployment.submit(gated(gate, "true"), "t")
    deployment.wait_until(lambda: deployment.job(job_id).state == "running", what="running")
    waiting = subprocess.Popen([sys.executable, "-m", "galaxy_tasks.cli", "wait", job_id, "--timeout", "60"],
                               env={**deployment.env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    while "listening" not in waiting.stderr.readline():  # it has read the rows and hears events
        assert waiting.poll() is None, waiting.stderr.read()
    gate.touch()
    deployment.wait_until(lambda: deployment.job(job_id).state == "ok", what="ok")
    ended_at = time.monotonic()
    line = waiting.stdout.readline()
    heard_after = time.monotonic() - ended_at
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert heard_after < 6, f"wait did not hear the job's event: it printed its end {heard_after:.1f} s after it"
    assert f"{job_id} ok exit=0" in line + out


def test_events_follow_prints_events_as_they_happen(deployment):
    deployment.worker()
    follow = subprocess.Popen([sys.executable, "-m", "galaxy_tasks.cli", "events", "--follow", "--json"],
                              env=deployment.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while "listening" not in follow.stderr.readline():  # said once its listener hears
            assert follow.poll() is None, follow.stderr.read()
        job_id = deployment.submit("true", "followed")
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not any(e.get("state") == "ok" for e in seen) and time.monotonic() < deadline:
            line = follow.stdout.readline()
            if line:
                seen.append(json.loads(line))
    finally:
        follow.terminate()
        follow.wait(timeout=10)
    mine = [e["state"] for e in seen if e["job_id"] == job_id]
    assert mine == ["new", "queued", "submitting", "running", "ok"], seen


def test_cleanup_job_deletes_a_directory_only_after_its_end_was_delivered(make_deployment):
    """GALAXY_TASKS_CLEANUP_JOB=onsuccess: an ok job's directory is gone once its end event
    is in the client's queue; an error job's is kept (as Galaxy's cleanup_job)."""
    deployment = make_deployment(GALAXY_TASKS_CLEANUP_JOB="onsuccess")
    deployment.worker()
    events = EventQueue(deployment.env["GALAXY_TASKS_BROKER_URL"], "galaxy.clean")
    try:
        for job_id, command in (("c-ok", "echo fine"), ("c-error", "exit 4")):
            client(deployment).send_task("galaxy_tasks.submit_job", queue="galaxy_tasks", kwargs={
                "id": job_id, "tool_id": "t", "command": command, "events": {"queue": "galaxy.clean"}})
        got = events.take(lambda got: ended("c-ok")(got) and ended("c-error")(got))
    finally:
        events.close()
    assert {e["job_id"]: e["state"] for e in got if e["state"] in TERMINAL} == {"c-ok": "ok", "c-error": "error"}
    # the outbox mark is cleared once the broker confirmed the event, a moment after the
    # client may already hold it
    deployment.wait_until(lambda: deployment.job("c-ok").unpublished_at is None, 30, "the ok job's end delivered")
    ok, error = deployment.job("c-ok"), deployment.job("c-error")
    deployment.wait_until(lambda: not Path(ok.job_dir).exists(), 30, "the ok job's directory gone")
    assert (Path(error.job_dir) / "job.sh").exists(), "onsuccess keeps a failed job's directory"
    # logged just after the removal: wait for the line, do not race it
    deployment.wait_until(lambda: "job_dir_removed" in deployment.logs(), 10, "the removal in the worker's log")
