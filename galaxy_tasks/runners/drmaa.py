"""Grid Engine through DRMAA: one session per process, completion events from one wait-any
thread, batched status from one `qstat -xml` plus one read of the accounting file.

DRMAA allows one session per process, so every DrmaaRunner of a process (one per drmaa
destination) shares it and its wait-any thread. Sessions do not survive fork(): serve the
drmaa queues with a solo or threads pool (or build the runner after the fork). wait() reaps
the job's DRMAA record; if the process dies before the report is delivered, the job is
still in Grid Engine's accounting file, where `status()` (reconciliation) finds it, so
`report` need not be durable.

Submission is idempotent: a marker written in the job directory before the DRM is asked
(then replaced by the DRM's id) tells a later attempt whether it must look for an earlier
copy (`qstat -j <name>`, then the accounting file); a copy started anyway finds the job
already claimed by job.sh and exits 75, which is not reported as the job's end.

Destination params (the runner's own, overridden per job by `Launch.params`):

- `contact`: re-attach to the DRMAA session of an earlier process (see `contact`), or
- `contact_file`: where the runner keeps its contact itself (read at start, written once
  the session is open, locked while it is in use).
- `native_specification`: appended last, so it wins over the mapped options below.
- Resource mapping into the native specification:
  - `walltime_s` -> `-l h_rt=H:MM:SS` (h_rt exists in every Grid Engine; the DRMAA
    wall-clock attribute is refused by SGE);
  - `cores` -> `-pe <parallel_environment> N`, only if `parallel_environment` is set
    (ops/sge-up.sh creates `smp`);
  - `memory_mb` -> `-l <memory_resource>=<M>M`, only if `memory_resource` names the
    complex (e.g. `h_vmem`, `mem_free`, a site consumable). Grid Engine counts these per
    slot, so with a parallel environment the value is memory_mb / cores, rounded up.
- `submit_retries` (3), `submit_backoff_s` (0.5): retries of a submission the DRM denies
  for a reason that may pass (exponential back-off).
- `wait_timeout_s` (2): the wait-any timeout; bounds how long `close()` takes.
- `accounting_file` (`$SGE_ROOT/$SGE_CELL/common/accounting`), `accounting_flush_s` (2):
  where ended jobs are looked up, and how long Grid Engine may take to write a record
  (its `flush_time`).
- `qstat` (`qstat`): the command used for the batched status query.
"""
from __future__ import annotations

import fcntl
import getpass
import logging
import math
import os
import re
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from ctypes import POINTER, byref, c_int, c_long, c_size_t, c_char_p, create_string_buffer, pointer, sizeof
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Callable, Iterator, Mapping, NamedTuple, Sequence

from galaxy_tasks.faults import crash_point
from galaxy_tasks.jobdir import CLAIMED_EXIT_CODE, JobDir
from galaxy_tasks.runners.base import Completion, Launch, Report, Runner, RunnerError, Tracked

log = logging.getLogger(__name__)

#: written in the job directory before the DRM is asked to run the job (then replaced by
#: the DRM's id), so a later submit knows whether it must look for an earlier copy
SUBMIT_MARKER = "drm_submit"

# DRMAA 1.0 error codes (drmaa.h)
_NO_ACTIVE_SESSION = 5
_INVALID_JOB = 18
_EXIT_TIMEOUT = 23
_NO_RUSAGE = 24

# Refusals that no retry will cure: the job itself is wrong (typically its native spec).
_PERMANENT = re.compile(r"unknown|invalid|not a valid|unrecognized|does not exist|no such|no suitable queue", re.I)

# Grid Engine's `failed` codes (execution_states.h) worth a readable reason.
_FAILED = {
    1: "failed before the job started",
    7: "could not start the prolog",
    8: "the prolog failed",
    11: "failed before the job started",
    14: "could not start the epilog",
    15: "the epilog failed",
    17: "the shepherd died through a signal",
    22: "the execution host lost the running job",
    25: "rescheduled",
    26: "could not open the job's input/output file",
    27: "could not find the requested shell",
    28: "could not change into the working directory",
    37: "qmaster enforced the h_rt limit",
    100: "assumedly after the job (deleted, or killed on a limit)",
}


def _load_drmaa() -> ModuleType:
    try:
        import drmaa
    except (ImportError, OSError, RuntimeError) as exc:
        raise RunnerError(
            f"cannot load DRMAA ({exc}); set DRMAA_LIBRARY_PATH, SGE_ROOT, SGE_CELL and "
            "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096 before Python starts "
            "(ops/sge-up.sh writes them to an env.sh)"
        ) from exc
    return drmaa


class _Record(NamedTuple):
    """One accounting line: what Grid Engine remembers of a job that ended."""

    job_number: str
    job_name: str
    end_time: float
    failed: int
    exit_status: int
    wall_time_s: float
    max_rss_kb: int


class _Ended(NamedTuple):
    """What wait-any returned: the DRM's id and its JobInfo (None: no usage information)."""

    external_id: str
    info: Any


class DrmaaRunner(Runner):
    name = "drmaa"

    def __init__(self, params: Mapping[str, Any], report: Report) -> None:
        super().__init__(params, report)
        self._drmaa = _load_drmaa()
        self._session = _open_session(self._drmaa, self.params)
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

    def submit(self, launch: Launch) -> str:
        params = {**self.params, **launch.params}
        marker = launch.job_dir / SUBMIT_MARKER
        if marker.exists():
            existing = self._find_existing(launch, marker)
            if existing is not None:
                self._adopt(Tracked(launch.job_id, existing, launch.job_dir))
                return existing
        _write_synced(marker, "submitting\n")
        external_id = self._run_job(launch, native_specification(launch, params), params)
        crash_point("drmaa_submitted", launch.job_id)  # before anything records the DRM's id
        _write_synced(marker, external_id + "\n", sync=False)  # if lost, the lookup finds it
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
            raise RunnerError(f"Grid Engine could not cancel job {tracked.external_id}: {_message(exc)}") from exc

    def status(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None]:
        result: dict[str, Completion | None] = {job.job_id: None for job in jobs}
        if not jobs:
            return result
        active = self._qstat()
        gone = [job for job in jobs if job.external_id not in active]
        if not gone:
            return result
        records = self._accounting({job.external_id for job in gone}, set(), _not_before(gone))
        late = {job.external_id for job in gone
                if job.external_id not in records and JobDir(job.job_dir).recorded_exit_code() is None}
        if late:  # ended moments ago: give Grid Engine its flush time, once per batch
            time.sleep(float(self.params.get("accounting_flush_s", 2)))
            records.update(self._accounting(late, set(), _not_before(gone)))
        for job in gone:
            result[job.job_id] = self._from_record(job, records.get(job.external_id))
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
                self._emit(completion)
            elif self.reattached:
                self._session.follow(job, self)  # one that ends from now on: the session keeps it
            else:
                self._session.unfollow(job, self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_session(self._session, self)

    # -- submission -------------------------------------------------------------------

    def _find_existing(self, launch: Launch, marker: Path) -> str | None:
        """A previous attempt got at least as far as asking the DRM: find its job."""
        recorded = marker.read_text().strip()
        if recorded.isdigit():
            return recorded  # the DRM had accepted it and we had written its id down
        queued = self._qstat_named(launch.external_name)
        if queued:
            return queued[-1]
        job_dir = JobDir(launch.job_dir)
        if job_dir.claimed_pid() is None and job_dir.recorded_exit_code() is None:
            return None  # no copy ever started the script: a new one is safe
        name = launch.external_name
        for attempt in range(2):
            found = self._accounting(set(), {name}, _not_before([launch]))
            if found:
                return found[name].job_number
            if attempt == 0:
                time.sleep(float(self.params.get("accounting_flush_s", 2)))
        return None  # a new copy will stand down (exit 75) and its end is reported then

    def _run_job(self, launch: Launch, native: str, params: Mapping[str, Any]) -> str:
        drmaa, session = self._drmaa, self._session
        retries = int(params.get("submit_retries", 3))
        delay = float(params.get("submit_backoff_s", 0.5))
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
                    message = _message(exc)
                    if _PERMANENT.search(message) or attempt == retries:
                        raise RunnerError(f"Grid Engine refused job {launch.external_name}: {message}") from exc
                    log.warning("Grid Engine refused %s (%s); retrying in %.1fs", launch.external_name, message, delay)
                    time.sleep(delay)
                    delay *= 2
                    if isinstance(exc, drmaa.errors.DrmCommunicationException):
                        # the request may have reached qmaster before the link broke
                        queued = self._qstat_named(launch.external_name)
                        if queued:
                            return queued[-1]
                except drmaa.errors.DrmaaException as exc:
                    raise RunnerError(f"Grid Engine refused job {launch.external_name}: {_message(exc)}") from exc
            raise AssertionError("unreachable")
        finally:
            session.call(None, session.session.deleteJobTemplate, template)

    def _adopt(self, job: Tracked) -> None:
        """Follow a job an earlier attempt submitted: by wait-any if it is in our session,
        else from Grid Engine's records (or by reconciliation while it still runs)."""
        try:
            self._session.count("wait")
            ended = self._session.wait(0, job.external_id)
        except _WaitError as exc:
            if exc.code == _EXIT_TIMEOUT:
                self._session.follow(job, self)  # in our session and still active
                return
            if exc.code != _INVALID_JOB:
                raise RunnerError(f"DRMAA cannot follow job {job.external_id}: {exc}") from exc
            orphan = self._session.pop_orphan(job.external_id)
            if orphan is not None:
                self._deliver(job, orphan)
                return
            completion = self.status([job])[job.job_id]
            if completion is not None:
                self._emit(completion)
            else:
                self._session.unfollow(job, self)
            return
        self._deliver(job, ended)

    # -- completion events (called by the session's wait-any thread) ------------------

    def _deliver(self, job: Tracked, ended: _Ended) -> None:
        completion = self._from_info(job, ended.info)
        if completion is not None:
            self._emit(completion)

    def _emit(self, completion: Completion) -> None:
        try:
            self.report(completion)
        except Exception:  # the wait thread must outlive a failing callback
            log.exception("reporting the end of job %s failed", completion.job_id)

    def _from_info(self, job: Tracked, info: Any) -> Completion | None:
        job_dir = JobDir(job.job_dir)
        recorded = job_dir.recorded_exit_code()
        if info is None:  # DRMAA code 24: deleted before it ran
            return Completion(job.job_id, exit_code=recorded, external_id=job.external_id,
                              reason="aborted: the job was deleted before it ran")
        if (info.hasExited and info.exitStatus == CLAIMED_EXIT_CODE and recorded is None
                and job_dir.claimed_pid() is not None):
            log.warning("DRM job %s of job %s was a duplicate copy and stood down", job.external_id, job.job_id)
            return None
        usage = info.resourceUsage or {}
        signum = reason = None
        if info.wasAborted:
            reason = "aborted: the job was deleted (cancelled) before it ended"
        elif info.hasSignal:
            signum = _signal_number(info.terminatedSignal)
            reason = f"killed by signal {info.terminatedSignal}"
        exit_code = recorded if recorded is not None else (info.exitStatus if info.hasExited else None)
        end = _float(usage.get("end_time"))
        return Completion(
            job.job_id, exit_code=exit_code, signal=signum, reason=reason,
            wall_time_s=_float(usage.get("ru_wallclock")),
            max_rss_kb=_int(usage.get("ru_maxrss")),
            ended_at=end if end else time.time(),
            external_id=job.external_id,
        )

    # -- Grid Engine's own records ----------------------------------------------------

    def _from_record(self, job: Tracked, record: _Record | None) -> Completion | None:
        recorded = JobDir(job.job_dir).recorded_exit_code()
        if record is None:
            if recorded is not None:
                return Completion(job.job_id, exit_code=recorded, external_id=job.external_id, source="job_dir")
            return Completion(job.job_id, external_id=job.external_id, source="reconcile",
                              reason=f"Grid Engine job {job.external_id} ended without an accounting "
                                     "record (deleted before it ran?)")
        if (record.exit_status == CLAIMED_EXIT_CODE and recorded is None
                and JobDir(job.job_dir).claimed_pid() is not None):
            return None  # a duplicate copy stood down; the copy that claimed the job decides
        signum = None
        if recorded is None and record.exit_status > 128:
            signum = record.exit_status - 128
        reasons = []
        if record.failed:
            reasons.append(f"Grid Engine failure {record.failed}: {_FAILED.get(record.failed, 'see accounting(5)')}")
        if signum:
            reasons.append(f"killed by signal {_signal_name(signum)}")
        exit_code = recorded if recorded is not None else (None if signum else record.exit_status)
        return Completion(
            job.job_id, exit_code=exit_code, signal=signum, reason="; ".join(reasons) or None,
            wall_time_s=record.wall_time_s, max_rss_kb=record.max_rss_kb,
            ended_at=record.end_time or time.time(), external_id=job.external_id, source="reconcile",
        )

    def _qstat(self) -> set[str]:
        """Ids of all of our user's jobs Grid Engine still holds (pending, running, ...)."""
        proc = self._run_qstat("-xml", "-u", getpass.getuser())
        if proc.returncode != 0:
            raise RunnerError(f"qstat failed: {proc.stderr.strip()}")
        try:
            root = ET.fromstring(proc.stdout)
        except ET.ParseError as exc:
            raise RunnerError(f"unreadable qstat output: {exc}") from exc
        return {el.text.strip() for el in root.iter("JB_job_number") if el.text}

    def _qstat_named(self, name: str) -> list[str]:
        """Ids of the jobs Grid Engine holds under this name, oldest first."""
        proc = self._run_qstat("-j", name)
        if proc.returncode != 0:
            if "do not exist" in proc.stdout + proc.stderr:
                return []
            raise RunnerError(f"qstat -j {name} failed: {proc.stderr.strip()}")
        return sorted(set(re.findall(r"^job_number:\s+(\d+)", proc.stdout, re.M)), key=int)

    def _run_qstat(self, *args: str) -> subprocess.CompletedProcess[str]:
        self._count("qstat")
        try:
            return subprocess.run([str(self.params.get("qstat", "qstat")), *args],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RunnerError(f"qstat failed: {exc}") from exc

    def _accounting(self, ids: set[str], names: set[str], not_before: float) -> dict[str, _Record]:
        """Find jobs in the accounting file (what `qacct` reads), newest first, stopping
        at records older than the job directories: one pass for a whole batch."""
        self._count("accounting")
        path = self.params.get("accounting_file") or os.path.join(
            os.environ.get("SGE_ROOT", "/var/lib/gridengine"), os.environ.get("SGE_CELL", "default"),
            "common", "accounting")
        found: dict[str, _Record] = {}
        wanted = len(ids) + len(names)
        try:
            for line in _reverse_lines(Path(path)):
                record = _parse_record(line)
                if record is None:
                    continue
                if 0 < record.end_time < not_before:
                    break
                if record.job_number in ids:
                    key = record.job_number
                elif record.job_name in names and record.exit_status != CLAIMED_EXIT_CODE:
                    key = record.job_name  # (a copy that stood down did not run the job)
                else:
                    continue
                if key not in found:
                    found[key] = record
                    if len(found) == wanted:
                        break
        except OSError as exc:
            raise RunnerError(f"cannot read the Grid Engine accounting file {path}: {exc}") from exc
        return found

    def _count(self, kind: str) -> None:
        self._session.count(kind)


class _Session:
    """The process's one DRMAA session and its one wait-any thread, shared by every
    DrmaaRunner of the process: a worker serving several drmaa destinations has a runner
    per destination, and DRMAA allows one session per process."""

    def __init__(self, drmaa: ModuleType, params: Mapping[str, Any]) -> None:
        self.pid = os.getpid()
        self.users = 0
        self.wait_timeout_s = max(1, int(params.get("wait_timeout_s", 2)))
        self.calls: Counter[str] = Counter()
        self._errors = drmaa.errors
        self._lock = threading.Lock()  # the maps below and the counter
        self._cond = threading.Condition(self._lock)
        self._drm_lock = threading.Lock()  # python-drmaa's calls share one error buffer
        self._jobs: dict[str, tuple[Tracked, DrmaaRunner]] = {}  # followed by wait-any
        self._unfollowed: dict[str, tuple[Tracked, DrmaaRunner]] = {}  # not in this session
        self._orphans: dict[str, _Ended] = {}  # ended before submit/recover registered them
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._contact_file: IO[str] | None = None
        contact = params.get("contact") or self._claim_contact_file(params.get("contact_file"))
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
                raise RunnerError(f"cannot open a DRMAA session: {_message(exc)}") from exc
        self.contact = str(self.session.contact)
        if self._contact_file is not None:
            handle = self._contact_file
            handle.seek(0)
            handle.truncate()
            handle.write(self.contact + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.wait = _Wait(drmaa)

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

    def follow(self, job: Tracked, runner: DrmaaRunner) -> None:
        with self._cond:
            orphan = self._orphans.pop(job.external_id, None)
            if orphan is None:
                self._jobs[job.external_id] = (job, runner)
                self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="drmaa-wait-any", daemon=True)
                self._thread.start()
        if orphan is not None:
            runner._deliver(job, orphan)

    def unfollow(self, job: Tracked, runner: DrmaaRunner) -> None:
        """A job DRMAA cannot wait for (another session's): reconciliation's to watch."""
        with self._lock:
            self._unfollowed[job.external_id] = (job, runner)

    def take(self, external_id: str) -> bool:
        """Stop following a job; True for the one caller that gets to report it."""
        with self._lock:
            return (self._jobs.pop(external_id, None) or self._unfollowed.pop(external_id, None)) is not None

    def pop_orphan(self, external_id: str) -> _Ended | None:
        with self._lock:
            return self._orphans.pop(external_id, None)

    def forget(self, runner: DrmaaRunner) -> None:
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
            except _WaitError as exc:
                if exc.code == _EXIT_TIMEOUT:
                    continue
                if exc.code == _NO_ACTIVE_SESSION:
                    return
                if exc.code == _INVALID_JOB:
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
            runner._deliver(job, ended)

    def _resync(self, external_ids: set[str]) -> None:
        by_runner: dict[DrmaaRunner, list[Tracked]] = {}
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
                        runner._emit(completion)
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


_current: _Session | None = None
_current_lock = threading.Lock()


def _open_session(drmaa: ModuleType, params: Mapping[str, Any]) -> _Session:
    global _current
    with _current_lock:
        if _current is not None and _current.pid != os.getpid():
            raise RunnerError("the DRMAA session was opened before this process was forked: serve drmaa "
                              "queues with a solo or threads pool, or build runners after the fork")
        if _current is None:
            _current = _Session(drmaa, params)
        elif params.get("contact") and params["contact"] != _current.contact:
            log.warning("one DRMAA session per process: staying on %s, not re-attaching to %s",
                        _current.contact, params["contact"])
        _current.users += 1
        return _current


def _close_session(session: _Session, runner: DrmaaRunner) -> None:
    global _current
    session.forget(runner)
    with _current_lock:
        session.users -= 1
        if session.users > 0:
            return
        if _current is session:
            _current = None
    session.close()


def native_specification(launch: Launch, params: Mapping[str, Any]) -> str:
    """Grid Engine options for the job's resources, then the destination's own options."""
    parts: list[str] = []
    if launch.walltime_s:
        hours, rest = divmod(int(launch.walltime_s), 3600)
        parts.append(f"-l h_rt={hours}:{rest // 60:02d}:{rest % 60:02d}")
    pe = params.get("parallel_environment")
    if pe:
        parts.append(f"-pe {pe} {launch.cores}")
    memory = params.get("memory_resource")
    if memory and launch.memory_mb:
        per_slot = math.ceil(launch.memory_mb / launch.cores) if pe else launch.memory_mb
        parts.append(f"-l {memory}={per_slot}M")
    if params.get("native_specification"):
        parts.append(str(params["native_specification"]))
    return " ".join(parts)


class _WaitError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"code {code}: {message}")
        self.code = code


class _Wait:
    """drmaa_wait with an error buffer of its own. python-drmaa's wait shares one
    global error buffer with every other call (its frequent timeouts could overwrite the
    message of a refused submission in another thread) and drops the job id on code 24."""

    def __init__(self, drmaa: ModuleType) -> None:
        from drmaa import helpers, wrappers

        self._drmaa, self._helpers, self._wrappers = drmaa, helpers, wrappers
        self._fn = wrappers._lib["drmaa_wait"]  # a fresh function object: own restype
        self._fn.restype = c_int
        self._fn.argtypes = [c_char_p, c_char_p, c_size_t, POINTER(c_int), c_long,
                             POINTER(POINTER(wrappers.drmaa_attr_values_t)), c_char_p, c_size_t]

    def __call__(self, timeout_s: int, job_id: str | None = None) -> _Ended:
        w, h = self._wrappers, self._helpers
        jid, error, stat = create_string_buffer(128), create_string_buffer(1024), c_int()
        rusage = pointer(POINTER(w.drmaa_attr_values_t)())
        wanted = job_id.encode() if job_id else self._drmaa.Session.JOB_IDS_SESSION_ANY
        code = self._fn(wanted, jid, sizeof(jid), byref(stat),
                        timeout_s, rusage, error, sizeof(error))
        if code == _NO_RUSAGE:
            return _Ended(jid.value.decode(), None)
        if code != 0:
            raise _WaitError(code, error.value.decode(errors="replace"))
        usage = h.adapt_rusage(rusage)
        flags = {}
        for name, fn in (("exited", w.drmaa_wifexited), ("aborted", w.drmaa_wifaborted),
                         ("signaled", w.drmaa_wifsignaled)):
            value = c_int()
            h.c(fn, byref(value), stat)
            flags[name] = bool(value.value)
        exit_status = c_int()
        h.c(w.drmaa_wexitstatus, byref(exit_status), stat)
        term = create_string_buffer(64)
        if flags["signaled"]:
            h.c(w.drmaa_wtermsig, term, sizeof(term), stat)
        info = self._drmaa.JobInfo(jid.value.decode(), flags["exited"], flags["signaled"], term.value.decode(),
                                   False, flags["aborted"], int(exit_status.value), usage)
        return _Ended(info.jobId, info)


def _parse_record(line: bytes) -> _Record | None:
    fields = line.decode(errors="replace").split(":")
    if len(fields) < 17 or fields[0].startswith("#"):
        return None
    try:
        return _Record(
            job_number=fields[5], job_name=fields[4], end_time=float(fields[10]),
            failed=int(fields[11]), exit_status=int(fields[12]),
            wall_time_s=float(fields[13]), max_rss_kb=int(float(fields[16])),
        )
    except ValueError:
        return None


def _reverse_lines(path: Path, block: int = 1 << 16) -> Iterator[bytes]:
    """The file's lines, last first: recent jobs are at the end of a long file."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        position, rest = handle.tell(), b""
        while position > 0:
            size = min(block, position)
            position -= size
            handle.seek(position)
            lines = (handle.read(size) + rest).split(b"\n")
            rest = lines.pop(0)
            yield from reversed([line for line in lines if line])
        if rest:
            yield rest


def _not_before(jobs: Sequence[Launch | Tracked]) -> float:
    """No job can have ended before its job script was written (minus clock skew)."""
    times = []
    for job in jobs:
        try:
            times.append((Path(job.job_dir) / "job.sh").stat().st_mtime)
        except OSError:
            return 0.0
    return min(times) - 300 if times else 0.0


def _write_synced(path: Path, text: str, *, sync: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _message(exc: BaseException) -> str:
    return re.sub(r"^code \d+: ", "", str(exc)).strip()


def _signal_number(name: str) -> int | None:
    try:
        return int(signal.Signals[name])
    except KeyError:
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)
