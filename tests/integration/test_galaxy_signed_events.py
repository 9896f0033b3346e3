"""Job events between real workers and the Galaxy plugin's consumer, with signing on: a
refused spec reaches its client as the job's end with the reason, events are signed, and
what anyone without the key puts in the client's queue (any state, any seq) is dropped
before the plugin sees it."""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import pytest
from kombu import Connection

from galaxy_tasks.galaxy.client import TaskClient
from galaxy_tasks.galaxy.events import Delivery, EventConsumer, events_queue
from galaxy_tasks.galaxy.settings import from_kwargs
from tests.integration.test_galaxy_client import send
from tests.integration.test_security import _certificate, _signed_deployment

pytestmark = pytest.mark.integration
QUEUE = "galaxy.signed"


class Heard:
    """Each event the consumer hands over, acknowledged at once."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self.all: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def handle(self, delivery: Delivery) -> None:
        with self.lock:
            self.all.append((delivery.event.job_id, delivery.event.state, delivery.event.seq))
        self.events.put(delivery)
        delivery.ack()

    def until(self, job_id: str, state: str, timeout: float = 60) -> Delivery:
        deadline = time.monotonic() + timeout
        while True:
            delivery = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            if delivery.event.job_id == job_id and delivery.event.state == state:
                return delivery


def forge(broker: str, body: dict) -> None:
    """What anyone who can publish to the broker can do: plain JSON into the client's queue."""
    with Connection(broker) as connection:
        connection.Producer().publish(body, exchange="", routing_key=QUEUE, declare=[events_queue(QUEUE)],
                                      serializer="json")


def spec(job_id: str, command: str, **extra: object) -> dict:
    return {"id": job_id, "tool_id": "galaxy_tool", "command": command, "events": {"queue": QUEUE,
            "client_id": "main"}, **extra}


def test_refusals_and_ends_arrive_signed_and_forged_events_are_dropped(make_deployment, tmp_path: Path) -> None:
    deployment, key, cert, store = _signed_deployment(make_deployment, tmp_path)
    deployment.worker("galaxy_tasks,local")
    broker = deployment.env["GALAXY_TASKS_BROKER_URL"]
    client = TaskClient(from_kwargs({"broker_url": broker, "signing_key": str(key), "signing_cert": str(cert),
                                     "signing_cert_store": str(store)}, "main"))
    heard = Heard()
    consumer = EventConsumer(broker, QUEUE, heard.handle, signed=True)
    consumer.start()
    try:
        assert consumer.ready.wait(10)
        started = time.monotonic()
        client.submit(spec("g-main-1", "true", destination="nowhere"))
        refused = heard.until("g-main-1", "error").event
        refusal_s = time.monotonic() - started
        assert refused.refused and refused.seq == 1 and "unknown destination 'nowhere'" in (refused.reason or "")
        assert refusal_s < 10, f"a refusal took {refusal_s:.1f} s to reach its client"
        assert all(job.id != "g-main-1" for job in deployment.jobs()), "a refused spec records nothing"

        client.submit(spec("g-main-2", "sleep 3"))
        heard.until("g-main-2", "running")
        # a forger with no key: every state of the running job, seq 0 and a huge seq
        for state in ("ok", "error", "deleted", "running", "queued", "unknown"):
            for seq in (0, 2**40):
                forge(broker, {"event": "job_state", "version": 1, "job_id": "g-main-2", "client_id": "main",
                               "state": state, "seq": seq, "exit_code": 0, "runner_state": "memory_limit_reached"})
        ok = heard.until("g-main-2", "ok").event
        assert ok.exit_code == 0
        time.sleep(0.5)
        assert all(seq < 100 for _, _, seq in heard.all), f"a forged event was handed over: {heard.all}"
        assert [state for job_id, state, _ in heard.all if job_id == "g-main-2"][-1] == "ok"
        assert deployment.job("g-main-2").state == "ok"
    finally:
        consumer.stop()
        client.close()


def test_a_clients_ids_and_events_queue_are_its_own(make_deployment, tmp_path: Path) -> None:
    """Two clients with trusted keys: the second can neither take the first's job id nor
    name its events queue, and hears nothing in its place; each runs its own jobs."""
    store = tmp_path / "store"
    store.mkdir()
    keys = {}
    for name in ("galaxy", "other"):
        key, cert = _certificate(tmp_path / name, name)
        (store / f"{name}.pem").write_bytes(cert.read_bytes())
        keys[name] = {"signing_key": str(key), "signing_cert": str(cert), "signing_cert_store": str(store)}
    conf = tmp_path / "job_conf.yml"
    conf.write_text(f"""destinations: {{local: {{runner: local}}}}
clients:
  galaxy:
    certificate: {keys["galaxy"]["signing_cert"]}
    ids: ["g-main-*"]
    events_queues: ["{QUEUE}"]
""")
    deployment = make_deployment(GALAXY_TASKS_SIGNING_KEY=keys["galaxy"]["signing_key"],
                                 GALAXY_TASKS_SIGNING_CERT=keys["galaxy"]["signing_cert"],
                                 GALAXY_TASKS_SIGNING_CERT_STORE=str(store), GALAXY_TASKS_JOB_CONF=str(conf))
    deployment.worker("galaxy_tasks,local")
    broker = deployment.env["GALAXY_TASKS_BROKER_URL"]
    galaxy = TaskClient(from_kwargs({"broker_url": broker, **keys["galaxy"]}, "main"))
    other = {"broker_url": broker, **keys["other"]}  # in a process of its own: `auth` is one per process
    heard = Heard()
    consumer = EventConsumer(broker, QUEUE, heard.handle, signed=True)
    consumer.start()
    try:
        assert consumer.ready.wait(10)
        send(other, "submit", spec("g-main-47", "echo squatter"))  # galaxy's id, galaxy's queue
        send(other, "submit", {**spec("g-main-48", "echo squatter"), "events": {"queue": "other.events"}})
        send(other, "submit", {**spec("o-1", "echo mine"), "events": {"queue": "other.events"}})
        deployment.wait_until(lambda: any(job.id == "o-1" and job.state == "ok" for job in deployment.jobs()),
                              what="the other client's own job ok")
        galaxy.submit(spec("g-main-47", "echo from galaxy"))
        heard.until("g-main-47", "ok")
        assert deployment.job("g-main-47").command == "echo from galaxy"
        assert {job.id for job in deployment.jobs()} == {"o-1", "g-main-47"}
        assert "belongs to client 'galaxy'" in deployment.logs()
        assert all(job_id == "g-main-47" for job_id, _, _ in heard.all), heard.all
        assert not any(state == "error" for _, state, _ in heard.all), "no refusal of the intruder reaches galaxy"
    finally:
        consumer.stop()
        galaxy.close()
