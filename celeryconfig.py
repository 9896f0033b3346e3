"""Celery settings for long bioinformatics jobs, read from GALAXY_TASKS_* environment variables.

- JSON only: a pickled message is refused, never executed (or signed JSON, see `security`).
- Late acknowledgement with requeue when a worker process is lost, and a prefetch of one:
  a message is removed from the broker only after its step has committed its state.
- Events on, so Flower sees every task; results off: the job row is the result.
- No countdown or schedule may be as long as the broker's visibility timeout, or the broker
  would deliver the same message twice while it is still waiting: a retry waits at most 30 s,
  a resubmission's delay is a countdown only up to half the visibility timeout (a longer one
  waits in the job's row), so the visibility timeout is minutes (GALAXY_TASKS_VISIBILITY_TIMEOUT).
- Every task message goes through the default (anonymous) exchange with its queue's name as
  routing key: direct exchanges, which Celery turns into the default exchange when it
  publishes, so no message depends on a binding (Redis loses its bindings when it restarts
  empty); the job events of `galaxy_tasks/edge/messages.py` name the default exchange themselves.
- Broker connections (docs/operations.md, "Brokers"): on RabbitMQ, publisher confirms (a
  publish the broker did not take raises, and is retried, instead of vanishing), heartbeats
  and durable queues of GALAXY_TASKS_QUEUE_TYPE; on Redis, socket timeouts, TCP keepalive and
  health checks, so a half-open connection is found and replaced instead of hanging; each
  message is recorded as unacknowledged by Redis as it is taken (`galaxy_tasks.edge.brokers`), and
  every worker sweeps the unacknowledged messages every RESTORE_INTERVAL_S, so one taken on a
  connection that died is delivered again within the visibility timeout plus that period.
"""
from galaxy_tasks import config as _config
from galaxy_tasks.edge import brokers as _brokers

_settings = _config.load()
_kind = _brokers.kind(_settings.broker_url)

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
broker_transport_options: dict = {"visibility_timeout": _settings.visibility_timeout}
if _settings.embedded:
    broker_transport_options["polling_interval"] = 0.005
elif _kind == "redis":
    broker_transport = "galaxy_tasks.edge.brokers:RedisTransport"  # kombu's: see its docstring
    broker_transport_options.update(
        socket_connect_timeout=5,
        socket_timeout=5,           # no publish or health check waits forever on a dead connection
        socket_keepalive=True,      # the kernel notices a peer that went away (hours by default:
        socket_keepalive_options=_brokers.keepalive_options(),  # ~1 min with these)
        health_check_interval=10,   # PING the pub/sub connection; drop a take overdue by 1 + 10 s
        unacked_restore_interval=_brokers.RESTORE_INTERVAL_S,  # every worker sweeps unacked messages
        unacked_restore_throttle=1,  # every sweep looks (kombu's default: one in ten, 100 s apart)
        unacked_mutex_expire=3 * _brokers.RESTORE_INTERVAL_S,  # a sweeper killed mid-sweep delays the next 30 s
    )
elif _kind == "amqp":
    broker_transport_options = {"confirm_publish": True}
    # A connection silent for two heartbeats is dead (RabbitMQ requeues what it had delivered on
    # it). 60 s, RabbitMQ's own default: longer than any step, since a solo-pool worker sends no
    # heartbeat while its step runs.
    broker_heartbeat = 60
    task_default_queue_type = _settings.queue_type
    task_create_missing_queue_type = _settings.queue_type
    worker_detect_quorum_queues = True  # quorum queues have no global QoS: per-consumer prefetch

task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure = True  # a step that raised is re-driven from its row by reconciliation
task_acks_on_timeout = True
worker_prefetch_multiplier = 1
task_default_queue = _settings.steps_queue
task_create_missing_queues = True
task_default_exchange_type = "direct"
task_create_missing_queue_exchange_type = "direct"
task_default_delivery_mode = "persistent"

worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False
worker_cancel_long_running_tasks_on_connection_loss = False
enable_utc = True

beat_schedule = {
    "galaxy-tasks-reconcile": {
        "task": "galaxy_tasks.reconcile",
        "schedule": _settings.reconcile_interval,
        "options": {"queue": _settings.steps_queue, "expires": _settings.reconcile_interval},
    }
}
beat_schedule_filename = str(_settings.home / "beat-schedule")

if _settings.reconcile_interval >= _settings.visibility_timeout:
    raise ValueError("GALAXY_TASKS_RECONCILE_INTERVAL must be shorter than GALAXY_TASKS_VISIBILITY_TIMEOUT")
