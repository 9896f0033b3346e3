"""galaxy-tasks' side of the job-event contract, played by a test until the real publisher
is live: take the plugin's task messages off the steps queue, run a job's command as a
galaxy-tasks runner would, publish job events (plain JSON, default exchange, routing key =
the events queue)."""
from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from typing import Any

from kombu import Connection
from kombu.simple import SimpleQueue

from galaxy_tasks.galaxy.events import events_queue
from galaxy_tasks.jobdir import DEFAULT_PATH
from tests.galaxy.server import CONTRACT_EVENTS_QUEUE, CONTRACT_STEPS_QUEUE


class StandIn:
    """galaxy-tasks' side of the contract, on the plugin's broker."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.seq: dict[str, int] = {}

    def take_task(self, timeout: float = 60) -> tuple[str, dict[str, Any]]:
        """The next task message the plugin sent to the steps queue: (task name, kwargs)."""
        with Connection(self.broker_url) as connection, SimpleQueue(connection, CONTRACT_STEPS_QUEUE) as steps:
            message = steps.get(timeout=timeout)
            message.ack()
            _, kwargs, _ = message.decode()
            return message.headers["task"], kwargs

    def drain(self) -> None:
        with Connection(self.broker_url) as connection:
            connection.default_channel.client.delete(CONTRACT_STEPS_QUEUE)

    def publish(self, job_id: str, state: str, **fields: Any) -> dict[str, Any]:
        seq = fields.pop("seq") if "seq" in fields else self.seq.get(job_id, 0) + 1
        self.seq[job_id] = max(seq, self.seq.get(job_id, 0))
        now = datetime.now(UTC).isoformat()
        body = {"event": "job_state", "version": 1, "job_id": job_id, "client_id": "main", "state": state,
                "seq": seq, "exit_code": None, "signal": None, "reason": None, "runner_state": None,
                "external_id": f"standin:{job_id}", "destination": "local",
                "times": {"created_at": now, "queued_at": now, "running_at": now, "ended_at": None,
                          "finished_at": None}, **fields}
        with Connection(self.broker_url) as connection:
            connection.Producer().publish(body, exchange="", routing_key=CONTRACT_EVENTS_QUEUE,
                                          declare=[events_queue(CONTRACT_EVENTS_QUEUE)], serializer="json")
        return body

    def unsettled_events(self) -> int:
        """Events waiting in the queue or delivered and not yet acknowledged (kombu's Redis
        transport keeps those in its `unacked` hash)."""
        with Connection(self.broker_url) as connection:
            client = connection.default_channel.client
            return client.llen(CONTRACT_EVENTS_QUEUE) + client.hlen("unacked")

    @staticmethod
    def run(spec: dict[str, Any]) -> int:
        """The job's command, with the small clean environment a galaxy-tasks job gets."""
        env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "GALAXY_SLOTS": str(spec.get("cores", 1))}
        return subprocess.run(["/bin/sh", "-c", spec["command"]], env=env, timeout=120).returncode


def submitted(standin: StandIn) -> dict[str, Any]:
    """The next job spec the plugin submitted."""
    name, spec = standin.take_task()
    assert name == "galaxy_tasks.submit_job"
    return spec
