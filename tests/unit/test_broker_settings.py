"""The broker settings of docs/operations.md ("Brokers"), as `celeryconfig` computes them from
GALAXY_TASKS_BROKER_URL (read in a process of its own: the module reads its environment once)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from galaxy_tasks.edge import brokers

ROOT = Path(__file__).resolve().parents[2]
SHOW = """
import json, celeryconfig as c
print(json.dumps({k: getattr(c, k, None) for k in ("broker_transport", "broker_transport_options", "broker_heartbeat",
    "task_default_queue_type", "task_create_missing_queue_type", "task_default_exchange_type",
    "task_create_missing_queue_exchange_type", "task_default_delivery_mode")}, default=str))
"""


def settings(tmp_path: Path, broker_url: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TASKS_")}
    env.update(GALAXY_TASKS_HOME=str(tmp_path), GALAXY_TASKS_BROKER_URL=broker_url, PYTHONPATH=str(ROOT), **extra)
    out = subprocess.run([sys.executable, "-c", SHOW], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize(("url", "kind"), [("redis://h:6379/0", "redis"), ("rediss://h/0", "redis"),
                                           ("amqp://u:p@h//", "amqp"), ("pyamqp://h//", "amqp"),
                                           ("memory://", "memory"), ("sqs://", "sqs")])
def test_broker_kind(url, kind):
    assert brokers.kind(url) == kind


def test_rabbitmq_confirms_publishes_with_heartbeats_and_classic_durable_queues(tmp_path):
    conf = settings(tmp_path, "amqp://guest:guest@127.0.0.1:5672//")
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    assert conf["broker_heartbeat"] == 60
    assert conf["task_default_queue_type"] == conf["task_create_missing_queue_type"] == "classic"
    assert conf["broker_transport"] is None
    quorum = settings(tmp_path, "amqp://guest:guest@127.0.0.1:5672//", GALAXY_TASKS_QUEUE_TYPE="quorum")
    assert quorum["task_default_queue_type"] == quorum["task_create_missing_queue_type"] == "quorum"


def test_redis_times_out_keeps_alive_and_checks_health(tmp_path):
    conf = settings(tmp_path, "redis://127.0.0.1:6379/0")
    options = conf["broker_transport_options"]
    assert conf["broker_transport"] == "galaxy_tasks.edge.brokers:RedisTransport"
    assert options["socket_timeout"] == 5 and options["socket_connect_timeout"] == 5
    assert options["socket_keepalive"] is True and options["health_check_interval"] == 10
    assert "retry_on_timeout" not in options


def test_redis_delivers_again_within_minutes_what_a_worker_took_and_never_acknowledged(tmp_path):
    """A message taken on a connection that died is back in its queue after the visibility
    timeout, at the next sweep of a worker: 5 min + 10 s by default, not 12 h."""
    options = settings(tmp_path, "redis://127.0.0.1:6379/0")["broker_transport_options"]
    assert options["visibility_timeout"] == 300
    assert options["unacked_restore_interval"] == brokers.RESTORE_INTERVAL_S == 10
    assert options["unacked_restore_throttle"] == 1  # every sweep looks (kombu's default: every tenth)
    assert options["unacked_mutex_expire"] == 30  # a sweeper killed mid-sweep holds the next one back 30 s


def test_no_countdown_outlasts_the_visibility_timeout():
    """A message waiting out a countdown is held unacknowledged: the longest a step waits (a
    database retry) and the longest resubmit delay sent as a countdown are shorter than the
    shortest visibility timeout allowed, and a shorter one is refused, named."""
    from galaxy_tasks import config
    from galaxy_tasks.edge.tasks import DB_RETRY

    assert DB_RETRY["retry_backoff_max"] * 2 <= config.MIN_VISIBILITY_TIMEOUT
    assert config.load({"GALAXY_TASKS_VISIBILITY_TIMEOUT": "60"}).visibility_timeout == 60
    with pytest.raises(ValueError, match="GALAXY_TASKS_VISIBILITY_TIMEOUT must be at least 60 seconds"):
        config.load({"GALAXY_TASKS_VISIBILITY_TIMEOUT": "59"})


def test_every_task_message_goes_through_direct_exchanges_persistently(tmp_path):
    for url in ("redis://127.0.0.1:6379/0", "amqp://guest:guest@127.0.0.1:5672//"):
        conf = settings(tmp_path, url)
        assert conf["task_default_exchange_type"] == conf["task_create_missing_queue_exchange_type"] == "direct"
        assert conf["task_default_delivery_mode"] == "persistent"


def test_a_queue_type_that_does_not_exist_is_refused(tmp_path):
    from galaxy_tasks import config

    with pytest.raises(ValueError, match="GALAXY_TASKS_QUEUE_TYPE must be one of classic, quorum"):
        config.load({"GALAXY_TASKS_QUEUE_TYPE": "stream"})
