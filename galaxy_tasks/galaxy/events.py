"""Job events from galaxy-tasks: parsing them, and the thread that consumes them.

A message is acknowledged only after the handler has recorded what it means (Galaxy lost
jobs when it acknowledged first: galaxy issue #17787), so a crash in between redelivers it;
handlers are idempotent (the `seq` of each job's events, and Galaxy's own job state).
kombu connections are not thread-safe: a handler on another thread acknowledges through
`Delivery.ack`, which hands the message back to the consumer's thread.
"""
from __future__ import annotations

import logging
import queue
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from kombu import Connection, Consumer, Exchange, Message, Queue

from galaxy_tasks.galaxy.states import RUNNER_STATES, STATES, TERMINAL

_RUNNER_STATE = re.compile(r"[a-z][a-z0-9_]{0,63}")

log = logging.getLogger(__name__)


class EventError(ValueError):
    """A message that is not a job event this consumer understands."""


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    state: str
    seq: int
    client_id: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    runner_state: str | None = None
    external_id: str | None = None
    destination: str | None = None
    times: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def parse(body: Any) -> JobEvent:
    """A job event from a decoded message body; anything else raises EventError."""
    if not isinstance(body, Mapping) or body.get("event") != "job_state":
        raise EventError("not a job_state event")
    if body.get("version") != 1:
        raise EventError(f"unsupported event version {body.get('version')!r}")
    job_id, state, seq = body.get("job_id"), body.get("state"), body.get("seq", 0)
    if not isinstance(job_id, str) or not job_id:
        raise EventError("job_id must be a non-empty string")
    if state not in STATES:
        raise EventError(f"unknown state {state!r}")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise EventError(f"seq must be a whole number, not {seq!r}")
    runner_state = body.get("runner_state")
    if runner_state is not None and not (isinstance(runner_state, str) and _RUNNER_STATE.fullmatch(runner_state)):
        raise EventError(f"runner_state must be a lower-case name, not {runner_state!r}")
    if runner_state is not None and runner_state not in RUNNER_STATES:
        # a newer galaxy-tasks' name: the job still ends (as Galaxy's unknown_error), it is
        # not left running in Galaxy for want of a word
        log.warning("job event %r: runner_state %r is not one this plugin knows; Galaxy sees unknown_error",
                    job_id, runner_state)
    return JobEvent(
        job_id=job_id, state=state, seq=seq, client_id=_optional(body, "client_id", str),
        exit_code=_optional(body, "exit_code", int), signal=_optional(body, "signal", int),
        reason=_optional(body, "reason", str), runner_state=runner_state,
        external_id=_optional(body, "external_id", str), destination=_optional(body, "destination", str),
        times=dict(body.get("times") or {}),
    )


def _optional(body: Mapping, name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise EventError(f"{name} must be {kind.__name__} or null, not {value!r}")
    return value


class Delivery:
    """One received event; `ack` and `requeue` may be called from any thread."""

    def __init__(self, event: JobEvent, message: Message, settle: Callable[[Message, bool], None]) -> None:
        self.event = event
        self._message = message
        self._settle = settle

    def ack(self) -> None:
        self._settle(self._message, True)

    def requeue(self) -> None:
        self._settle(self._message, False)


def events_queue(name: str) -> Queue:
    """The durable queue of one client's events, on the default exchange (routing key = name)."""
    return Queue(name, exchange=Exchange(""), routing_key=name, durable=True)


class EventConsumer:
    """A daemon thread that reads one events queue and hands each event to `handle`, which
    must not block (it queues the work); `idle` runs on the consumer's thread between reads."""

    def __init__(self, broker_url: str, queue_name: str, handle: Callable[[Delivery], None],
                 idle: Callable[[], None] = lambda: None, prefetch: int = 32,
                 name: str = "galaxy-tasks-events") -> None:
        self.broker_url = broker_url
        self.queue = events_queue(queue_name)
        self.handle = handle
        self.idle = idle
        self.prefetch = prefetch
        self._settled: queue.SimpleQueue[tuple[Message, bool]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop reading; messages not yet acknowledged go back to the broker with the connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _settle(self, message: Message, ack: bool) -> None:
        self._settled.put((message, ack))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with Connection(self.broker_url, heartbeat=0) as connection:
                    connection.ensure_connection(max_retries=None, interval_start=1, interval_step=1,
                                                 interval_max=10, callback=self._stop_check)
                    self._consume(connection)
            except Exception:  # noqa: BLE001 - the broker went away: reconnect, unacked messages come back
                if not self._stop.is_set():
                    log.exception("galaxy-tasks events consumer lost its broker connection; reconnecting")
                    self._stop.wait(2)

    def _stop_check(self, *_: Any) -> None:
        if self._stop.is_set():
            raise ConnectionAbortedError("stopping")

    def _consume(self, connection: Connection) -> None:
        with Consumer(connection, queues=[self.queue], callbacks=[self._on_message], accept=["json"],
                      prefetch_count=self.prefetch, on_decode_error=self._undecodable):
            self.ready.set()
            while not self._stop.is_set():
                try:
                    connection.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
                self._flush_settled()
                self.idle()
            self._flush_settled()

    def _flush_settled(self) -> None:
        while True:
            try:
                message, ack = self._settled.get_nowait()
            except queue.Empty:
                return
            try:
                message.ack() if ack else message.requeue()
            except Exception:  # noqa: BLE001 - a message of a closed channel: the broker redelivers it
                log.warning("could not settle an event message; the broker will deliver it again")

    def _undecodable(self, message: Message, exc: Exception) -> None:
        """A message that is not JSON (pickle, YAML, garbage) is dropped, never decoded."""
        log.error("refused an undecodable message on %s: %s", self.queue.name, exc)
        message.ack()

    def _on_message(self, body: Any, message: Message) -> None:
        try:
            event = parse(body)
        except EventError as exc:
            log.error("refused a message on %s: %s", self.queue.name, exc)
            message.ack()
            return
        self.handle(Delivery(event, message, self._settle))
