"""What the broker settings depend on: which kind of broker a URL names, and kombu's Redis
transport with the one fix a worker needs to survive a Redis restart.

The fix (kombu 5.7, Celery 5.7): when the worker's consumer loses its Redis connection it
first `collect()`s the connection, which detaches the transport from it
(`transport.client = None`), then `close()`s it. Closing a channel that still holds a
delivered, unacknowledged message (a step that was running, or whose acknowledgement the
outage swallowed) restores that message through a new Redis client, whose parameters are
read from `transport.client`: an `AttributeError`, which is not a connection error, so
Celery calls it unrecoverable and the worker exits instead of reconnecting. Here that
restore fails with a connection error instead, which Celery ignores while it reconnects.
Nothing is lost: the message is still in Redis's `unacked` hash if Redis kept it (restored
after the visibility timeout), and the job's row re-drives it through reconciliation if not.
"""
from __future__ import annotations

import logging
import socket
from typing import Any

from kombu.transport import redis as kombu_redis

from galaxy_tasks.logs import event

log = logging.getLogger(__name__)


def kind(broker_url: str) -> str:
    """`redis`, `amqp` (RabbitMQ), `memory` (embedded), or the URL's scheme."""
    scheme = broker_url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return "redis"
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "amqp"
    return scheme


def keepalive_options() -> dict[int, int]:
    """TCP keepalive that gives up on a silent peer after about a minute (30 s idle, then 3
    probes 10 s apart), where the platform lets a socket say so."""
    names = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}
    return {getattr(socket, name): value for name, value in names.items() if hasattr(socket, name)}


class RedisChannel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # the transport was detached from its connection
            event(log, "broker_restore_skipped", level=logging.WARNING,
                  reason="connection closed; unacknowledged messages stay with Redis or the job rows")
            raise kombu_redis.get_redis_ConnectionError()("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel
