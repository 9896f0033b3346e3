"""`galaxy-tasks run` and `wait` on a terminal: a live progress bar, moved by the jobs'
events while real jobs end (a pty), and plain lines when the output is not a terminal."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.ledger import gated

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")

JOBS = """jobs:
  - {tool_id: quick, command: "sleep 1"}
  - {tool_id: middle, command: "sleep 3"}
  - {tool_id: slow, command: "sleep 5; exit 2"}
"""


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TASKS_")}
    env.update(GALAXY_TASKS_HOME=str(home), PYTHONPATH=str(ROOT), COLUMNS="120", LINES="40", TERM="xterm-256color")
    return env


class OnATerminal:
    """A command whose standard error (and standard output, unless piped) is a pty; it
    notes when the progress bar first showed each `N/M ended`."""

    def __init__(self, args: list[str], env: dict[str, str], *, pipe_stdout: bool = False,
                 on_output=None) -> None:
        controller, terminal = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "galaxy_tasks.cli", *args], stdin=terminal,
                                     stdout=subprocess.PIPE if pipe_stdout else terminal, stderr=terminal, env=env,
                                     cwd=ROOT, close_fds=True)
        os.close(terminal)
        self.first_seen: dict[str, float] = {}  # "1" -> when the bar first said 1/M ended
        self.screen = b""
        started = time.monotonic()
        try:
            while time.monotonic() - started < 120:
                ready, _, _ = select.select([controller], [], [], 0.2)
                if not ready:
                    if self.proc.poll() is not None:
                        break
                    continue
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                self.screen += chunk
                for done in re.findall(r"(\d)/\d ended", self.text):
                    if done not in self.first_seen:
                        self.first_seen[done] = time.monotonic() - started
                        if on_output is not None:
                            on_output(done)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.stdout = self.proc.stdout.read().decode() if pipe_stdout else ""
            self.proc.wait(timeout=30)
            os.close(controller)

    @property
    def text(self) -> str:
        return ANSI.sub(b"", self.screen).decode(errors="replace")


def test_run_on_a_terminal_shows_a_progress_bar_that_moves_as_jobs_end(tmp_path):
    jobs_file = tmp_path / "jobs.yml"
    jobs_file.write_text(JOBS)
    seen = OnATerminal(["run", str(jobs_file)], _env(tmp_path / "home"))
    proc, first_seen, screen, text = seen.proc, seen.first_seen, seen.screen, seen.text
    assert proc.returncode == 0, text[-3000:]
    assert "\x1b[" in screen.decode(errors="replace"), "no terminal control: the bar was not live"
    # the bar went 0/3, 1/3, 2/3, 3/3, each step as the next job ended, not all at the end
    assert sorted(first_seen) == ["0", "1", "2", "3"], (first_seen, text[-3000:])
    assert first_seen["0"] < first_seen["1"] < first_seen["2"] < first_seen["3"], first_seen
    assert first_seen["2"] - first_seen["1"] > 1.0 and first_seen["3"] - first_seen["2"] > 1.0, first_seen
    # with the count in each state
    assert re.search(r"1/3 ended \S+ running 2\s+ok 1", text), text[-3000:]
    assert re.search(r"3/3 ended \S+ ok 2\s+error 1", text), text[-3000:]
    # the lines of each change above the bar, then the final table
    assert re.search(r"ok\s+\w{8}\s+quick", text)
    assert re.search(r"slow\s+error\s+2", text)


def test_run_into_a_pipe_prints_plain_lines(tmp_path):
    jobs_file = tmp_path / "jobs.yml"
    jobs_file.write_text('jobs:\n  - {tool_id: quick, command: "true"}\n')
    result = subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "run", str(jobs_file)], capture_output=True,
                            env=_env(tmp_path / "home"), cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert b"\x1b" not in result.stdout and "━".encode() not in result.stdout
    lines = result.stdout.decode().splitlines()
    assert any(re.fullmatch(r"ok\s+\w{8}\s+quick", line) for line in lines), lines
    header = lines.index(next(line for line in lines if line.startswith("job ")))
    assert set(lines[header + 1]) == {"-"}
    assert lines[header + 2].split()[1:4] == ["quick", "ok", "0"]


@pytest.mark.integration
def test_wait_on_a_terminal_moves_its_bar_with_each_job_event(deployment, tmp_path):
    deployment.worker()
    gates = [tmp_path / f"gate{n}" for n in range(3)]
    ids = [deployment.submit(gated(gate, f"exit {n}"), f"gated{n}") for n, gate in enumerate(gates)]
    deployment.wait_until(lambda: all(deployment.job(j).state == "running" for j in ids), what="all running")
    env = {**deployment.env, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}

    def open_next_gate(done: str) -> None:  # the bar said `done` jobs ended: let one more end
        if int(done) < len(gates):
            time.sleep(1)
            gates[int(done)].touch()

    seen = OnATerminal(["wait", *ids, "--timeout", "90"], env, on_output=open_next_gate)
    assert seen.proc.returncode == 1, seen.text[-3000:]  # two of them did not end ok
    assert sorted(seen.first_seen) == ["0", "1", "2", "3"], (seen.first_seen, seen.text[-3000:])
    assert re.search(r"1/3 ended \S+ running 2\s+ok 1", seen.text), seen.text[-3000:]
    assert re.search(r"3/3 ended \S+ ok 1\s+error 2", seen.text), seen.text[-3000:]
    for job_id, code in zip(ids, (0, 1, 2)):
        assert f"{job_id} {'ok' if code == 0 else 'error'} exit={code}" in seen.text


@pytest.mark.integration
def test_wait_json_on_a_terminal_prints_only_the_json(deployment):
    deployment.worker()
    job_id = deployment.submit("true", "quick")
    seen = OnATerminal(["wait", job_id, "--json", "--timeout", "60"], {**deployment.env, "TERM": "xterm"},
                       pipe_stdout=True)
    assert seen.proc.returncode == 0, seen.text
    assert [job["id"] for job in json.loads(seen.stdout)] == [job_id]
    assert "ended" not in seen.text, "no progress bar with --json"
