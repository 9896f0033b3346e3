"""The Galaxy plugin's task client against real workers: it submits and cancels through the
public task contract only, signs when told to, and leaves the process's other serializers
(Galaxy's own Celery tasks live in the same process) as they were."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from galaxy_tasks.states import JobState
from tests.integration.test_security import _signed_deployment
from tests.support.deployment import ROOT

pytestmark = pytest.mark.integration

CLIENT = textwrap.dedent("""
    import json, sys
    from kombu.serialization import registry
    from galaxy_tasks.galaxy.client import TaskClient
    from galaxy_tasks.galaxy.settings import from_kwargs

    settings, action, argument = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    default, disabled = registry._default_content_type, set(registry._disabled_content_types)
    client = TaskClient(from_kwargs(settings, "main"))
    getattr(client, action)(argument)
    client.close()
    assert "galaxy_tasks.edge.app" not in sys.modules, "the plugin must not load galaxy-tasks' Celery app"
    assert (registry._default_content_type, set(registry._disabled_content_types)) == (default, disabled)
""")


def send(settings: dict, action: str, argument: object) -> None:
    """In a process of its own, as in Galaxy's: nothing of galaxy-tasks' settings in it."""
    subprocess.run([sys.executable, "-c", CLIENT, json.dumps(settings), action, json.dumps(argument)],
                   check=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def spec(job_id: str, command: str) -> dict:
    return {"id": job_id, "tool_id": "galaxy_tool", "command": command, "cores": 1}


def test_submit_and_cancel_reach_the_workers(deployment) -> None:
    deployment.worker()
    settings = {"broker_url": deployment.env["GALAXY_TASKS_BROKER_URL"]}
    send(settings, "submit", spec("g-main-1", "echo from galaxy"))
    send(settings, "submit", spec("g-main-1", "echo from galaxy"))  # a resend after a crash
    send(settings, "submit", spec("g-main-2", "sleep 300"))
    [done] = deployment.wait_terminal(["g-main-1"])
    assert done.state == "ok" and deployment.history("g-main-1").count(JobState.RUNNING) == 1
    deployment.wait_until(lambda: deployment.job("g-main-2").state == "running", what="g-main-2 running")
    send(settings, "cancel", "g-main-2")
    assert deployment.wait_terminal(["g-main-2"])[0].state == "deleted"


def test_signed_submissions_are_accepted_by_signing_workers(make_deployment, tmp_path) -> None:
    deployment, key, cert, store = _signed_deployment(make_deployment, tmp_path)
    deployment.worker()
    settings = {"broker_url": deployment.env["GALAXY_TASKS_BROKER_URL"], "signing_key": str(key),
                "signing_cert": str(cert), "signing_cert_store": str(store)}
    send(settings, "submit", spec("g-main-7", "echo signed"))
    assert deployment.wait_terminal(["g-main-7"])[0].state == "ok"
