"""What every batch-scheduler runner shares (Grid Engine through DRMAA, Slurm, and any later
scheduler): idempotent submission, one process-wide connection to the scheduler, and the
written-down end. A scheduler plugs in with only what differs (how to submit, how to find a
job by name among queued and among ended ones, how to follow it); Pulsar keeps the same split
(`managers/base/external.py`).

Submission is idempotent: a marker is written (fsynced) in the job directory before the
scheduler is asked to run the job, then replaced by the scheduler's id. A later attempt that
finds the marker looks for the earlier copy (its id written down, or by the job's name among
queued jobs, then, if a copy ever started the script, in the scheduler's record of ended
jobs) and adopts it instead of submitting again. A copy started anyway finds the job claimed
by job.sh and stands down (exit 75), which is not reported as the job's end.

A job that names `run_as` is submitted as its user: the runner leaves the scheduler
command's arguments in the job directory and the privileged helper (`run_as_command`)
hands the directory to the user and runs the command as the user (docs/security.md). The
directory is then the user's, so the marker keeps saying `submitting` and a later attempt
finds the job by name; a cancel goes through the helper too, and the directory is handed
back to the worker as soon as the job's end is known, before the end is written down.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, NamedTuple, Sequence, TypeVar

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.faults import crash_point
from galaxy_tasks.jobdir import JobDir, read_small, write_file
from galaxy_tasks.runas import write_arguments
from galaxy_tasks.runners.asuser import call_helper, give_back, handed_over, run_as_command_param
from galaxy_tasks.runners.base import Completion, Launch, Runner, Tracked

log = logging.getLogger(__name__)


class Found(NamedTuple):
    """An earlier copy of a job the scheduler knows: its id, and what the scheduler said of
    it when it was looked up (None if it was only read back from the marker)."""

    external_id: str
    info: Any = None


@dataclass(frozen=True)
class BatchParams:
    """The params every batch scheduler's runner has."""

    run_as_command: str | None = run_as_command_param()


class BatchRunner(Runner):
    """A runner whose jobs a batch scheduler holds. Subclasses set `marker` and the helper's
    actions, and implement the hooks below; `submit`, `emit`, the real user's part and the
    runner URL are here."""

    runs_as_user = True
    params: BatchParams
    #: the submit marker's file name in the job directory
    marker: str = "submit"
    #: the privileged helper's actions that submit and cancel a job as its user
    submit_action: str = ""
    cancel_action: str = ""

    @classmethod
    def url_params(cls, text: str) -> dict[str, Any]:
        """`<runner>://<native options>/` (and the seeds' `<runner>://native/<options>/`)."""
        if (text + "/").startswith("native/"):
            text = text[len("native/"):]
        return {"native_specification": text.strip()} if text.strip() else {}

    def submit(self, launch: Launch) -> str:
        options = self.submission(launch)  # bad input is refused before anything is written
        helper = self.params.run_as_command if launch.run_as is not None else None
        if launch.run_as is not None and not helper:
            raise RunnerError(f"job {launch.job_id} runs as {launch.run_as}, but destination {self.destination!r} "
                              "has no run_as_command")
        marker = launch.job_dir / self.marker
        if os.path.lexists(marker):
            found = self._find_existing(launch, marker)
            if found is not None:
                self.adopt(Tracked(launch.job_id, found.external_id, launch.job_dir), found.info)
                return found.external_id
        self.give_back(launch.job_id, launch.job_dir)  # an earlier attempt handed it over, then failed
        self.before_submit(launch)
        write_file(marker, "submitting\n", 0o600, sync=True)
        if helper is None:
            external_id = self.submit_now(launch, options)
        else:
            write_arguments(launch.job_dir, self.user_submission(launch, options))
            external_id = self.submitted_id(call_helper(helper, self.submit_action, launch.job_id))
        crash_point(f"{self.name}_submitted", launch.job_id)  # before anything records the scheduler's id
        tracked = Tracked(launch.job_id, external_id, launch.job_dir)
        if helper is None:
            write_file(marker, external_id + "\n", 0o600)  # if lost, the lookup by name finds it
            self.follow(tracked)
        else:  # the directory is the user's now: the marker stays `submitting`, the lookup by name finds it
            self.follow_as_user(tracked)
        return external_id

    # -- the real user's part ---------------------------------------------------------

    def give_back(self, job_id: str, job_dir: Path) -> None:
        """`asuser.give_back` with this destination's helper."""
        give_back(self.params.run_as_command, job_id, job_dir)

    def given_back(self, ended: Mapping[str, Completion | None], jobs: Sequence[Tracked]) -> None:
        """`give_back` for each job `status` found ended (reconciliation writes no end note,
        but the worker must be able to clean the directory up)."""
        for job in jobs:
            if ended.get(job.job_id) is not None:
                try:
                    self.give_back(job.job_id, job.job_dir)
                except RunnerError as exc:
                    log.warning("%s", exc)

    def cancelled_as_user(self, tracked: Tracked) -> bool:
        """Cancel through the helper, as the job's user, if the user holds the directory
        (a worker may not cancel another user's job); False if the runner must cancel it."""
        if not (self.params.run_as_command and handed_over(tracked.job_dir)):
            return False
        call_helper(self.params.run_as_command, self.cancel_action, tracked.job_id)
        return True

    def report_ended(self, jobs: Sequence[Tracked]) -> list[Tracked]:
        """Ask the scheduler about `jobs` at once (after a restart) and report those that
        ended meanwhile; the others, still running, are returned to be followed again."""
        ended = self.status(jobs)
        running = []
        for job in jobs:
            completion = ended[job.job_id]
            if completion is not None:
                self.emit(completion, job)
            else:
                running.append(job)
        return running

    def emit(self, completion: Completion, job: Tracked) -> None:
        """Write the end down in the job's directory (the finish step takes it from there),
        and report it. Called from the scheduler connection's own threads, which must
        outlive a failing callback."""
        try:
            try:
                self.give_back(job.job_id, job.job_dir)
            except RunnerError as exc:  # the note cannot be written then; the exit code job.sh wrote may do
                log.warning("%s", exc)
            self.ended(completion, job.job_dir)
        except Exception:  # noqa: BLE001 - logged with its traceback; the thread goes on
            log.exception("reporting the end of job %s failed", completion.job_id)

    def _find_existing(self, launch: Launch, marker: Path) -> Found | None:
        """A previous attempt got at least as far as asking the scheduler: find its job."""
        recorded = (read_small(marker, 64) or "").strip()
        if self.is_scheduler_id(recorded):
            return Found(recorded)  # the scheduler had accepted it and its id was written down
        queued = self.queued_named(launch)
        if queued is not None:
            return queued
        job_dir = JobDir(launch.job_dir)
        if not job_dir.claimed() and job_dir.recorded_exit_code() is None:
            return None  # no copy ever started the script: a new one is safe
        return self.ended_named(launch)  # None: a new copy will stand down, its end reported then

    # -- what a scheduler supplies --------------------------------------------------------

    def submission(self, launch: Launch) -> Any:
        """What `submit_now` needs from the launch (the scheduler's options), checked."""
        raise NotImplementedError

    def before_submit(self, launch: Launch) -> None:
        """Anything the job directory needs before the first submission (a wrapper script)."""

    def submit_now(self, launch: Launch, submission: Any) -> str:
        """Ask the scheduler to run the job (retrying what may pass); its id."""
        raise NotImplementedError

    def user_submission(self, launch: Launch, submission: Any) -> list[str]:
        """The arguments of the scheduler's submit command that the helper runs as the user."""
        raise NotImplementedError

    def submitted_id(self, answer: str) -> str:
        """The scheduler's id in its submit command's answer; RunnerError if there is none."""
        raise NotImplementedError

    def follow_as_user(self, job: Tracked) -> None:
        """Hear of the end of a job submitted as its user, outside the process's connection."""
        self.follow(job)

    def is_scheduler_id(self, text: str) -> bool:
        raise NotImplementedError

    def queued_named(self, launch: Launch) -> Found | None:
        """The newest copy of the job the scheduler still holds (queued or running)."""
        raise NotImplementedError

    def ended_named(self, launch: Launch) -> Found | None:
        """The newest copy of the job in the scheduler's record of ended jobs."""
        raise NotImplementedError

    def follow(self, job: Tracked) -> None:
        """Hear of the job's end from now on."""
        raise NotImplementedError

    def adopt(self, job: Tracked, info: Any) -> None:
        """Follow a job an earlier attempt submitted (it may have ended meanwhile)."""
        raise NotImplementedError


Shared = TypeVar("Shared")


class PerProcess(Generic[Shared]):
    """The one connection a process holds to a scheduler (a DRMAA session, a Slurm
    listener), shared by every runner of that kind in the process and closed by the last.
    One opened before a fork is refused in the child: it belongs to the parent."""

    def __init__(self, what: str, runner: str) -> None:
        self.what = what
        self.runner = runner
        self._current: Shared | None = None
        self._pid = 0
        self._users: list[object] = []
        self._lock = threading.Lock()

    def open(self, user: object, build: Callable[[], Shared], check: Callable[[Shared], None]) -> Shared:
        """The process's connection, built now if there is none (`check` looks at one that
        exists: it may warn that it differs from what this user asked for)."""
        with self._lock:
            if self._current is not None and self._pid != os.getpid():
                raise RunnerError(f"the {self.what} was opened before this process was forked: serve "
                                  f"{self.runner} queues with a solo or threads pool, or build runners after the fork")
            if self._current is None:
                self._current, self._pid = build(), os.getpid()
            else:
                check(self._current)
            self._users.append(user)
            return self._current

    def close(self, user: object, close: Callable[[Shared], None]) -> None:
        """`user` no longer uses the connection; the last user closes it (jobs keep running)."""
        with self._lock:
            if user in self._users:
                self._users.remove(user)
            if self._users or self._current is None:
                return
            shared, self._current = self._current, None
        close(shared)
