"""The listener's state file: its port and secret, kept so that a worker restarted under the
same name listens on the same port again and can still verify the announcements of the
jobs it submitted before. The file is locked while a process uses it (two live workers with
one name would otherwise share a port and a secret), created 0600, never opened through a
link, and an unreadable one is ignored (the jobs it served are then left to reconciliation).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import IO

from galaxy_tasks.errors import RunnerError

log = logging.getLogger(__name__)

_READ_LIMIT = 4096


class ListenerState:
    """The port and secret an earlier process left in `path` (None for either it did not
    leave, or for no path); the file stays locked until `release`."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.port: int | None = None
        self.secret: bytes | None = None
        self._handle: IO[str] | None = None
        if path:
            self._claim(path)

    def _claim(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunnerError(f"the Slurm listener state file {path} is held by another live process "
                              "(two workers with the same name?)") from None
        self._handle = handle
        text = handle.read(_READ_LIMIT)
        try:
            state = json.loads(text) if text.strip() else {}
            if not isinstance(state, dict):
                raise ValueError("not an object")
            secret = bytes.fromhex(state["secret"]) if state.get("secret") else None
        except ValueError as exc:
            log.warning("ignoring unreadable Slurm listener state in %s (%s)", path, exc)
            return
        port = state.get("port")
        self.port = port if isinstance(port, int) and 0 < port <= 65535 else None
        self.secret = secret

    def save(self, port: int, secret: bytes) -> None:
        if self._handle is None:
            return
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(json.dumps({"port": port, "secret": secret.hex()}) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def release(self) -> None:
        """Unlock the file; its content stays for the next process."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
