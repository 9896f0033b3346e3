"""Jobs through real worker processes on the real broker (Redis and RabbitMQ) and PostgreSQL,
driven by the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.states import JobState, is_legal_path
from galaxy_tasks.store import schema

pytestmark = [pytest.mark.integration, pytest.mark.both_brokers]


def test_jobs_run_end_to_end_through_workers(deployment):
    deployment.worker()
    ok = deployment.submit("printf 'hello\\n'; printf 'x\\n' > out.txt", "writer", "--output", "out.txt")
    fails = deployment.submit("echo broken >&2; exit 3", "failer")
    missing = deployment.submit("no-such-tool --help", "missing")
    no_output = deployment.submit("true", "forgetful", "--output", "never.txt")

    result = deployment.cli("wait", ok, fails, missing, no_output, "--timeout", "60")
    assert result.returncode == 1, "wait exits non-zero when a job did not end ok"

    status = json.loads(deployment.cli("status", ok, "--json").stdout)
    assert status["state"] == "ok" and status["exit_code"] == 0 and status["tool_id"] == "writer"
    assert status["stdout"] == "hello\n"
    assert status["wall_time_s"] is not None and status["wall_time_s"] >= 0
    assert [h["to"] for h in status["history"]] == ["new", "queued", "submitting", "running", "ok"]

    assert deployment.job(fails).state == "error" and deployment.job(fails).exit_code == 3
    assert "broken" in deployment.job(fails).stderr_tail
    assert deployment.job(missing).state == "error"
    assert "command not found" in deployment.job(missing).reason
    assert deployment.job(no_output).state == "error"
    assert "never.txt" in deployment.job(no_output).reason

    listed = json.loads(deployment.cli("list", "--json").stdout)
    assert {j["id"] for j in listed} == {ok, fails, missing, no_output}
    assert all({"id", "state", "exit_code", "tool_id"} <= set(j) for j in listed)
    errors = json.loads(deployment.cli("list", "--state", "error", "--json").stdout)
    assert {j["id"] for j in errors} == {fails, missing, no_output}
    for job_id in (ok, fails, missing, no_output):
        assert is_legal_path(deployment.history(job_id))
    # the end of a job is reported by the worker's exit watcher, not by a per-job interpreter
    script = (Path(deployment.job(ok).job_dir) / "job.sh").read_text()
    assert "python" not in script.lower()


def test_wait_exits_zero_when_all_ok_and_job_dir_is_private(deployment):
    deployment.worker()
    ids = [deployment.submit(f"echo {i} > n.txt", "counter", "--output", "n.txt") for i in range(3)]
    result = deployment.cli("wait", *ids, "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    for job_id in ids:
        job_dir = Path(deployment.job(job_id).job_dir)
        assert (os.stat(job_dir).st_mode & 0o777) == 0o700
        assert os.stat(job_dir).st_uid == os.getuid()


def test_steps_and_local_queues_served_by_separate_workers(deployment):
    deployment.worker("galaxy_tasks", "steps@%h")
    deployment.worker("local", "local@%h", celery_app="galaxy_tasks")  # plain `celery -A galaxy_tasks worker`
    job_id = deployment.submit("echo split", "split")
    [job] = deployment.wait_terminal([job_id])
    assert job.state == "ok"
    logs = [w.log.read_text() for w in deployment.workers]
    assert "to=queued" in logs[0] and "to=running" not in logs[0]
    assert "to=running" in logs[1]


def test_job_environment_is_set_and_worker_secrets_do_not_leak(deployment):
    deployment.worker()
    job_id = deployment.submit("env | sort > env.txt", "env_dump", "--cores", "2", "--memory-mb", "512",
                               "--env", "GREETING=hello world")
    [job] = deployment.wait_terminal([job_id])
    assert job.state == "ok", job.reason
    env = dict(line.split("=", 1) for line in (Path(job.job_dir) / "working" / "env.txt").read_text().splitlines()
               if "=" in line)
    assert env["GALAXY_SLOTS"] == "2" and env["GALAXY_MEMORY_MB"] == "512"
    assert env["GREETING"] == "hello world"
    assert env["TMPDIR"].startswith(job.job_dir) and env["TEMP"] == env["TMPDIR"]
    assert "MESOS_URL" in env
    assert not any(name.startswith("GALAXY_TASKS_") and name != "GALAXY_TASKS_JOB_ID" for name in env)
    assert deployment.database_url not in (Path(job.job_dir) / "working" / "env.txt").read_text()


def test_cancel_kills_the_running_job(deployment):
    deployment.worker()
    job_id = deployment.submit("sleep 300 & sleep 300; wait", "sleeper")
    deployment.wait_until(lambda: deployment.job(job_id).state == "running", what="running")
    pgid = int(deployment.job(job_id).external_id.split(":")[1])
    result = deployment.cli("cancel", job_id)
    assert result.returncode == 0 and "cancelled" in result.stdout
    assert deployment.job(job_id).state == "deleted"

    def group_gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    deployment.wait_until(group_gone, timeout=20, what="job process group killed")
    time.sleep(1)  # the completion event of the killed process must not change the state
    assert deployment.job(job_id).state == "deleted"
    assert deployment.history(job_id)[-1] is JobState.DELETED


def test_client_without_this_package_submits_with_send_task(deployment):
    deployment.worker()
    script = textwrap.dedent(
        """
        import sys
        from celery import Celery
        app = Celery(broker=sys.argv[1])
        app.conf.task_serializer = "json"
        spec = {"id": "client-chosen-0001", "tool_id": "remote", "command": "echo from afar",
                "cores": 1, "environment": {"A": "b"}}
        app.send_task("galaxy_tasks.submit_job", kwargs=spec, queue="galaxy_tasks")
        app.send_task("galaxy_tasks.submit_job", kwargs=spec, queue="galaxy_tasks")  # duplicated
        app.send_task("galaxy_tasks.submit_job", kwargs={"tool_id": "bad", "cores": -2, "command": "x"},
                      queue="galaxy_tasks")
        """
    )
    env = {k: v for k, v in deployment.env.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-I", "-c", script, deployment.env["GALAXY_TASKS_BROKER_URL"]],
                   env=env, check=True, timeout=60, cwd="/")
    [job] = deployment.wait_terminal(["client-chosen-0001"])
    assert job.state == "ok" and job.stdout_tail == "from afar\n"
    deployment.wait_until(lambda: "event=submit_refused" in deployment.logs(), what="refusal logged")
    assert "field=cores" in deployment.logs()
    assert [j.id for j in deployment.jobs()] == ["client-chosen-0001"]


BAD_INPUT = [
    (["--tool-id", "t"], "command"),
    (["--tool-id", "t", "--command", "true", "--destination", "nowhere"], "destination"),
    (["--tool-id", "t", "--command", "true", "--cores", "-1"], "cores"),
    (["--tool-id", "t", "--command", "true", "--cores", "4096"], "cores"),
    (["--tool-id", "t", "--command", "true", "--output", "../../etc/passwd"], "outputs[0]"),
    (["--tool-id", "t", "--command", "true", "--env", "1BAD=x"], "environment.1BAD"),
]


@pytest.mark.parametrize(("args", "field"), BAD_INPUT)
def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(deployment, args, field):
    result = deployment.cli("submit", *args)
    assert result.returncode == 2
    assert field in result.stderr
    assert "Traceback" not in result.stderr
    assert deployment.jobs() == []
    assert not (deployment.tmp / "jobs").exists() or not any((deployment.tmp / "jobs").iterdir())


@pytest.mark.parametrize(("text", "field"), [
    ("{not json", "spec: invalid JSON"),
    ('{"tool_id": "t", "command": "true", "environment": {"N": 3}}', "environment.N"),
    ('{"tool_id": "t", "command": "true", "colour": "red"}', "colour"),
])
def test_bad_spec_files_are_refused(deployment, text, field):
    spec = deployment.tmp / "spec.json"
    spec.write_text(text)
    result = deployment.cli("submit", "--spec", str(spec))
    assert result.returncode == 2 and field in result.stderr
    assert deployment.jobs() == []


def test_submit_json_and_spec_file(deployment):
    deployment.worker()
    spec = deployment.tmp / "spec.json"
    spec.write_text(json.dumps({"tool_id": "from_file", "command": "echo spec", "user": "alice"}))
    out = json.loads(deployment.cli("submit", "--spec", str(spec), "--json").stdout)
    assert out["state"] == "new" and out["destination"] == "local"
    [job] = deployment.wait_terminal([out["id"]])
    assert job.state == "ok" and job.user == "alice"


def test_unfinished_jobs_are_recovered_from_the_database_when_a_worker_starts(deployment):
    ids = deployment.submit_many([{"tool_id": "recovered", "command": f"echo {i}"} for i in range(5)])
    assert {j.state for j in deployment.jobs()} == {"new"}
    deployment.broker.lose_everything()  # the broker loses every message
    deployment.worker()
    jobs = deployment.wait_terminal(ids)
    assert {j.state for j in jobs} == {"ok"}


def test_db_upgrade_is_idempotent(deployment):
    result = deployment.cli("db", "upgrade")
    assert result.returncode == 0 and f"revision {schema.head()} " in result.stdout
    assert "postgres@" in result.stdout


def test_max_jobs_bounds_the_local_jobs_running_at_once_across_worker_processes(make_deployment, tmp_path):
    """A local destination with `max_jobs: 2`, served by a prefork worker of 3 processes:
    never more than 2 of its jobs run at once on the host; the others wait in `queued` and
    start as running ones end; a cancel is served while every slot is taken."""
    conf = tmp_path / "job_conf.yml"
    conf.write_text("destinations:\n  local:\n    runner: local\n"
                    f"    params: {{max_jobs: 2, slots_dir: '{tmp_path / 'slots'}'}}\ndefault: local\n")
    deployment = make_deployment(GALAXY_TASKS_JOB_CONF=str(conf),
                                 GALAXY_TASKS_RECONCILE_INTERVAL="30")  # no rescue by reconciliation
    spans = tmp_path / "spans"
    deployment.worker("galaxy_tasks,local", "slots@%h", "--concurrency", "3")
    ids = deployment.submit_many([{"tool_id": "slotted", "command": f'echo "start $(date +%s.%N)" >> {spans}; '
                                   f'sleep 2.5; echo "end $(date +%s.%N)" >> {spans}'} for _ in range(6)])
    jobs = deployment.wait_terminal(ids, timeout=90)
    assert [job.state for job in jobs] == ["ok"] * 6
    running, most = 0, 0
    for _, kind in sorted((float(at), kind) for kind, at in (line.split() for line in spans.read_text().splitlines())):
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2, f"at most 2 at once, and the slots were used: {most}"
    histories = deployment.histories(ids)
    assert all(is_legal_path(h) for h in histories.values())
    assert "event=waiting" in deployment.logs() and "why=slot" in deployment.logs(), \
        "launches that found the host full left their jobs in line, saying why"

    gate = tmp_path / "gate"
    held = [deployment.submit(f"until [ -e {gate} ]; do sleep 0.1; done", "slotted") for _ in range(2)]
    deployment.wait_until(lambda: all(deployment.job(i).state == "running" for i in held), what="both slots taken")
    behind = deployment.submit("echo behind", "slotted")
    deployment.wait_until(lambda: f"event=waiting job_id={behind}" in deployment.logs(), what="left in line")
    assert deployment.job(behind).state == "queued"
    assert deployment.cli("cancel", held[0]).returncode == 0  # served although every slot is taken
    [job] = deployment.wait_terminal([behind], timeout=60)  # its slot freed, the waiting job ran
    assert (job.state, job.stdout_tail) == ("ok", "behind\n")
    gate.touch()
    deployment.wait_terminal(held, timeout=60)


def test_messages_about_a_local_job_go_to_the_worker_of_its_own_host(make_deployment, tmp_path):
    """Two hosts serve the local queue (GALAXY_TASKS_HOST names them on this one machine). A
    job runs on host-a; its kill goes to `local@host-a`, which host-b's worker does not take,
    and waits there until host-a's worker is back to act on it."""
    from tests.support.deployment import Worker
    from tests.support.ledger import gated
    from tests.support.processes import alive

    deployment = make_deployment()
    gate = tmp_path / "gate"

    def worker_on(host: str) -> Worker:
        log = tmp_path / f"worker-{host}-{len(deployment.workers)}.log"
        worker = Worker({**deployment.env, "GALAXY_TASKS_HOST": host}, log, "galaxy_tasks,local", f"{host}@%h",
                        ["--concurrency", "2"])
        deployment.workers.append(worker)
        return worker.wait_ready()

    first_a = worker_on("host-a")
    job_id = deployment.submit(gated(gate), "two_hosts")
    try:
        deployment.wait_until(lambda: deployment.job(job_id).state == "running", what="running on host-a")
        job = deployment.job(job_id)
        assert job.external_id.startswith("host-a:")
        pid = JobDir(Path(job.job_dir)).claimed_pid()
        first_a.stop()
        b = worker_on("host-b")
        assert "local@host-b" in b.log.read_text()  # each worker takes its own host's messages
        assert deployment.cli("cancel", job_id).returncode == 0
        deployment.wait_until(lambda: deployment.broker.queue_length("local@host-a") == 1,
                              what="the kill waiting for host-a")
        time.sleep(1)
        assert os.path.exists(f"/proc/{pid}") and "runs on host-a" not in b.log.read_text()
        worker_on("host-a")
        deployment.wait_until(lambda: not alive(pid), timeout=30, what="host-a's worker killed the job")
        assert deployment.job(job_id).state == "deleted"
    finally:
        gate.touch()
