"""The Galaxy plugin's events consumer on a real Redis: a job event is acknowledged only
after its handler recorded it (from the handler's own thread), one that was not is
delivered again, and what is not a job event is dropped without being decoded."""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from kombu import Connection

from galaxy_tasks.galaxy.events import Delivery, EventConsumer, events_queue
from tests.support.redis_server import RedisServer
from tests.support.services import require

pytestmark = pytest.mark.integration
QUEUE = "galaxy.test"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    try:
        server = RedisServer(tmp_path).start()
    except (OSError, RuntimeError) as exc:
        require("redis-server", exc)
    yield server.url
    server.kill()


def publish(url: str, body: object, serializer: str = "json") -> None:
    """As galaxy-tasks publishes: plain messages, default exchange, routing key = queue."""
    with Connection(url) as connection:
        connection.Producer().publish(body, exchange="", routing_key=QUEUE, declare=[events_queue(QUEUE)],
                                      serializer=serializer)


def event(job_id: str, seq: int, state: str = "ok") -> dict:
    return {"event": "job_state", "version": 1, "job_id": job_id, "client_id": "test", "state": state,
            "seq": seq, "exit_code": 0, "signal": None, "reason": None, "runner_state": None,
            "external_id": None, "destination": "local", "times": {}}


def waiting_messages(url: str) -> int:
    with Connection(url) as connection:
        return connection.default_channel.client.llen(QUEUE)


class Recorder:
    """Handles each delivery on a thread of its own, as the plugin's event threads do."""

    def __init__(self, ack: bool = True) -> None:
        self.ack = ack
        self.work: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self.recorded: list[tuple[str, int]] = []
        self.threads: set[str] = set()
        threading.Thread(target=self._run, daemon=True).start()

    def handle(self, delivery: Delivery) -> None:
        self.work.put(delivery)

    def _run(self) -> None:
        while True:
            delivery = self.work.get()
            self.recorded.append((delivery.event.job_id, delivery.event.seq))
            self.threads.add(threading.current_thread().name)
            if self.ack:
                delivery.ack()


def consume(url: str, recorder: Recorder) -> EventConsumer:
    consumer = EventConsumer(url, QUEUE, recorder.handle)
    consumer.start()
    assert consumer.ready.wait(10)
    return consumer


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_events_are_handed_over_and_acknowledged_from_the_handlers_thread(broker: str) -> None:
    recorder = Recorder()
    consumer = consume(broker, recorder)
    try:
        for seq in range(1, 6):
            publish(broker, event("g-main-1", seq))
        wait_for(lambda: len(recorder.recorded) == 5)
    finally:
        consumer.stop()
    assert recorder.recorded == [("g-main-1", seq) for seq in range(1, 6)]
    assert recorder.threads and "galaxy-tasks-events" not in recorder.threads
    assert waiting_messages(broker) == 0, "acknowledged events must not come back"
    second = Recorder()
    consumer = consume(broker, second)
    time.sleep(1)
    consumer.stop()
    assert second.recorded == []


def test_an_event_not_acknowledged_is_delivered_again(broker: str) -> None:
    forgetful = Recorder(ack=False)
    consumer = consume(broker, forgetful)
    publish(broker, event("g-main-2", 1))
    wait_for(lambda: forgetful.recorded == [("g-main-2", 1)])
    consumer.stop()  # like a Galaxy that stops before it recorded the event

    recorder = Recorder()
    consumer = consume(broker, recorder)
    try:
        wait_for(lambda: recorder.recorded == [("g-main-2", 1)])
    finally:
        consumer.stop()


def test_what_is_not_a_job_event_is_dropped(broker: str) -> None:
    recorder = Recorder()
    consumer = consume(broker, recorder)
    try:
        publish(broker, {"event": "something else"})
        publish(broker, {"os": "system"}, serializer="pickle")
        publish(broker, event("g-main-3", 1))
        wait_for(lambda: recorder.recorded == [("g-main-3", 1)])
        wait_for(lambda: waiting_messages(broker) == 0)
    finally:
        consumer.stop()


def test_every_handler_of_the_queue_hears_which_job_another_one_ended(broker: str) -> None:
    """Two handlers on one events queue: the one that acknowledges a job's end tells both,
    so the other drops what it kept of the job; a running event tells no one."""
    heard: list[list[str]] = [[], []]
    handlers = [Recorder(), Recorder()]
    consumers = [EventConsumer(broker, QUEUE, recorder.handle, ended=forgot.append, prefetch=1)
                 for recorder, forgot in zip(handlers, heard, strict=True)]
    for consumer in consumers:
        consumer.start()
        assert consumer.ready.wait(10)
    try:
        publish(broker, event("g-main-4", 1, state="running"))
        publish(broker, event("g-main-4", 2, state="ok"))
        wait_for(lambda: heard == [["g-main-4"], ["g-main-4"]])
        time.sleep(0.5)
    finally:
        for consumer in consumers:
            consumer.stop()
    assert heard == [["g-main-4"], ["g-main-4"]], "one notice for the one end, to both handlers"
    assert sorted(job for recorder in handlers for job in recorder.recorded) == [("g-main-4", 1), ("g-main-4", 2)]
