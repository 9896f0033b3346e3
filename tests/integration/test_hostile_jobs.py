"""What a hostile command leaves in its job directory cannot reach outside its job: through
real workers on the real PostgreSQL, each job ends with a clear reason and the workers serve
on; nothing of the steps host is read, nothing blocks, nothing of another job is taken."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration


def run_all(deployment: Deployment, commands: dict[str, str], timeout: float = 60) -> dict[str, object]:
    ids = {name: deployment.submit(command, name) for name, command in commands.items()}
    jobs = deployment.wait_terminal(list(ids.values()), timeout=timeout)
    return dict(zip(ids, jobs))


def test_hostile_outputs_end_their_own_job_and_nothing_else(deployment, tmp_path):
    secret = tmp_path / "steps-host-secret"
    secret.write_text("do not copy me\n")
    deployment.worker()
    jobs = run_all(deployment, {
        "nul_bytes": r"printf 'a\000b'; printf 'x\000' >&2",
        "linked_stdout": f"ln -sf {secret} ../stdout; echo hi",
        "zero_stdout": "ln -sf /dev/zero ../stdout",
        "fifo_stderr": "rm -f ../stderr; mkfifo ../stderr; exit 4",
        "linked_exit_code": f"echo 0 > {tmp_path / 'fake'}; ln -sf {tmp_path / 'fake'} ../exit_code; exit 6",
        "realtime_signal": "kill -40 $PPID; sleep 5",  # the job script itself
        "ifs_and_path": "exit 9",
    })
    assert jobs["nul_bytes"].state == "ok" and "\x00" not in jobs["nul_bytes"].stdout_tail
    assert jobs["nul_bytes"].stdout_tail.startswith("a") and jobs["nul_bytes"].stdout_tail.endswith("b")
    assert "do not copy me" not in (jobs["linked_stdout"].stdout_tail or "")
    assert jobs["zero_stdout"].state == "ok" and not jobs["zero_stdout"].stdout_tail
    assert (jobs["fifo_stderr"].state, jobs["fifo_stderr"].exit_code) == ("error", 4)
    assert jobs["realtime_signal"].state == "error" and "SIGRTMIN+6" in jobs["realtime_signal"].reason
    assert deployment.job(jobs["linked_exit_code"].id).exit_code != 0 or jobs["linked_exit_code"].state == "error"
    assert all(worker.proc.poll() is None for worker in deployment.workers), "a worker died"
    assert deployment.wait_terminal([deployment.submit("true", "after")])[0].state == "ok"


def test_the_jobs_environment_cannot_break_the_job_script(deployment, tmp_path):
    spec = tmp_path / "spec.json"
    deployment.worker()
    ids = []
    for env in ({"IFS": "0"}, {"PATH": "/nonexistent"}, {"IFS": "0", "PATH": "/nonexistent"}):
        spec.write_text(json.dumps({"tool_id": "env_breaker", "command": "exit 7", "environment": env}))
        result = deployment.cli("submit", "--spec", str(spec))
        assert result.returncode == 0, result.stderr
        ids.append(result.stdout.strip())
    for job in deployment.wait_terminal(ids):
        assert (job.state, job.exit_code) == ("error", 7), job.reason


def test_a_missing_environment_setup_file_is_the_reason(deployment, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"tool_id": "setup", "command": "true",
                                "environment_setup_file": str(tmp_path / "nowhere.sh")}))
    deployment.worker()
    [job] = deployment.wait_terminal([deployment.cli("submit", "--spec", str(spec)).stdout.strip()])
    assert job.state == "error" and job.reason == f"environment_setup_file {tmp_path / 'nowhere.sh'} cannot be read"


def test_a_stale_job_directory_never_passes_for_a_new_job(make_deployment, tmp_path):
    """Two deployments, each with a fresh database, share one jobs directory and choose the
    same job ids (as after restoring a database from a backup): the second run's jobs run
    their own commands; none takes the first run's claim or exit code for its own."""
    shared_jobs = tmp_path / "shared-jobs"
    ledger = tmp_path / "ledger"
    counts: dict[str, int] = {}
    for run in ("first", "second"):
        deployment = make_deployment(GALAXY_TASKS_JOBS_DIR=str(shared_jobs))
        deployment.worker()
        ids = []
        for index in range(5):
            spec = tmp_path / f"{run}-{index}.json"
            spec.write_text(json.dumps({"id": f"same-{index}", "tool_id": "t",
                                        "command": f"echo {run}-{index} >> {ledger}"}))
            ids.append(deployment.cli("submit", "--spec", str(spec)).stdout.strip())
        assert all(job.state == "ok" for job in deployment.wait_terminal(ids))
        for worker in deployment.workers:
            worker.stop()
    for line in ledger.read_text().split():
        counts[line] = counts.get(line, 0) + 1
    assert counts == {f"{run}-{i}": 1 for run in ("first", "second") for i in range(5)}, counts
    assert len([p for p in shared_jobs.iterdir() if ".stale-" in p.name]) == 5, "the first run's were set aside"
    assert all((Path(shared_jobs) / f"same-{i}" / "token").exists() for i in range(5))
