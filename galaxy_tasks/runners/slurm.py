"""Slurm through its command-line tools (sbatch, squeue, scancel): no Slurm DRMAA library
exists in Debian or PyPI, so this runner drives the commands, each with a timeout and
bounded retries, in a process group of its own so that a hung command (or a wrapper
script's child holding its pipes) never blocks a worker for ever.

Completion is an event, not a loop over running jobs. The batch script submitted for a job
(`slurm.sh`, a small bash wrapper around the shared `job.sh`, written into the job
directory) announces the end itself to the worker process that submitted it, with bash's
`/dev/tcp/HOST/PORT` redirection (a builtin: no process, no interpreter per job): a line
`gt-end <job id> <Slurm id> <exit code> <token>`. The token is an HMAC of the job id under
a per-worker secret, so noise and forgeries are dropped without asking Slurm anything. An
announcement is only a hint: the end is confirmed by Slurm (one `squeue` for every job
announced at about the same time, the jobcomp record for a job squeue has forgotten), and
the exit code comes from the job's own exit_code file, read bounded and without following
links. A forged, premature or repeated announcement therefore changes nothing. Announcements
that are lost (worker down, network) are left to `status()`, i.e. reconciliation.

The listener (one selector thread, one confirmation thread) belongs to the process, like
the DRMAA session: every SlurmRunner of a process shares it. Its port and secret are kept
in a state file (`state_file`), so a worker restarted under the same name binds the same
port again and still hears, and can verify, the jobs it submitted before.

Submission is idempotent like the DRMAA runner's: a marker is written in the job directory
before sbatch is run (then replaced by Slurm's id); a later attempt that finds the marker
looks for a job of that name in squeue (`--states=all`), then in the jobcomp record, before
submitting again; a copy started anyway finds the job claimed by job.sh and exits 75 (its
batch script leaves `slurm_stood_down.<Slurm id>` to say so), which is not reported as the
job's end. Failures that may pass (the controller restarting, a command that hangs) raise
SlurmUnavailable, a RunnerUnavailable: the step is retried, the job is not failed. Jobs are submitted with `--no-requeue`: a requeued
batch script would only stand down (the job is claimed), so a node failure is reported as
such instead, and the lifecycle decides whether to try again.

How the job ended is said by `runner_state(completion)`, carried for now as the prefix of
`Completion.reason` ("walltime_reached: ..."; Completion has no field for it yet), and
Completion.signal is set for the kills Slurm does itself (SIGTERM at the time limit,
SIGKILL by the OOM killer), so that finish() never takes them for success. Memory kills are
recognised both with task/cgroup (Slurm says OUT_OF_MEMORY) and with jobacct_gather's
OverMemoryKill (Slurm says FAILED, signal 9; slurmstepd's message in slurm.err says why).
Slurm signals only the batch shell when it cancels a job or its time is up; the batch
script passes the TERM on to the job's process group and announces the end.

Destination params (the runner's own, overridden per job by `Launch.params`):

- `partition` (`-p`), `account` (`-A`), `qos` (`--qos`); `native_specification`: further
  sbatch options as one string (shlex-split), appended last so they win over the mapped
  ones; options that would break the runner's contract (job name, array, wrap, chdir,
  export, parsable) are refused.
- Resources: `cores` -> `--cpus-per-task` (with `--ntasks=1`), `memory_mb` -> `--mem=<M>M`,
  `walltime_s` -> `--time=<minutes>` (Slurm counts whole minutes: rounded up).
- `state_file`: where the listener keeps its port and secret (locked while in use). Without
  it the port is ephemeral and a restarted process cannot hear earlier jobs (status() can).
- `listen_host` (all interfaces), `listen_port` (0: any free one, when there is no state
  yet), `announce_host` (this host's name): where jobs connect to.
- `command_timeout_s` (30), `command_retries` (2), `command_backoff_s` (0.5): every Slurm
  command. (Clients wait ~9 s (sbatch) and ~18 s (squeue) for a controller that is down.)
- `confirm_timeout_s` (180): how long an announced end may wait for Slurm to agree (a
  restarted slurmctld learns of ends while it was down only when slurmstepd retries, every
  ~15 s) before it is left to reconciliation.
- `jobcomp_file`: Slurm's jobcomp/filetxt record (default: `$GT_SLURM_JOBCOMP`, else
  JobCompLoc from `scontrol show config`, asked once).
  `jobcomp_scan_lines` (1,000,000): at most this many of its last lines are read per look
  (normally a look stops at records older than the job directories).
- `sbatch`, `squeue`, `scancel`, `scontrol`: the commands (default: found on PATH).
- `command_env`: extra environment for the commands. They otherwise get only PATH, HOME,
  LANG and SLURM_CONF: no SQUEUE_FORMAT/SLURM_TIME_FORMAT that would change their output,
  and none of the worker's own secrets in the job's environment (sbatch exports its own).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import selectors
import shlex
import signal
import socket
import stat
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

from galaxy_tasks.faults import crash_point
from galaxy_tasks.jobdir import CLAIMED_EXIT_CODE, JobDir
from galaxy_tasks.runners.base import (
    Completion, Launch, Report, Runner, RunnerError, RunnerUnavailable, Tracked, external_name,
)

log = logging.getLogger(__name__)

#: written in the job directory before sbatch runs (then replaced by Slurm's id)
SUBMIT_MARKER = "slurm_submit"
#: written in the job directory before this runner cancels the job, so the end is ours
CANCEL_MARKER = "slurm_cancel"
#: the batch script submitted for the job
WRAPPER = "slurm.sh"
#: `<prefix><Slurm id>`, left by a batch script whose job.sh stood down (the job was claimed)
STOOD_DOWN_PREFIX = "slurm_stood_down."
ANNOUNCE_PREFIX = "gt-end"

# How a job ended, beyond its exit code (Completion has no runner_state field yet: the
# reason starts with "<state>: "; see runner_state()).
WALLTIME_REACHED = "walltime_reached"
MEMORY_LIMIT_REACHED = "memory_limit_reached"
NODE_FAILURE = "node_failure"
CANCELLED = "cancelled"
CANCELLED_OUTSIDE = "cancelled_outside"
PREEMPTED = "preempted"
BOOT_FAILURE = "boot_failure"
DEADLINE = "deadline_reached"
SLURM_FAILURE = "slurm_failure"
REQUEUED = "requeued_after_start"
NO_RECORD = "no_record"
RUNNER_STATES = frozenset({WALLTIME_REACHED, MEMORY_LIMIT_REACHED, NODE_FAILURE, CANCELLED, CANCELLED_OUTSIDE,
                           PREEMPTED, BOOT_FAILURE, DEADLINE, SLURM_FAILURE, REQUEUED, NO_RECORD})

#: Slurm job states after which the job will not run again (with --no-requeue)
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                      "PREEMPTED", "BOOT_FAIL", "DEADLINE"})

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SLURM_ID = re.compile(r"^[0-9]{1,12}$")
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,:+-]{0,127}$")
# Refusals that no retry will cure (the job or the destination is wrong).
_PERMANENT = re.compile(r"invalid|unrecognized|not available|can not be satisfied|cannot be satisfied|"
                        r"unknown|not allowed|no such|not specified|denied|exceed|must be", re.I)
# Failures that may pass (the controller restarting, busy, or out of reach for a while).
_TRANSIENT = re.compile(r"unable to contact|connect failure|timed out|zero bytes|try again|temporarily|"
                        r"connection refused|resource temporarily unavailable|slurm_receive_msg|"
                        r"communication|busy|not responding", re.I)
_INVALID_JOB = "Invalid job id specified"
# sbatch options that would break the runner's contract with its own batch script
_REFUSED_OPTIONS = {"-J": "--job-name", "-a": "--array", "-D": "--chdir"}
_REFUSED_LONG = ("--job-name", "--array", "--wrap", "--chdir", "--export", "--export-file", "--parsable",
                 "--test-only", "--requeue")
_SQUEUE_FIELDS = "JobID:|,State:|,exit_code:|,Reason:|,StartTime:|,EndTime:|,TimeLimit:|,Name:|"
_MAX_LINE = 256
_MAX_CONNECTIONS = 256
_CONNECTION_TIMEOUT_S = 5.0
_MAX_EARLY = 10_000
_EARLY_TTL_S = 3600.0
_READ_LIMIT = 4096


def runner_state(completion: Completion) -> str | None:
    """How the job ended, as this runner says it (walltime_reached, memory_limit_reached,
    node_failure, cancelled, cancelled_outside, preempted, ...), or None for a plain exit.
    Carried in the reason's prefix until Completion has a field for it."""
    reason = completion.reason or ""
    prefix = reason.split(":", 1)[0]
    return prefix if prefix in RUNNER_STATES else None


# -- what the runner submits ------------------------------------------------------------

def sbatch_options(launch: Launch, params: Mapping[str, Any]) -> list[str]:
    """The sbatch options of one job: identity and files first, then resources, then the
    destination's, then `native_specification` (last, so it wins). Bad input raises
    RunnerError naming the parameter."""
    root = str(launch.job_dir)
    options = [
        f"--job-name={launch.external_name}",
        f"--chdir={root}",
        f"--output={root}/slurm.out",
        f"--error={root}/slurm.err",
        "--no-requeue",
        "--ntasks=1",
        f"--cpus-per-task={_positive_int(launch.cores, 'cores')}",
    ]
    if launch.memory_mb is not None:
        options.append(f"--mem={_positive_int(launch.memory_mb, 'memory_mb')}M")
    if launch.walltime_s is not None:
        seconds = _positive_int(launch.walltime_s, "walltime_s")
        options.append(f"--time={-(-seconds // 60)}")  # whole minutes, rounded up
    for key, flag in (("partition", "--partition"), ("account", "--account"), ("qos", "--qos")):
        value = params.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not _NAME.match(value):
            raise RunnerError(f"Slurm param {key} must be a name (letters, digits, _.,:+-), not {value!r}")
        options.append(f"{flag}={value}")
    native = params.get("native_specification")
    if native:
        if not isinstance(native, str):
            raise RunnerError(f"Slurm param native_specification must be a string of sbatch options, not {native!r}")
        try:
            extra = shlex.split(native)
        except ValueError as exc:
            raise RunnerError(f"Slurm param native_specification {native!r} cannot be split: {exc}") from exc
        for option in extra:
            _check_option(option)
        options += extra
    return options


def _check_option(option: str) -> None:
    long = option.split("=", 1)[0]
    short = option[:2]
    if long in _REFUSED_LONG or short in _REFUSED_OPTIONS or long in _REFUSED_OPTIONS.values():
        name = _REFUSED_OPTIONS.get(short, long) if short in _REFUSED_OPTIONS else long
        raise RunnerError(f"Slurm param native_specification may not set {name}: the runner sets the job's "
                          "name, directory, environment and output itself")


def _param_number(params: Mapping[str, Any], key: str, default: float, *, minimum: float,
                  integer: bool = False) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or (
            integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise RunnerError(f"Slurm param {key} must be {kind} >= {minimum:g}, not {value!r}")
    return float(value)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RunnerError(f"Slurm job {name} must be a positive integer, not {value!r}")
    return value


def wrapper_script(launch: Launch, host: str, port: int, token: str) -> str:
    """The batch script: job.sh, then the announcement of its end. Slurm signals only the
    batch shell when it cancels a job or the time limit hits (SIGTERM, then SIGKILL to all
    after KillWait); the shell, waiting in `wait`, passes the TERM on to the job's process
    group (its own: Slurm makes it a group leader), then announces. Only builtins after
    job.sh: no process, no interpreter per job."""
    q = shlex.quote
    line = f"{ANNOUNCE_PREFIX} {launch.job_id} %s %s {token}\\n"
    return "\n".join([
        "#!/bin/bash",
        f"# galaxy-tasks: the Slurm batch script of job {launch.job_id} (written by the Slurm runner).",
        "# The announcement is a hint; the worker confirms the end with Slurm before reporting it.",
        "announce() {",
        f"  {{ printf {q(line)} \"${{SLURM_JOB_ID:-0}}\" \"$1\" >/dev/tcp/{host}/{port}; }} 2>/dev/null",
        "}",
        "stop() {",
        "  trap '' TERM",
        "  kill -TERM 0 2>/dev/null",
        "  wait $child",
        "  announce 143",
        "  exit 143",
        "}",
        "trap stop TERM",
        f"/bin/sh {q(str(launch.script))} &",
        "child=$!",
        "wait $child",
        "rc=$?",
        f"if [ \"$rc\" = {CLAIMED_EXIT_CODE} ]; then  # our job.sh found the job claimed by another copy?",
        f"  {{ read -r owner < {q(str(launch.job_dir / 'claim'))}; }} 2>/dev/null",
        f"  [ \"$owner\" = \"$child\" ] || : > {q(str(launch.job_dir))}/{STOOD_DOWN_PREFIX}\"${{SLURM_JOB_ID:-0}}\"",
        "fi",
        'announce "$rc"',
        'exit "$rc"',
        "",
    ])


def announcement_token(secret: bytes, job_id: str) -> str:
    """What a job must send with its announcement: proves the line came from a script this
    worker (or an earlier process with the same state file) wrote."""
    return hmac.new(secret, f"{ANNOUNCE_PREFIX} {job_id}".encode(), hashlib.sha256).hexdigest()[:32]


# -- what Slurm says ----------------------------------------------------------------------

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
    """Rows of `squeue -O <_SQUEUE_FIELDS>`, by Slurm id (job arrays and het jobs not used)."""
    jobs: dict[str, SlurmJob] = {}
    for line in output.splitlines():
        fields = line.split("|")
        if len(fields) < 9 or not _SLURM_ID.match(fields[0].strip()):
            continue
        job_id, state, raw, reason, start, end, limit = (f.strip() for f in fields[:7])
        name = "|".join(fields[7:-1]).strip()
        code = sig = None
        if raw.isdigit():  # a wait(2) status
            status = int(raw)
            sig = status & 0x7F or None
            code = None if sig else (status >> 8) & 0xFF
        state = state.split()[0] if state else ""
        jobs[job_id] = SlurmJob(job_id, name, state.rstrip("+"), code, _real_signal(sig), reason,
                                _slurm_time(start), _slurm_time(end), limit, "squeue")
    return jobs


def parse_jobcomp_line(line: str) -> SlurmJob | None:
    """One jobcomp/filetxt line: `JobId=12 UserId=... Name=... JobState=... ExitCode=0:0 ...`."""
    keys = list(re.finditer(r"(?:^| )([A-Za-z]+)=", line))
    values: dict[str, str] = {}
    for index, match in enumerate(keys):
        end = keys[index + 1].start() if index + 1 < len(keys) else len(line)
        values[match.group(1)] = line[match.end():end].strip()
    job_id = values.get("JobId", "")
    if not _SLURM_ID.match(job_id) or "JobState" not in values:
        return None
    code = sig = None
    exit_field = values.get("ExitCode", "")
    if re.match(r"^\d+:\d+$", exit_field):
        first, second = (int(part) for part in exit_field.split(":"))
        code, sig = first, second or None
        if sig:
            code = None
    return SlurmJob(job_id, values.get("Name", ""), values["JobState"].split()[0], code, _real_signal(sig), "",
                    _slurm_time(values.get("StartTime", "")), _slurm_time(values.get("EndTime", "")),
                    values.get("TimeLimit", ""), "jobcomp")


def _real_signal(number: int | None) -> int | None:
    """Slurm's fake signals (125 for out of memory) are not signals a process got."""
    if number is None or number == 0:
        return None
    return number if number in {int(s) for s in signal.Signals} else None


def _slurm_time(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


# -- the runner ---------------------------------------------------------------------------

class SlurmRunner(Runner):
    name = "slurm"

    def __init__(self, params: Mapping[str, Any], report: Report) -> None:
        super().__init__(params, report)
        self.command_timeout_s = _param_number(self.params, "command_timeout_s", 30.0, minimum=0.1)
        self.command_retries = int(_param_number(self.params, "command_retries", 2, minimum=0, integer=True))
        self.command_backoff_s = _param_number(self.params, "command_backoff_s", 0.5, minimum=0)
        self.confirm_timeout_s = _param_number(self.params, "confirm_timeout_s", 180.0, minimum=0)
        self._calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()
        self._jobcomp: Path | None | bool = False  # False: not looked up yet
        self._closed = False
        self._listener = _open_listener(self.params, self)

    @property
    def calls(self) -> Counter[str]:
        """Slurm commands this runner ran, by kind (sbatch, squeue, scancel, scontrol), and
        jobcomp file reads ("jobcomp"); a timed-out attempt counts too."""
        with self._calls_lock:
            return Counter(self._calls)

    @property
    def address(self) -> tuple[str, int]:
        """Where jobs announce their end (host, port)."""
        return self._listener.announce_host, self._listener.port

    @property
    def listener_stats(self) -> dict[str, int]:
        """Announcements heard, by outcome (accepted, bad_token, malformed, unknown, ...)."""
        return self._listener.stats_snapshot()

    @property
    def latencies(self) -> list[float]:
        """Seconds from each accepted announcement to the report it led to."""
        return self._listener.latencies_snapshot(self)

    # -- the runner interface ---------------------------------------------------------

    def submit(self, launch: Launch) -> str:
        if not _JOB_ID.match(launch.job_id):
            raise RunnerError(f"job id {launch.job_id!r} cannot name a Slurm job (letters, digits, ._- only)")
        params = {**self.params, **launch.params}
        options = sbatch_options(launch, params)  # refuse bad input before anything is written
        marker = launch.job_dir / SUBMIT_MARKER
        if _lexists(marker):
            existing, info = self._find_existing(launch, marker)
            if existing is not None:
                self._adopt(Tracked(launch.job_id, existing, launch.job_dir), info)
                return existing
        wrapper = launch.job_dir / WRAPPER
        host, port = self.address
        _write_file(wrapper, wrapper_script(launch, host, port, self._listener.token(launch.job_id)), 0o700)
        _write_file(marker, "submitting\n", 0o600, sync=True)
        external_id = self._sbatch(launch, [*options, str(wrapper)])
        crash_point("slurm_submitted", launch.job_id)  # before anything records Slurm's id
        _write_file(marker, external_id + "\n", 0o600)  # if lost, the lookup by name finds it
        self._listener.follow(Tracked(launch.job_id, external_id, launch.job_dir), self)
        return external_id

    def cancel(self, tracked: Tracked) -> None:
        try:
            _write_file(Path(tracked.job_dir) / CANCEL_MARKER, "cancel\n", 0o600)
        except OSError as exc:  # the directory may be gone: the cancel still goes ahead
            log.warning("cannot mark job %s as cancelled by us: %s", tracked.job_id, exc)
        proc = self._run("scancel", [tracked.external_id])
        if proc.returncode != 0 and _INVALID_JOB not in proc.stderr:
            raise RunnerError(f"Slurm could not cancel job {tracked.external_id}: {_tail(proc.stderr)}")
        # a job cancelled while pending never runs its script, so nothing would announce it
        self._listener.hint_followed(tracked, self)

    def status(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None]:
        """One squeue for the whole batch (in chunks of 500 ids), then one read of the
        jobcomp record for the jobs squeue no longer knows."""
        result: dict[str, Completion | None] = {job.job_id: None for job in jobs}
        if not jobs:
            return result
        seen = self.squeue_jobs([job.external_id for job in jobs])
        gone = [job for job in jobs if job.external_id not in seen]
        records = self.jobcomp_jobs({job.external_id for job in gone}, set(), _not_before(gone)) if gone else {}
        for job in jobs:
            info = seen.get(job.external_id) or records.get(job.external_id)
            if info is None:
                result[job.job_id] = self._without_record(job)
                continue
            if info.state not in TERMINAL:
                continue
            completion = self._completion(job, info, "reconcile")
            if completion is _STOOD_DOWN:
                completion = self._claimer_completion(job)
            result[job.job_id] = completion
            if completion is not None:
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
                self._emit(completion)
            else:
                self._listener.check_early(job, self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_listener(self._listener, self)

    # -- submission -------------------------------------------------------------------

    def _find_existing(self, launch: Launch, marker: Path) -> tuple[str | None, SlurmJob | None]:
        """A previous attempt got at least as far as running sbatch: find its job (and what
        Slurm said of it, if it was asked)."""
        recorded = _read_small(marker).strip()
        if _SLURM_ID.match(recorded):
            return recorded, None  # Slurm had accepted it and we had written its id down
        named = self.squeue_named(launch.external_name)
        live = [job for job in named if not _stood_down(job, launch.job_dir)]
        if live:
            newest = max(live, key=lambda job: int(job.external_id))
            return newest.external_id, newest
        job_dir = JobDir(launch.job_dir)
        if not _lexists(job_dir.claim_file) and _recorded_exit_code(job_dir) is None:
            return None, None  # no copy ever started the script: a new one is safe
        found = self.jobcomp_jobs(set(), {launch.external_name}, _not_before([launch]),
                                  {launch.external_name: launch.job_dir})
        if launch.external_name in found:
            return found[launch.external_name].external_id, found[launch.external_name]
        return None, None  # a new copy will stand down (exit 75), and its end is reported then

    def _sbatch(self, launch: Launch, args: list[str]) -> str:
        """sbatch with bounded retries; before a retry, look for the job by name (the
        attempt that timed out or lost its answer may have reached the controller)."""
        attempts = self.command_retries + 1
        delay = self.command_backoff_s
        for attempt in range(attempts):
            if attempt:
                time.sleep(delay)
                delay *= 2
                found = [job for job in self._squeue_named_quietly(launch.external_name)
                         if not _stood_down(job, launch.job_dir)]
                if found:
                    return max(found, key=lambda job: int(job.external_id)).external_id
            failure = None
            transient = True
            try:
                proc = self._run("sbatch", ["--parsable", *args], retries=0)
            except SlurmUnavailable as exc:
                failure = str(exc)
            else:
                transient = False
                output = proc.stdout.strip().split(";", 1)[0]
                if proc.returncode == 0 and _SLURM_ID.match(output):
                    return output
                failure = _tail(proc.stderr) or _tail(proc.stdout) or f"exit code {proc.returncode}"
                if proc.returncode != 0 and _PERMANENT.search(failure) and not _TRANSIENT.search(failure):
                    raise RunnerError(f"Slurm refused job {launch.external_name}: {failure}")
                if proc.returncode == 0:
                    failure = f"unreadable sbatch answer {proc.stdout.strip()!r}"
            log.warning("sbatch of %s failed (%s); attempt %d of %d", launch.external_name, failure,
                        attempt + 1, attempts)
        message = f"Slurm did not accept job {launch.external_name} after {attempts} attempts: {failure}"
        raise SlurmUnavailable(message) if transient else RunnerError(message)

    def _adopt(self, job: Tracked, info: SlurmJob | None) -> None:
        """Follow a job an earlier attempt submitted; if it ended (or nobody asked Slurm
        yet), confirm that once: a job still running announces its own end."""
        self._listener.follow(job, self)
        if info is None or info.state in TERMINAL:
            self._listener.hint_followed(job, self, once=True)

    # -- Slurm's view -------------------------------------------------------------------

    def squeue_jobs(self, external_ids: Iterable[str], *, retries: int | None = None) -> dict[str, SlurmJob]:
        """What squeue knows of these jobs (ended ones too, for MinJobAge): one call per
        500 ids."""
        ids = sorted(set(external_ids), key=int)
        found: dict[str, SlurmJob] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            proc = self._run("squeue", ["--noheader", "--states=all", f"--jobs={','.join(chunk)}",
                                        "-O", _SQUEUE_FIELDS], retries=retries)
            if proc.returncode != 0:
                if _INVALID_JOB in proc.stderr:
                    continue  # none of them is known any more
                raise RunnerError(f"squeue failed: {_tail(proc.stderr)}")
            found.update(parse_squeue(proc.stdout))
        return found

    def squeue_named(self, name: str) -> list[SlurmJob]:
        """The jobs squeue knows under this name (ended ones too)."""
        proc = self._run("squeue", ["--noheader", "--states=all", f"--name={name}", "-O", _SQUEUE_FIELDS])
        if proc.returncode != 0:
            raise RunnerError(f"squeue --name={name} failed: {_tail(proc.stderr)}")
        return [job for job in parse_squeue(proc.stdout).values() if job.name == name]

    def _squeue_named_quietly(self, name: str) -> list[SlurmJob]:
        try:
            return self.squeue_named(name)
        except (RunnerError, RunnerUnavailable) as exc:
            log.warning("cannot look for %s in squeue: %s", name, exc)
            return []

    def jobcomp_jobs(self, ids: set[str], names: set[str], not_before: float,
                     job_dirs: Mapping[str, Path] | None = None) -> dict[str, SlurmJob]:
        """Ended jobs from the jobcomp record, newest first, by id (for `ids`) or by name
        (for `names`, skipping copies that stood down, as the job directory of each name in
        `job_dirs` tells), stopping at records older than the job directories: one pass for
        a whole batch."""
        path = self._jobcomp_path()
        if path is None or not (ids or names):
            return {}
        self._count("jobcomp")
        found: dict[str, SlurmJob] = {}
        wanted = len(ids) + len(names)
        limit = int(_param_number(self.params, "jobcomp_scan_lines", 1_000_000, minimum=1, integer=True))
        try:
            for scanned, raw in enumerate(_reverse_lines(path)):
                if scanned >= limit:
                    log.warning("stopped looking for %d jobs after the last %d lines of %s", wanted - len(found),
                                limit, path)
                    break
                record = parse_jobcomp_line(raw.decode(errors="replace"))
                if record is None:
                    continue
                if record.end_time is not None and 0 < record.end_time < not_before:
                    break
                if record.external_id in ids:
                    key = record.external_id
                elif record.name in names and not (job_dirs and record.name in job_dirs
                                                   and _stood_down(record, job_dirs[record.name])):
                    key = record.name
                else:
                    continue
                if key not in found:
                    found[key] = record
                    if len(found) == wanted:
                        break
        except FileNotFoundError:
            return {}  # no job has ended since jobcomp was configured
        except OSError as exc:
            raise RunnerError(f"cannot read Slurm's jobcomp record {path}: {exc}") from exc
        return found

    def _jobcomp_path(self) -> Path | None:
        if self._jobcomp is False:
            configured = self.params.get("jobcomp_file") or os.environ.get("GT_SLURM_JOBCOMP")
            if configured:
                self._jobcomp = Path(str(configured))
            else:
                self._jobcomp = self._jobcomp_from_config()
        return self._jobcomp if isinstance(self._jobcomp, Path) else None

    def _jobcomp_from_config(self) -> Path | None:
        try:
            proc = self._run("scontrol", ["show", "config"])
            if proc.returncode != 0:
                raise RunnerError(_tail(proc.stderr))
        except (RunnerError, RunnerUnavailable) as exc:
            log.warning("cannot ask Slurm where its jobcomp record is: %s", exc)
            self._jobcomp = False  # ask again next time
            return None
        config = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", proc.stdout, re.M))
        if config.get("JobCompType") != "jobcomp/filetxt" or not config.get("JobCompLoc"):
            log.warning("Slurm keeps no jobcomp/filetxt record (JobCompType=%s): jobs that squeue has "
                        "forgotten (MinJobAge) cannot be found", config.get("JobCompType"))
            return None
        return Path(config["JobCompLoc"])

    # -- from Slurm's view to a Completion ------------------------------------------------

    def _completion(self, job: Tracked, info: SlurmJob, source: str) -> Completion | None:
        """The end of a job Slurm says has ended (info.state in TERMINAL); _STOOD_DOWN for a
        copy that found the job claimed and ran nothing."""
        job_dir = JobDir(Path(job.job_dir))
        recorded = _recorded_exit_code(job_dir)
        if _stood_down(info, job_dir.root):
            return _STOOD_DOWN
        wall = (info.end_time - info.start_time) if info.start_time and info.end_time else None
        signum = info.signal
        if signum is None and recorded is None and info.exit_code is not None and info.exit_code > 128:
            signum = _real_signal(info.exit_code - 128)  # the wrapper saw job.sh die of it
        exit_code = recorded if recorded is not None else (None if signum else info.exit_code)
        state, reason = info.state, None
        if state == "TIMEOUT":
            limit = f" ({info.time_limit})" if info.time_limit and info.time_limit not in ("UNLIMITED", "") else ""
            reason = f"{WALLTIME_REACHED}: Slurm killed the job when it reached its walltime limit{limit}"
            signum = signal.SIGTERM
        elif state == "OUT_OF_MEMORY":
            reason = f"{MEMORY_LIMIT_REACHED}: the job went over its memory limit and was killed (out of memory)"
            signum = signal.SIGKILL
        elif state == "NODE_FAIL":
            reason = f"{NODE_FAILURE}: the node running the job failed (Slurm NODE_FAIL)"
            exit_code = recorded
        elif state == "CANCELLED":
            if _lexists(job_dir.root / CANCEL_MARKER):
                reason = f"{CANCELLED}: the job was cancelled (scancel by galaxy-tasks)"
            else:
                reason = (f"{CANCELLED_OUTSIDE}: Slurm job {job.external_id} was cancelled outside galaxy-tasks "
                          "(scancel by an administrator or its owner)")
            exit_code = recorded
            signum = None
        elif state == "PREEMPTED":
            reason = f"{PREEMPTED}: Slurm preempted the job for another one"
            exit_code = recorded
        elif state == "BOOT_FAIL":
            reason = f"{BOOT_FAILURE}: the node allocated to the job failed to boot"
        elif state == "DEADLINE":
            reason = f"{DEADLINE}: the job reached its deadline before it could end"
        elif state == "FAILED" and info.signal == signal.SIGKILL and _over_memory(job_dir):
            # jobacct_gather's OverMemoryKill (no cgroups): Slurm says FAILED, slurmstepd
            # wrote why into the batch script's stderr
            reason = f"{MEMORY_LIMIT_REACHED}: the job went over its memory limit and was killed (Slurm's memory polling)"
        elif state == "FAILED" and recorded is None:
            if signum:
                reason = f"killed by signal {signal.Signals(signum).name}"
            elif info.exit_code in (None, 0) or info.reason not in ("", "None", "NonZeroExitCode"):
                reason = f"{SLURM_FAILURE}: Slurm could not run the job ({info.reason or 'no reason given'})"
        elif signum:
            reason = f"killed by signal {signal.Signals(signum).name}"
        return Completion(job.job_id, exit_code=exit_code, signal=signum, reason=reason, wall_time_s=wall,
                          ended_at=info.end_time or time.time(), external_id=job.external_id, source=source)

    def _claimer_completion(self, job: Tracked) -> Completion | None:
        """The tracked copy stood down: the job is another copy's (or, if no other copy
        exists, Slurm requeued the tracked one after its command had started)."""
        named = [other for other in self._squeue_named_quietly(external_name_of(job))
                 if other.external_id != job.external_id and not _stood_down(other, job.job_dir)]
        for other in sorted(named, key=lambda other: int(other.external_id), reverse=True):
            if other.state not in TERMINAL:
                return None  # still running: its end decides
            done = self._completion(Tracked(job.job_id, other.external_id, job.job_dir), other, "reconcile")
            if done is not _STOOD_DOWN:
                return done
        records = self.jobcomp_jobs(set(), {external_name_of(job)}, _not_before([job]),
                                    {external_name_of(job): Path(job.job_dir)})
        record = records.get(external_name_of(job))
        if record is not None and record.external_id != job.external_id:
            done = self._completion(Tracked(job.job_id, record.external_id, job.job_dir), record, "reconcile")
            if done is not _STOOD_DOWN:
                return done
        return Completion(job.job_id, external_id=job.external_id, source="reconcile",
                          reason=f"{REQUEUED}: the job's command started once and did not record an exit code; "
                                 "a later run of its batch script (requeued?) did not run it again")

    def _without_record(self, job: Tracked) -> Completion:
        recorded = _recorded_exit_code(JobDir(Path(job.job_dir)))
        if recorded is not None:
            return Completion(job.job_id, exit_code=recorded, external_id=job.external_id, source="job_dir")
        return Completion(job.job_id, external_id=job.external_id, source="reconcile",
                          reason=f"{NO_RECORD}: Slurm has no record of job {job.external_id} (neither squeue nor "
                                 "the jobcomp record knows it: lost by the controller, or purged)")

    # -- announcements (called by the listener's confirmation thread) ----------------------

    def _confirm(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None | object]:
        """For announced jobs: a Completion (ended), _STOOD_DOWN, or None (Slurm does not
        agree yet). One squeue for all of them, the jobcomp record for the forgotten."""
        seen = self.squeue_jobs([job.external_id for job in jobs], retries=0)
        gone = [job for job in jobs if job.external_id not in seen]
        records = self.jobcomp_jobs({job.external_id for job in gone}, set(), _not_before(gone)) if gone else {}
        result: dict[str, Completion | None | object] = {}
        for job in jobs:
            info = seen.get(job.external_id) or records.get(job.external_id)
            if info is None or info.state not in TERMINAL:
                result[job.external_id] = None
            else:
                result[job.external_id] = self._completion(job, info, "runner")
        return result

    def _emit(self, completion: Completion) -> None:
        try:
            self.report(completion)
        except Exception:  # the listener's threads must outlive a failing callback
            log.exception("reporting the end of job %s failed", completion.job_id)

    # -- commands ---------------------------------------------------------------------

    def _run(self, kind: str, args: Sequence[str], *, retries: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command with a timeout, retrying failures that may pass (a controller
        that restarts, a command that hangs) with exponential back-off. Returns an attempt
        that succeeded or failed for good (the caller judges its exit code); raises
        SlurmUnavailable (CommandTimeout if the last attempt hung) when every attempt failed
        in a way that may pass, so that the step is retried later instead of failing the
        job; RunnerError if the command cannot be run at all."""
        retries = self.command_retries if retries is None else retries
        command = [str(self.params.get(kind) or kind), *args]
        delay = self.command_backoff_s
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(delay)
                delay *= 2
            self._count(kind)
            try:
                proc = _run_bounded(command, self.command_timeout_s, self._command_env())
            except CommandTimeout as exc:
                if attempt == retries:
                    raise
                log.warning("%s; retrying", exc)
                continue
            except OSError as exc:
                raise RunnerError(f"cannot run {command[0]}: {exc}") from exc
            if proc.returncode == 0 or not _TRANSIENT.search(proc.stderr):
                return proc
            if attempt == retries:
                raise SlurmUnavailable(f"{kind} failed ({proc.returncode}): {_tail(proc.stderr)}")
            log.warning("%s failed (%s); retrying", kind, _tail(proc.stderr))
        raise AssertionError("unreachable")

    def _command_env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "HOME": os.environ.get("HOME", "/")}
        for key in ("SLURM_CONF", "MUNGE_SOCKET"):
            if key in os.environ:
                env[key] = os.environ[key]
        extra = self.params.get("command_env") or {}
        if not isinstance(extra, Mapping):
            raise RunnerError(f"Slurm param command_env must be a mapping of variables, not {extra!r}")
        env.update({str(k): str(v) for k, v in extra.items()})
        return env

    def _count(self, kind: str) -> None:
        with self._calls_lock:
            self._calls[kind] += 1


def external_name_of(job: Tracked) -> str:
    return external_name(job.job_id)


_STOOD_DOWN: Any = object()


def _stood_down(info: SlurmJob, job_dir: Path) -> bool:
    """Whether this Slurm job was a copy that found the job claimed and ran nothing (it
    ended with 75, and its batch script said so; or no copy recorded an exit code although
    one claimed the job). A command's own exit code 75 is not taken for that."""
    if info.state not in TERMINAL or info.exit_code != CLAIMED_EXIT_CODE:
        return False
    root = JobDir(Path(job_dir))
    return _lexists(root.root / f"{STOOD_DOWN_PREFIX}{info.external_id}") or (
        _recorded_exit_code(root) is None and _lexists(root.claim_file))


class SlurmUnavailable(RunnerUnavailable):
    """Slurm could not be reached for a while (the controller restarting, a command that
    hangs): not the job's fault; the step is retried (a submission first looks for the job
    by name, so a retry never starts a second copy)."""


class CommandTimeout(SlurmUnavailable):
    """A Slurm command did not answer within command_timeout_s (it was killed)."""


def _run_bounded(command: list[str], timeout: float, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command in a process group of its own; on timeout kill the whole group, so a
    grandchild holding the pipes cannot keep us waiting."""
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(env), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a descendant left the group and holds the pipes
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait(timeout=5)
        raise CommandTimeout(f"{command[0]} {' '.join(command[1:3])} ... did not end within {timeout:g}s "
                              "(killed)") from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# -- the listener -----------------------------------------------------------------------

@dataclass
class _Pending:
    job: Tracked
    runner: SlurmRunner
    heard_at: float
    due: float
    attempts: int = 0
    once: bool = False  # one look only (an adopted job): if still running, it announces itself


@dataclass
class _Connection:
    sock: socket.socket
    opened: float
    data: bytearray = field(default_factory=bytearray)


class _Listener:
    """The process's TCP listener for announcements and its confirmation thread, shared by
    every SlurmRunner of the process."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.pid = os.getpid()
        self.users: list[SlurmRunner] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._followed: dict[str, tuple[Tracked, SlurmRunner]] = {}  # by Slurm id
        self._pending: dict[str, _Pending] = {}  # announced, waiting for Slurm to agree
        self._early: dict[str, tuple[str, float]] = {}  # announced before submit/recover followed it
        self._stats: Counter[str] = Counter()
        self._latencies: dict[int, list[float]] = {}
        self._stopping = False
        self._state_handle: IO[str] | None = None
        self.state_file = params.get("state_file")
        state = self._claim_state(self.state_file)
        self.secret = bytes.fromhex(state["secret"]) if state.get("secret") else secrets.token_bytes(32)
        host = str(params.get("listen_host", ""))
        self.announce_host = str(params.get("announce_host") or socket.gethostname())
        if not re.match(r"^[A-Za-z0-9._-]+$", self.announce_host):
            self._release_state()
            raise RunnerError(f"Slurm param announce_host {self.announce_host!r} is not a host name or IPv4 address")
        try:
            wanted = int(state.get("port") or params.get("listen_port") or 0)
        except (TypeError, ValueError):
            self._release_state()
            raise RunnerError(f"Slurm param listen_port must be a port number, not {params.get('listen_port')!r}") \
                from None
        self.sock = self._bind(host, wanted)
        self.port = self.sock.getsockname()[1]
        self._save_state()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._connections: dict[int, _Connection] = {}
        self._serve_thread = threading.Thread(target=self._serve, name="slurm-listener", daemon=True)
        self._confirm_thread = threading.Thread(target=self._confirm_loop, name="slurm-confirm", daemon=True)
        self._serve_thread.start()
        self._confirm_thread.start()
        log.info("listening for Slurm job announcements on %s:%d (state file %s)", host or "*", self.port,
                 self.state_file)

    # -- state file and socket --------------------------------------------------------

    def _claim_state(self, path: str | None) -> dict[str, Any]:
        """Read the port and secret an earlier process left, and keep the file locked: a
        second live process with the same file could not bind the port anyway."""
        if not path:
            return {}
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunnerError(f"the Slurm listener state file {path} is held by another live process "
                              "(two workers with the same name?)") from None
        self._state_handle = handle
        text = handle.read(_READ_LIMIT)
        try:
            state = json.loads(text) if text.strip() else {}
            if not isinstance(state, dict):
                raise ValueError("not an object")
            if state.get("secret"):
                bytes.fromhex(state["secret"])
            return state
        except ValueError as exc:
            log.warning("ignoring unreadable Slurm listener state in %s (%s)", path, exc)
            return {}

    def _save_state(self) -> None:
        if self._state_handle is None:
            return
        handle = self._state_handle
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"port": self.port, "secret": self.secret.hex()}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())

    def _bind(self, host: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if port == 0 or exc.errno != errno.EADDRINUSE:
                sock.close()
                self._release_state()
                raise RunnerError(f"cannot listen for Slurm announcements on {host or '*'}:{port}: {exc}") from exc
            # our state file is locked by us, so no worker of ours has it: a stranger does
            log.warning("port %d of %s is taken by another program: listening on a new port; jobs "
                        "submitted before are left to reconciliation", port, self.state_file)
            sock.bind((host, 0))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    def _release_state(self) -> None:
        if self._state_handle is not None:
            self._state_handle.close()  # the content stays for the next process
            self._state_handle = None

    def token(self, job_id: str) -> str:
        return announcement_token(self.secret, job_id)

    # -- followed jobs ----------------------------------------------------------------

    def users_add(self, runner: SlurmRunner) -> None:
        with self._lock:
            self.users.append(runner)

    def follow(self, job: Tracked, runner: SlurmRunner, *, check_early: bool = True) -> None:
        with self._cond:
            self._followed[job.external_id] = (job, runner)
        if check_early:
            self.check_early(job, runner)

    def check_early(self, job: Tracked, runner: SlurmRunner) -> None:
        """An announcement heard before the job was followed (a quick job, a restarted
        worker hearing a job before its redelivered launch): confirm it now."""
        with self._cond:
            early = self._early.pop(job.external_id, None)
            if early is not None and early[0] == job.job_id:
                self._queue(job, runner, early[1])

    def hint_followed(self, job: Tracked, runner: SlurmRunner, *, once: bool = False) -> None:
        """Confirm a followed job's state now, as if it had announced its end (`once`: look
        only once)."""
        with self._cond:
            if job.external_id not in self._followed:
                self._followed[job.external_id] = (job, runner)
            self._queue(job, runner, time.monotonic(), once=once)

    def take(self, external_id: str, runner: SlurmRunner) -> bool:
        """Stop following a job; True for the one caller that gets to report it."""
        with self._cond:
            self._pending.pop(external_id, None)
            entry = self._followed.get(external_id)
            if entry is None or entry[1] is not runner:
                return False
            del self._followed[external_id]
            return True

    def forget(self, runner: SlurmRunner) -> None:
        """A runner closed: its jobs keep running; a later process recovers them."""
        with self._cond:
            for table in (self._followed, self._pending):
                for key in [key for key, value in table.items()
                            if (value[1] if isinstance(value, tuple) else value.runner) is runner]:
                    del table[key]
            if runner in self.users:
                self.users.remove(runner)

    def _queue(self, job: Tracked, runner: SlurmRunner, heard_at: float, *, once: bool = False) -> bool:
        """(lock held) Ask Slurm about this job soon, with the others announced about now;
        False if that is already planned."""
        pending = self._pending.get(job.external_id)
        if pending is not None:
            pending.once = pending.once and once
            return False
        # the batch script exits a moment after it announced: give slurmd that moment
        self._pending[job.external_id] = _Pending(job, runner, heard_at, time.monotonic() + 0.02, once=once)
        self._cond.notify_all()
        return True

    # -- the selector thread ----------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping:
            timeout = _CONNECTION_TIMEOUT_S if self._connections else None
            try:
                events = self._selector.select(timeout)
            except OSError as exc:
                if self._stopping:
                    return
                log.error("the Slurm listener cannot wait for announcements (%s); trying again in 1 s", exc)
                time.sleep(1)
                continue
            for key, _ in events:
                try:
                    if key.data is None:
                        self._accept()
                    elif isinstance(key.data, _Connection):
                        self._read(key.data)
                    else:
                        self._wake_r.recv(64)
                except Exception:  # noqa: BLE001 - one bad connection must not stop the listener
                    log.exception("handling an announcement failed")
                    if isinstance(key.data, _Connection):
                        self._drop(key.data)
            now = time.monotonic()
            for conn in [c for c in self._connections.values() if now - c.opened > _CONNECTION_TIMEOUT_S]:
                self._count("timed_out")
                self._drop(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accepting an announcement failed: %s", exc)
                return
            if len(self._connections) >= _MAX_CONNECTIONS:
                self._count("refused_busy")
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic())
            self._connections[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Connection) -> None:
        try:
            chunk = conn.sock.recv(_MAX_LINE + 1 - len(conn.data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        conn.data += chunk
        if b"\n" in conn.data:
            line = bytes(conn.data).split(b"\n", 1)[0]
            self._drop(conn)
            self._heard(line)
        elif not chunk or len(conn.data) > _MAX_LINE:
            self._count("malformed")
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        self._connections.pop(conn.sock.fileno(), None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _heard(self, line: bytes) -> None:
        """One announcement: checked, then queued for confirmation (never believed)."""
        heard_at = time.monotonic()
        parts = line.decode("ascii", errors="replace").split()
        if (len(parts) != 5 or parts[0] != ANNOUNCE_PREFIX or not _JOB_ID.match(parts[1])
                or not _SLURM_ID.match(parts[2]) or not re.match(r"^\d{1,3}$", parts[3])
                or not _TOKEN.match(parts[4])):
            self._count("malformed")
            return
        job_id, external_id, token = parts[1], parts[2], parts[4]
        if not hmac.compare_digest(token, self.token(job_id)):
            self._count("bad_token")
            if self._stats["bad_token"] <= 10:  # a flood must not fill the log
                log.warning("ignoring an announcement for job %s with a wrong token", job_id)
            return
        with self._cond:
            entry = self._followed.get(external_id)
            if entry is None:
                self._stats["early"] += 1
                self._remember_early(external_id, job_id, heard_at)
                return
            job, runner = entry
            if job.job_id != job_id:
                self._stats["mismatched"] += 1
                return
            self._stats["accepted" if self._queue(job, runner, heard_at) else "duplicate"] += 1

    def _remember_early(self, external_id: str, job_id: str, heard_at: float) -> None:
        """(lock held) Bounded: at most _MAX_EARLY, none older than _EARLY_TTL_S."""
        while self._early and (len(self._early) >= _MAX_EARLY or
                               heard_at - next(iter(self._early.values()))[1] > _EARLY_TTL_S):
            del self._early[next(iter(self._early))]
        self._early.pop(external_id, None)
        self._early[external_id] = (job_id, heard_at)

    def _count(self, what: str) -> None:
        with self._lock:
            self._stats[what] += 1

    def stats_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def latencies_snapshot(self, runner: SlurmRunner) -> list[float]:
        with self._lock:
            return list(self._latencies.get(id(runner), []))

    # -- the confirmation thread --------------------------------------------------------

    def _confirm_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    due = [p for p in self._pending.values() if p.due <= now]
                    if due:
                        break
                    wait = min((p.due for p in self._pending.values()), default=None)
                    self._cond.wait(None if wait is None else max(0.0, wait - now))
                if self._stopping:
                    return
                for pending in due:
                    pending.due = float("inf")  # in hand: not taken again meanwhile
            by_runner: dict[int, list[_Pending]] = {}
            for pending in due:
                by_runner.setdefault(id(pending.runner), []).append(pending)
            for batch in by_runner.values():
                try:
                    self._confirm(batch)
                except Exception:  # noqa: BLE001 - the thread must live on; reconciliation covers these
                    log.exception("confirming %d announced Slurm jobs failed", len(batch))
                    with self._cond:
                        for pending in batch:
                            if self._pending.get(pending.job.external_id) is pending:
                                del self._pending[pending.job.external_id]

    def _confirm(self, batch: list[_Pending]) -> None:
        runner = batch[0].runner
        try:
            verdicts = runner._confirm([p.job for p in batch])
        except Exception as exc:  # noqa: BLE001 - Slurm unreachable: try again later
            log.warning("cannot confirm %d announced Slurm jobs yet: %s", len(batch), exc)
            verdicts = {p.job.external_id: None for p in batch}
        now = time.monotonic()
        for pending in batch:
            verdict = verdicts.get(pending.job.external_id)
            if verdict is None:
                with self._cond:
                    if self._pending.get(pending.job.external_id) is not pending:
                        continue
                    if pending.once:
                        del self._pending[pending.job.external_id]
                        continue
                    if now - pending.heard_at > runner.confirm_timeout_s:
                        del self._pending[pending.job.external_id]
                        self._stats["unconfirmed"] += 1
                        log.info("Slurm does not say job %s (%s) ended, %.0fs after its announcement: left to "
                                 "reconciliation", pending.job.job_id, pending.job.external_id, now - pending.heard_at)
                        continue
                    pending.attempts += 1
                    pending.due = now + min(2.0, 0.05 * 2 ** pending.attempts)
                    self._cond.notify_all()
                continue
            if verdict is _STOOD_DOWN:
                log.warning("Slurm job %s of job %s was a duplicate copy and stood down",
                            pending.job.external_id, pending.job.job_id)
                self.take(pending.job.external_id, runner)
                continue
            if isinstance(verdict, Completion) and self.take(pending.job.external_id, runner):
                with self._lock:
                    self._latencies.setdefault(id(runner), []).append(time.monotonic() - pending.heard_at)
                runner._emit(verdict)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        for thread in (self._serve_thread, self._confirm_thread):
            if thread is not threading.current_thread():
                thread.join(10)
        for conn in list(self._connections.values()):
            self._drop(conn)
        self._selector.close()
        for sock in (self.sock, self._wake_r, self._wake_w):
            sock.close()
        self._release_state()


_current: _Listener | None = None
_current_lock = threading.Lock()


def _open_listener(params: Mapping[str, Any], runner: SlurmRunner) -> _Listener:
    global _current
    with _current_lock:
        if _current is not None and _current.pid != os.getpid():
            raise RunnerError("the Slurm listener was opened before this process was forked: serve slurm "
                              "queues with a solo or threads pool, or build runners after the fork")
        if _current is None:
            _current = _Listener(params)
        elif params.get("state_file") and params["state_file"] != _current.state_file:
            log.warning("one Slurm listener per process: staying on %s, not %s", _current.state_file,
                        params["state_file"])
        _current.users_add(runner)
        return _current


def _close_listener(listener: _Listener, runner: SlurmRunner) -> None:
    global _current
    listener.forget(runner)
    with _current_lock:
        if listener.users:
            return
        if _current is listener:
            _current = None
    listener.close()


# -- files of the job directory (untrusted: bounded, no links followed) -----------------

def _read_small(path: Path, limit: int = _READ_LIMIT) -> str:
    """A small regular file's text; '' if it is missing, a link, a FIFO or a directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, limit).decode("utf-8", errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def _recorded_exit_code(job_dir: JobDir) -> int | None:
    """The exit code job.sh recorded, read like any file a job left: bounded, no links."""
    text = _read_small(job_dir.exit_code_file, 64).strip()
    return int(text) if re.match(r"^-?\d{1,5}$", text) else None


def _over_memory(job_dir: JobDir) -> bool:
    """slurmstepd's own words in the batch script's stderr when it killed the job for
    exceeding --mem (the last few KB only)."""
    path = job_dir.root / "slurm.err"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        os.lseek(fd, max(0, info.st_size - _READ_LIMIT), os.SEEK_SET)
        text = os.read(fd, _READ_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return False
    finally:
        os.close(fd)
    return "exceeded memory limit" in text or "Exceeded job memory limit" in text


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _write_file(path: Path, text: str, mode: int, *, sync: bool = False) -> None:
    """Write atomically (a link planted at the final name is replaced, not followed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        os.unlink(tmp)  # whatever was left (or planted) there
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, mode)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _reverse_lines(path: Path, block: int = 1 << 16) -> Iterator[bytes]:
    """The file's lines, last first: recent jobs are at the end of a long record."""
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
            times.append(os.lstat(Path(job.job_dir) / "job.sh").st_mtime)
        except OSError:
            return 0.0
    return min(times) - 300 if times else 0.0


def _tail(text: str, limit: int = 500) -> str:
    text = (text or "").strip()
    return text[-limit:]
