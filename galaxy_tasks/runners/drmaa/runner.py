"""Grid Engine through DRMAA: completion events from the session's wait-any thread,
batched status from one `qstat -xml` plus one read of the accounting file.

wait() reaps the job's DRMAA record; if the process dies before the report is delivered,
the job is still in Grid Engine's accounting file, where `status()` (reconciliation) finds
it, so `report` need not be durable.

Submission is idempotent (`batch.BatchRunner`): an earlier copy is looked for by name with
`qstat -j <name>`, then in the accounting file.

Resources are mapped into the native specification (see `native.py`): walltime_s to
`-l h_rt=`, cores to `-pe <parallel_environment> N`, memory_mb to `-l <memory_resource>=`.
"""
from __future__ import annotations

import logging
import re
import shlex
import time
from collections import Counter
from types import ModuleType
from typing import Any, Sequence

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.runners.accounting import not_before
from galaxy_tasks.runners.base import Completion, Launch, Report, Tracked
from galaxy_tasks.runners.batch import BatchRunner, Found
from galaxy_tasks.runners.drmaa.ends import from_info, from_record
from galaxy_tasks.runners.drmaa.native import native_specification
from galaxy_tasks.runners.drmaa.params import JOB_RESERVED, DrmaaParams
from galaxy_tasks.runners.drmaa.records import GridEngineRecords
from galaxy_tasks.runners.drmaa.session import close_session, message, open_session
from galaxy_tasks.runners.drmaa.wait import EXIT_TIMEOUT, INVALID_JOB, Ended, WaitError

log = logging.getLogger(__name__)

#: written in the job directory before the DRM is asked to run the job (then replaced by
#: the DRM's id), so a later submit knows whether it must look for an earlier copy
SUBMIT_MARKER = "drm_submit"

# Refusals that no retry will cure: the job itself is wrong (typically its native spec).
_PERMANENT = re.compile(r"unknown|invalid|not a valid|unrecognized|does not exist|no such|no suitable queue", re.I)


def load_drmaa() -> ModuleType:
    """python-drmaa, or a RunnerError that says what the environment lacks."""
    try:
        import drmaa
    except (ImportError, OSError, RuntimeError) as exc:
        raise RunnerError(
            f"cannot load DRMAA ({exc}); set DRMAA_LIBRARY_PATH, SGE_ROOT and SGE_CELL (ops/sge-up.sh "
            "writes them to an env.sh) and start the process with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096 "
            "(workers.drmaa does it itself: galaxy_tasks/runners/drmaa/tls.py)"
        ) from exc
    return drmaa


class DrmaaRunner(BatchRunner):
    name = "drmaa"
    marker = SUBMIT_MARKER
    submit_action, cancel_action = "qsub", "qdel"
    Params = DrmaaParams
    params: DrmaaParams
    holder = "workers.drmaa"
    native_style = "gridengine"
    native_reserved = JOB_RESERVED

    @classmethod
    def gives_gpus(cls, params: Any) -> bool:
        return bool(params.gpu_resource)

    def __init__(self, params: Any, report: Report, *, destination: str = "", host: str = "") -> None:
        super().__init__(params, report, destination=destination, host=host)
        self._drmaa = load_drmaa()
        self._session = open_session(self._drmaa, self.params, self)
        self._records = GridEngineRecords(self.params.qstat, self.params.accounting_file, self._session.count)
        self._closed = False

    @property
    def contact(self) -> str:
        """The session's contact string. Persist it (or give the runner `contact_file`)
        and pass it back as the `contact` param after a restart: jobs still running are
        then followed by wait-any again."""
        return self._session.contact

    @property
    def reattached(self) -> bool:
        return self._session.reattached

    @property
    def calls(self) -> Counter[str]:
        """DRM calls of this process by kind (runJob, wait, control, qstat, accounting)."""
        return self._session.calls

    @property
    def wait_timeout_s(self) -> int:
        return self._session.wait_timeout_s

    # -- the runner interface ---------------------------------------------------------

    def cancel(self, tracked: Tracked) -> None:
        if self.cancelled_as_user(tracked):
            return
        drmaa = self._drmaa
        try:
            self._session.call("control", self._session.session.control, tracked.external_id,
                               drmaa.JobControlAction.TERMINATE)
        except drmaa.errors.InvalidJobException:
            pass  # already ended (or never known): nothing to stop
        except drmaa.errors.DrmaaException as exc:
            raise RunnerError(f"Grid Engine could not cancel job {tracked.external_id}: {message(exc)}") from exc

    def status(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None]:
        result: dict[str, Completion | None] = {job.job_id: None for job in jobs}
        if not jobs:
            return result
        active = self._records.active()
        gone = [job for job in jobs if job.external_id not in active]
        if not gone:
            return result
        records = self._records.accounting({job.external_id for job in gone}, set(), not_before(gone))
        late = {job.external_id for job in gone
                if job.external_id not in records and JobDir(job.job_dir).recorded_exit_code() is None}
        if late:  # ended moments ago: give Grid Engine its flush time, once per batch
            time.sleep(self.params.accounting_flush_s)
            records.update(self._records.accounting(late, set(), not_before(gone)))
        for job in gone:
            result[job.job_id] = from_record(job, records.get(job.external_id))
        self.given_back(result, gone)
        return result

    def recover(self, jobs: Sequence[Tracked]) -> None:
        """Re-attached (same contact): wait-any follows the jobs still active. Jobs that
        ended while nobody was attached are gone from DRMAA and come from accounting.
        In a new session, jobs still running are left to reconciliation (DRMAA cannot wait
        for jobs of another session)."""
        if not jobs:
            return
        for job in self.report_ended(jobs):  # one qstat (and accounting read) for the whole batch
            if self.reattached:
                self._session.follow(job, self)  # one that ends from now on: the session keeps it
            else:
                self._session.unfollow(job, self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close_session(self._session, self)

    # -- submission -------------------------------------------------------------------

    def submission(self, launch: Launch) -> str:
        return native_specification(launch, self.params)

    def user_submission(self, launch: Launch, native: str) -> list[str]:
        """qsub's words for what `submit_now` asks of DRMAA, and job.sh's umask for a job
        whose files the worker must still read."""
        root = str(launch.job_dir)
        return ["-terse", "-N", launch.external_name, "-wd", root, "-o", f"{root}/drm.out", "-e", f"{root}/drm.err",
                "-v", "GT_UMASK=027", *shlex.split(native), "-b", "y", "/bin/sh", str(launch.script)]

    def submitted_id(self, answer: str) -> str:
        external_id = answer.strip().split(".", 1)[0]  # (an array job's answer is `<id>.<tasks>`)
        if not external_id.isdigit():
            raise RunnerError(f"unreadable qsub answer {answer.strip()[:200]!r}")
        return external_id

    def follow_as_user(self, job: Tracked) -> None:
        self.adopt(job)  # not in the session: wait-any cannot hear it, Grid Engine's records can

    def is_scheduler_id(self, text: str) -> bool:
        return text.isdigit()

    def queued_named(self, launch: Launch) -> Found | None:
        queued = self._records.named(launch.external_name)
        return Found(queued[-1]) if queued else None

    def ended_named(self, launch: Launch) -> Found | None:
        """From the accounting file, given Grid Engine its flush time once."""
        name = launch.external_name
        for attempt in range(2):
            found = self._records.accounting(set(), {name}, not_before([launch]))
            if found:
                return Found(found[name].job_number)
            if attempt == 0:
                time.sleep(self.params.accounting_flush_s)
        return None

    def follow(self, job: Tracked) -> None:
        self._session.follow(job, self)

    def submit_now(self, launch: Launch, native: str) -> str:
        drmaa, session = self._drmaa, self._session
        retries = self.params.submit_retries
        delay = self.params.submit_backoff_s
        root = str(launch.job_dir)
        template = session.call(None, session.session.createJobTemplate)
        try:
            template.remoteCommand = "/bin/sh"
            template.args = [str(launch.script)]
            template.jobName = launch.external_name
            template.workingDirectory = root
            # the DRM's own output, apart from the script's stdout/stderr files
            template.outputPath = f":{root}/drm.out"
            template.errorPath = f":{root}/drm.err"
            if native:
                template.nativeSpecification = native
            for attempt in range(retries + 1):
                try:
                    return str(session.call("runJob", session.session.runJob, template))
                except (drmaa.errors.DeniedByDrmException, drmaa.errors.TryLaterException,
                        drmaa.errors.DrmCommunicationException) as exc:
                    text = message(exc)
                    if _PERMANENT.search(text) or attempt == retries:
                        raise RunnerError(f"Grid Engine refused job {launch.external_name}: {text}") from exc
                    log.warning("Grid Engine refused %s (%s); retrying in %.1fs", launch.external_name, text, delay)
                    time.sleep(delay)
                    delay *= 2
                    if isinstance(exc, drmaa.errors.DrmCommunicationException):
                        # the request may have reached qmaster before the link broke
                        queued = self._records.named(launch.external_name)
                        if queued:
                            return queued[-1]
                except drmaa.errors.DrmaaException as exc:
                    raise RunnerError(f"Grid Engine refused job {launch.external_name}: {message(exc)}") from exc
            raise AssertionError("unreachable")
        finally:
            session.call(None, session.session.deleteJobTemplate, template)

    def adopt(self, job: Tracked, info: Any = None) -> None:
        """Follow a job an earlier attempt submitted: by wait-any if it is in our session,
        else from Grid Engine's records (or by reconciliation while it still runs)."""
        try:
            self._session.count("wait")
            ended = self._session.wait(0, job.external_id)
        except WaitError as exc:
            if exc.code == EXIT_TIMEOUT:
                self._session.follow(job, self)  # in our session and still active
                return
            if exc.code != INVALID_JOB:
                raise RunnerError(f"DRMAA cannot follow job {job.external_id}: {exc}") from exc
            orphan = self._session.pop_orphan(job.external_id)
            if orphan is not None:
                self.deliver(job, orphan)
                return
            completion = self.status([job])[job.job_id]
            if completion is not None:
                self.emit(completion, job)
            else:
                self._session.unfollow(job, self)
            return
        self.deliver(job, ended)

    # -- completion events (called by the session's wait-any thread) ------------------

    def deliver(self, job: Tracked, ended: Ended) -> None:
        """Called by the session's wait-any thread when the job ended."""
        completion = from_info(job, ended.info)
        if completion is not None:
            self.emit(completion, job)
