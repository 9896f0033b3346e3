"""The supervision of holding workers (galaxy_tasks/child_workers.py), with real child processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from galaxy_tasks import child_workers, cli, config, routing
from galaxy_tasks.context import Context
from galaxy_tasks.store import Store
from tests.support.processes import alive

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def wait_for(predicate, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_node_names_are_stable_and_follow_the_parent():
    assert child_workers.node_name(None, "drmaa") == "drmaa@%h"
    assert child_workers.node_name("all@%h", "drmaa") == "all-drmaa@%h"
    assert child_workers.node_name("main", "mesos") == "main-mesos"


def test_the_child_command_is_the_documented_worker():
    argv = child_workers.command("drmaa", ["drmaa", "drmaa.big"], "all-drmaa@%h", "INFO")
    assert argv[1:] == ["-m", "celery", "-A", "workers.drmaa", "worker", "-Q", "drmaa,drmaa.big",
                        "-n", "all-drmaa@%h", "--loglevel", "INFO"]


@pytest.mark.parametrize("extra, expected", [
    (["-n", "a@%h"], "a@%h"), (["--hostname", "b@h"], "b@h"), (["--hostname=c@h"], "c@h"),
    (["-nd@h"], "d@h"), (["--concurrency", "2"], None), (["-n"], None),
])
def test_options_passed_through_to_celery_are_read(extra, expected):
    assert cli._option(extra, "-n", "--hostname") == expected


def test_queues_split_between_this_worker_and_the_holding_ones(tmp_path):
    conf = tmp_path / "job_conf.yml"
    conf.write_text(textwrap.dedent("""\
        destinations:
          local: {runner: local}
          big: {runner: local, queue: local.big}
          sge: {runner: drmaa, queue: drmaa}
          sge_big: {runner: drmaa, queue: drmaa.big}
          cluster: {runner: mesos, queue: mesos}
        default: local
        """))
    settings = config.load({"GALAXY_TASKS_HOME": str(tmp_path), "GALAXY_TASKS_JOB_CONF": str(conf)})
    ctx = Context(settings, Store(settings.database_url), routing.load(settings.job_conf))
    plain, held = cli._queues_by_worker(ctx)
    assert plain == ["galaxy_tasks", "galaxy_tasks.ends", "local", "local.big"]
    assert held == {"drmaa": ["drmaa", "drmaa.big"], "mesos": ["mesos"]}


def test_a_child_that_dies_is_restarted_and_stop_ends_every_child():
    supervisor = child_workers.Supervisor({"one": SLEEPER, "two": SLEEPER})
    supervisor.start()
    try:
        wait_for(lambda: all(c.proc is not None for c in supervisor.children))
        one, two = supervisor.children
        first = one.proc.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: one.proc.pid != first)
        assert one.restarts == 1 and two.restarts == 0 and alive(one.proc.pid)
    finally:
        supervisor.stop(timeout=10)
    assert not any(alive(c.proc.pid) for c in supervisor.children)
    assert not any(c.thread.is_alive() for c in supervisor.children), "no thread is left to start one again"


def test_a_child_outliving_the_stop_timeout_is_killed(tmp_path):
    ready = tmp_path / "ready"
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                      f"open({str(ready)!r}, 'w').close(); time.sleep(120)"]
    supervisor = child_workers.Supervisor({"stubborn": stubborn})
    supervisor.start()
    wait_for(lambda: ready.exists())  # its handler is installed
    started = time.monotonic()
    supervisor.stop(timeout=1)
    assert time.monotonic() - started < 5
    assert supervisor.children[0].proc.returncode == -signal.SIGKILL


def test_a_child_ends_when_its_supervisor_is_killed(tmp_path):
    """stop_with_supervisor in the child: SIGTERM from the kernel when the parent dies."""
    pid_file = tmp_path / "child.pid"
    child = (f"import os, time; from galaxy_tasks.child_workers import stop_with_supervisor; stop_with_supervisor(); "
             f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {child!r}], "
        "env={**os.environ, 'GALAXY_TASKS_SUPERVISOR_PID': str(os.getpid())}); time.sleep(120)")])
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text())
        child_pid = int(pid_file.read_text())
        assert alive(child_pid)
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: not alive(child_pid), timeout=10)


def test_a_child_whose_supervisor_is_already_gone_stops_at_once():
    result = subprocess.run([sys.executable, "-c", "from galaxy_tasks.child_workers import stop_with_supervisor; "
                             "stop_with_supervisor(); print('ran on')"],
                            env={**os.environ, child_workers.SUPERVISOR_ENV: "1"}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1 and "ran on" not in result.stdout
    assert "the supervising galaxy-tasks worker has gone" in result.stderr
