"""The broker of a test deployment, Redis or RabbitMQ, behind one small interface: its URL,
how many messages a queue holds, and losing every message. Tests marked `both_brokers`
run once on each (`--broker redis|rabbitmq|both` chooses; both by default).

- redis: a Redis server of the test's own (its own port; `RedisBroker.server` may be killed
  and restarted);
- rabbitmq: a vhost of the test's own on the shared RabbitMQ (nothing there is restarted),
  or, where the test restarts the broker, a private node (`tests/support/rabbitmq.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tests.support.rabbitmq import RabbitNode, RabbitVhost
from tests.support.redis_server import RedisServer

KINDS = ("redis", "rabbitmq")


class Broker(Protocol):
    kind: str
    url: str

    def queue_length(self, queue: str) -> int:
        """Messages waiting in `queue` (not yet delivered to any consumer)."""

    def held(self, queues: tuple[str, ...]) -> int:
        """Messages of these queues not yet acknowledged, delivered or not."""

    def purge(self, queue: str) -> None:
        """The messages waiting in `queue` are gone."""

    def lose_everything(self) -> None:
        """Every queued message is gone."""

    def close(self) -> None: ...


class RedisBroker:
    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url

    def _client(self):  # noqa: ANN202 - redis.Redis, imported late
        import redis

        return redis.Redis.from_url(self.url)

    def queue_length(self, queue: str) -> int:
        client = self._client()
        try:
            return int(client.llen(queue))
        finally:
            client.close()

    def held(self, queues: tuple[str, ...]) -> int:
        client = self._client()
        try:  # kombu keeps a delivered, unacknowledged message in the "unacked" hash
            return sum(int(client.llen(q)) for q in queues) + int(client.hlen("unacked"))
        finally:
            client.close()

    def purge(self, queue: str) -> None:
        client = self._client()
        try:
            client.delete(queue)
        finally:
            client.close()

    def lose_everything(self) -> None:
        client = self._client()
        try:
            client.flushdb()
        finally:
            client.close()

    def restart(self, down_for: float = 0) -> None:
        self.server.restart(down_for)

    def close(self) -> None:
        self.server.kill()


def start(kind: str, workdir: Path, restartable: bool = False, durable: bool = False) -> Broker:
    """A broker of `kind` for one deployment. `restartable`: the test will restart it (a
    private RabbitMQ node rather than a vhost on the shared one); `durable`: Redis keeps an
    append-only file (RabbitMQ keeps durable queues anyway)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "redis":
        return RedisBroker(RedisServer(workdir, aof=durable).start())
    if kind == "rabbitmq":
        if restartable:
            return RabbitNode(workdir / "rabbitmq").start()
        return RabbitVhost().start()
    raise ValueError(f"unknown broker kind {kind!r}")
