"""What Slurm itself remembers of jobs: squeue (pending and running jobs, and ended ones for
MinJobAge seconds) and the jobcomp/filetxt record (every ended job, for good: sacct would
need slurmdbd, which a plain cluster may not run). Each is read once for a whole batch of
jobs, never once per job.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from galaxy_tasks.errors import RunnerError, RunnerUnavailable
from galaxy_tasks.runners.accounting import newest_ended
from galaxy_tasks.runners.slurm.commands import INVALID_JOB, Commands, tail

log = logging.getLogger(__name__)

#: Slurm job states after which the job will not run again (it is submitted with --no-requeue)
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                      "PREEMPTED", "BOOT_FAIL", "DEADLINE"})
#: squeue's output fields, `|`-separated (the job name last but one: it may hold anything)
SQUEUE_FIELDS = "JobID:|,State:|,exit_code:|,Reason:|,StartTime:|,EndTime:|,TimeLimit:|,Name:|"
#: ids per squeue call (its command line stays short)
SQUEUE_CHUNK = 500
SLURM_ID = re.compile(r"^[0-9]{1,12}$")
_SIGNALS = frozenset(int(s) for s in signal.Signals)


class SlurmJob(NamedTuple):
    """One job as squeue or the jobcomp record describes it."""

    external_id: str
    name: str
    state: str
    exit_code: int | None
    signal: int | None
    reason: str
    start_time: float | None
    end_time: float | None
    time_limit: str
    source: str  # "squeue" or "jobcomp"


def parse_squeue(output: str) -> dict[str, SlurmJob]:
    """Rows of `squeue -O <SQUEUE_FIELDS>`, by Slurm id (job arrays and het jobs are not used)."""
    jobs: dict[str, SlurmJob] = {}
    for line in output.splitlines():
        fields = line.split("|")
        if len(fields) < 9 or not SLURM_ID.match(fields[0].strip()):
            continue
        job_id, state, raw, reason, start, end, limit = (f.strip() for f in fields[:7])
        name = "|".join(fields[7:-1]).strip()
        code = sig = None
        if raw.isdigit():  # a wait(2) status
            status = int(raw)
            sig = status & 0x7F or None
            code = None if sig else (status >> 8) & 0xFF
        state = state.split()[0] if state else ""
        jobs[job_id] = SlurmJob(job_id, name, state.rstrip("+"), code, real_signal(sig), reason,
                                slurm_time(start), slurm_time(end), limit, "squeue")
    return jobs


def parse_jobcomp_line(line: str) -> SlurmJob | None:
    """One jobcomp/filetxt line: `JobId=12 UserId=... Name=... JobState=... ExitCode=0:0 ...`
    (a value may hold spaces: it ends where the next `Key=` begins)."""
    keys = list(re.finditer(r"(?:^| )([A-Za-z]+)=", line))
    values: dict[str, str] = {}
    for index, match in enumerate(keys):
        end = keys[index + 1].start() if index + 1 < len(keys) else len(line)
        values[match.group(1)] = line[match.end():end].strip()
    job_id = values.get("JobId", "")
    if not SLURM_ID.match(job_id) or "JobState" not in values:
        return None
    code = sig = None
    exit_field = values.get("ExitCode", "")
    if re.match(r"^\d+:\d+$", exit_field):
        first, second = (int(part) for part in exit_field.split(":"))
        code, sig = first, second or None
        if sig:
            code = None
    return SlurmJob(job_id, values.get("Name", ""), values["JobState"].split()[0], code, real_signal(sig), "",
                    slurm_time(values.get("StartTime", "")), slurm_time(values.get("EndTime", "")),
                    values.get("TimeLimit", ""), "jobcomp")


def real_signal(number: int | None) -> int | None:
    """A signal a process got, or None: Slurm's fake ones (125 for out of memory) are not."""
    return number if number and number in _SIGNALS else None


def slurm_time(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


class SlurmRecords:
    """squeue and the jobcomp record, through the runner's commands (which count each look)."""

    def __init__(self, commands: Commands, jobcomp_file: str | None, scan_lines: int) -> None:
        self.commands = commands
        self.scan_lines = scan_lines
        self._configured = jobcomp_file or os.environ.get("GT_SLURM_JOBCOMP") or None
        self._jobcomp: Path | None | bool = Path(self._configured) if self._configured else False

    def squeue_jobs(self, external_ids: Iterable[str], *, retries: int | None = None) -> dict[str, SlurmJob]:
        """What squeue knows of these jobs (ended ones too, for MinJobAge)."""
        ids = sorted(set(external_ids), key=int)
        found: dict[str, SlurmJob] = {}
        for start in range(0, len(ids), SQUEUE_CHUNK):
            chunk = ids[start:start + SQUEUE_CHUNK]
            proc = self.commands.run("squeue", ["--noheader", "--states=all", f"--jobs={','.join(chunk)}",
                                                "-O", SQUEUE_FIELDS], retries=retries)
            if proc.returncode != 0:
                if INVALID_JOB in proc.stderr:
                    continue  # none of them is known any more
                raise RunnerError(f"squeue failed: {tail(proc.stderr)}")
            found.update(parse_squeue(proc.stdout))
        return found

    def squeue_named(self, name: str) -> list[SlurmJob]:
        """The jobs squeue knows under this name (ended ones too)."""
        proc = self.commands.run("squeue", ["--noheader", "--states=all", f"--name={name}", "-O", SQUEUE_FIELDS])
        if proc.returncode != 0:
            raise RunnerError(f"squeue --name={name} failed: {tail(proc.stderr)}")
        return [job for job in parse_squeue(proc.stdout).values() if job.name == name]

    def squeue_named_quietly(self, name: str) -> list[SlurmJob]:
        """squeue_named, or nothing (logged) if Slurm cannot be asked now."""
        try:
            return self.squeue_named(name)
        except (RunnerError, RunnerUnavailable) as exc:
            log.warning("cannot look for %s in squeue: %s", name, exc)
            return []

    def jobcomp_jobs(self, ids: set[str], names: set[str], since: float,
                     skip: Callable[[SlurmJob], bool] | None = None) -> dict[str, SlurmJob]:
        """Ended jobs from the jobcomp record, newest first, by id (for `ids`) or by name
        (for `names`, passing over those `skip` rejects), stopping at records older than
        `since`: one pass for a whole batch."""
        path = self.jobcomp_path()
        if path is None or not (ids or names):
            return {}
        self.commands.count("jobcomp")
        try:
            found, gave_up = newest_ended(path, parse_jobcomp_bytes, ids, names, since,
                                          by_name=lambda record: not (skip is not None and skip(record)),
                                          max_lines=self.scan_lines)
        except FileNotFoundError:
            return {}  # no job has ended since jobcomp was configured
        except OSError as exc:
            raise RunnerError(f"cannot read Slurm's jobcomp record {path}: {exc}") from exc
        if gave_up:
            log.warning("stopped looking for %d jobs after the last %d lines of %s",
                        len(ids) + len(names) - len(found), self.scan_lines, path)
        return found

    def jobcomp_path(self) -> Path | None:
        """The jobcomp record: configured, or JobCompLoc from `scontrol show config` (asked
        once, or again after a failed attempt); None if Slurm keeps none."""
        if self._jobcomp is False:
            self._jobcomp = self._jobcomp_from_config()
        return self._jobcomp if isinstance(self._jobcomp, Path) else None

    def _jobcomp_from_config(self) -> Path | None | bool:
        try:
            proc = self.commands.run("scontrol", ["show", "config"])
            if proc.returncode != 0:
                raise RunnerError(tail(proc.stderr))
        except (RunnerError, RunnerUnavailable) as exc:
            log.warning("cannot ask Slurm where its jobcomp record is: %s", exc)
            return False  # ask again next time
        config = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", proc.stdout, re.M))
        if config.get("JobCompType") != "jobcomp/filetxt" or not config.get("JobCompLoc"):
            log.warning("Slurm keeps no jobcomp/filetxt record (JobCompType=%s): jobs that squeue has "
                        "forgotten (MinJobAge) cannot be found", config.get("JobCompType"))
            return None
        return Path(config["JobCompLoc"])


def parse_jobcomp_bytes(raw: bytes) -> SlurmJob | None:
    return parse_jobcomp_line(raw.decode(errors="replace"))
