"""Hearing job events as they happen: a private queue on Celery's event exchange, bound to
the job events only (`job.#`), as Flower hears task events. `wait` and `events --follow`
use it instead of reading the database over and over.

The broadcast is lossy by design (a listener that was not there misses what happened, and
Redis fans events out through PUB/SUB), so a listener is opened *before* the database is
read, and whoever waits reads the rows again on a slow schedule as a safety net. Opening
returns once the listener hears: it sends itself a probe and waits for it, because Redis
subscribes a consumer only at its first poll and what is published before that is missed.
"""
from __future__ import annotations

import time
import uuid
from collections import deque
from types import TracebackType
from typing import Any

from galaxy_tasks import events
from galaxy_tasks.edge import messages
from galaxy_tasks.edge.app import app


class JobEvents:
    """`with JobEvents() as heard: heard.next(timeout)` returns the job events heard since."""

    def __init__(self) -> None:
        self._heard: deque[dict[str, Any]] = deque()
        self._probe: str | None = None

    def __enter__(self) -> JobEvents:
        self._connection = app.connection_for_read()
        self._connection.ensure_connection(max_retries=3)
        receiver = app.events.Receiver(self._connection, routing_key="job.#")
        self._consumer = self._connection.Consumer([receiver.queue], callbacks=[self._on_message], no_ack=True,
                                                   accept=receiver.accept)
        self._consumer.consume()
        self._until_listening()
        return self

    def _until_listening(self, timeout: float = 5.0) -> None:
        """Return once the queue hears events: a probe sent now is heard (on Redis the
        subscription is made by the first poll, and events before it are missed)."""

        self._probe = uuid.uuid4().hex
        messages.probe_listener(self._probe)
        deadline = time.monotonic() + timeout
        while self._probe is not None and time.monotonic() < deadline:
            try:
                self._connection.drain_events(timeout=min(0.2, max(0.01, deadline - time.monotonic())))
            except TimeoutError:
                if self._probe is not None:
                    messages.probe_listener(self._probe)  # sent before the subscription: again

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            self._consumer.cancel()
        finally:
            self._connection.release()

    def next(self, timeout: float) -> list[dict[str, Any]]:
        """The job events heard within `timeout` seconds (returns at the first ones)."""
        deadline = time.monotonic() + timeout
        while not self._heard:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self._connection.drain_events(timeout=left)
            except TimeoutError:
                break
        heard = list(self._heard)
        self._heard.clear()
        return heard

    def _on_message(self, body: Any, message: Any) -> None:
        for item in body if isinstance(body, list) else [body]:
            if not isinstance(item, dict):
                continue
            if item.get("type") == events.CELERY_EVENT:
                self._heard.append(item)
            elif item.get("type") == events.LISTENER_PROBE and item.get("token") == self._probe:
                self._probe = None
