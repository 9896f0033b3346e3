"""One thread that calls each function at its time: a local job's walltime, however many
jobs run. It sleeps until the earliest deadline (or a new, earlier one), never looks at the
jobs in between: no loop over running jobs."""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class Deadlines:
    def __init__(self, name: str = "galaxy-tasks-deadlines") -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Call `action` once `time.time()` has passed `when` (an action may find there is
        nothing left to do: the job ended meanwhile)."""
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._order), action))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.time()):
                    self._cond.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.time()))
                if self._closed:
                    return
                _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception:  # noqa: BLE001 - one failing action must not stop the others
                log.exception("a deadline's action failed")
