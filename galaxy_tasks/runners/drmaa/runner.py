"""Grid Engine through DRMAA: completion events from the session's wait-any thread,
batched status from one `qstat -xml` plus one read of the accounting file.

wait() reaps the job's DRMAA record; if the process dies before the report is delivered,
the job is still in Grid Engine's accounting file, where `status()` (reconciliation) finds
it, so `report` need not be durable.

Submission is idempotent: a marker written in the job directory before the DRM is asked
(then replaced by the DRM's id) tells a later attempt whether it must look for an earlier
copy (`qstat -j <name>`, then the accounting file); a copy started anyway finds the job
already claimed by job.sh and exits 75, which is not reported as the job's end.

Resources are mapped into the native specification (see `native.py`): walltime_s to
`-l h_rt=`, cores to `-pe <parallel_environment> N`, memory_mb to `-l <memory_resource>=`.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.faults import crash_point
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.runners.accounting import not_before
from galaxy_tasks.runners.base import Completion, Launch, Report, Runner, Tracked
from galaxy_tasks.runners.drmaa.ends import from_info, from_record
from galaxy_tasks.runners.drmaa.native import native_specification
from galaxy_tasks.runners.drmaa.records import GridEngineRecords
from galaxy_tasks.runners.drmaa.session import close_session, message, open_session
from galaxy_tasks.runners.drmaa.wait import EXIT_TIMEOUT, INVALID_JOB, Ended, WaitError
from galaxy_tasks.runners.params import param

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


@dataclass(frozen=True)
class DrmaaParams:
    native_specification: str = param("", doc="Grid Engine options, appended last so they win over the mapped ones")
    parallel_environment: str | None = param(None, doc="map cores to `-pe <this> N` (ops/sge-up.sh creates smp)")
    memory_resource: str | None = param(None, doc="map memory_mb to `-l <this>=<M>M` (h_vmem, mem_free, a "
                                                  "consumable); per slot with a parallel environment")
    contact: str | None = param(None, doc="re-attach to the DRMAA session of an earlier process")
    contact_file: str | None = param(None, doc="where the runner keeps its session's contact itself "
                                               "(the DRMAA worker sets it per node name)")
    submit_retries: int = param(3, minimum=0, doc="retries of a submission the DRM denies for a reason that may pass")
    submit_backoff_s: float = param(0.5, minimum=0, doc="first delay between those retries (it doubles)")
    wait_timeout_s: int = param(2, minimum=1, doc="the wait-any timeout; bounds how long closing takes")
    accounting_file: str | None = param(None, doc="Grid Engine's accounting file "
                                                  "(default $SGE_ROOT/$SGE_CELL/common/accounting)")
    accounting_flush_s: float = param(2.0, minimum=0, doc="how long Grid Engine may take to write a record")
    qstat: str = param("qstat", doc="the command of the batched status query")


class DrmaaRunner(Runner):
    name = "drmaa"
    Params = DrmaaParams
    params: DrmaaParams
    holder = "workers.drmaa"

    def __init__(self, params: Any, report: Report, *, destination: str = "", host: str = "") -> None:
        super().__init__(params, report, destination=destination, host=host)
        self._drmaa = load_drmaa()
        self._session = open_session(self._drmaa, self.params)
        self._records = GridEngineRecords(self.params.qstat, self.params.accounting_file, self._session.count)
        self._closed = False

    @classmethod
    def url_params(cls, text: str) -> dict[str, Any]:
        """`drmaa://-q all.q/` (and the seeds' `drmaa://native/-q all.q/`)."""
        if (text + "/").startswith("native/"):
            text = text[len("native/"):]
        return {"native_specification": text.strip()} if text.strip() else {}

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

    def submit(self, launch: Launch) -> str:
        marker = launch.job_dir / SUBMIT_MARKER
        if marker.exists():
            existing = self._find_existing(launch, marker)
            if existing is not None:
                self._adopt(Tracked(launch.job_id, existing, launch.job_dir))
                return existing
        write_synced(marker, "submitting\n")
        external_id = self._run_job(launch, native_specification(launch, self.params))
        crash_point("drmaa_submitted", launch.job_id)  # before anything records the DRM's id
        write_synced(marker, external_id + "\n", sync=False)  # if lost, the lookup finds it
        self._session.follow(Tracked(launch.job_id, external_id, launch.job_dir), self)
        return external_id

    def cancel(self, tracked: Tracked) -> None:
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
        return result

    def recover(self, jobs: Sequence[Tracked]) -> None:
        """Re-attached (same contact): wait-any follows the jobs still active. Jobs that
        ended while nobody was attached are gone from DRMAA and come from accounting.
        In a new session, jobs still running are left to reconciliation (DRMAA cannot wait
        for jobs of another session)."""
        if not jobs:
            return
        ended = self.status(jobs)  # one qstat (and accounting read) for the whole batch
        for job in jobs:
            completion = ended[job.job_id]
            if completion is not None:
                self.emit(completion, job)
            elif self.reattached:
                self._session.follow(job, self)  # one that ends from now on: the session keeps it
            else:
                self._session.unfollow(job, self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close_session(self._session, self)

    # -- submission -------------------------------------------------------------------

    def _find_existing(self, launch: Launch, marker: Path) -> str | None:
        """A previous attempt got at least as far as asking the DRM: find its job."""
        recorded = marker.read_text().strip()
        if recorded.isdigit():
            return recorded  # the DRM had accepted it and we had written its id down
        queued = self._records.named(launch.external_name)
        if queued:
            return queued[-1]
        job_dir = JobDir(launch.job_dir)
        if job_dir.claimed_pid() is None and job_dir.recorded_exit_code() is None:
            return None  # no copy ever started the script: a new one is safe
        name = launch.external_name
        for attempt in range(2):
            found = self._records.accounting(set(), {name}, not_before([launch]))
            if found:
                return found[name].job_number
            if attempt == 0:
                time.sleep(self.params.accounting_flush_s)
        return None  # a new copy will stand down (exit 75) and its end is reported then

    def _run_job(self, launch: Launch, native: str) -> str:
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

    def _adopt(self, job: Tracked) -> None:
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

    def emit(self, completion: Completion, job: Tracked) -> None:
        """Write the end down in the job's directory, and report it."""
        try:
            self.ended(completion, job.job_dir)
        except Exception:  # the wait thread must outlive a failing callback
            log.exception("reporting the end of job %s failed", completion.job_id)


def write_synced(path: Path, text: str, *, sync: bool = True) -> None:
    """Write `text` whole or not at all (a rename), fsynced unless `sync` is False."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
