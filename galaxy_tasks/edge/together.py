"""Send from a thread of one's own, together when things come together.

A step that announces a job's state, or a runner thread that saw a job end, hands the item
over and goes on; the sending thread sends it at once if nothing else is being sent, and
otherwise with everything that came meanwhile, in one message. So a job alone loses no
time, and a burst costs one message per batch instead of one per job, without the steps
ever waiting for the broker (the group commit of databases, for messages).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Generic, TypeVar

from galaxy_tasks.logs import event

log = logging.getLogger(__name__)

Item = TypeVar("Item")

#: an item that comes within this long of the last send is part of a flow: it may wait
#: `linger_s` for the next ones; one that comes after a quiet spell goes at once
FLOWING_S = 0.05


class Together(Generic[Item]):
    """`together(item)` from any thread; `send(items)` runs in this sender's thread, at most
    `most` items at a time. What was not sent when the process ends is lost: use it only for
    what has another way home (a job event is in the database, an end in its directory)."""

    def __init__(self, send: Callable[[list[Item]], None], what: str, most: int, linger_s: float = 0.0) -> None:
        self._send = send
        self.what = what
        self.most = most
        self.linger_s = linger_s
        self._start_afresh()
        os.register_at_fork(after_in_child=self._start_afresh)  # the parent's thread is not in a child

    def _start_afresh(self) -> None:
        self._pending: list[Item] = []
        self._sending = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def __call__(self, item: Item) -> None:
        with self._changed:
            self._pending.append(item)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"galaxy-tasks-{self.what}", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every item taken has been sent (a process about to end); False if some
        were still waiting after `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending and not self._sending, timeout)

    def _run(self) -> None:
        last_sent = 0.0
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._pending))
                if self.linger_s and time.monotonic() - last_sent < FLOWING_S:
                    self._changed.wait_for(lambda: len(self._pending) >= self.most, self.linger_s)
                batch, self._pending = self._pending[:self.most], self._pending[self.most:]
                self._sending = True
            try:
                self._send(batch)
            except Exception as exc:  # noqa: BLE001 - each item has another way home
                event(log, "send_failed", level=logging.WARNING, what=self.what, items=len(batch), error=str(exc))
            finally:
                last_sent = time.monotonic()
                with self._changed:
                    self._sending = False
                    self._changed.notify_all()
