"""The process's one DRMAA session and its one wait-any thread.

DRMAA allows one session per process, so every DrmaaRunner of a process (one per drmaa
destination) shares it. The wait-any thread is the event source: it blocks in
drmaa_wait(ANY) and hands each job that ends to the runner that follows it; nothing polls.
A job that ends before its submit or recovery registered it waits as an orphan until then.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Callable, Protocol, Sequence

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.runners.base import Completion, Tracked
from galaxy_tasks.runners.batch import PerProcess
from galaxy_tasks.runners.drmaa.params import DrmaaParams
from galaxy_tasks.runners.drmaa.wait import (
    EXIT_TIMEOUT,
    INVALID_JOB,
    NO_ACTIVE_SESSION,
    Ended,
    Wait,
    WaitError,
)

log = logging.getLogger(__name__)


class Follower(Protocol):
    """What the session calls back: a DrmaaRunner."""

    def deliver(self, job: Tracked, ended: Ended) -> None: ...

    def emit(self, completion: Completion, job: Tracked) -> None: ...

    def status(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None]: ...


def message(exc: BaseException) -> str:
    """A DRMAA error's text without python-drmaa's `code N:` prefix."""
    return re.sub(r"^code \d+: ", "", str(exc)).strip()


class Session:
    """The process's one DRMAA session and its one wait-any thread, shared by every
    Follower of the process: a worker serving several drmaa destinations has a runner
    per destination, and DRMAA allows one session per process."""

    def __init__(self, drmaa: ModuleType, params: DrmaaParams) -> None:
        self.wait_timeout_s = max(1, int(params.wait_timeout_s))
        self.calls: Counter[str] = Counter()
        self._errors = drmaa.errors
        self._lock = threading.Lock()  # the maps below and the counter
        self._cond = threading.Condition(self._lock)
        self._drm_lock = threading.Lock()  # python-drmaa's calls share one error buffer
        self._jobs: dict[str, tuple[Tracked, Follower]] = {}  # followed by wait-any
        self._unfollowed: dict[str, tuple[Tracked, Follower]] = {}  # not in this session
        self._orphans: dict[str, Ended] = {}  # ended before submit/recover registered them
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._contact_file: IO[str] | None = None
        contact = params.contact or self._claim_contact_file(params.contact_file)
        self.session = drmaa.Session()
        self.reattached = False
        if contact:
            try:
                self.session.initialize(contact)
                self.reattached = True
            except drmaa.errors.DrmaaException as exc:
                log.warning("cannot re-attach to DRMAA session %s (%s); opening a new one", contact, exc)
        if not self.reattached:
            try:
                self.session.initialize()
            except drmaa.errors.DrmaaException as exc:
                self._release_contact_file()
                raise RunnerError(f"cannot open a DRMAA session: {message(exc)}") from exc
        self.contact = str(self.session.contact)
        if self._contact_file is not None:
            handle = self._contact_file
            handle.seek(0)
            handle.truncate()
            handle.write(self.contact + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.wait = Wait(drmaa)

    def _claim_contact_file(self, path: str | None) -> str | None:
        """Read the contact an earlier process left there, and keep the file locked: a
        second live process on the same session would steal this one's wait-any events."""
        if not path:
            return None
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            log.warning("%s is held by another live process: opening a session of our own", path)
            return None
        self._contact_file = handle
        handle.seek(0)
        return handle.read().strip() or None

    def _release_contact_file(self) -> None:
        if self._contact_file is not None:
            self._contact_file.close()  # the content stays: the next process re-attaches
            self._contact_file = None

    def call(self, kind: str | None, fn: Callable[..., Any], *args: Any) -> Any:
        with self._drm_lock:
            if kind:
                self.count(kind)
            return fn(*args)

    def count(self, kind: str) -> None:
        with self._lock:
            self.calls[kind] += 1

    def follow(self, job: Tracked, runner: Follower) -> None:
        with self._cond:
            orphan = self._orphans.pop(job.external_id, None)
            if orphan is None:
                self._jobs[job.external_id] = (job, runner)
                self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="drmaa-wait-any", daemon=True)
                self._thread.start()
        if orphan is not None:
            runner.deliver(job, orphan)

    def unfollow(self, job: Tracked, runner: Follower) -> None:
        """A job DRMAA cannot wait for (another session's): reconciliation's to watch."""
        with self._lock:
            self._unfollowed[job.external_id] = (job, runner)

    def take(self, external_id: str) -> bool:
        """Stop following a job; True for the one caller that gets to report it."""
        with self._lock:
            return (self._jobs.pop(external_id, None) or self._unfollowed.pop(external_id, None)) is not None

    def pop_orphan(self, external_id: str) -> Ended | None:
        with self._lock:
            return self._orphans.pop(external_id, None)

    def forget(self, runner: Follower) -> None:
        """A runner closed: its jobs keep running; a later process recovers them."""
        with self._lock:
            for table in (self._jobs, self._unfollowed):
                for key in [key for key, (_, owner) in table.items() if owner is runner]:
                    del table[key]

    def _loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()  # nothing to wait for: block, don't spin
                if self._stopping:
                    return
                waited_for = set(self._jobs)
            self.count("wait")
            try:
                ended = self.wait(self.wait_timeout_s)
            except WaitError as exc:
                if exc.code == EXIT_TIMEOUT:
                    continue
                if exc.code == NO_ACTIVE_SESSION:
                    return
                if exc.code == INVALID_JOB:
                    # the session holds none of these jobs any more: ask the DRM once
                    self._resync(waited_for)
                    continue
                failures += 1
                log.warning("DRMAA wait failed (%s); retrying", exc)
                with self._cond:
                    self._cond.wait(min(30, 2 ** failures))
                continue
            failures = 0
            with self._lock:
                entry = self._jobs.pop(ended.external_id, None)
                if entry is None:
                    self._orphans[ended.external_id] = ended
                    continue
            job, runner = entry
            runner.deliver(job, ended)

    def _resync(self, external_ids: set[str]) -> None:
        by_runner: dict[Follower, list[Tracked]] = {}
        with self._lock:
            for key in external_ids & self._jobs.keys():
                job, runner = self._jobs[key]
                by_runner.setdefault(runner, []).append(job)
        for runner, jobs in by_runner.items():
            try:
                ended = runner.status(jobs)
            except RunnerError as exc:
                log.warning("cannot ask Grid Engine about %d jobs: %s", len(jobs), exc)
                with self._cond:
                    self._cond.wait(self.wait_timeout_s)
                return
            for job in jobs:
                completion = ended[job.job_id]
                if completion is not None:
                    if self.take(job.external_id):
                        runner.emit(completion, job)
                    continue
                with self._lock:  # still running, but not in this session
                    entry = self._jobs.pop(job.external_id, None)
                    if entry is not None:
                        self._unfollowed[job.external_id] = entry

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.wait_timeout_s + 5)
        try:
            self.session.exit()
        except self._errors.DrmaaException:
            pass
        self._release_contact_file()


SESSIONS: PerProcess[Session] = PerProcess("DRMAA session", "drmaa")


def open_session(drmaa: ModuleType, params: DrmaaParams, user: Follower) -> Session:
    """The process's DRMAA session (one per process: DRMAA allows no more), `user` among its users."""
    def check(current: Session) -> None:
        if params.contact and params.contact != current.contact:
            log.warning("one DRMAA session per process: staying on %s, not re-attaching to %s",
                        current.contact, params.contact)

    return SESSIONS.open(user, lambda: Session(drmaa, params), check)


def close_session(session: Session, runner: Follower) -> None:
    """`runner` no longer uses the session; the last user closes it (jobs keep running)."""
    session.forget(runner)
    SESSIONS.close(runner, Session.close)
