"""An sshd of the test's own on 127.0.0.1: its own host key, one client key authorized, a
known_hosts file that holds its host key, so the worker's ssh checks it as in production."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from tests.support.services import require

SSHD = "/usr/sbin/sshd"


class Sshd:
    def __init__(self, where: Path, port: int) -> None:
        self.where, self.port = where, port
        where.mkdir(parents=True, exist_ok=True)
        os.chmod(where, 0o700)
        self.identity = where / "client_key"
        self.known_hosts = where / "known_hosts"
        host_key = where / "host_key"
        for key in (host_key, self.identity):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        shutil.copy(f"{self.identity}.pub", where / "authorized_keys")
        self.known_hosts.write_text(f"[127.0.0.1]:{port} {Path(f'{host_key}.pub').read_text()}")
        config = where / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {where / 'sshd.pid'}",
            f"AuthorizedKeysFile {where / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "PermitRootLogin prohibit-password", "StrictModes no",
            "MaxStartups 100", "MaxSessions 100", "LogLevel ERROR", ""]))
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.config = config
        self.start()

    def start(self) -> None:
        """The listener, once it accepts connections."""
        self.log = open(self.where / "sshd.log", "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {(self.where / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd not listening on port {self.port}")

    def close(self) -> None:
        """The listener stops (sessions already open live on, as with a real sshd)."""
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


def own_sshd(where: Path, port: int) -> Iterator[Sshd]:
    """A module's sshd on `port` (the test skipped, or failed under CI, without root, sshd,
    rsync or unshare: the worker's mount namespace needs root), closed after."""
    if os.geteuid() != 0:
        require("root (the worker's mount namespace, an sshd that logs the test's user in)", PermissionError())
    for program in (SSHD, "/usr/bin/rsync", "/usr/bin/unshare"):
        if not os.access(program, os.X_OK):
            require(f"{program} (apt-get install openssh-server rsync util-linux)", FileNotFoundError(program))
    server = Sshd(where, port)
    yield server
    server.close()
