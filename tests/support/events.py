"""The report callback a runner is built with in the runner tests (DRMAA, Slurm): it
collects the completions and lets a test wait for one, without a broker."""
from __future__ import annotations

import threading
import time

from galaxy_tasks.runners.base import Completion


class Events:
    """Collects completions; `wait_for` blocks until one of a job arrives."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[Completion] = []

    def __call__(self, completion: Completion) -> None:
        with self._cond:
            self.items.append(completion)
            self._cond.notify_all()

    def of(self, job_id: str) -> list[Completion]:
        with self._cond:
            return [c for c in self.items if c.job_id == job_id]

    def wait_for(self, job_id: str, timeout: float = 90) -> Completion:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self.items if c.job_id == job_id]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no completion for {job_id} within {timeout}s; got {self.items}")
                self._cond.wait(left)
