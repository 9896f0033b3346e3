"""Embedded mode: `galaxy-tasks run` on a machine with no server, and resuming after a kill."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from galaxy_tasks.model import Job
from galaxy_tasks.store import Store
from tests.support.processes import running_with_argument

ROOT = Path(__file__).resolve().parents[2]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TASKS_")}
    env.update(GALAXY_TASKS_HOME=str(home), PYTHONPATH=str(ROOT))
    return env


def _run(home: Path, jobs_file: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "run", str(jobs_file)], env=_env(home),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _store(home: Path) -> Store:
    return Store(f"sqlite:///{home}/galaxy-tasks.sqlite")


def _rows(home: Path) -> dict[str, Job]:
    return {job.tool_id: job for job in _store(home).recent(limit=1000)}


def test_example_jobs_run_embedded_with_progress_and_a_final_table(tmp_path):
    result = _run(tmp_path / "home", ROOT / "examples" / "jobs.yml")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "running" in out  # progress while they run
    table = out[out.index("job "):]
    lines = {line.split()[1]: line for line in table.splitlines()[2:] if line.strip()}
    assert lines["hello"].split()[2:4] == ["ok", "0"]
    assert lines["write_output"].split()[2:4] == ["ok", "0"]
    assert lines["fails"].split()[2:4] == ["error", "3"]
    assert "refused" in lines["too_big"] and "cores" in lines["too_big"]
    assert "command not found" in lines["missing_tool"]
    jobs = _rows(tmp_path / "home")
    assert set(jobs) == {"hello", "write_output", "fails", "missing_tool"}, "a refused job leaves no row"
    assert (Path(jobs["write_output"].job_dir) / "working" / "regions.bed").read_text() == "chr1\t100\t200\n"


def test_an_interrupted_embedded_run_resumes_its_jobs(tmp_path):
    home = tmp_path / "home"
    jobs_file = tmp_path / "jobs.yml"
    jobs_file.write_text("jobs:\n  - tool_id: slow\n    command: sleep 3; echo done > out.txt\n    outputs: [out.txt]\n")
    proc = subprocess.Popen([sys.executable, "-m", "galaxy_tasks.cli", "run", str(jobs_file)], env=_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.monotonic() + 30
    seen = ""
    while "running" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    assert "running" in seen, seen
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _rows(home)["slow"].state == "running"
    assert running_with_argument(str(jobs_file)) == [], "the killed run left no process of its own behind"

    empty = tmp_path / "nothing.yml"
    empty.write_text("jobs: []\n")
    deadline = time.monotonic() + 30
    while _rows(home)["slow"].state == "running" and time.monotonic() < deadline:  # one run suffices
        result = _run(home, empty)
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)
    job = _rows(home)["slow"]
    assert job.state == "ok", job.reason
    assert (Path(job.job_dir) / "working" / "out.txt").read_text() == "done\n"


def test_embedded_mode_reconciles_in_its_own_process(tmp_path):
    """Beat runs as a thread beside the embedded worker, so its reconcile messages reach the
    in-memory broker this process consumes: the pass takes its lease in the database."""
    home = tmp_path / "home"
    script = ("import time; from galaxy_tasks.edge.embedded import embedded_worker\n"
              "with embedded_worker():\n    time.sleep(4)\n")
    result = subprocess.run([sys.executable, "-c", script], env={**_env(home), "GALAXY_TASKS_RECONCILE_INTERVAL": "1"},
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert _store(home).lease_until("reconcile") is not None, "no reconciliation pass ran"


def test_job_output_and_tool_ids_reach_the_terminal_escaped(tmp_path):
    """A tool id or a job's output holding terminal controls (OSC 52 writes the reader's
    clipboard, CSI 2J clears the screen) is shown escaped by run, status, list and events,
    as the logs show it."""
    import json

    home = tmp_path / "home"
    clipboard, clear = "\x1b]52;c;cHduZWQ=\x07", "\x1b[2J\x9b2J"
    jobs = tmp_path / "jobs.yml"
    jobs.write_text(json.dumps({"jobs": [{"tool_id": f"t{clipboard}{clear}",
                                          "command": r"printf 'out\033]52;c;cHduZWQ=\007\033[2J\n'"}]}))
    ran = _run(home, jobs)
    assert ran.returncode == 0, ran.stderr
    [job] = _store(home).recent(limit=10)
    assert "\x1b]52" in job.stdout_tail, "the output itself is kept as the job wrote it"
    shown = [ran.stdout] + [subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", *args], env=_env(home),
                                           capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
                            for args in (["status", job.id], ["list"], ["events", job.id])]
    for text in shown:
        assert not any(c in text for c in "\x1b\x07\x9b"), repr(text)
    assert "\\x1b]52;c;cHduZWQ=\\x07" in shown[1], "status shows the escaped output"
    assert all("\\x1b]52" in text for text in shown[2:]), "list and events show the escaped tool id"
