"""What the broker settings promise (docs/operations.md, "Brokers"): no message depends on a
binding, so a Redis that lost its bindings still routes every step; quorum queues on RabbitMQ
when GALAXY_TASKS_QUEUE_TYPE says so, and what that asks of a client."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.ledger import gated
from tests.support.processes import alive

pytestmark = pytest.mark.integration


def test_no_message_needs_a_binding(make_deployment, tmp_path):
    """kombu's Redis transport keeps exchange bindings in `_kombu.binding.<exchange>` sets,
    which a Redis restarted empty has lost while publishers still believe them declared: a
    message published to an exchange then reaches no queue. Every message here goes through
    the default exchange, named by its queue: with every binding gone, jobs still start, run,
    are cancelled on their own host's queue and end."""
    import redis

    deployment = make_deployment()
    deployment.worker()
    warm = deployment.submit("true", "warm")
    deployment.wait_terminal([warm])
    client = redis.Redis.from_url(deployment.broker.url)
    try:
        bindings = client.keys("_kombu.binding.*")
        assert bindings, "the worker declared its queues' bindings"
        client.delete(*bindings)
        gate = tmp_path / "gate"
        done = deployment.submit("echo routed", "after")
        held = deployment.submit(gated(gate), "cancelled")
        deployment.wait_until(lambda: deployment.job(held).state == "running", what="running")
        pid = int(deployment.job(held).external_id.rsplit(":", 1)[1])
        assert deployment.cli("cancel", held).returncode == 0  # kill_job to local@<host>
        deployment.wait_until(lambda: not alive(pid), timeout=30, what="the cancelled job killed")
        assert deployment.wait_terminal([done])[0].state == "ok"
        assert deployment.job(held).state == "deleted"
    finally:
        (tmp_path / "gate").touch()
        client.close()


@pytest.fixture
def rabbit(make_broker):
    return make_broker("rabbitmq")


def test_quorum_task_queues_when_asked(rabbit, make_deployment):
    """GALAXY_TASKS_QUEUE_TYPE=quorum: the steps, destination and host queues are quorum
    queues (global QoS is off: per-consumer prefetch); a client of the task contract must
    declare them the same way (Celery's task_create_missing_queue_type), or RabbitMQ refuses
    its declaration."""
    deployment = make_deployment(rabbit, GALAXY_TASKS_QUEUE_TYPE="quorum")
    worker = deployment.worker()
    job_id = deployment.submit("echo quorum", "quorum")
    assert deployment.wait_terminal([job_id])[0].state == "ok"
    types = rabbit.queue_types()
    assert types["galaxy_tasks"] == "quorum" and types["local"] == "quorum"
    ours = {name: kind for name, kind in types.items() if not name.startswith("celery_delayed")}
    assert any(name.startswith("local@") and kind == "quorum" for name, kind in ours.items()), ours
    assert "Global QoS is disabled" in worker.log.read_text()

    script = textwrap.dedent(
        """
        import sys
        from celery import Celery
        app = Celery(broker=sys.argv[1])
        app.conf.task_serializer = "json"
        if sys.argv[2] == "quorum":
            app.conf.task_create_missing_queue_type = "quorum"
        app.send_task("galaxy_tasks.submit_job", queue="galaxy_tasks",
                      kwargs={"id": "quorum-" + sys.argv[2], "tool_id": "t", "command": "true"})
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TASKS_")}
    for declared in ("classic", "quorum"):
        result = subprocess.run([sys.executable, "-I", "-c", script, rabbit.url, declared], env=env, cwd="/",
                                capture_output=True, text=True, timeout=60)
        if declared == "classic":
            assert result.returncode != 0 and "inequivalent arg 'x-queue-type'" in result.stderr, result.stderr
        else:
            assert result.returncode == 0, result.stderr
    assert deployment.wait_terminal(["quorum-quorum"])[0].state == "ok"


@pytest.mark.parametrize("transport, kept", [("galaxy_tasks.edge.brokers:RedisTransport", True), ("redis", False)])
def test_a_message_taken_on_a_connection_that_died_is_delivered_again(make_broker, transport, kept):
    """galaxy-tasks' Redis transport records a message as unacknowledged in the step that pops
    it: a take whose reply never reached its worker (the connection died with the reply on
    its way) leaves the message in kombu's `unacked` hash, and the sweep every worker runs
    (`maybe_restore_messages`, every brokers.RESTORE_INTERVAL_S) puts it back in its queue
    once the visibility timeout has passed, for the next worker. kombu's own BRPOP, in the
    same place, loses it: it is in neither the queue nor the hash."""
    import redis
    from kombu import Connection, Exchange, Queue

    broker = make_broker("redis")
    queue = Queue("steps", Exchange(""), routing_key="steps")
    options = {"visibility_timeout": 1, "unacked_restore_throttle": 1}
    with Connection(broker.url) as client:  # a plain client of the task contract
        client.SimpleQueue(queue).put({"job_id": "taken"})
    store = redis.Redis.from_url(broker.url)
    try:
        with Connection(broker.url, transport=transport, transport_options=options) as dying:
            with dying.Consumer(queue, callbacks=[lambda body, message: None], accept=["json"]):
                dying.transport.cycle.on_poll_start()  # what the worker's event loop does: sends the take
                deadline = time.monotonic() + 10
                while store.llen("steps") and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert store.llen("steps") == 0, "the take popped the message"
                dying.default_channel.client.connection.disconnect()  # its reply is never read
        assert store.hlen("unacked") == int(kept)
        if not kept:
            return
        time.sleep(1.1)  # the visibility timeout passes
        heard: list[dict] = []
        with Connection(broker.url, transport=transport, transport_options=options) as next_worker:
            with next_worker.Consumer(queue, callbacks=[lambda body, message: (heard.append(body), message.ack())],
                                      accept=["json"]):
                next_worker.transport.cycle.maybe_restore_messages()  # the worker's periodic sweep
                next_worker.drain_events(timeout=5)
        assert heard == [{"job_id": "taken"}]
        assert store.hlen("unacked") == 0 and store.llen("steps") == 0
    finally:
        store.close()
