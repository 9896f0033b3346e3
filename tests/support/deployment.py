"""A production-shaped deployment for tests: its own PostgreSQL database, a broker of its own
(Redis or RabbitMQ: tests/support/brokers.py), job directories, real `galaxy-tasks worker`
processes and the real CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from galaxy_tasks.model import Job
from galaxy_tasks.states import TERMINAL, JobState
from galaxy_tasks.store import Store
from tests.support.brokers import Broker

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """One real `galaxy-tasks worker` process (and its pool), in a process group of its own
    so a test can kill all of it. It starts without Celery's mingle (nothing here uses what it
    syncs, revoked task ids and clocks; it costs a one-second wait per worker start), as the
    benches' workers do."""

    def __init__(self, env: dict[str, str], log: Path, queues: str | None, name: str, args: list[str],
                 celery_app: str | None = None, prefix: list[str] | None = None) -> None:
        """`prefix`: a command the worker runs under (`unshare ...`), which execs it."""
        self.log = log
        if celery_app:  # plain `celery -A <app> worker -Q <queues>`
            cmd = [sys.executable, "-m", "celery", "-A", celery_app, "worker", "-Q", queues or "galaxy_tasks,local",
                   "-n", name, "--loglevel", "INFO", "--without-mingle", *args]
        else:
            cmd = [sys.executable, "-m", "galaxy_tasks.cli", "worker", "-n", name, "--loglevel", "INFO",
                   "--without-mingle", *args]
            if queues:
                cmd[4:4] = ["--queues", queues]
        self.handle = open(log, "ab")
        self.proc = subprocess.Popen([*(prefix or []), *cmd], env=env, cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 30) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the worker's whole process group (main process and pool), not its jobs,
        which run in sessions of their own."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        """Ask the whole worker to stop (a warm shutdown) and return at once."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def reap(self, timeout: float = 30) -> None:
        """Wait until the worker, asked to stop, has exited; its log is closed. A worker
        still there after `timeout` seconds is a failure that shows where it hangs: Celery
        writes every thread's stack to its log on SIGUSR1, then the worker is killed."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(2)
            self.kill()
            self.handle.close()
            raise AssertionError(f"the worker did not stop within {timeout} s of SIGTERM; its log ends:\n"
                                 + self.log.read_text(errors="replace")[-12000:]) from None
        self.handle.close()

    def stop(self) -> None:
        self.terminate()
        self.reap()


class Deployment:
    def __init__(self, tmp: Path, database_url: str, broker: Broker | str,
                 extra_env: dict[str, str] | None = None, upgrade: bool = True) -> None:
        """`upgrade`: bring the database to the newest schema with `galaxy-tasks db upgrade`
        (False: it is there already)."""
        self.tmp = tmp
        self.database_url = database_url
        #: the broker, when the test started it (a bare URL: a broker the test manages itself)
        self.broker: Broker | None = None if isinstance(broker, str) else broker
        broker_url = broker if isinstance(broker, str) else broker.url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TASKS_")}
        self.env.update(
            GALAXY_TASKS_HOME=str(tmp / "home"),
            GALAXY_TASKS_BROKER_URL=broker_url,
            GALAXY_TASKS_DATABASE_URL=database_url,
            GALAXY_TASKS_JOBS_DIR=str(tmp / "jobs"),
            PYTHONPATH=str(ROOT),
        )
        self.env.update(extra_env or {})
        self.workers: list[Worker] = []
        self.beats: list[subprocess.Popen] = []
        self.store = Store(database_url)
        if upgrade:
            result = self.cli("db", "upgrade")
            assert result.returncode == 0, result.stderr

    def cli(self, *args: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, input=input)

    def worker(self, queues: str | None = None, name: str | None = None, *args: str,
               celery_app: str | None = None, env: dict[str, str] | None = None, wait: bool = True,
               prefix: list[str] | None = None) -> Worker:
        """A worker of these queues (all by default), once ready (`wait=False`: at once); `env`
        adds to the deployment's settings (a broker URL through a proxy, say); `prefix` a
        command it runs under."""
        name = name or f"w{len(self.workers) + 1}@%h"
        log = self.tmp / f"worker-{len(self.workers) + 1}.log"
        worker = Worker({**self.env, **(env or {})}, log, queues, name, list(args) or ["--concurrency", "2"],
                        celery_app, prefix)
        self.workers.append(worker)
        return worker.wait_ready() if wait else worker

    def submit(self, command: str, tool_id: str = "test_tool", *args: str) -> str:
        result = self.cli("submit", "--tool-id", tool_id, "--command", command, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def submit_many(self, specs: list[dict]) -> list[str]:
        """Submit many job specs in one process (the client API), in order; their ids."""
        script = ("import json, sys\nfrom galaxy_tasks.client import Client\nclient = Client()\n"
                  "print(json.dumps([client.submit(spec).id for spec in json.load(sys.stdin)]))")
        result = subprocess.run([sys.executable, "-c", script], env=self.env, cwd=ROOT, capture_output=True,
                                text=True, timeout=300, input=json.dumps(specs))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def jobs(self) -> list[Job]:
        return self.store.recent(limit=1_000_000)

    def job(self, job_id: str) -> Job:
        job = self.store.job(job_id)
        assert job is not None, job_id
        return job

    def history(self, job_id: str) -> list[JobState]:
        return [JobState(change.to_state) for change in self.store.history(job_id)]

    def histories(self, job_ids: list[str]) -> dict[str, list[JobState]]:
        """Every job's state history, read in one query."""
        result: dict[str, list[JobState]] = {job_id: [] for job_id in job_ids}
        for change in self.store.changes_since(0, job_ids):
            result[change.job_id].append(JobState(change.to_state))
        return result

    def count_terminal(self) -> int:
        counts = self.store.count_by_state()
        return sum(counts.get(state.value, 0) for state in TERMINAL)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{what} not reached in {timeout} s; worker logs:\n{self.logs()[-4000:]}")

    def wait_terminal(self, job_ids: list[str], timeout: float = 60) -> list[Job]:
        def done() -> bool:  # a job sent by send_task may not be recorded yet
            found = [self.store.job(j) for j in job_ids]
            return all(job is not None and JobState(job.state) in TERMINAL for job in found)

        self.wait_until(done, timeout, f"terminal state of {len(job_ids)} jobs")
        return [self.job(j) for j in job_ids]

    def worker_pids(self) -> set[int]:
        """Every process of every worker of this deployment (main processes and pools)."""
        from tests.support.processes import descendants

        return {pid for worker in self.workers for pid in {worker.proc.pid, *descendants(worker.proc.pid)}}

    def wait_consumed(self, queues: tuple[str, ...] = ("galaxy_tasks", "galaxy_tasks.ends", "local"),
                      timeout: float = 60) -> None:
        """Until the broker holds no message for these queues, delivered or not: every message
        sent so far has been consumed and acknowledged."""
        assert self.broker is not None, "a deployment on a broker the test started"
        broker = self.broker
        self.wait_until(lambda: broker.held(queues) == 0, timeout, f"every message of {', '.join(queues)} consumed")

    def beat(self) -> subprocess.Popen:
        """Celery beat, which sends reconciliation every GALAXY_TASKS_RECONCILE_INTERVAL."""
        log = open(self.tmp / "beat.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "galaxy_tasks.cli", "beat", "--loglevel", "INFO"],
                                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.beats.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(w.log.read_text(errors="replace") for w in self.workers if w.log.exists())

    def close(self) -> None:
        """Every worker and beat is asked to stop at once, then awaited: their warm shutdowns
        overlap instead of adding up."""
        for worker in self.workers:
            worker.terminate()
        for beat in self.beats:
            if beat.poll() is None:
                os.killpg(beat.pid, signal.SIGTERM)
        for worker in self.workers:
            worker.reap()
        for beat in self.beats:
            beat.wait(timeout=30)
        self.store.dispose()
