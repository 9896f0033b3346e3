"""Many jobs at once, submitted by one client process (the Python client: each job's row,
then its first message), and helpers for the scenarios that break things while they run."""
from __future__ import annotations

import subprocess
import sys

from tests.support.deployment import Deployment

SUBMIT = """
import sys
from galaxy_tasks.client import Client
client = Client()
spec = {"tool_id": sys.argv[3], "command": sys.argv[2]}
if sys.argv[4] == "together":
    ids = [job.id for job in client.submit_many([spec] * int(sys.argv[1]))]
else:
    ids = [client.submit(spec).id for _ in range(int(sys.argv[1]))]
print("\\n".join(ids))
"""


def submit_many(deployment: Deployment, count: int, command: str, tool_id: str = "burst",
                timeout: float = 1800, together: bool = False) -> list[str]:
    """Submit `count` jobs running `command`, one after the other, or `together` (one
    Client.submit_many: the jobs move in batches); their ids."""
    result = subprocess.run([sys.executable, "-c", SUBMIT, str(count), command, tool_id,
                             "together" if together else "alone"], env=deployment.env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


def every_process_alive(deployment: Deployment) -> list[str]:
    """The workers and beats of the deployment that have exited (none, after any outage)."""
    gone = [f"worker {w.log.name} exited {w.proc.returncode}" for w in deployment.workers if w.proc.poll() is not None]
    gone += [f"beat exited {b.returncode}" for b in deployment.beats if b.poll() is not None]
    return gone
