"""Looking for a running interactive tool's entry points, one job at a time.

Galaxy learns an interactive tool's ports from `container_runtime.json`, which its container
monitor writes in the job's working directory once the container is up; Galaxy's own
runners look for it from their monitor loops (the local runner every 0.5 s). The plugin has
no monitor loop, so each running job of such a tool gets a lookout of its own, a thread that
asks Galaxy to look every `interval_s` until there is nothing more to look for (Galaxy has
the entry points, the job failed or ended), it is stopped (the job's end event), or
`bound_s` passes. Jobs of other tools get no lookout: a site's ordinary jobs cost nothing.
Plain Python: no Galaxy import.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

#: how often a lookout looks, as Galaxy's local runner does
INTERVAL_S = 0.5
#: how long a lookout looks before it gives up (a container image can take minutes to pull)
BOUND_S = 3600

#: one look; True when there is nothing more to look for
Look = Callable[[], bool]


class Lookouts:
    """The lookouts of one runner, by job id. `gave_up(job_id)` is called when one gives up,
    `counted(n)` with how many are looking each time one starts or ends."""

    def __init__(self, interval_s: float = INTERVAL_S, bound_s: float = BOUND_S,
                 gave_up: Callable[[str], None] = lambda job_id: None,
                 counted: Callable[[int], None] = lambda looking: None) -> None:
        self.interval_s = interval_s
        self.bound_s = bound_s
        self.gave_up = gave_up
        self.counted = counted
        self._lock = threading.Lock()
        self._running: dict[str, tuple[threading.Event, threading.Thread]] = {}

    def start(self, job_id: str, look: Look) -> bool:
        """A lookout for the job, which looks at once; False if one is already looking."""
        stop = threading.Event()
        thread = threading.Thread(target=self._run, args=(job_id, look, stop), daemon=True,
                                  name=f"entry-points-{job_id}")
        with self._lock:
            if job_id in self._running:
                return False
            self._running[job_id] = (stop, thread)
            looking = len(self._running)
        self.counted(looking)
        thread.start()
        return True

    def stop(self, job_id: str) -> None:
        """The job ended: its lookout, if it has one, stops without looking again."""
        with self._lock:
            running = self._running.pop(job_id, None)
            looking = len(self._running)
        if running is not None:
            running[0].set()
            self.counted(looking)

    def stop_all(self, timeout: float = 5) -> None:
        with self._lock:
            running, self._running = list(self._running.values()), {}
        for stop, _ in running:
            stop.set()
        for _, thread in running:
            if thread is not threading.current_thread():
                thread.join(timeout)
        self.counted(0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._running)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._running

    def _run(self, job_id: str, look: Look, stop: threading.Event) -> None:
        deadline = time.monotonic() + self.bound_s
        try:
            while not stop.is_set():
                try:
                    if look():
                        return
                except Exception:  # noqa: BLE001 - a database that is away: look again next time
                    log.exception("(%s) could not look for the job's entry points; looking again", job_id)
                if time.monotonic() >= deadline:
                    log.warning("(%s) no entry points after %g s: stopped looking for them (Galaxy shows "
                                "none for this job while it runs)", job_id, self.bound_s)
                    self.gave_up(job_id)
                    return
                stop.wait(self.interval_s)
        finally:
            with self._lock:
                ours = self._running.get(job_id, (None,))[0] is stop
                if ours:
                    del self._running[job_id]
                looking = len(self._running)
            if ours:
                self.counted(looking)
