"""workers/slurm.py end to end: a steps worker, a Slurm worker (`celery -A workers.slurm`),
Redis, PostgreSQL and the real Slurm; jobs submitted through the task contract."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.ledger import gated, ledger_command, ledger_counts
from tests.support.processes import alive
from tests.support.slurm import MEMORY_HOG

pytestmark = [pytest.mark.slurm, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]

JOB_CONF = """\
destinations:
  local:
    runner: local
  slurm:
    runner: slurm
    queue: slurm
    params: {listen_host: 127.0.0.1, announce_host: 127.0.0.1, partition: debug}
rules:
  - tool: "slurm_*"
    destination: slurm
default: local
"""


class SlurmDeployment:
    """The `deployment` fixture with a job_conf that has a slurm destination, and Slurm
    workers started the documented way."""

    def __init__(self, deployment: Any, slurm: dict[str, str], job_conf: Path) -> None:
        self.d = deployment
        deployment.env.update(slurm)
        deployment.env["GALAXY_TASKS_JOB_CONF"] = str(job_conf)
        self.client: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.d, name)

    def steps_worker(self) -> Any:
        return self.d.worker("galaxy_tasks,local", f"steps{len(self.d.workers)}@%h")

    def slurm_worker(self, name: str = "slurm1") -> Any:
        from tests.support.deployment import Worker

        class SlurmWorker(Worker):
            def __init__(self, env: dict[str, str], log: Path) -> None:
                self.log = log
                cmd = [sys.executable, "-m", "celery", "-A", "workers.slurm", "worker", "-n", f"{name}@%h",
                       "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
                self.handle = open(log, "ab")
                self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self.handle,
                                             stderr=subprocess.STDOUT, start_new_session=True)

        worker = SlurmWorker(self.d.env, self.d.tmp / f"worker-{len(self.d.workers) + 1}-{name}.log")
        self.d.workers.append(worker)
        return worker.wait_ready()

    def submit(self, spec: dict) -> str:
        """Send a spec by the task contract; return its id once the job is known."""
        from celery import Celery

        if self.client is None:
            self.client = Celery(broker=self.d.env["GALAXY_TASKS_BROKER_URL"])
            self.client.conf.update(accept_content=["json"], task_serializer="json")
        self.client.send_task("galaxy_tasks.submit_job", kwargs=spec, queue="galaxy_tasks")
        self.d.wait_until(lambda: any(job.id == spec["id"] for job in self.d.jobs()), 60, f"{spec['id']} accepted")
        return spec["id"]

    def slurm_calls(self, name: str = "slurm1") -> dict[str, int]:
        """The Slurm worker's commands by kind, asked through Celery's remote control."""
        node = f"{name}@{socket.gethostname()}"
        for _ in range(3):
            for reply in self.client.control.broadcast("slurm_calls", reply=True, destination=[node], timeout=5):
                if node in reply:
                    return {"sbatch": 0, "squeue": 0, "scancel": 0, **reply[node]}
        raise AssertionError(f"{node} did not answer slurm_calls")

    def state_file(self, name: str = "slurm1") -> Path:
        return Path(self.d.env["GALAXY_TASKS_HOME"]) / "slurm" / f"{name}@{socket.gethostname()}.listener"

    def close(self) -> None:
        names = ",".join(f"gt-{job.id}" for job in self.d.jobs())
        if names:
            subprocess.run(["scancel", f"--name={names}"], capture_output=True, timeout=60)
        if self.client is not None:
            self.client.close()


@pytest.fixture
def slurm_deployment(slurm: dict[str, str], deployment: Any, tmp_path: Path) -> Iterator[SlurmDeployment]:
    job_conf = tmp_path / "job_conf.yml"
    job_conf.write_text(JOB_CONF)
    made = SlurmDeployment(deployment, slurm, job_conf)
    try:
        yield made
    finally:
        made.close()


def test_jobs_run_through_the_slurm_worker(slurm_deployment, tmp_path) -> None:
    d = slurm_deployment
    d.steps_worker()
    d.slurm_worker()
    ok = d.submit({"id": "slurm-e2e-ok", "tool_id": "slurm_echo", "command": "echo hello from slurm",
                   "cores": 2, "memory_mb": 200})
    bad = d.submit({"id": "slurm-e2e-bad", "tool_id": "slurm_fail", "command": "echo oops >&2; exit 3"})
    hog = d.submit({"id": "slurm-e2e-hog", "tool_id": "slurm_hog", "command": MEMORY_HOG, "memory_mb": 64})
    done = {job.id: job for job in d.wait_terminal([ok, bad, hog], timeout=120)}
    assert (done[ok].state, done[ok].exit_code, done[ok].stdout_tail) == ("ok", 0, "hello from slurm\n")
    assert done[ok].external_id and done[ok].external_id.isdigit()
    assert (done[bad].state, done[bad].exit_code, done[bad].reason) == ("error", 3, "exit code 3")
    assert done[bad].stderr_tail == "oops\n"
    # Slurm's kill, in Galaxy's words, on the job's row (and so in its job event)
    assert (done[hog].state, done[hog].signal, done[hog].runner_state) == ("error", 9, "memory_limit_reached")
    assert "memory limit" in done[hog].reason
    assert done[ok].runner_state is None and done[bad].runner_state is None
    out = subprocess.run(["scontrol", "-o", "show", "job", done[ok].external_id], capture_output=True, text=True,
                         timeout=60).stdout
    assert f"JobName=gt-{ok}" in out and "NumCPUs=2" in out and "MinMemoryNode=200M" in out
    calls = d.slurm_calls()
    assert calls["sbatch"] == 3 and calls["heard_accepted"] == 3
    assert calls["squeue"] <= 9  # a confirmation per end (a few if Slurm lagged), nothing while running
    state = json.loads(d.state_file().read_text())
    assert set(state) == {"port", "secret"} and d.state_file().stat().st_mode & 0o777 == 0o600


def test_restarted_slurm_worker_hears_the_jobs_of_the_one_before(slurm_deployment, tmp_path) -> None:
    d = slurm_deployment
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    d.steps_worker()
    first = d.slurm_worker()
    job_id = d.submit({"id": "slurm-e2e-restart", "tool_id": "slurm_gated",
                       "command": gated(gate, ledger_command(ledger))})
    d.wait_until(lambda: d.job(job_id).state == "running" and d.job(job_id).external_id, 60, "the job running")
    port = json.loads(d.state_file().read_text())["port"]
    first.kill()  # SIGKILL: no goodbye
    d.slurm_worker()  # the same node name: the same state file, the same port
    assert json.loads(d.state_file().read_text())["port"] == port
    gate.touch()
    [job] = d.wait_terminal([job_id], timeout=120)
    assert (job.state, job.exit_code) == ("ok", 0)
    assert ledger_counts(ledger) == {job_id: 1}
    calls = d.slurm_calls()
    assert calls["sbatch"] == 0 and calls["heard_accepted"] == 1  # heard by the new process
    assert d.history(job_id).count(d.job(job_id).state) == 1


def _holders_started(log: Path) -> list[int]:
    return [int(line.split(" pid=")[1].split()[0]) for line in log.read_text().splitlines()
            if "event=holder_started" in line and "runner=slurm" in line]


def test_a_worker_without_queues_serves_slurm_through_a_supervised_slurm_worker(slurm_deployment) -> None:
    """`galaxy-tasks worker` with no --queues: the steps and local queues in its own process,
    the slurm queue through a `celery -A workers.slurm worker` child it supervises (the
    runner class's `holder`), stopped when the parent stops."""
    d = slurm_deployment
    main = d.d.worker(None, "all@%h", "--concurrency", "2")
    d.wait_until(lambda: "all-slurm@" in main.log.read_text() and main.log.read_text().count(" ready.") >= 2, 60,
                 "both workers ready")
    assert "queues slurm (slurm) are served by a child process `celery -A workers.slurm worker`" in \
        main.log.read_text()
    on_slurm = d.submit({"id": "slurm-e2e-held", "tool_id": "slurm_echo", "command": "echo held"})
    here = d.submit({"id": "slurm-e2e-here", "tool_id": "cat1", "command": "echo here"})
    jobs = {job.id: job for job in d.wait_terminal([on_slurm, here], timeout=120)}
    assert (jobs[on_slurm].state, jobs[on_slurm].destination, jobs[on_slurm].stdout_tail) == ("ok", "slurm", "held\n")
    assert jobs[on_slurm].external_id.isdigit()
    assert (jobs[here].state, jobs[here].destination) == ("ok", "local")
    calls = d.slurm_calls("all-slurm")
    assert calls["sbatch"] == 1 and calls["heard_accepted"] == 1  # its end was heard, not polled
    [child] = _holders_started(main.log)
    main.proc.send_signal(signal.SIGTERM)  # the parent only: it stops its child itself
    main.proc.wait(timeout=90)
    assert not alive(child)
