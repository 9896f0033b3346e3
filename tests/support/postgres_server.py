"""A PostgreSQL cluster of a test's own (initdb, another port, its own data directory), which
the test may stop and start again; the machine's shared server is never touched.

As root, the cluster belongs to the `postgres` user (initdb refuses root), in a directory of
its own under /tmp that the test removes afterwards."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.redis_server import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} (PostgreSQL server binaries) is not installed")
    return path


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="gt-pg-"))
        self.data = self.dir / "data"
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.running = False

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *cmd: str, timeout: float = 120) -> str:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self.as_postgres else list(cmd)
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def init(self) -> PostgresServer:
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
                       "max_connections = 300\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "shared_buffers = 32MB\n")
        return self

    def start(self) -> PostgresServer:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                  "start")
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast`: clients are disconnected and the server shuts down cleanly (a restart);
        `immediate`: it stops at once and recovers from its log when it starts (a crash)."""
        if self.running:
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
            self.running = False

    def restart(self, down_for: float, mode: str = "fast") -> None:
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def create_database(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
