"""Learn that processes ended without polling them: one thread blocks on pidfds.

`os.pidfd_open` gives a file descriptor that becomes readable when its process exits, for
our children and for processes an earlier worker started alike. One selector thread waits
on all of them, so following a thousand running jobs costs nothing until one of them ends.
"""
from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exit:
    pid: int
    #: wait status, known only for our own children
    status: int | None
    #: max resident set size in KiB of the process and its waited-for descendants
    max_rss_kb: int | None
    ended_at: float

    @property
    def exit_code(self) -> int | None:
        if self.status is None or not os.WIFEXITED(self.status):
            return None
        return os.WEXITSTATUS(self.status)

    @property
    def signal(self) -> int | None:
        if self.status is None or not os.WIFSIGNALED(self.status):
            return None
        return os.WTERMSIG(self.status)


class ExitWatcher:
    """Calls `on_exit(exit, tag)` once for every watched process, from its own thread."""

    def __init__(self, on_exit: Callable[[Exit, object], None]) -> None:
        self._on_exit = on_exit
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int, bool, object]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="galaxy-tasks-exit-watcher", daemon=True)
        self._thread.start()

    def watch(self, pid: int, tag: object, *, child: bool) -> bool:
        """Start watching `pid`; False if it no longer exists (the caller reports it)."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        with self._lock:
            self._pending.append((fd, pid, child, tag))
        os.write(self._wake_w, b"x")
        return True

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select():
                if key.data is None:
                    self._take_pending()
                else:
                    self._reap(key.fd, *key.data)

    def _take_pending(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            pending, self._pending = self._pending, []
        for fd, pid, child, tag in pending:
            self._selector.register(fd, selectors.EVENT_READ, (pid, child, tag))

    def _reap(self, fd: int, pid: int, child: bool, tag: object) -> None:
        self._selector.unregister(fd)
        os.close(fd)
        status = rss = None
        if child:
            try:
                _, status, usage = os.wait4(pid, 0)
                rss = usage.ru_maxrss
            except ChildProcessError:
                pass
        try:
            self._on_exit(Exit(pid, status, rss, time.time()), tag)
        except Exception:
            log.exception("event=exit_handler_failed pid=%s", pid)
