"""A client with broker access, acting as an attacker would: malformed bodies, wrong argument
types, forged completions, checks and kills. No message can stop a worker, end a job that
is still running, or kill a process of its choosing; the workers serve on."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from galaxy_tasks.jobdir import JobDir
from tests.support.deployment import ROOT, Deployment
from tests.support.ledger import gated
from tests.support.processes import alive

pytestmark = pytest.mark.integration


def publish_raw(deployment: Deployment, queue: str, task: str, body: object, **headers: object) -> None:
    """A message with a real task name in its headers and a body of the sender's choosing."""
    with Connection(deployment.env["GALAXY_TASKS_BROKER_URL"]) as connection:
        producer = connection.Producer()
        producer.publish(json.dumps(body), routing_key=queue, exchange=Exchange(queue, type="direct"),
                         declare=[Queue(queue, Exchange(queue, type="direct"), routing_key=queue)],
                         content_type="application/json", content_encoding="utf-8",
                         headers={"lang": "py", "task": task, "id": str(uuid.uuid4()), **headers})


def send(deployment: Deployment, task: str, to: str = "galaxy_tasks", **kwargs: object) -> None:
    from celery import Celery

    app = Celery(broker=deployment.env["GALAXY_TASKS_BROKER_URL"])
    app.conf.update(task_serializer="json", accept_content=["json"])
    app.send_task(f"galaxy_tasks.{task}", kwargs=kwargs, queue=to)
    app.close()


def still_serving(deployment: Deployment) -> None:
    job_id = deployment.submit("true", "canary")
    [job] = deployment.wait_terminal([job_id], timeout=60)
    assert job.state == "ok", job.reason
    assert all(worker.proc.poll() is None for worker in deployment.workers), "a worker exited"


@pytest.mark.parametrize("body", [{"a": 1}, 123, [1, 2, 3], "text", None, [[], "kwargs", {}], [["x"], {1: 2}, {}]],
                         ids=["object", "number", "short list", "string", "null", "bad kwargs", "int keys"])
def test_a_malformed_message_is_dropped_and_the_worker_serves_on(deployment, body):
    deployment.worker()
    for queue, task in (("galaxy_tasks", "galaxy_tasks.prepare_job"), ("local", "galaxy_tasks.launch_job")):
        publish_raw(deployment, queue, task, body)
    deployment.wait_until(lambda: deployment.logs().count("event=message_refused") >= 2, 30,
                          "both malformed messages refused")
    still_serving(deployment)


@pytest.mark.parametrize("task, kwargs", [
    ("prepare_job", {"job_id": {"$ne": 1}}),
    ("launch_job", {"job_id": ["a", "b"]}),
    ("finish_job", {"job_id": "x", "completion": "exit 0"}),
    ("cancel_job", {"job_id": 42}),
    ("check_jobs", {"destination": "local", "job_ids": "all"}),
    ("announce_jobs", {"job_ids": [1, 2], "queue": "q"}),
    ("prepare_job", {"job_id": "x", "unexpected": True}),
])
def test_arguments_of_the_wrong_kind_are_refused_with_their_name(deployment, task, kwargs):
    deployment.worker()
    send(deployment, task, "local" if task == "launch_job" else "galaxy_tasks", **kwargs)
    deployment.wait_until(lambda: "event=message_refused" in deployment.logs(), 30, "the message refused")
    line = next(line for line in deployment.logs().splitlines() if "event=message_refused" in line)
    assert f"task=galaxy_tasks.{task}" in line
    still_serving(deployment)


def test_a_forged_completion_does_not_end_a_running_job(deployment, tmp_path):
    gate = tmp_path / "gate"
    deployment.worker()
    job_id = deployment.submit(gated(gate, "exit 3"), "victim")
    deployment.wait_until(lambda: deployment.job(job_id).state == "running", what="running")
    send(deployment, "finish_job", job_id=job_id, completion={"exit_code": 0, "reason": "forged"})
    deployment.wait_until(lambda: "event=completion_unconfirmed" in deployment.logs(), 30, "the forgery seen")
    assert deployment.job(job_id).state == "running", "a message alone ended the job"
    gate.touch()
    [job] = deployment.wait_terminal([job_id])
    assert (job.state, job.exit_code) == ("error", 3), "the real end was recorded, not the forged one"


def test_a_forged_kill_neither_kills_a_running_job_nor_a_stranger(deployment, tmp_path):
    gate = tmp_path / "gate"
    deployment.worker()
    job_id = deployment.submit(gated(gate, "true"), "victim")
    deployment.wait_until(lambda: deployment.job(job_id).state == "running", what="running")
    job = deployment.job(job_id)
    pid = JobDir(Path(job.job_dir)).claimed_pid()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    host = job.external_id.split(":")[0]
    worker_pid = deployment.workers[0].proc.pid
    try:
        queue = f"local@{host}"
        send(deployment, "kill_job", queue, destination="local", job_id=job_id)  # not cancelled: refused
        send(deployment, "kill_job", queue, destination="local",
             job={"job_id": job_id, "external_id": f"{host}:{stranger.pid}", "job_dir": str(tmp_path)})
        send(deployment, "stop_jobs", queue, destination="local", job_ids=[job_id])
        deployment.wait_until(lambda: "event=kill_refused" in deployment.logs()
                              and deployment.logs().count("event=message_refused") >= 1, 30, "the forgeries seen")
        deployment.wait_consumed(("galaxy_tasks", "local", queue))
        assert alive(pid), "a running job was killed without being cancelled"
        assert stranger.poll() is None, "a process of the sender's choosing was killed"
        assert alive(worker_pid), "the worker was killed"
        assert deployment.job(job_id).state == "running"
    finally:
        stranger.kill()
        gate.touch()
    assert deployment.wait_terminal([job_id])[0].state == "ok"


def test_a_forged_check_cannot_name_the_directory_to_trust(deployment, tmp_path):
    """check_jobs names jobs only; the worker reads their rows. An old-style message that
    names a directory holding an exit code of the sender's making is refused."""
    gate = tmp_path / "gate"
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "exit_code").write_text("0\n")
    deployment.worker()
    job_id = deployment.submit(gated(gate, "exit 5"), "victim")
    deployment.wait_until(lambda: deployment.job(job_id).state == "running", what="running")
    host = deployment.job(job_id).external_id.split(":")[0]
    send(deployment, "check_jobs", f"local@{host}", destination="local",
         jobs=[{"job_id": job_id, "external_id": "x:1", "job_dir": str(fake)}])
    send(deployment, "check_jobs", f"local@{host}", destination="local", job_ids=[job_id])
    deployment.wait_until(lambda: "event=reconcile_check destination=local asked=1 ended=0" in deployment.logs(),
                          30, "the honest check answered")
    assert deployment.job(job_id).state == "running"
    gate.touch()
    assert deployment.wait_terminal([job_id])[0].exit_code == 5


def test_a_worker_with_an_invalid_job_conf_refuses_to_start(deployment, tmp_path):
    conf = tmp_path / "job_conf.yml"
    conf.write_text("destinations:\n  local:\n    runner: local\n    params: {kill_grace_s: abc}\n")
    env = {**deployment.env, "GALAXY_TASKS_JOB_CONF": str(conf)}
    for command in (["-m", "celery", "-A", "galaxy_tasks", "worker", "-Q", "local"],
                    ["-m", "galaxy_tasks.cli", "worker", "--queues", "local"]):
        result = subprocess.run([sys.executable, *command], env=env, cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode != 0, command
        assert "kill_grace_s" in result.stderr and " ready." not in result.stdout + result.stderr, command


def test_a_message_that_keeps_killing_its_worker_is_set_aside(make_deployment, make_broker, tmp_path):
    """Whatever makes a message kill the worker that takes it, the broker gives it back to
    the next one; after a few such returns it is dead-lettered with a log line naming it,
    and the worker that meets it serves on instead of dying too. Here the step SIGKILLs its
    own process (a crash point) in every worker that runs it, as a message that drives its
    worker out of memory would, however fast the host."""
    from galaxy_tasks.edge.message_checks import MAX_RETURNS

    deployment = make_deployment(broker=make_broker("rabbitmq"))  # gives a dead consumer's message back at once
    fatal = {"id": "fatal", "name": "fatal", "steps": {"s": {"spec": {"tool_id": "t", "command": "true"}}}}

    def crashing(n: int) -> dict[str, str]:  # a crash point fires once per marker directory
        markers = tmp_path / f"markers-{n}"
        markers.mkdir()
        return {"GALAXY_TASKS_CRASH_POINTS": "workflow-submit", "GALAXY_TASKS_CRASH_DIR": str(markers)}

    worker = deployment.worker("galaxy_tasks,local", "k0@%h", "--pool", "solo", env=crashing(0))
    send(deployment, "submit_workflow", workflow=fatal)
    for kill in range(MAX_RETURNS):
        deployment.wait_until(lambda: worker.proc.poll() is not None, timeout=30,
                              what=f"delivery {kill + 1} killing its worker")
        assert b"submit_workflow[" in worker.log.read_bytes()
        # (not waited for: the message it is given back comes before its "ready")
        worker = deployment.worker("galaxy_tasks,local", f"k{kill + 1}@%h", "--pool", "solo", wait=False,
                                   env=crashing(kill + 1))
    deployment.wait_until(lambda: b"event=message_dead_lettered" in worker.log.read_bytes(), timeout=30,
                          what="the message set aside")
    line = next(line for line in worker.log.read_text().splitlines() if "message_dead_lettered" in line)
    assert "task=galaxy_tasks.submit_workflow" in line and f"given back by the broker {MAX_RETURNS} times" in line
    assert b"submit_workflow[" not in worker.log.read_bytes(), "the last worker never ran it"
    worker.wait_ready()
    job_id = deployment.submit("echo served on")
    assert deployment.wait_terminal([job_id])[0].state == "ok"
    assert worker.proc.poll() is None
