"""A job's end as Grid Engine tells it, from wait-any's JobInfo or an accounting record,
turned into a Completion. The exit code the job script recorded wins over the DRM's."""
from __future__ import annotations

import logging
import signal
import time
from typing import Any

from galaxy_tasks.jobdir import CLAIMED_EXIT_CODE, JobDir
from galaxy_tasks.runners.base import Completion, Tracked
from galaxy_tasks.runners.drmaa.records import Record

log = logging.getLogger(__name__)

# Grid Engine's `failed` codes (execution_states.h) worth a readable reason.
FAILED = {
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


def from_info(job: Tracked, info: Any) -> Completion | None:
    """From wait-any; None for a duplicate copy that stood down (exit 75)."""
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


def from_record(job: Tracked, record: Record | None) -> Completion | None:
    """From the accounting file (reconciliation); None for a duplicate that stood down."""
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
        reasons.append(f"Grid Engine failure {record.failed}: {FAILED.get(record.failed, 'see accounting(5)')}")
    if signum:
        reasons.append(f"killed by signal {_signal_name(signum)}")
    exit_code = recorded if recorded is not None else (None if signum else record.exit_status)
    return Completion(
        job.job_id, exit_code=exit_code, signal=signum, reason="; ".join(reasons) or None,
        wall_time_s=record.wall_time_s, max_rss_kb=record.max_rss_kb,
        ended_at=record.end_time or time.time(), external_id=job.external_id, source="reconcile",
    )


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
