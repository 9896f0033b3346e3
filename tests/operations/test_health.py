"""`galaxy-tasks health --node`: a real worker answers, an absent one fails fast and clearly."""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration


def test_health_pings_only_the_named_worker(deployment):
    deployment.worker("galaxy_tasks", "steps@%h")
    deployment.worker("local", "local@%h")
    ok = deployment.cli("health", "--node", "steps@%h")
    assert ok.returncode == 0, ok.stderr
    assert "pong" in ok.stdout and "steps@" in ok.stdout
    quiet = deployment.cli("health", "-n", "local@%h", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == ""

    started = time.monotonic()
    absent = deployment.cli("health", "--node", "nobody@%h", "--timeout", "1")
    assert absent.returncode == 1
    assert "nobody@" in absent.stderr and "no reply within 1 s" in absent.stderr
    assert time.monotonic() - started < 60  # not a hang: bounded by its timeout, on a busy machine too

    deployment.workers[0].stop()
    gone = deployment.cli("health", "--node", "steps@%h", "--timeout", "1")
    assert gone.returncode == 1, "a stopped worker is not healthy"


def test_health_fails_within_its_timeout_when_the_broker_is_unreachable(deployment):
    env = dict(deployment.env, GALAXY_TASKS_BROKER_URL="redis://:hunter2@127.0.0.1:1/0")
    import subprocess
    import sys

    from tests.support.deployment import ROOT

    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "galaxy_tasks.cli", "health", "--node", "steps@%h",
                             "--timeout", "2"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert time.monotonic() - started < 60
    assert "hunter2" not in result.stderr + result.stdout


def test_a_worker_told_to_stop_consuming_is_not_healthy(deployment):
    """`cancel_consumer` (a remote control message anyone who can publish may send unless
    messages are signed) leaves the worker answering pings while it takes nothing: health
    asks which queues it consumes, and names the one it no longer does."""
    import subprocess
    import sys
    import textwrap

    deployment.worker("galaxy_tasks,local", "steps@%h")
    assert deployment.cli("health", "--node", "steps@%h").returncode == 0
    cancel = textwrap.dedent(
        """
        import socket, sys
        from celery import Celery
        app = Celery(broker=sys.argv[1])
        app.control.cancel_consumer("galaxy_tasks", destination=["steps@" + socket.gethostname()], reply=True,
                                    timeout=5)
        """
    )
    subprocess.run([sys.executable, "-c", cancel, deployment.env["GALAXY_TASKS_BROKER_URL"]], check=True,
                   timeout=60, cwd="/")
    sick = deployment.cli("health", "--node", "steps@%h", "--timeout", "3")
    assert sick.returncode == 1, sick.stdout
    assert "not consuming galaxy_tasks" in sick.stderr
