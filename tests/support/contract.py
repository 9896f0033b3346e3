"""A client of the task contract that does not import this project: plain Celery to submit,
plain kombu to hear its jobs' events on its own durable queue, and the documented remedy for
a submit the broker lost (docs/events.md): ask `announce_jobs` about the ids it has heard
nothing of, and send those answered `unknown` again, with the same id."""
from __future__ import annotations

import time
from typing import Any

from celery import Celery
from kombu import Connection, Exchange, Queue

TERMINAL = frozenset({"ok", "error", "deleted"})


class ContractClient:
    """`resend=False`: a client that only submits and listens (a script, plain `send_task`):
    it never asks what became of a job it heard nothing of."""

    def __init__(self, broker_url: str, events_queue: str, steps_queue: str = "galaxy_tasks",
                 resend: bool = True) -> None:
        self.app = Celery(broker=broker_url)
        self.app.conf.update(task_serializer="json", accept_content=["json"],
                             broker_transport_options={"confirm_publish": True}
                             if broker_url.startswith("amqp") else {})
        self.events_queue = events_queue
        self.steps_queue = steps_queue
        self.resend = resend
        self.specs: dict[str, dict[str, Any]] = {}
        self.states: dict[str, str] = {}  # job id -> latest state heard (highest seq)
        self._seq: dict[str, int] = {}
        self.resent: list[str] = []
        self.unknown_answers = 0
        self._connection = Connection(broker_url)
        self._queue = self._connection.SimpleQueue(
            Queue(events_queue, Exchange(""), routing_key=events_queue, durable=True))

    def submit(self, spec: dict[str, Any]) -> str:
        spec = {**spec, "events": {"queue": self.events_queue, "client_id": spec["id"]}}
        self.specs[spec["id"]] = spec
        self.app.send_task("galaxy_tasks.submit_job", kwargs=spec, queue=self.steps_queue)
        return spec["id"]

    def hear(self, timeout: float) -> int:
        """Events heard within `timeout` (each acknowledged once recorded)."""
        heard = 0
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self._queue.get(block=True, timeout=min(left, 0.5))
            except self._queue.Empty:
                continue
            event = message.payload
            job_id = event["job_id"]
            if event["state"] == "unknown":
                self.unknown_answers += 1
                if job_id in self.specs and job_id not in self.states:
                    self.resent.append(job_id)
                    self.app.send_task("galaxy_tasks.submit_job", kwargs=self.specs[job_id], queue=self.steps_queue)
            elif event["seq"] > self._seq.get(job_id, 0):
                self._seq[job_id] = event["seq"]
                self.states[job_id] = event["state"]
            message.ack()
            heard += 1
        return heard

    def settle(self, timeout: float, ask_after: float = 10) -> dict[str, str]:
        """Until every job submitted has been heard to end: when `ask_after` seconds pass
        without an event, ask what became of the ids not heard of at all."""
        deadline = time.monotonic() + timeout
        while any(self.states.get(j) not in TERMINAL for j in self.specs):
            if time.monotonic() > deadline:
                raise AssertionError(f"not heard to end: { {j: self.states.get(j) for j in self.specs} }")
            if not self.hear(ask_after) and self.resend:
                silent = [j for j in self.specs if j not in self.states]
                if silent:
                    self.app.send_task("galaxy_tasks.announce_jobs", queue=self.steps_queue,
                                       kwargs={"job_ids": silent, "queue": self.events_queue})
        return dict(self.states)

    def close(self) -> None:
        self._queue.close()
        self._connection.release()
