"""RabbitMQ for tests: a vhost of a test's own on the machine's shared server (nothing there is
ever stopped or restarted), or a private node (its own ports, data directory, Erlang cookie
and configuration) that a test may stop, kill and start again.

Pitfalls of a second node on a machine that already runs one, each handled below:
- the distribution port defaults to the AMQP port + 20000, which for the shared node is
  25672, already taken: both ports are chosen free and given explicitly;
- the node registers with the machine's epmd (127.0.0.1:4369; the node starts one if none
  runs), and listens for distribution on loopback only;
- the Erlang cookie is read from $HOME/.erlang.cookie: HOME is the node's own directory, so
  the node and the `rabbitmqctl` that talks to it share a cookie of their own and never
  touch the shared node's (or root's) cookie;
- /etc/rabbitmq/rabbitmq-env.conf names the shared node: the node reads an empty env file
  and a configuration file of its own instead, with no plugins (no management listener);
- a node takes about 5 s to boot on this machine: `start` waits for an AMQP handshake.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.redis_server import free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SHARED_HOST, SHARED_PORT = "127.0.0.1", int(os.environ.get("GT_TEST_RABBITMQ_PORT", "5672"))


def _ctl_shared() -> list[str]:
    """`rabbitmqctl` for the shared node (Debian's wrapper runs it as the rabbitmq user, with
    that user's cookie)."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    if not os.path.exists(ctl):
        raise RuntimeError("rabbitmqctl is not installed")
    return [ctl]


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> str:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip() or result.stdout}")
    return result.stdout


def amqp_ready(url: str, timeout: float = 1) -> bool:
    """True once the broker at `url` completes an AMQP handshake."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False


def _queue_counts(listing: str) -> dict[str, tuple[int, int]]:
    counts = {}
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].isdigit():
            counts[parts[0]] = (int(parts[1]), int(parts[2]))
    return counts


class _Counting:
    """Queue counts through `rabbitmqctl list_queues` (ready and unacknowledged messages: the
    AMQP protocol itself only tells the ready ones)."""

    vhost = "/"

    def _ctl(self, *args: str) -> str:
        raise NotImplementedError

    def counts(self) -> dict[str, tuple[int, int]]:
        """queue name -> (ready, unacknowledged)"""
        return _queue_counts(self._ctl("list_queues", "-p", self.vhost, "--no-table-headers", "--quiet",
                                       "name", "messages_ready", "messages_unacknowledged"))

    def queue_types(self) -> dict[str, str]:
        """queue name -> classic, quorum, ..."""
        listing = self._ctl("list_queues", "-p", self.vhost, "--no-table-headers", "--quiet", "name", "type")
        return dict(line.split("\t")[:2] for line in listing.splitlines() if "\t" in line)

    def queue_length(self, queue: str) -> int:
        return self.counts().get(queue, (0, 0))[0]

    def held(self, queues: tuple[str, ...]) -> int:
        counts = self.counts()
        return sum(sum(counts.get(q, (0, 0))) for q in queues)

    def purge(self, queue: str) -> None:
        self._ctl("purge_queue", "-p", self.vhost, queue)

    def lose_everything(self) -> None:
        """Every queued message is gone, as if the broker had come back empty."""
        for queue in self.counts():
            self.purge(queue)


class RabbitVhost(_Counting):
    """A vhost of its own on the shared RabbitMQ, deleted afterwards (with its queues)."""

    kind = "rabbitmq"

    def __init__(self) -> None:
        self.vhost = "gt-test-" + uuid.uuid4().hex[:12]
        self.url = f"amqp://guest:guest@{SHARED_HOST}:{SHARED_PORT}/{self.vhost}"

    def _ctl(self, *args: str) -> str:
        return _run([*_ctl_shared(), *args])

    def start(self) -> RabbitVhost:
        self._ctl("add_vhost", self.vhost)
        self._ctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        return self

    def close(self) -> None:
        try:
            self._ctl("delete_vhost", self.vhost)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass


class RabbitNode(_Counting):
    """A private RabbitMQ node: `stop` is a clean shutdown (what `systemctl restart` does),
    `kill` a SIGKILL of the Erlang VM; `start` again keeps its data directory, so durable
    queues and persistent messages survive both."""

    kind = "rabbitmq"

    def __init__(self, workdir: Path, config: str = "") -> None:
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise RuntimeError("rabbitmq-server is not installed")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.dist_port = free_port(), free_port()
        self.name = f"gt-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
            "log.console = false\nlog.file.level = info\n" + config)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _ctl(self, *args: str) -> str:
        return _run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env)

    def start(self, timeout: float = 60) -> RabbitNode:
        log = open(self.dir / "server.out", "ab")
        self.proc = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}: "
                                   f"{(self.dir / 'server.out').read_text()[-2000:]}")
            if self._listening() and amqp_ready(self.url):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"rabbitmq-server not ready after {timeout} s")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: the node closes connections and syncs its queues)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """The Erlang VM dies at once (SIGKILL): only what was on disk survives."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 10
        while self._listening() and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self, down_for: float = 0, hard: bool = False) -> None:
        self.kill() if hard else self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.kill()
