"""ops/mesos-on-drm.py on the real Grid Engine cell of ops/sge-up.sh: a Mesos cluster made
of DRM jobs. No Mesos binaries exist here, so the master and the agents are STAND-INS
(tests/mesos/standins: the master test double, and agents that join it); the launcher, the
DRM jobs, the address hand-over and the teardown are the real thing, and a real pymesos
framework runs a job on the cluster it made."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.grid_engine import cell_env
from tests.support.services import require_module

pytestmark = [pytest.mark.mesos, pytest.mark.drmaa]
require_module("pymesos", "run ops/install-mesos-extra.sh")  # first imported in the main thread

from galaxy_tasks import jobdir  # noqa: E402
from galaxy_tasks.runners.base import Launch  # noqa: E402
from galaxy_tasks.runners.mesos import MesosRunner  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "ops" / "mesos-on-drm.py"
STANDINS = Path(__file__).resolve().parent / "standins"
MASTER_CMD = f"{{python}} {STANDINS / 'mesos_master_standin.py'} --host {{ip}} --port {{port}} --heartbeat 2"
AGENT_CMD = f"{{python}} {STANDINS / 'mesos_agent_standin.py'} --master {{master}} --cpus 2 --hostname {{host}}-{{index}}"


@pytest.fixture(scope="module")
def cell() -> dict[str, str]:
    """The environment of a running Grid Engine cell (started with ops/sge-up.sh if needed)."""
    return {**os.environ, **cell_env()}


class Launcher:
    def __init__(self, env: dict[str, str], directory: Path) -> None:
        self.env, self.dir = env, directory

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(LAUNCHER), args[0], "--dir", str(self.dir), *args[1:]],
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def up(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("up", "--port", "0", "--timeout", "180", "--master-cmd", MASTER_CMD,
                        "--agent-cmd", AGENT_CMD, *args)

    def drm_jobs(self) -> dict[str, str]:
        """DRM job id -> job name, for this cluster's jobs Grid Engine still holds."""
        cluster = json.loads((self.dir / "cluster.json").read_text())
        ids = {m.get("external_id") for m in cluster["members"]}
        out = subprocess.run(["qstat", "-xml", "-u", "*"], env=self.env, capture_output=True, text=True,
                             timeout=30, check=True).stdout
        jobs = {el.findtext("JB_job_number"): el.findtext("JB_name") for el in ET.fromstring(out).iter("job_list")}
        return {number: name for number, name in jobs.items() if number in ids}


@pytest.fixture
def launcher(cell: dict[str, str], tmp_path: Path) -> Iterator[Launcher]:
    env = {k: v for k, v in cell.items() if k != "GLIBC_TUNABLES"}  # the launcher sets it itself
    launcher = Launcher(env, tmp_path / "cluster")
    yield launcher
    if (launcher.dir / "cluster.json").exists():
        launcher.run("down")


def _processes_mentioning(*texts: str) -> list[str]:
    """Command lines of live processes that contain every one of `texts`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(text in cmdline for text in texts):
                found.append(cmdline)
    return found


def test_up_makes_a_cluster_of_drm_jobs_that_runs_mesos_tasks_and_down_removes_it(launcher, tmp_path, make_reports):
    result = launcher.up("--agents", "2")
    assert result.returncode == 0, result.stderr
    address = result.stdout.strip()
    host, port = address.rsplit(":", 1)
    assert port.isdigit() and len(result.stdout.splitlines()) == 1  # stdout: the MESOS_URL, only
    assert (launcher.dir / "master.address").read_text().strip() == address

    jobs = launcher.drm_jobs()  # a master and two agents, as Grid Engine jobs
    assert sorted(jobs.values()) == ["gt-mesos-cluster-agent0", "gt-mesos-cluster-agent1",
                                     "gt-mesos-cluster-master"]
    assert _processes_mentioning(str(STANDINS), f"--port {port}")  # the master stand-in runs
    with urllib.request.urlopen(f"http://{address}/master/state", timeout=10) as response:
        state = json.load(response)
    assert len([a for a in state["slaves"] if a["active"]]) == 2

    # a real pymesos framework runs a job there, which sees the cluster's MESOS_URL
    reports = make_reports()
    runner = MesosRunner({"master": address, "refuse_seconds": 0.5, "failover_timeout": 30}, reports)
    try:
        assert runner.wait_registered(30)
        root = tmp_path / "jobs" / "on-drm-mesos"
        env = jobdir.job_environment(jobdir.JobDir(root), cores=1, memory_mb=None, spec_env={},
                                     destination_env={}, mesos_url=address, job_id="on-drm-mesos")
        created = jobdir.create(root, 'echo "$MESOS_URL"', env, None)
        runner.submit(Launch(job_id="on-drm-mesos", job_dir=root, script=created.script))
        done = reports.wait("on-drm-mesos", timeout=60)
        assert done.exit_code == 0 and "TASK_FINISHED" in done.reason
        assert created.tail("stdout") == address + "\n"
    finally:
        runner.close()

    status = launcher.run("status")
    assert status.returncode == 0 and status.stdout.count("active") == 3 and address in status.stdout
    again = launcher.up("--agents", "2")  # already up: the same cluster, no new DRM jobs
    assert again.returncode == 0 and again.stdout.strip() == address
    assert set(launcher.drm_jobs()) == set(jobs)

    down = launcher.run("down")
    assert down.returncode == 0, down.stderr
    assert launcher.drm_jobs() == {}
    assert not (launcher.dir / "master.address").exists()
    for leftover in ((str(STANDINS), f"--port {port}"), (str(STANDINS), address), (str(launcher.dir),)):
        assert _processes_mentioning(*leftover) == [], leftover  # the DRM killed every process
    assert launcher.run("status").returncode == 3  # every member ended


def test_a_master_that_fails_to_start_is_reported_with_its_stderr(launcher):
    result = launcher.run("up", "--agents", "1", "--port", "0", "--timeout", "120",
                          "--master-cmd", "echo no mesos-master here >&2; exit 4", "--agent-cmd", AGENT_CMD)
    assert result.returncode != 0
    assert "no mesos-master here" in result.stderr and "exit code 4" in result.stderr
    assert result.stdout == ""
    assert launcher.drm_jobs() == {}  # the agent, still waiting for an address, was cancelled
    assert "cancelled agent 0" in result.stderr
