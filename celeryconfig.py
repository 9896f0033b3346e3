"""Celery settings for long bioinformatics jobs, read from GALAXY_TASKS_* environment variables.

- JSON only: a pickled message is refused, never executed (or signed JSON, see `security`).
- Late acknowledgement with requeue when a worker process is lost, and a prefetch of one:
  a message is removed from the broker only after its step has committed its state.
- Events on, so Flower sees every task; results off: the job row is the result.
- No countdown or schedule may be as long as the broker's visibility timeout, or the broker
  would deliver the same message twice while it is still waiting.
"""
from galaxy_tasks import config as _config

_settings = _config.load()

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
broker_transport_options = {"visibility_timeout": _settings.visibility_timeout}
if _settings.embedded:
    broker_transport_options["polling_interval"] = 0.005

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
