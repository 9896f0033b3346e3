"""A runner that runs nothing: jobs "run" until a test ends them, in memory.

For fast tests of the lifecycle (launch, finish, cancel during a launch, a full runner, a
refusing runner) on SQLite, in milliseconds. Like dramatiq's stub broker it is a real
implementation of the interface, so the code under test cannot tell it from a real
runner; the real runners are still tested for real, each in its own tier.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from galaxy_tasks.errors import RunnerFull
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.runners.base import Completion, Launch, Report, Runner, Tracked
from galaxy_tasks.runners.params import param


@dataclass(frozen=True)
class StubParams:
    slots: int | None = param(None, minimum=1, doc="most jobs running at once (then RunnerFull)")


class StubRunner(Runner):
    name = "stub"
    Params = StubParams
    params: StubParams

    def __init__(self, params: Any, report: Report, *, destination: str = "", host: str = "") -> None:
        super().__init__(params, report, destination=destination, host=host)
        self._lock = threading.Lock()
        self.running: dict[str, Launch] = {}
        self.finished: dict[str, Completion] = {}
        self.starts: dict[str, int] = {}  # job id -> how many times its command started
        self.cancelled: list[str] = []
        #: raised by the next submit (then cleared): RunnerError, RunnerUnavailable, ...
        self.fail_next: Exception | None = None
        #: called inside submit, after the job "started" and before submit returns
        self.during_submit: Callable[[Launch], None] | None = None

    @classmethod
    def slots(cls, params: Any) -> int | None:
        return params.slots if isinstance(params, StubParams) else None

    def submit(self, launch: Launch) -> str:
        with self._lock:
            error, self.fail_next = self.fail_next, None
            if error is None and launch.job_id not in self.running and not self._has_room():
                error = RunnerFull(f"all {self.params.slots} stub slots are taken")
            if error is not None:
                raise error
            ended = self.finished.get(launch.job_id)
            if launch.job_id not in self.running and (
                    ended is None or ended.external_id != self.external_id(launch.job_id, launch.attempt)):
                self.running[launch.job_id] = launch
                self.starts[launch.job_id] = self.starts.get(launch.job_id, 0) + 1
        if self.during_submit is not None:
            self.during_submit(launch)
        return self.external_id(launch.job_id, launch.attempt)

    def has_room(self) -> bool:
        with self._lock:
            return self._has_room()

    def cancel(self, tracked: Tracked) -> None:
        with self._lock:
            self.cancelled.append(tracked.job_id)
            alive = tracked.job_id in self.running
        if alive:  # like a killed process, whose exit is reported
            self.end(tracked.job_id, signal=15, reason="killed by signal SIGTERM")

    def status(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None]:
        with self._lock:
            return {job.job_id: None if job.job_id in self.running else self.finished.get(
                job.job_id, Completion(job.job_id, reason="the stub runner does not know this job",
                                       external_id=job.external_id, source="reconcile"))
                    for job in jobs}

    def end(self, job_id: str, exit_code: int | None = None, signal: int | None = None,
            reason: str | None = None, report: bool = True) -> Completion:
        """The job's "process" ended: written down in its job directory, as a real runner
        does, and reported (unless `report` is False: an event lost on the way, for
        reconciliation to find)."""
        with self._lock:
            launch = self.running.pop(job_id, None)
            completion = Completion(job_id, exit_code=exit_code, signal=signal, reason=reason,
                                    external_id=self.external_id(job_id, launch.attempt if launch else 1))
            self.finished[job_id] = completion
        if launch is not None:
            JobDir(launch.job_dir).write_end_note(completion.note())
        if report:
            self.report(completion)
        return completion

    @staticmethod
    def external_id(job_id: str, attempt: int = 1) -> str:
        return f"stub-{job_id}" if attempt <= 1 else f"stub-{job_id}.a{attempt}"

    def _has_room(self) -> bool:
        return self.params.slots is None or len(self.running) < self.params.slots
