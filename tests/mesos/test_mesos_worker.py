"""The Mesos worker (`celery -A workers.mesos worker`) as deployed: real worker processes on
the real Redis and PostgreSQL, driven by the CLI, its pymesos framework talking HTTP to the
Mesos master TEST DOUBLE (in this process, 127.0.0.1, 2 simulated agents)."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from galaxy_tasks.states import JobState, is_legal_path
from tests.support.deployment import ROOT, Deployment, Worker
from tests.support.services import require_module

pytestmark = [pytest.mark.mesos, pytest.mark.integration]
require_module("pymesos", "run ops/install-mesos-extra.sh")  # first imported in the main thread


class MesosWorker(Worker):
    """`celery -A workers.mesos worker`, the documented way to serve mesos destinations."""

    def __init__(self, env: dict[str, str], log: Path, name: str, args: list[str]) -> None:
        self.log = log
        cmd = [sys.executable, "-m", "celery", "-A", "workers.mesos", "worker", "-n", name,
               "--loglevel", "INFO", *args]
        self.handle = open(log, "ab")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT,
                                     start_new_session=True)


JOB_CONF = """
destinations:
  local:
    runner: local
  mesos:
    runner: mesos
    max_cores: 2
    params:
      master: "{master}"
      refuse_seconds: 0.5
      failover_timeout: 600
      on_agent_lost: requeue
  mesos_strict:
    runner: mesos
    params:
      master: "{master}"
      refuse_seconds: 0.5
      failover_timeout: 600
      on_agent_lost: fail
rules:
  - tool: "m_*"
    destination: mesos
  - tool: "strict_*"
    destination: mesos_strict
default: local
"""


class MesosDeployment:
    """A deployment whose job_conf has a local and two mesos destinations."""

    def __init__(self, deployment: Deployment, master) -> None:
        self.d, self.master = deployment, master
        conf = deployment.tmp / "job_conf.yml"
        conf.write_text(JOB_CONF.format(master=master.address))
        deployment.env.update(GALAXY_TASKS_JOB_CONF=str(conf), GALAXY_TASKS_MESOS_URL=master.address)
        self.home = Path(deployment.env["GALAXY_TASKS_HOME"])

    def steps(self) -> Worker:
        return self.d.worker("galaxy_tasks,local", "steps@%h")

    def mesos_worker(self, *args: str, wait: bool = True) -> MesosWorker:
        index = len(self.d.workers) + 1
        worker = MesosWorker(self.d.env, self.d.tmp / f"worker-{index}.log", f"mesos{index}@%h",
                             list(args) or ["--concurrency", "4"])
        self.d.workers.append(worker)
        return worker.wait_ready(60) if wait else worker

    def submit(self, command: str, tool_id: str, *args: str) -> str:
        return self.d.submit(command, tool_id, *args)

    def task_id(self, job_id: str) -> str:
        return "gt-" + job_id

    def wait_task(self, job_id: str, state: str, timeout: float = 30) -> None:
        tid = self.task_id(job_id)
        self.master.wait_for(lambda: (t := self.master.task(tid)) is not None and t.state == state,
                             timeout=timeout, what=f"{tid} {state}")

    def framework_ids(self) -> list[str]:
        return [s["framework_id"] for s in self.master.subscriptions]

    def launches(self, job_id: str) -> int:
        tid = self.task_id(job_id)
        return sum(1 for c in self.master.calls_of("ACCEPT") for op in c["accept"]["operations"]
                   for t in op["launch"]["task_infos"] if t["task_id"]["value"] == tid)


@pytest.fixture
def mesos(deployment: Deployment, master) -> MesosDeployment:
    return MesosDeployment(deployment, master)


def test_jobs_routed_to_mesos_end_ok_or_error_with_exit_codes_and_see_mesos_url(mesos):
    mesos.steps()
    mesos.mesos_worker()
    ok = mesos.submit("echo hello; echo \"$MESOS_URL\" > url.txt", "m_ok", "--output", "url.txt")
    big = mesos.submit("echo \"$GALAXY_SLOTS\"", "m_big", "--cores", "2", "--memory-mb", "300")
    failed = mesos.submit("echo broken >&2; exit 3", "m_fail")
    missing = mesos.submit("true", "m_forgetful", "--output", "never.txt")
    local = mesos.submit("echo \"$MESOS_URL\" > url.txt", "plain", "--output", "url.txt")
    jobs = {j.id: j for j in mesos.d.wait_terminal([ok, big, failed, missing, local], timeout=90)}

    assert jobs[ok].state == "ok" and jobs[ok].exit_code == 0 and jobs[ok].stdout_tail == "hello\n"
    assert jobs[ok].destination == "mesos" and jobs[ok].external_id == "gt-" + ok
    assert jobs[big].state == "ok" and jobs[big].stdout_tail == "2\n"
    assert jobs[failed].state == "error" and jobs[failed].exit_code == 3
    assert "TASK_FAILED" in jobs[failed].reason and "broken" in jobs[failed].stderr_tail
    assert jobs[missing].state == "error" and "never.txt" in jobs[missing].reason
    assert jobs[local].state == "ok" and jobs[local].destination == "local"
    for job_id in (ok, local):  # MESOS_URL reaches a job on every runner
        assert (Path(jobs[job_id].job_dir) / "working" / "url.txt").read_text() == mesos.master.address + "\n"
    for job_id in jobs:
        assert is_legal_path(mesos.d.history(job_id)), mesos.d.history(job_id)

    # the Mesos side: one task per job, resources as asked, every update acknowledged
    master = mesos.master
    assert master.task("gt-" + ok).state == "TASK_FINISHED"
    assert master.task("gt-" + failed).state == "TASK_FAILED"
    assert (master.task("gt-" + big).cpus, master.task("gt-" + big).mem) == (2.0, 300.0)
    assert all(mesos.launches(j) == 1 for j in (ok, big, failed, missing))
    master.wait_for(lambda: not master.tasks, what="all updates acknowledged")
    # the framework id is kept where the next worker finds it; offers suppressed when idle
    framework_id = master.task("gt-" + ok).framework_id
    assert (mesos.home / "mesos" / "mesos.framework_id").read_text().strip() == framework_id
    master.wait_for(lambda: all(f["suppressed"] for f in master.state()["frameworks"]), what="suppressed")
    assert len(master.state()["frameworks"]) == 2  # one framework per mesos destination


def test_task_failed_and_task_lost_end_in_error_with_the_mesos_reason(mesos):
    mesos.steps()
    mesos.mesos_worker()
    failing = mesos.submit("sleep 60", "m_failing")
    lost = mesos.submit("sleep 60", "m_lost")
    for job_id in (failing, lost):
        mesos.wait_task(job_id, "TASK_RUNNING")
        mesos.d.wait_until(lambda j=job_id: (Path(mesos.d.job(j).job_dir) / "claim").exists(), what="claimed")
    mesos.master.fail_task("gt-" + failing)
    mesos.master.lose_task("gt-" + lost)
    jobs = {j.id: j for j in mesos.d.wait_terminal([failing, lost])}
    assert jobs[failing].state == "error" and "TASK_FAILED" in jobs[failing].reason
    assert "injected TASK_FAILED" in jobs[failing].reason
    # lost after it started: it may have done anything, so it is not run again
    assert jobs[lost].state == "error" and "TASK_LOST" in jobs[lost].reason
    assert mesos.launches(lost) == 1


def test_agent_lost_before_the_job_started_requeues_or_fails_per_destination(mesos):
    mesos.steps()
    mesos.mesos_worker()
    master = mesos.master
    for agent in master.agents:
        master.pause_agent(agent)  # launched tasks stay TASK_STAGING: nothing started
    requeued = mesos.submit("echo survived", "m_requeued")
    strict = mesos.submit("echo never", "strict_job")
    for job_id in (requeued, strict):
        mesos.wait_task(job_id, "TASK_STAGING")
    agents = {master.task("gt-" + j).agent_id for j in (requeued, strict)}
    for agent in agents:
        master.lose_agent(agent)
    for agent in set(master.agents) - agents:
        master.pause_agent(agent, False)
    if not set(master.agents) - agents:  # both jobs were on different agents: bring one back
        master.restore_agent(next(iter(agents)))
        master.pause_agent(next(iter(agents)), False)
    jobs = {j.id: j for j in mesos.d.wait_terminal([requeued, strict], timeout=60)}
    assert jobs[requeued].state == "ok" and jobs[requeued].stdout_tail == "survived\n"
    assert mesos.launches(requeued) == 2  # queued again for an offer, ran once
    assert jobs[strict].state == "error" and "TASK_LOST" in jobs[strict].reason
    assert "REASON_AGENT_REMOVED" in jobs[strict].reason and jobs[strict].stdout_tail == ""
    assert mesos.launches(strict) == 1


def test_cancel_kills_the_mesos_task_and_ends_deleted(mesos):
    mesos.steps()
    mesos.mesos_worker()
    job_id = mesos.submit("sleep 300", "m_sleeper")
    mesos.wait_task(job_id, "TASK_RUNNING")
    mesos.d.wait_until(lambda: mesos.d.job(job_id).state == "running", what="running")
    task = mesos.master.task("gt-" + job_id)
    result = mesos.d.cli("cancel", job_id)
    assert result.returncode == 0 and "cancelled" in result.stdout
    mesos.wait_task(job_id, "TASK_KILLED")
    assert task.proc is not None and task.proc.wait(timeout=10) is not None
    mesos.master.wait_for(lambda: not mesos.master.tasks, what="TASK_KILLED acknowledged")
    job = mesos.d.job(job_id)
    assert job.state == "deleted" and mesos.d.history(job_id)[-1] is JobState.DELETED
    assert [c["kill"]["task_id"]["value"] for c in mesos.master.calls_of("KILL")] == ["gt-" + job_id]


def test_worker_restart_keeps_the_framework_and_jobs_complete_across_it(mesos):
    mesos.steps()
    worker = mesos.mesos_worker()
    master = mesos.master
    first_id = (mesos.home / "mesos" / "mesos.framework_id").read_text().strip()
    across = mesos.submit("sleep 10; echo done > out.txt", "m_across", "--output", "out.txt")
    gate = mesos.home / "gate-early"  # held open until the worker is gone, however slow the host
    while_down = mesos.submit(f"until [ -e {gate} ]; do sleep 0.05; done; echo early", "m_early")
    for job_id in (across, while_down):
        mesos.wait_task(job_id, "TASK_RUNNING")

    worker.kill(signal.SIGTERM)  # a normal stop: failover, never a teardown
    assert worker.proc.returncode == 0
    assert master.calls_of("TEARDOWN") == []
    master.wait_for(lambda: any(f["id"] == first_id and not f["connected"] for f in master.state()["frameworks"]),
                    what="the master notices the scheduler is gone, and keeps its framework")
    gate.touch()
    mesos.wait_task(while_down, "TASK_FINISHED")  # ends while no scheduler is subscribed
    assert mesos.d.job(while_down).state == "running"

    mesos.mesos_worker()
    jobs = {j.id: j for j in mesos.d.wait_terminal([across, while_down], timeout=60)}
    assert jobs[across].state == "ok" and jobs[while_down].state == "ok"
    assert jobs[while_down].stdout_tail == "early\n"
    assert mesos.launches(across) == 1 and mesos.launches(while_down) == 1
    resubscribed = [s for s in master.subscriptions if s["framework_id"] == first_id]
    assert len(resubscribed) >= 1  # the new worker came back as the same framework
    assert (mesos.home / "mesos" / "mesos.framework_id").read_text().strip() == first_id
    assert master.calls_of("TEARDOWN") == []


def test_job_launched_but_not_started_when_the_worker_dies_runs_once(mesos):
    mesos.steps()
    worker = mesos.mesos_worker()
    master = mesos.master
    for agent in master.agents:
        master.pause_agent(agent)
    job_id = mesos.submit("echo once >> ../ran.txt; echo once", "m_staged")
    mesos.wait_task(job_id, "TASK_STAGING")
    worker.kill(signal.SIGKILL)  # not even a failover: the master keeps the framework anyway
    mesos.mesos_worker()
    # the new worker queues the unstarted job again; Mesos refuses the duplicate task id and
    # the worker follows the copy it already holds
    master.wait_for(lambda: any("duplicate" in e["update"]["status"].get("message", "")
                                for _, e in master.events_of("UPDATE")), what="duplicate refused")
    for agent in master.agents:
        master.pause_agent(agent, False)
    [job] = mesos.d.wait_terminal([job_id], timeout=60)
    assert job.state == "ok" and job.stdout_tail == "once\n"
    assert (Path(job.job_dir) / "ran.txt").read_text() == "once\n"


def test_master_restart_is_survived(mesos):
    mesos.steps()
    mesos.mesos_worker()
    master = mesos.master
    job_id = mesos.submit("sleep 3; echo through", "m_through")
    mesos.wait_task(job_id, "TASK_RUNNING")
    before = len(master.subscriptions)
    master.restart(downtime_s=1.0)
    master.wait_for(lambda: len(master.subscriptions) >= before + 2, timeout=60, what="re-subscribed")
    after = mesos.submit("echo after", "m_after")
    jobs = {j.id: j for j in mesos.d.wait_terminal([job_id, after], timeout=90)}
    assert jobs[job_id].state == "ok" and jobs[job_id].stdout_tail == "through\n"
    assert jobs[after].state == "ok"
    frameworks = {f["id"] for f in master.state()["frameworks"]}
    assert len(frameworks) == 2  # the same two frameworks, none new
    assert set(mesos.framework_ids()[before:]) == frameworks  # re-subscribed with their ids


def test_a_second_worker_takes_the_framework_over_and_the_first_stops(mesos):
    mesos.steps()
    first = mesos.mesos_worker("-Q", "mesos")
    second = mesos.mesos_worker("-Q", "mesos")  # same home, same framework id file
    assert first.proc.wait(timeout=30) == 0  # fenced: it stops instead of fighting back
    assert "event=mesos_fenced" in first.log.read_text()
    ids = [mesos.submit(f"echo {i}", "m_after_takeover") for i in range(3)]
    jobs = mesos.d.wait_terminal(ids, timeout=60)
    assert {j.state for j in jobs} == {"ok"}
    assert second.proc.poll() is None
    assert len([f for f in mesos.master.state()["frameworks"]]) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["-P", "processes"], "prefork pool is refused"),
    (["-Q", "local"], "names no mesos destination's queue"),
])
def test_worker_refuses_a_forking_pool_and_queues_without_mesos(mesos, args, message):
    worker = mesos.mesos_worker(*args, wait=False)
    assert worker.proc.wait(timeout=60) != 0
    assert message in worker.log.read_text()
    assert mesos.master.subscriptions == []


def test_worker_exits_1_when_the_master_stays_unreachable(mesos):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = mesos.d.tmp / "unreachable.yml"
    conf.write_text(textwrap.dedent(f"""
        destinations:
          mesos:
            runner: mesos
            params: {{master: "127.0.0.1:{port}", connect_timeout_s: 2, register_timeout_s: 1}}
        """))
    mesos.d.env["GALAXY_TASKS_JOB_CONF"] = str(conf)
    worker = mesos.mesos_worker(wait=False)
    assert worker.proc.wait(timeout=60) == 1  # for its supervisor to restart it
    assert "event=mesos_driver_died" in worker.log.read_text()
