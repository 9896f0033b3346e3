"""Slurm as a batch scheduler (idempotent submission is `batch.BatchRunner`'s): sbatch,
the lookups by name (squeue `--states=all`, then the jobcomp record), cancel, status in
batches, recovery. An sbatch that hung or lost its answer is followed by the lookup by
name before it is tried again. Jobs are submitted with
`--no-requeue`: a requeued batch script would only stand down, so a node failure is
reported as such and the lifecycle decides whether to try again.

The end of a job is announced by its batch script and confirmed with Slurm by the process's
listener (`listener.py`); `status()` asks Slurm directly, one squeue for a batch of jobs. A
report that is lost is found again by `status()` (reconciliation), so `report` need not be
durable.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from galaxy_tasks.errors import RunnerError, RunnerUnavailable
from galaxy_tasks.jobdir import write_file
from galaxy_tasks.names import external_name
from galaxy_tasks.runners.accounting import not_before
from galaxy_tasks.runners.base import Completion, Launch, Report, Tracked
from galaxy_tasks.runners.batch import BatchRunner, Found
from galaxy_tasks.runners.slurm import ends
from galaxy_tasks.runners.slurm.commands import INVALID_JOB, PERMANENT, TRANSIENT, Commands, tail
from galaxy_tasks.runners.slurm.ends import CANCEL_MARKER, StoodDown
from galaxy_tasks.runners.slurm.listener import JOB_ID, Verdict, close_listener, open_listener
from galaxy_tasks.runners.slurm.options import sbatch_options
from galaxy_tasks.runners.slurm.params import JOB_RESERVED, SlurmParams
from galaxy_tasks.runners.slurm.records import SLURM_ID, TERMINAL, SlurmJob, SlurmRecords
from galaxy_tasks.runners.slurm.script import WRAPPER, wrapper_script

log = logging.getLogger(__name__)

#: written in the job directory before sbatch runs (then replaced by Slurm's id), so a later
#: submit knows whether it must look for an earlier copy
SUBMIT_MARKER = "slurm_submit"


class SlurmRunner(BatchRunner):
    name = "slurm"
    marker = SUBMIT_MARKER
    submit_action, cancel_action = "sbatch", "scancel"
    Params = SlurmParams
    params: SlurmParams
    holder = "workers.slurm"
    native_style = "slurm"
    native_reserved = JOB_RESERVED

    def __init__(self, params: Any, report: Report, *, destination: str = "", host: str = "") -> None:
        super().__init__(params, report, destination=destination, host=host)
        p = self.params
        self.commands = Commands({"sbatch": p.sbatch, "squeue": p.squeue, "scancel": p.scancel,
                                  "scontrol": p.scontrol}, timeout_s=p.command_timeout_s,
                                 retries=p.command_retries, backoff_s=p.command_backoff_s, slurm_conf=p.slurm_conf)
        self.records = SlurmRecords(self.commands, p.jobcomp_file, p.jobcomp_scan_lines)
        self._closed = False
        self._listener = open_listener(p, self)

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

    @classmethod
    def gives_gpus(cls, params: Any) -> bool:
        return True

    # -- the runner interface ---------------------------------------------------------

    def submission(self, launch: Launch) -> list[str]:
        if not JOB_ID.match(launch.job_id):
            raise RunnerError(f"job id {launch.job_id!r} cannot name a Slurm job (letters, digits, ._- only)")
        return sbatch_options(launch, self.params)

    def before_submit(self, launch: Launch) -> None:
        host, port = self.address
        write_file(launch.job_dir / WRAPPER, wrapper_script(launch, host, port, self._listener.token(launch.job_id)),
                   0o700)

    def submit_now(self, launch: Launch, options: list[str]) -> str:
        return self._sbatch(launch, [*options, str(launch.job_dir / WRAPPER)])

    def user_submission(self, launch: Launch, options: list[str]) -> list[str]:
        return ["--parsable", *options, str(launch.job_dir / WRAPPER)]

    def submitted_id(self, answer: str) -> str:
        external_id = answer.strip().split(";", 1)[0]
        if not SLURM_ID.match(external_id):
            raise RunnerError(f"unreadable sbatch answer {answer.strip()[:200]!r}")
        return external_id

    def is_scheduler_id(self, text: str) -> bool:
        return bool(SLURM_ID.match(text))

    def queued_named(self, launch: Launch) -> Found | None:
        live = [job for job in self.records.squeue_named(launch.external_name)
                if not ends.stood_down(job, launch.job_dir)]
        if not live:
            return None
        newest = max(live, key=lambda job: int(job.external_id))
        return Found(newest.external_id, newest)

    def ended_named(self, launch: Launch) -> Found | None:
        found = self._jobcomp_named(launch.external_name, launch.job_dir, not_before([launch]))
        return Found(found.external_id, found) if found is not None else None

    def follow(self, job: Tracked) -> None:
        self._listener.follow(job, self)

    def cancel(self, tracked: Tracked) -> None:
        try:
            write_file(Path(tracked.job_dir) / CANCEL_MARKER, "cancel\n", 0o600)
        except OSError as exc:  # the directory may be gone: the cancel still goes ahead
            log.warning("cannot mark job %s as cancelled by us: %s", tracked.job_id, exc)
        if not self.cancelled_as_user(tracked):
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
        self.given_back(result, jobs)
        return result

    def recover(self, jobs: Sequence[Tracked]) -> None:
        """Follow every job again (their announcements reach this process if it listens on
        the port of the state file), and report those that ended meanwhile."""
        if not jobs:
            return
        for job in jobs:
            self._listener.follow(job, self, check_early=False)
        for job in self.report_ended(jobs):
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

    def _slurm_view(self, jobs: Sequence[Tracked], *, retries: int | None = None) -> dict[Tracked, SlurmJob | None]:
        """What Slurm says of each job: squeue for all of them, the jobcomp record for those
        squeue has forgotten, None for a job neither knows."""
        seen = self.records.squeue_jobs([job.external_id for job in jobs], retries=retries)
        gone = [job for job in jobs if job.external_id not in seen]
        records = self.records.jobcomp_jobs({job.external_id for job in gone}, set(), not_before(gone)) if gone else {}
        return {job: seen.get(job.external_id) or records.get(job.external_id) for job in jobs}

    # -- submission -------------------------------------------------------------------

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

    def adopt(self, job: Tracked, info: SlurmJob | None) -> None:
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
