"""Finish a job from its completion event: exit code, output tails, outputs, metrics."""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from galaxy_tasks.context import Context
from galaxy_tasks.faults import crash_point
from galaxy_tasks.jobdir import EndNote, JobDir, new_token
from galaxy_tasks.lifecycle import limits
from galaxy_tasks.lifecycle.changes import move_many
from galaxy_tasks.lifecycle.effects import Effects
from galaxy_tasks.lifecycle.limits import move_giving_back, release
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.policies import Resubmission, choose, condition_names
from galaxy_tasks.routing import Destination
from galaxy_tasks.runners.base import Completion, signal_name
from galaxy_tasks.states import TERMINAL, JobState
from galaxy_tasks.store import Moved

log = logging.getLogger(__name__)

_LAUNCHED = frozenset({JobState.SUBMITTING, JobState.RUNNING})
COMMAND_NOT_FOUND = 127
#: the longest resubmit delay sent as a message's countdown (a broker holds such a message
#: unacknowledged until it is due, so it is also at most half the visibility timeout); a
#: longer one waits in the job's row, started by reconciliation at `check_at`
MAX_COUNTDOWN_S = 60.0


class Finished(NamedTuple):
    """What a completion event led to: the recorded end (None if the job had already
    ended: a duplicate or late event), the destination whose oldest waiting job may start
    now because this job's slot is free (None if it has no slots), the jobs a concurrency
    place it gave back releases, and the job itself if a resubmit rule sends it again
    (after `delay_s`)."""

    moved: Moved | None
    wake: str | None
    waiting: list[tuple[str, str]] = []
    resubmitted: Job | None = None
    delay_s: float = 0.0
    #: the job's row if it had ended before this completion (a late or repeated end, such as
    #: the finish redelivered after a crash that followed its record)
    ended_before: Job | None = None

    @property
    def effects(self) -> Effects:
        """Wake the freed slot and places, send a resubmitted job again, and run the pass of
        a workflow's job: a repeated end passes again (the pass of the first may have died
        before it created the dependents; a pass creates each element's job once)."""
        ended = self.moved.job if self.moved is not None else self.ended_before
        return Effects(
            wake=[self.wake] if self.wake is not None else [],
            launch=self.waiting,
            start_later=[(self.resubmitted, self.delay_s)] if self.resubmitted is not None else [],
            passes=[ended] if ended is not None and ended.workflow_id is not None else [],
        )


def finish(ctx: Context, completion: Completion, confirmed: bool = False, job: Job | None = None) -> Finished:
    """Record the job's end; the returned row has its terminal state.

    A completion message only says "look": the end is taken from the job's own directory
    (the exit code job.sh recorded, the end note of the runner that saw the job end), each
    carrying the row's token. Only a runner's own answer in this process (`confirmed`:
    reconciliation's status check, a runner that records its events durably) is taken as
    it is. A completion with no such evidence (a forged message, or one sent too early)
    changes nothing, and the job is looked at by reconciliation soon instead. `job`: its row
    as a batch read it (the move checks the state again)."""
    job = job if job is not None and job.id == completion.job_id else ctx.store.job(completion.job_id)
    return finish_many(ctx, [(completion, job)], confirmed)[0]


def finish_many(ctx: Context, ends: Sequence[tuple[Completion, Job | None]],
                confirmed: bool = False) -> list[Finished]:
    """`finish` for several ends heard together, each with its row as read together: each is
    checked and decided on its own; the plain ends (no resubmission, no place to give back)
    are then recorded with one statement per state they reach (store.move_many)."""
    found: list[Finished | _Plain] = []
    for completion, job in ends:
        if job is None or job.id != completion.job_id:
            found.append(Finished(None, None))
            continue
        checked = _checked(ctx, completion, confirmed, job)
        found.append(checked if isinstance(checked, Finished) else _record(ctx, job, *checked))
    plain = [entry for entry in found if isinstance(entry, _Plain)]
    recorded = _together(ctx, plain, lambda entry: JobState(entry.job.state))
    # those read as SUBMITTING whose launch was recorded meanwhile (a burst's short jobs end
    # before their batch's RUNNING record): together again, from RUNNING
    late = [entry for entry in plain if entry.job.id not in recorded and entry.job.state == JobState.SUBMITTING.value]
    recorded.update(_together(ctx, late, lambda entry: JobState.RUNNING))
    # any left moved on otherwise: each on its own; a second end of one job in the batch
    # finds it ended
    return [entry if isinstance(entry, Finished) else _recorded(
        ctx, entry, *((recorded.pop(entry.job.id), []) if entry.job.id in recorded else _alone(ctx, entry)))
        for entry in found]


def _together(ctx: Context, ends: Sequence[_Plain], source: Callable[[_Plain], JobState]) -> dict[str, Moved]:
    """Plain ends recorded with one statement per state they reach from their `source`."""
    recorded: dict[str, Moved] = {}
    for state, start in dict.fromkeys((end.state, source(end)) for end in ends):
        recorded.update(move_many(ctx, {end.job.id: {**end.values, "reason": end.reason} for end in ends
                                        if (end.state, source(end)) == (state, start)}, state, start))
    return recorded


def _alone(ctx: Context, end: _Plain) -> tuple[Moved | None, list[tuple[str, str]]]:
    return move_giving_back(ctx, end.job, end.state, reason=end.reason, sources=_LAUNCHED, **end.values)


def _checked(ctx: Context, completion: Completion, confirmed: bool,
             job: Job) -> Finished | tuple[JobDir, Completion, EndNote, str | None]:
    """What the job's directory says of its end, or why nothing is to be recorded."""
    # the process of a destination with job slots ended (a cancelled job's too, whose
    # finish records nothing): its slot is free, so the oldest waiting job may start
    wake = job.destination if job.destination in ctx.routing.limited else None
    job_dir = JobDir(Path(job.job_dir or ctx.settings.jobs_dir / job.id), job.token)
    if JobState(job.state) not in _LAUNCHED:
        return Finished(None, wake, _ended_before(ctx, job, job_dir, completion, confirmed),
                        ended_before=job if JobState(job.state) in TERMINAL else None)
    if completion.external_id and job.external_id and completion.external_id != job.external_id:
        # the end of another attempt (a resubmitted job's earlier one), heard late
        event(log, "completion_of_another_attempt", level=logging.WARNING, job_id=job.id,
              heard=completion.external_id, running=job.external_id)
        return Finished(None, None)
    end = _evidence(job_dir, completion, confirmed)
    if end is None:
        ctx.store.recheck(job.id)
        event(log, "completion_unconfirmed", level=logging.WARNING, job_id=job.id, source=completion.source)
        return Finished(None, None)
    return job_dir, completion, end, wake


def _ended_before(ctx: Context, job: Job, job_dir: JobDir, completion: Completion,
                  confirmed: bool) -> list[tuple[str, str]]:
    """A completion for a job past its launch: a finish that recorded the end but died
    before the places came back (an older release, its message come again), or the end of
    a cancelled job's process, which frees its places only with evidence (the job's own
    exit code or its runner's end note): a bare message frees nothing, and the stop check
    of reconciliation stays."""
    state = JobState(job.state)
    if state in (JobState.OK, JobState.ERROR):
        return release(ctx, job)
    if state is JobState.DELETED and job.limit_keys and _evidence(job_dir, completion, confirmed) is not None:
        return release(ctx, job)
    return []


def _evidence(job_dir: JobDir, completion: Completion, confirmed: bool) -> EndNote | None:
    """The end as the job's directory says it (or, `confirmed`, as the runner said it here)."""
    recorded = job_dir.recorded_exit_code()
    note = completion.note() if confirmed else job_dir.end_note()
    if note is None:
        return EndNote(exit_code=recorded, ended_at=completion.ended_at) if recorded is not None else None
    if recorded is not None and recorded != note.exit_code:
        return replace(note, exit_code=recorded)  # the job's own record wins
    return note


class Outcome(NamedTuple):
    """How a launched job ended, decided before anything is written: its state and reason,
    the end as it is recorded, and, for an end a resubmit rule of its destination matches,
    the resubmission and the destination it goes to (None: the end stands)."""

    state: JobState
    reason: str | None
    end: EndNote
    again: tuple[Resubmission, Destination] | None = None


def _outcome(ctx: Context, job: Job, job_dir: JobDir, end: EndNote, stderr: str) -> Outcome:
    if end.runner_state == "walltime_reached" and ctx.routing.global_walltime_binds(job.destination, job.walltime_s):
        end = replace(end, runner_state="global_walltime_reached")
    state, reason = _verdict(job, job_dir, end, stderr)
    if end.runner_state is None and (too_large := _over_output_size(ctx, job, job_dir, end)) is not None:
        state, reason, end = JobState.ERROR, too_large, replace(end, runner_state="output_size_limit")
    return Outcome(state, reason, end, _resubmission(ctx, job, end) if state is JobState.ERROR else None)


def _resubmission(ctx: Context, job: Job, end: EndNote) -> tuple[Resubmission, Destination] | None:
    """The resubmit rule of the job's destination that matches how it ended, if any, and
    the destination the rule sends the job to."""
    destination = ctx.routing.destinations.get(job.destination)
    if destination is None or not destination.policy.resubmit:
        return None
    now = utcnow()
    since_queued = (now - (job.queued_at or job.created_at)).total_seconds()
    names = condition_names(end.runner_state, end.exit_code, end.signal, job.attempt, since_queued,
                            (now - job.running_at).total_seconds() if job.running_at else 0.0)
    choice = choose(destination.policy.resubmit, names, job.destination)
    target = ctx.routing.destinations.get(choice.destination) if choice else None
    return (choice, target) if choice is not None and target is not None else None


class _Plain(NamedTuple):
    """An end decided and to be recorded together with others: the job reaches `state`
    with `values` (the same names for every job)."""

    job: Job
    state: JobState
    reason: str | None
    values: dict[str, Any]
    wake: str | None


def _record(ctx: Context, job: Job, job_dir: JobDir, completion: Completion, end: EndNote,
            wake: str | None) -> Finished | _Plain:
    """Decide how the job ended, then write it: its next attempt, or an end that gives back
    places; a plain end is left to be written together with others."""
    stdout, stderr = job_dir.tail("stdout"), job_dir.tail("stderr")
    outcome = _outcome(ctx, job, job_dir, end, stderr)
    if outcome.again is not None:
        return _resubmit(ctx, job, outcome, *outcome.again)._replace(wake=wake)
    state, reason, end = outcome.state, outcome.reason, outcome.end
    values: dict[str, Any] = dict(
        exit_code=end.exit_code,
        signal=end.signal,
        stdout_tail=stdout,
        stderr_tail=stderr,
        wall_time_s=end.wall_time_s,
        max_rss_kb=end.max_rss_kb,
        ended_at=datetime.fromtimestamp(end.ended_at, UTC),
        runner_state=end.runner_state,
        # provenance: sizes, and the sha256 a later reuse needs only of a job that allows it
        output_files=job_dir.output_digests(job.outputs, hashed=bool(job.reuse))
        if state is JobState.OK and job.outputs else None,
        external_id=job.external_id or completion.external_id or None,
        running_at=job.running_at or job.updated_at,  # (updated_at: it ended before its launch was recorded)
    )
    plain = _Plain(job, state, reason, values, wake)
    return plain if not job.limit_keys and not limits.counted(ctx) else _recorded(ctx, plain, *_alone(ctx, plain))


def _recorded(ctx: Context, end: _Plain, moved: Moved | None, woken: list[tuple[str, str]]) -> Finished:
    """What an end's record led to (`moved` None: the job had moved on meanwhile)."""
    if moved is None:
        return _raced(ctx, end.job, end.wake)
    crash_point("finish", end.job.id)  # recorded, but the message not yet acknowledged
    event(log, "state_change", job_id=end.job.id, to=end.state, exit_code=end.values["exit_code"],
          reason=end.reason, tool_id=end.job.tool_id, destination=end.job.destination)
    return Finished(moved, end.wake, woken)


def _raced(ctx: Context, job: Job, wake: str | None) -> Finished:
    """The end found the job moved on meanwhile (a cancel won): its process has ended all
    the same, so its slot and places are free."""
    now = ctx.store.job(job.id)
    if now is None or JobState(now.state) not in TERMINAL:
        return Finished(None, None)
    return Finished(None, wake, release(ctx, now))


def _resubmit(ctx: Context, job: Job, outcome: Outcome, choice: Resubmission, target: Destination) -> Finished:
    """The job, with its id, back to NEW as its next attempt on `target`, this attempt kept
    in its `attempts` and its places given back in the same transaction; its chain is sent
    again after the rule's delay (a long delay is left to reconciliation, at `check_at`)."""
    end, reason = outcome.end, outcome.reason
    attempts = [*(job.attempts or []), {
        "attempt": job.attempt, "destination": job.destination, "external_id": job.external_id,
        "state": JobState.ERROR.value, "exit_code": end.exit_code, "signal": end.signal, "reason": reason,
        "runner_state": end.runner_state, "running_at": _iso(job.running_at),
        "ended_at": datetime.fromtimestamp(end.ended_at, UTC).isoformat(), "resubmit": choice.rule,
    }]
    why = (f"resubmitted to {target.name} (attempt {job.attempt + 1}) because {choice.rule}: "
           f"{reason or end.runner_state}")
    later = choice.delay_s > min(MAX_COUNTDOWN_S, ctx.settings.visibility_timeout / 2)
    check_at = utcnow() + timedelta(seconds=choice.delay_s + (0 if later else ctx.settings.check_after))
    moved, woken = move_giving_back(
        ctx, job, JobState.NEW, reason=why, sources=_LAUNCHED, destination=target.name, queue=target.queue,
        attempt=job.attempt + 1, attempts=attempts, token=new_token(), job_dir=None, external_id=None, owner=None,
        exit_code=None, signal=None, runner_state=None, check_at=check_at, checks=0)
    if moved is None:
        return _raced(ctx, job, None)
    event(log, "resubmitted", job_id=job.id, attempt=job.attempt + 1, destination=target.name, rule=choice.rule,
          delay_s=choice.delay_s)
    return Finished(None, None, woken, None if later else moved.job, choice.delay_s)


def _over_output_size(ctx: Context, job: Job, job_dir: JobDir, end: EndNote) -> str | None:
    """Why the job is over its output_size limit, if it is: a file it wrote is larger than
    the limit (Galaxy's check, per output file; the local runner's RLIMIT_FSIZE stops a file
    one byte past it, so that is the sign whatever the job's shell did next), or the job
    was ended by SIGXFSZ."""
    limit = ctx.routing.output_size_bytes(job.destination)
    if limit is None:
        return None
    found = job_dir.file_larger_than(limit, first=job.outputs or ())
    if found is not None:
        path, size = found
        return (f"the job's output file {path!r} grew too large ({size} bytes; the output_size limit is "
                f"{limit} bytes)")
    if end.signal == signal.SIGXFSZ or end.exit_code == 128 + signal.SIGXFSZ:
        return f"a file of the job grew past the output_size limit of {limit} bytes"
    return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _verdict(job: Job, job_dir: JobDir, end: EndNote, stderr: str) -> tuple[JobState, str | None]:
    exit_code = end.exit_code
    if end.signal is not None:
        return JobState.ERROR, end.reason or f"killed by signal {signal_name(end.signal)}"
    if exit_code is None:
        return JobState.ERROR, end.reason or "the job ended without an exit code"
    if exit_code != 0 and (script_reason := job_dir.script_reason()) is not None:
        return JobState.ERROR, script_reason
    if exit_code == COMMAND_NOT_FOUND and "not found" in stderr:
        line = next(line for line in stderr.splitlines() if "not found" in line)
        # sh says "<script>: <line>: <name>: not found"
        name = line.rsplit(": not found", 1)[0].rsplit(": ", 1)[-1]
        return JobState.ERROR, f"command not found: {name.strip()}"
    if exit_code != 0:
        return JobState.ERROR, end.reason or f"exit code {exit_code}"
    missing = [path for path in job.outputs or [] if not _produced(job_dir, path)]
    if missing:
        return JobState.ERROR, f"declared output not produced: {', '.join(missing)}"
    return JobState.OK, None


def _produced(job_dir: JobDir, path: str) -> bool:
    """A declared output exists in the working directory (a link counts only if it stays in
    the job's directory: nothing outside it is looked at for the job)."""
    where = job_dir.working / path
    if not os.path.lexists(where):
        return False
    try:
        target = where.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return target == job_dir.root.resolve() or job_dir.root.resolve() in target.parents
