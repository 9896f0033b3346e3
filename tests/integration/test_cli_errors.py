"""The command line under bad input and broken surroundings: a clear message and an exit
code, never a traceback, and nothing recorded twice."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.deployment import ROOT
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("args", [["list", "--limit", "-1"], ["list", "--limit", "0"], ["stats", "--limit", "-5"],
                                  ["events", "--limit", "0"], ["status", "no-such-job"], ["cancel", "no-such-job"]])
def test_bad_arguments_say_what_is_wrong_without_a_traceback(deployment, args):
    result = deployment.cli(*args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and "error" in result.stderr


def test_a_reader_that_goes_away_is_no_error(deployment):
    deployment.submit_many([{"tool_id": "many", "command": "true"}] * 50)  # 50 rows to list; one process
    result = subprocess.run(f"{sys.executable} -m galaxy_tasks.cli list --limit 50 | head -n 1", shell=True,
                            env=deployment.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.stdout.startswith("id")


def test_submit_with_the_broker_down_prints_the_id_and_sends_it_later(make_deployment, tmp_path):
    """The row is written before the chain is sent: with the broker down the id is printed
    with a message that says not to submit again, and the job runs once when it is back."""
    server = RedisServer(tmp_path).start()
    deployment = make_deployment(broker=server.url)
    server.kill()
    result = deployment.cli("submit", "--tool-id", "later", "--command", f"echo ran >> {tmp_path / 'ledger'}",
                            timeout=120)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert "Traceback" not in result.stderr and "will be sent" in result.stderr and "Do not submit it again" in result.stderr
    assert deployment.job(job_id).state == "new"
    server.start()
    deployment.worker()
    [job] = deployment.wait_terminal([job_id], timeout=60)
    assert job.state == "ok" and (tmp_path / "ledger").read_text() == "ran\n"
    server.kill()
