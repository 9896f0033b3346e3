"""The SlurmRunner and its params: submission (idempotent), cancel, status in batches,
recovery.

Submission is idempotent like the DRMAA runner's: a marker is written in the job directory
before sbatch runs (then replaced by Slurm's id); a later attempt that finds the marker
looks for a job of that name in squeue (`--states=all`), then in the jobcomp record, before
submitting again, and an sbatch that hung or lost its answer is followed by the same lookup
before it is tried again. A copy started anyway finds the job claimed by job.sh and stands
down (exit 75), which is not reported as the job's end. Jobs are submitted with
`--no-requeue`: a requeued batch script would only stand down, so a node failure is
reported as such and the lifecycle decides whether to try again.

The end of a job is announced by its batch script and confirmed with Slurm by the process's
listener (`listener.py`); `status()` asks Slurm directly, one squeue for a batch of jobs. A
report that is lost is found again by `status()` (reconciliation), so `report` need not be
durable.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from galaxy_tasks.errors import RunnerError, RunnerUnavailable
from galaxy_tasks.faults import crash_point
from galaxy_tasks.jobdir import JobDir, read_small, write_file
from galaxy_tasks.runners.accounting import not_before
from galaxy_tasks.runners.base import Completion, Launch, Report, Runner, Tracked, external_name
from galaxy_tasks.runners.params import param
from galaxy_tasks.runners.slurm import ends
from galaxy_tasks.runners.slurm.commands import INVALID_JOB, PERMANENT, TRANSIENT, Commands, tail
from galaxy_tasks.runners.slurm.ends import CANCEL_MARKER, StoodDown
from galaxy_tasks.runners.slurm.files import write_synced
from galaxy_tasks.runners.slurm.listener import JOB_ID, Verdict, close_listener, open_listener
from galaxy_tasks.runners.slurm.options import check_host, check_name, check_native, check_port, sbatch_options
from galaxy_tasks.runners.slurm.records import SLURM_ID, TERMINAL, SlurmJob, SlurmRecords
from galaxy_tasks.runners.slurm.script import WRAPPER, wrapper_script

log = logging.getLogger(__name__)

#: written in the job directory before sbatch runs (then replaced by Slurm's id), so a later
#: submit knows whether it must look for an earlier copy
SUBMIT_MARKER = "slurm_submit"


@dataclass(frozen=True)
class SlurmParams:
    """A slurm destination's params (docs/configuration.md has the table)."""

    partition: str | None = param(None, check=check_name, doc="the partition (`--partition`; none: Slurm's default)")
    account: str | None = param(None, check=check_name, doc="the account jobs are charged to (`--account`)")
    qos: str | None = param(None, check=check_name, doc="the quality of service (`--qos`)")
    native_specification: str = param(
        "", check=check_native, doc="further sbatch options, appended last so they win over the mapped ones; "
        "options that set the job's name, directory, environment or output (--job-name, --array, --wrap, "
        "--chdir, --export, --parsable, --requeue) are refused")
    state_file: str | None = param(
        None, doc="where the listener keeps its port and secret, locked while in use (the Slurm worker sets "
        "$GALAXY_TASKS_HOME/slurm/<node name>.listener); none: a new secret per process, so the jobs of an "
        "earlier process are found by reconciliation only")
    listen_host: str = param("", doc="the address the listener binds (empty: every interface)")
    listen_port: int = param(0, minimum=0, check=check_port,
                             doc="the listener's port while the state file names none (0: any free one)")
    announce_host: str | None = param(None, check=check_host,
                                      doc="where jobs announce their end (default: this host's name)")
    command_timeout_s: float = param(30.0, minimum=0.1, doc="seconds a Slurm command may take before it is "
                                                            "killed (and retried)")
    command_retries: int = param(2, minimum=0, doc="retries of a Slurm command that hangs or fails in a way "
                                                  "that may pass (the controller restarting)")
    command_backoff_s: float = param(0.5, minimum=0, doc="first delay between those retries (it doubles)")
    confirm_timeout_s: float = param(180.0, minimum=0, doc="how long an announced end may wait for Slurm to "
                                                           "agree before it is left to reconciliation (a restarted "
                                                           "slurmctld learns of ends only as slurmstepd retries, "
                                                           "every ~15 s)")
    jobcomp_file: str | None = param(None, doc="Slurm's jobcomp/filetxt record, for jobs squeue has forgotten "
                                               "(default $GT_SLURM_JOBCOMP, else JobCompLoc from `scontrol show "
                                               "config`)")
    jobcomp_scan_lines: int = param(1_000_000, minimum=1, doc="most lines of the jobcomp record read per look, "
                                                              "from its end")
    slurm_conf: str | None = param(None, doc="the slurm.conf the commands use (SLURM_CONF; default: the "
                                             "worker's)")
    sbatch: str = param("sbatch", doc="the submission command")
    squeue: str = param("squeue", doc="the command of the batched status query")
    scancel: str = param("scancel", doc="the cancel command")
    scontrol: str = param("scontrol", doc="asked once where the jobcomp record is")


class SlurmRunner(Runner):
    name = "slurm"
    Params = SlurmParams
    params: SlurmParams
    holder = "workers.slurm"

    def __init__(self, params: Any, report: Report, *, destination: str = "", host: str = "") -> None:
        super().__init__(params, report, destination=destination, host=host)
        p = self.params
        self.commands = Commands({"sbatch": p.sbatch, "squeue": p.squeue, "scancel": p.scancel,
                                  "scontrol": p.scontrol}, timeout_s=p.command_timeout_s,
                                 retries=p.command_retries, backoff_s=p.command_backoff_s, slurm_conf=p.slurm_conf)
        self.records = SlurmRecords(self.commands, p.jobcomp_file, p.jobcomp_scan_lines)
        self._closed = False
        self._listener = open_listener(p, self)

    @classmethod
    def url_params(cls, text: str) -> dict[str, Any]:
        """`slurm://<sbatch options>/` (and, like drmaa's, `slurm://native/<sbatch options>/`)."""
        if (text + "/").startswith("native/"):
            text = text[len("native/"):]
        return {"native_specification": text.strip()} if text.strip() else {}

    @property
    def confirm_timeout_s(self) -> float:
        return self.params.confirm_timeout_s

    @property
    def calls(self) -> Counter[str]:
        """Slurm commands this runner ran, by kind (sbatch, squeue, scancel, scontrol; a
        timed-out attempt counts too), and reads of the jobcomp record ("jobcomp")."""
        return self.commands.calls

    @property
    def address(self) -> tuple[str, int]:
        """Where jobs announce their end (host, port)."""
        return self._listener.announce_host, self._listener.port

    @property
    def listener_stats(self) -> dict[str, int]:
        """Announcements the process heard, by outcome (accepted, bad_token, malformed, early, ...)."""
        return self._listener.stats_snapshot()

    @property
    def latencies(self) -> list[float]:
        """Seconds from each accepted announcement to the report it led to (the latest 10,000)."""
        return self._listener.latencies_snapshot(self)

    # -- the runner interface ---------------------------------------------------------

    def submit(self, launch: Launch) -> str:
        if not JOB_ID.match(launch.job_id):
            raise RunnerError(f"job id {launch.job_id!r} cannot name a Slurm job (letters, digits, ._- only)")
        options = sbatch_options(launch, self.params)  # refuse bad input before anything is written
        marker = launch.job_dir / SUBMIT_MARKER
        if os.path.lexists(marker):
            existing, info = self._find_existing(launch, marker)
            if existing is not None:
                self._adopt(Tracked(launch.job_id, existing, launch.job_dir), info)
                return existing
        wrapper = launch.job_dir / WRAPPER
        host, port = self.address
        write_file(wrapper, wrapper_script(launch, host, port, self._listener.token(launch.job_id)), 0o700)
        write_synced(marker, "submitting\n", 0o600)
        external_id = self._sbatch(launch, [*options, str(wrapper)])
        crash_point("slurm_submitted", launch.job_id)  # before anything records Slurm's id
        write_file(marker, external_id + "\n", 0o600)  # if lost, the lookup by name finds it
        self._listener.follow(Tracked(launch.job_id, external_id, launch.job_dir), self)
        return external_id

    def cancel(self, tracked: Tracked) -> None:
        try:
            write_file(Path(tracked.job_dir) / CANCEL_MARKER, "cancel\n", 0o600)
        except OSError as exc:  # the directory may be gone: the cancel still goes ahead
            log.warning("cannot mark job %s as cancelled by us: %s", tracked.job_id, exc)
        proc = self.commands.run("scancel", [tracked.external_id])
        if proc.returncode != 0 and INVALID_JOB not in proc.stderr:
            raise RunnerError(f"Slurm could not cancel job {tracked.external_id}: {tail(proc.stderr)}")
        # a job cancelled while pending never runs its script, so nothing would announce it
        self._listener.hint_followed(tracked, self)

    def status(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None]:
        """One squeue for the whole batch, then one read of the jobcomp record for the jobs
        squeue no longer knows."""
        result: dict[str, Completion | None] = {job.job_id: None for job in jobs}
        if not jobs:
            return result
        for job, info in self._slurm_view(jobs).items():
            if info is None:
                result[job.job_id] = ends.without_record(job)
                continue
            if info.state not in TERMINAL:
                continue
            verdict = ends.completion(job, info, "reconcile")
            done = self._claimer_completion(job) if isinstance(verdict, StoodDown) else verdict
            result[job.job_id] = done
            if done is not None:
                self._listener.take(job.external_id, self)  # a later announcement changes nothing
        return result

    def recover(self, jobs: Sequence[Tracked]) -> None:
        """Follow every job again (their announcements reach this process if it listens on
        the port of the state file), and report those that ended meanwhile."""
        if not jobs:
            return
        for job in jobs:
            self._listener.follow(job, self, check_early=False)
        ended = self.status(jobs)
        for job in jobs:
            completion = ended[job.job_id]
            if completion is not None:
                self.emit(completion, job)
            else:
                self._listener.check_early(job, self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close_listener(self._listener, self)

    # -- announcements (called by the listener's confirmation thread) ----------------------

    def confirm(self, jobs: Sequence[Tracked]) -> dict[str, Verdict]:
        """For announced jobs, by Slurm id: a Completion (ended), STOOD_DOWN, or None (Slurm
        does not agree yet). Not retried here: the listener asks again soon."""
        result: dict[str, Verdict] = {}
        for job, info in self._slurm_view(jobs, retries=0).items():
            if info is None or info.state not in TERMINAL:
                result[job.external_id] = None
            else:
                result[job.external_id] = ends.completion(job, info, "runner")
        return result

    def emit(self, completion: Completion, job: Tracked) -> None:
        """Write the end down in the job's directory (the finish step takes it from there),
        and report it."""
        try:
            self.ended(completion, job.job_dir)
        except Exception:  # the listener's threads must outlive a failing callback
            log.exception("reporting the end of job %s failed", completion.job_id)

    def _slurm_view(self, jobs: Sequence[Tracked], *, retries: int | None = None) -> dict[Tracked, SlurmJob | None]:
        """What Slurm says of each job: squeue for all of them, the jobcomp record for those
        squeue has forgotten, None for a job neither knows."""
        seen = self.records.squeue_jobs([job.external_id for job in jobs], retries=retries)
        gone = [job for job in jobs if job.external_id not in seen]
        records = self.records.jobcomp_jobs({job.external_id for job in gone}, set(), not_before(gone)) if gone else {}
        return {job: seen.get(job.external_id) or records.get(job.external_id) for job in jobs}

    # -- submission -------------------------------------------------------------------

    def _find_existing(self, launch: Launch, marker: Path) -> tuple[str | None, SlurmJob | None]:
        """A previous attempt got at least as far as running sbatch: find its job (and what
        Slurm said of it, if it was asked)."""
        recorded = (read_small(marker, 64) or "").strip()
        if SLURM_ID.match(recorded):
            return recorded, None  # Slurm had accepted it and we had written its id down
        live = [job for job in self.records.squeue_named(launch.external_name)
                if not ends.stood_down(job, launch.job_dir)]
        if live:
            newest = max(live, key=lambda job: int(job.external_id))
            return newest.external_id, newest
        job_dir = JobDir(launch.job_dir)
        if not job_dir.claimed() and job_dir.recorded_exit_code() is None:
            return None, None  # no copy ever started the script: a new one is safe
        found = self._jobcomp_named(launch.external_name, launch.job_dir, not_before([launch]))
        if found is not None:
            return found.external_id, found
        return None, None  # a new copy will stand down (exit 75), and its end is reported then

    def _sbatch(self, launch: Launch, args: list[str]) -> str:
        """sbatch with bounded retries; before a retry, look for the job by name (the
        attempt that timed out or lost its answer may have reached the controller)."""
        attempts = self.params.command_retries + 1
        delay = self.params.command_backoff_s
        failure = ""
        transient = True
        for attempt in range(attempts):
            if attempt:
                time.sleep(delay)
                delay *= 2
                found = [job for job in self.records.squeue_named_quietly(launch.external_name)
                         if not ends.stood_down(job, launch.job_dir)]
                if found:
                    return max(found, key=lambda job: int(job.external_id)).external_id
            transient = True
            try:
                proc = self.commands.run("sbatch", ["--parsable", *args], retries=0)
            except RunnerUnavailable as exc:
                failure = str(exc)
            else:
                transient = False
                output = proc.stdout.strip().split(";", 1)[0]
                if proc.returncode == 0 and SLURM_ID.match(output):
                    return output
                failure = tail(proc.stderr) or tail(proc.stdout) or f"exit code {proc.returncode}"
                if proc.returncode != 0 and PERMANENT.search(failure) and not TRANSIENT.search(failure):
                    raise RunnerError(f"Slurm refused job {launch.external_name}: {failure}")
                if proc.returncode == 0:
                    failure = f"unreadable sbatch answer {proc.stdout.strip()!r}"
            log.warning("sbatch of %s failed (%s); attempt %d of %d", launch.external_name, failure,
                        attempt + 1, attempts)
        message = f"Slurm did not accept job {launch.external_name} after {attempts} attempts: {failure}"
        raise RunnerUnavailable(message) if transient else RunnerError(message)

    def _adopt(self, job: Tracked, info: SlurmJob | None) -> None:
        """Follow a job an earlier attempt submitted; if it ended (or nobody asked Slurm
        yet), confirm that once: a job still running announces its own end."""
        self._listener.follow(job, self)
        if info is None or info.state in TERMINAL:
            self._listener.hint_followed(job, self, once=True)

    def _jobcomp_named(self, name: str, job_dir: Path, since: float) -> SlurmJob | None:
        """The newest ended copy of the job in the jobcomp record that did not stand down."""
        found = self.records.jobcomp_jobs(set(), {name}, since, skip=lambda record: ends.stood_down(record, job_dir))
        return found.get(name)

    def _claimer_completion(self, job: Tracked) -> Completion | None:
        """The tracked copy stood down: the job is another copy's (or, if no other copy
        exists, Slurm requeued the tracked one after its command had started)."""
        name = external_name(job.job_id)
        others = [other for other in self.records.squeue_named_quietly(name)
                  if other.external_id != job.external_id and not ends.stood_down(other, job.job_dir)]
        for other in sorted(others, key=lambda other: int(other.external_id), reverse=True):
            if other.state not in TERMINAL:
                return None  # still running: its end decides
            done = ends.completion(Tracked(job.job_id, other.external_id, job.job_dir), other, "reconcile")
            if isinstance(done, Completion):
                return done
        record = self._jobcomp_named(name, Path(job.job_dir), not_before([job]))
        if record is not None and record.external_id != job.external_id:
            done = ends.completion(Tracked(job.job_id, record.external_id, job.job_dir), record, "reconcile")
            if isinstance(done, Completion):
                return done
        return ends.requeued(job)
