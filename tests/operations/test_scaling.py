"""Scaling per queue with real workers: an autoscaling local worker next to a fixed-size
steps worker, each reporting its own pool, resized at run time without a restart."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.deployment import ROOT

pytestmark = pytest.mark.integration

INSPECT = """
import json, socket, sys
from galaxy_tasks.edge.app import app
nodes = [n.replace('%h', socket.gethostname()) for n in sys.argv[1:]]
if nodes[0] == 'autoscale':
    print(json.dumps(app.control.autoscale(6, 2, destination=nodes[1:2], reply=True, timeout=5)))
else:
    print(json.dumps(app.control.inspect(destination=nodes, timeout=5).stats()))
"""


def inspect(deployment, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", INSPECT, *args], env=deployment.env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_each_queue_scales_on_its_own(deployment):
    deployment.worker("galaxy_tasks", "steps@%h", "--concurrency", "1")
    deployment.worker("local", "local@%h", "--autoscale", "4,1")
    ids = deployment.submit_many([{"tool_id": "scaled", "command": f"sleep 0.5; echo {i}"} for i in range(8)])
    jobs = deployment.wait_terminal(ids, timeout=90)
    assert {j.state for j in jobs} == {"ok"}

    stats = inspect(deployment, "steps@%h", "local@%h")
    steps = next(v for k, v in stats.items() if k.startswith("steps@"))
    local = next(v for k, v in stats.items() if k.startswith("local@"))
    assert steps["pool"]["max-concurrency"] == 1 and "autoscaler" not in steps
    assert local["autoscaler"]["max"] == 4 and local["autoscaler"]["min"] == 1
    # every prepare and finish ran on the steps worker (ends seen together go as one finish_jobs)
    assert steps["total"].get("galaxy_tasks.prepare_job", 0) == 8
    assert steps["total"].get("galaxy_tasks.finish_job", 0) + steps["total"].get("galaxy_tasks.finish_jobs", 0) >= 1
    assert {j.id for j in jobs if j.finished_at is not None} == set(ids)
    assert set(local["total"]) == {"galaxy_tasks.launch_job"} and local["total"]["galaxy_tasks.launch_job"] == 8

    reply = inspect(deployment, "autoscale", "local@%h")
    assert "autoscale now max=6 min=2" in json.dumps(reply)
    local = next(v for k, v in inspect(deployment, "local@%h").items())
    assert local["autoscaler"]["max"] == 6 and local["autoscaler"]["min"] == 2
    more = deployment.submit_many([{"tool_id": "scaled", "command": "echo again"}] * 3)
    assert {j.state for j in deployment.wait_terminal(more)} == {"ok"}
