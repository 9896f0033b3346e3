"""What the broker settings depend on: which kind of broker a URL names, and kombu's Redis
transport with two changes: a message is taken into kombu's `unacked` hash by Redis itself,
and a worker survives a Redis restart.

The take: kombu's Redis consumer waits with `BRPOP`, which pops the message and hands it to
the connection; only once the worker has read it does kombu write it to the `unacked` hash
that restores it after the visibility timeout. A message popped into a connection that died
silently (a network cut, a worker killed while cut off) was therefore in neither place:
lost, and a submit has no row to re-drive it from. Here one script pops the message and
records it in the `unacked` hash and its index in the same step, so whatever becomes of the
reply, the message is restored after the visibility timeout by any worker's periodic sweep.
A script cannot block, so a consumer whose take found nothing looks again after a short wait
(`BUSY_WAIT_S` just after it took a message, `IDLE_WAIT_S` when idle); one that found a
message looks again at once.

The restart fix (kombu 5.7, Celery 5.7): when the worker's consumer loses its Redis connection it
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
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

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


#: seconds between two sweeps of a worker over the messages taken and never acknowledged:
#: those older than the visibility timeout go back to their queue
RESTORE_INTERVAL_S = 10
#: how long a consumer that found nothing waits before it looks at its queues again: the
#: longest a message that arrives then waits. BUSY_WAIT_S while the consumer took a message
#: in the last BUSY_FOR_S (a job's next step follows its last within milliseconds), else
#: IDLE_WAIT_S (20 looks a second per idle consumer). A worker waits on its event loop's
#: timer; a consumer without an event loop waits in Redis (a BLPOP on a key no one fills,
#: which Redis ends at its own clock's tick: 100 ms at its default `hz` of 10).
BUSY_WAIT_S = 0.005
BUSY_FOR_S = 2.0
IDLE_WAIT_S = 0.05
IDLE_KEY = "_galaxy_tasks.idle"
#: a larger message is taken as BRPOP takes it (not recorded before the worker reads it):
#: the script does not decode it, and the worker refuses it anyway (guard.MAX_MESSAGE_BYTES)
MAX_RECORDED_BYTES = 8 * 1024 * 1024

#: KEYS: the unacked index and hash, then the queue keys in the order BRPOP would read them.
#: Pops the first message and writes it where kombu's own `append` would (tag -> [message,
#: exchange, routing key], scored by the time): a message that is not kombu's shape is
#: returned without being recorded, for the worker to refuse.
TAKE = """
local now = redis.call('TIME')
for i = 3, #KEYS do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    if #item <= tonumber(ARGV[1]) then
      local ok, message = pcall(cjson.decode, item)
      if ok and type(message) == 'table' and type(message.properties) == 'table' then
        local tag, info = message.properties.delivery_tag, message.properties.delivery_info
        if type(tag) == 'string' and type(info) == 'table' then
          redis.call('ZADD', KEYS[1], tonumber(now[1]) + tonumber(now[2]) / 1000000, tag)
          redis.call('HSET', KEYS[2], tag,
                     '[' .. item .. ',' .. cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
        end
      end
    end
    return {KEYS[i], item}
  end
end
return false
"""


class RedisChannel(kombu_redis.Channel):
    #: when this consumer last took a message, and when its last take found nothing
    #: (monotonic; the next take waits after an empty one)
    _taken_at = float("-inf")
    _empty_at: float | None = None
    #: the event loop's timer of the next take, while one waits
    _timer: Any = None
    #: the take in flight began with a wait in Redis (two replies to read)
    _waited = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:  # the take names its keys itself
            raise ValueError("galaxy-tasks' Redis transport does not support the global_keyprefix option")

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Send the take where kombu sends BRPOP (its reply is read by `_brpop_read` when the
        connection is readable); after an empty take, only once the wait is over."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        commands: list[tuple[Any, ...]] = []
        if self._empty_at is not None:
            left = self._empty_at + self._wait() - monotonic()
            if left > 0 and self._look_later(left):
                return
            if left > 0:  # no event loop: wait in Redis
                commands.append(("BLPOP", IDLE_KEY, self._wait()))
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        commands.append(("EVAL", TAKE, 2 + len(keys), self.unacked_index_key, self.unacked_key, *keys,
                         MAX_RECORDED_BYTES))
        connection = self.client.connection
        self._waited = len(commands) == 2
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu declares it None
        connection.send_packed_command(connection.pack_commands(commands))

    def _wait(self) -> float:
        return BUSY_WAIT_S if monotonic() - self._taken_at < BUSY_FOR_S else IDLE_WAIT_S

    def _look_later(self, seconds: float) -> bool:
        """Have the worker's event loop take again in `seconds` (False: no event loop). Set
        when an empty reply is read, so the loop's next poll already waits no longer."""
        loop = getattr(self.connection, "event_loop", None)
        if loop is None:
            return False
        if self._timer is None:
            self._timer = loop.call_later(seconds, self._look_again)
        return True

    def _look_again(self) -> None:
        """The wait after an empty take is over: take again, through the poller (which
        registers the connection first if it was replaced), as the event loop's tick does."""
        self._timer = None
        if not self.closed and self.active_queues and not self._in_poll and self.qos.can_consume():
            self.connection.cycle._register_BRPOP(self)

    def _brpop_read(self, **options: Any) -> bool:
        connection = self.client.connection
        try:
            try:
                if self._waited:
                    self.client.parse_response(connection, "BLPOP", **options)
                taken = self.client.parse_response(connection, "EVAL", **options)
            except self.connection_errors:
                connection.disconnect()  # the next look reconnects
                raise
            if not taken:
                self._empty_at = monotonic()
                self._look_later(self._wait())
                raise Empty()
            self._empty_at, self._taken_at = None, monotonic()
            dest, item = taken
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self.connection._deliver(loads(bytes_to_str(item)), dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu declares it a bool, sets None
            self._flush_brpop_reauth()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().close()

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # the transport was detached from its connection
            event(log, "broker_restore_skipped", level=logging.WARNING,
                  reason="connection closed; unacknowledged messages stay with Redis or the job rows")
            raise kombu_redis.get_redis_ConnectionError()("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel
    #: the worker's event loop, once the consumer runs on one (its timer schedules the takes)
    event_loop: Any = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        self.event_loop = loop
        super().register_with_event_loop(connection, loop)
