"""A Redis server of a test's own, on its own port, that the test may kill and restart.

By default it keeps nothing on disk (a restart comes back empty, as a cache-style Redis
does); `aof=True` starts it with the append-only file, `appendfsync always`, so a restart
keeps every message it acknowledged."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, workdir: Path, aof: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.aof = aof
        self.proc: subprocess.Popen | None = None
        self.start_args: list[str] = []
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        persistence = (["--appendonly", "yes", "--appendfsync", "always", "--appendfilename", f"gt-{self.port}.aof",
                        "--appenddirname", f"gt-aof-{self.port}"] if self.aof else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.workdir), *self.start_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self, down_for: float = 0) -> None:
        """Killed (SIGKILL: nothing flushed on the way out) and started again on the same port
        and directory after `down_for` seconds."""
        self.kill()
        time.sleep(down_for)
        self.start()
