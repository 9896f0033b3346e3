"""Job events from galaxy-tasks: parsing them, and the thread that consumes them.

A message is acknowledged only after the handler has recorded what it means (Galaxy lost
jobs when it acknowledged first: galaxy issue #17787), so a crash in between redelivers it;
handlers are idempotent (the `seq` of each job's events, and Galaxy's own job state).
kombu connections are not thread-safe: a handler on another thread acknowledges through
`Delivery.ack`, which hands the message back to the consumer's thread.

Several handlers of one Galaxy read one events queue, so one job's events may be applied by
different handlers, each keeping a record of the job until its end. The handler that applies
the end says so on a fanout exchange (`<events queue>.ended`) that every handler listens to,
and each drops its record: nothing of an ended job stays in a handler that did not end it.
The notice is plain JSON even with signing on: all it can do is make a handler forget a job,
which it then reads again from Galaxy's database on its next event, as after a restart.
"""
from __future__ import annotations

import logging
import queue
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping

from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

from galaxy_tasks.galaxy.states import RUNNER_STATES, STATES, TERMINAL, UNKNOWN

#: AMQP heartbeat of the events connection, seconds: a dead broker or a dropped connection
#: is noticed within about twice this, not never
HEARTBEAT_S = 30.0
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
    refused: bool = False  # galaxy-tasks refused the spec and recorded nothing; `reason` says why
    max_rss_kb: int | None = None  # the peak memory galaxy-tasks' runner measured

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def run_seconds(self) -> float | None:
        """Seconds from the start galaxy-tasks' runner saw to the end of the job's process."""
        start, end = self.times.get("running_at"), self.times.get("ended_at")
        if not isinstance(start, str) or not isinstance(end, str):
            return None
        try:
            seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
        except (TypeError, ValueError):  # not ISO 8601, or one naive and one aware
            return None
        return round(seconds, 3) if seconds >= 0 else None


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
    if seq == 0 and state != UNKNOWN:
        # only the answer about an id galaxy-tasks has no job for has no place in a job's
        # order; a state with seq 0 would pass any order check
        raise EventError(f"a {state!r} event must have a seq of 1 or more")
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
        times=dict(body.get("times") or {}), refused=_optional(body, "refused", bool) is True,
        max_rss_kb=_optional(body, "max_rss_kb", int),
    )


def _optional(body: Mapping, name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
        raise EventError(f"{name} must be {kind.__name__} or null, not {value!r}")
    return value


class Delivery:
    """One received event; `ack` and `requeue` may be called from any thread."""

    def __init__(self, event: JobEvent, message: Message, settle: Callable[[Message, bool, str | None], None]) -> None:
        self.event = event
        self._message = message
        self._settle = settle

    def ack(self) -> None:
        """Done with; if the event ended its job, every handler hears that it did."""
        self._settle(self._message, True, self.event.job_id if self.event.terminal else None)

    def requeue(self) -> None:
        self._settle(self._message, False, None)


def events_queue(name: str) -> Queue:
    """The durable queue of one client's events, on the default exchange (routing key = name)."""
    return Queue(name, exchange=Exchange(""), routing_key=name, durable=True)


def ended_exchange(events_queue_name: str) -> Exchange:
    """Where the handlers reading one events queue tell each other that a job has ended."""
    return Exchange(f"{events_queue_name}.ended", type="fanout", durable=False, auto_delete=True)


def parse_ended(body: Any) -> str:
    """The job id of an ended-job notice; anything else raises EventError."""
    job_id = body.get("ended") if isinstance(body, Mapping) else None
    if not isinstance(job_id, str) or not job_id or len(job_id) > 255:
        raise EventError("not an ended-job notice")
    return job_id


class EventConsumer:
    """A daemon thread that reads one events queue and hands each event to `handle`, which
    must not block (it queues the work); `idle` runs on the consumer's thread between reads.
    `signed`: only messages signed by a certificate of the store (Celery's `auth`, registered
    by the task client) are decoded; plain JSON, anyone's to publish, is dropped unread.
    `ended` is called with the id of each job that this or another consumer of the queue
    acknowledged the end of."""

    def __init__(self, broker_url: str, queue_name: str, handle: Callable[[Delivery], None],
                 idle: Callable[[], None] = lambda: None, prefetch: int = 32,
                 name: str = "galaxy-tasks-events", signed: bool = False, heartbeat_s: float = HEARTBEAT_S,
                 ended: Callable[[str], None] = lambda job_id: None) -> None:
        self.broker_url = broker_url
        self.heartbeat_s = heartbeat_s
        self.accept = ["auth"] if signed else ["json"]
        self.queue = events_queue(queue_name)
        self.exchange = ended_exchange(queue_name)
        self.handle = handle
        self.ended = ended
        self.idle = idle
        self.prefetch = prefetch
        self._settled: queue.SimpleQueue[tuple[Message, bool, str | None]] = queue.SimpleQueue()
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

    def _settle(self, message: Message, ack: bool, ended: str | None) -> None:
        self._settled.put((message, ack, ended))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with Connection(self.broker_url, heartbeat=self.heartbeat_s) as connection:
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
        # this consumer's own queue of ended-job notices, gone with its connection
        notices = Queue(f"{self.exchange.name}.{uuid.uuid4().hex}", exchange=self.exchange, exclusive=True,
                        auto_delete=True, durable=False)
        producer = connection.Producer()
        with Consumer(connection, queues=[self.queue], callbacks=[self._on_message], accept=self.accept,
                      prefetch_count=self.prefetch, on_decode_error=self._undecodable), \
                Consumer(connection, queues=[notices], callbacks=[self._on_ended], accept=["json"], no_ack=True,
                         on_decode_error=lambda message, exc: None):
            self.ready.set()
            while not self._stop.is_set():
                try:
                    connection.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
                # sends ours and notices the broker's missing (AMQP; Redis has none): a
                # connection that died silently raises here, and the loop reconnects
                connection.heartbeat_check()
                self._flush_settled(producer)
                self.idle()
            self._flush_settled(producer)

    def _flush_settled(self, producer: Producer) -> None:
        while True:
            try:
                message, ack, ended = self._settled.get_nowait()
            except queue.Empty:
                return
            try:
                message.ack() if ack else message.requeue()
            except Exception:  # noqa: BLE001 - a message of a closed channel: the broker redelivers it
                log.warning("could not settle an event message; the broker will deliver it again")
                continue
            if ended is not None:
                producer.publish({"ended": ended}, exchange=self.exchange, declare=[self.exchange],
                                 serializer="json")

    def _on_ended(self, body: Any, message: Message) -> None:
        try:
            self.ended(parse_ended(body))
        except EventError as exc:
            log.warning("dropped a message on %s: %s", self.exchange.name, exc)

    def _undecodable(self, message: Message, exc: Exception) -> None:
        """A message that is not JSON (pickle, YAML, garbage), or not signed by a trusted
        certificate while signing is on, is dropped, never decoded."""
        log.error("refused an undecodable or unsigned message on %s: %s", self.queue.name, exc)
        message.ack()

    def _on_message(self, body: Any, message: Message) -> None:
        try:
            event = parse(body)
        except EventError as exc:
            log.error("refused a message on %s: %s", self.queue.name, exc)
            message.ack()
            return
        self.handle(Delivery(event, message, self._settle))
