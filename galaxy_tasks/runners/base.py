"""The one runner interface: every way of running a job (local, DRMAA, Mesos) implements it.

Runners know nothing of Celery or the database. They are handed a prepared job (`Launch`)
and report the end of a job through the `report` callback they were built with, so that a
runner can be tested without a broker and a new runner is a new module, not a new branch.

A runner class declares everything the rest of the system needs to know about it: its
name, its params (a dataclass, checked when the job_conf loads), the worker that must hold
it in a process of its own (`holder`), and what a runner URL's text means (`url_params`).
Registering it is one line in `galaxy_tasks.runners.REGISTRY`.
"""
from __future__ import annotations

import logging
import signal
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from galaxy_tasks.jobdir import EndNote, JobDir
from galaxy_tasks.names import external_name
from galaxy_tasks.native import Style
from galaxy_tasks.runners import params as runner_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rebuild:
    """What a worker that shares no filesystem with the submitter rebuilds a job's directory
    from on its own side (galaxy_tasks.staging): the job's command and environment as its
    prepare wrote them, its token, and the files that travel: `inputs` in, `outputs` (below
    the job's working directory) and `returns` (the client's own paths) home, and the staged
    files to `rewrite` so they name the copies."""

    command: str
    environment: Mapping[str, str]
    setup_file: str | None
    token: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    rewrite: tuple[str, ...] = ()
    #: what the transfer needs to reach the submitter for this job (http's tokens)
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Launch:
    """Everything a runner needs to start one prepared job."""

    job_id: str
    job_dir: Path
    script: Path  # sets the command's environment itself: a runner starts it as it is
    cores: int = 1
    memory_mb: int | None = None
    walltime_s: int | None = None  # within the walltime limits: a runner ends the job after it
    output_size_bytes: int | None = None  # the output_size limit: no file of the job grows past it
    attempt: int = 1  # a resubmitted job's next attempt is a new external job
    run_as: str | None = None  # the Unix user the job runs as (None: the worker's own)
    gpus: int | None = None  # GPUs the job needs (only on a destination that gives them: max_gpus)
    #: the job's own scheduler options, already allowed by its destination (allow_native)
    native_specification: str | None = None
    #: set for a destination without a shared filesystem: `job_dir` is the submitter's
    rebuild: Rebuild | None = None

    @property
    def external_name(self) -> str:
        """The name the external system knows the job by: derived from our id (and the
        attempt), so a redelivered launch can look for an existing copy before starting a
        second one, and a resubmission's attempt is never taken for the one before."""
        return external_name(self.job_id, self.attempt)


def signal_name(number: int) -> str:
    """`SIGTERM` for 15; a real-time signal (34-64) has only its number (`SIGRTMIN+6`
    is not a name `signal.Signals` knows)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}" if not signal.SIGRTMIN <= number <= signal.SIGRTMAX \
            else f"SIGRTMIN+{number - signal.SIGRTMIN}"


@dataclass(frozen=True)
class Completion(EndNote):
    """The completion event: how a job ended, as far as its runner knows (its `runner_state`
    in the words of Galaxy's resubmit conditions: walltime_reached, memory_limit_reached,
    output_size_limit, unknown_error), and which job and attempt it is of."""

    job_id: str
    external_id: str | None = None
    source: str = "runner"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Completion:
        """A completion from a message: only fields of the right kind are taken (the finish
        step takes the end itself from the job directory; these are hints)."""
        known: dict[str, Any] = {}
        for name, kinds in _COMPLETION_FIELDS.items():
            value = data.get(name)
            if value is not None and isinstance(value, kinds) and not isinstance(value, bool):
                known[name] = value[:2000] if isinstance(value, str) else value
        return cls(**known)

    def note(self) -> EndNote:
        """What the job directory's end note says of this end."""
        return EndNote(**{end.name: getattr(self, end.name) for end in fields(EndNote)})


_COMPLETION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "job_id": str, "exit_code": int, "signal": int, "reason": str, "wall_time_s": (int, float),
    "max_rss_kb": int, "ended_at": (int, float), "external_id": str, "source": str, "runner_state": str,
}


@dataclass(frozen=True)
class Tracked:
    """A job a runner is asked about: our id and the external id it was given (and, to
    follow it again after a restart, its walltime and when it started)."""

    job_id: str
    external_id: str
    job_dir: Path
    walltime_s: int | None = None
    running_since: float | None = None
    attempt: int = 1


Report = Callable[[Completion], None]


@dataclass(frozen=True)
class NoParams:
    """The params of a runner that takes none."""


class Runner(ABC):
    """Submit, cancel, ask the status of many jobs at once, recover after a restart."""

    #: the name used in job_conf (`runner: local`) and runner URLs (`local:///`)
    name: ClassVar[str] = ""
    #: the runner's params: a frozen dataclass (see `galaxy_tasks.runners.params`)
    Params: ClassVar[type] = NoParams
    #: the Celery app of the worker that holds this runner in one process of its own (a
    #: DRMAA session, a Mesos framework); None: any worker process may serve it
    holder: ClassVar[str | None] = None
    #: True if `report` must have recorded the end in the database before it returns (a
    #: runner that acknowledges events to its source, like Mesos, sets this)
    durable_report: ClassVar[bool] = False
    #: True if the runner starts a job that names `run_as` as that user; a job that names
    #: one is refused by any other runner rather than run as the worker's user
    runs_as_user: ClassVar[bool] = False
    #: how the scheduler spells a job's own options (galaxy_tasks.native); None: a job may
    #: set none. `native_reserved`: the options the runner sets itself, which no
    #: destination may let a job set
    native_style: ClassVar[Style | None] = None
    native_reserved: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: Any, report: Report, *, destination: str = "", host: str = "") -> None:
        """`params` is an instance of `Params`, or a mapping checked into one."""
        self.params = params if isinstance(params, self.Params) else runner_params.load(self.Params, params)
        self.report = report
        self.destination = destination or self.name
        self.host = host

    def ended(self, completion: Completion, job_dir: Path, token: str | None = None) -> None:
        """Report a job's end this runner saw, first writing it down in the job directory
        (`ended`): the finish step takes a job's end only from what is in its directory, so
        a message that merely claims an end (forged, or early) changes nothing. `token`: the
        directory's token when the runner started the job; the note carries it, so a late
        note of an earlier attempt is never taken for the next one's, which has another."""
        try:
            if token is not None and JobDir(job_dir).own_token() != token:
                log.warning("the directory of job %s now belongs to another attempt: its end is not noted there",
                            completion.job_id)
            else:
                JobDir(job_dir, token).write_end_note(completion.note())
        except OSError as exc:  # the exit code job.sh recorded may still say it; else reconciliation
            log.warning("cannot write the end note of job %s: %s", completion.job_id, exc)
        self.report(completion)

    @classmethod
    def url_params(cls, text: str) -> dict[str, Any]:
        """The params a runner URL's text stands for (`drmaa://-l h_rt=1:00/`)."""
        if text.strip():
            raise ValueError(f"a {cls.name}:// URL takes no options, not {text!r}")
        return {}

    @classmethod
    def gives_gpus(cls, params: Any) -> bool:
        """Whether the runner can ask its scheduler for a job's GPUs with these params (a
        destination that gives GPUs, `max_gpus`, must have a runner that can)."""
        return False

    @classmethod
    def slots(cls, params: Any) -> int | None:
        """How many of a destination's jobs may run at once on one host, if the runner
        limits it (the end of each job then wakes the next waiting one); None: no limit."""
        return None

    @classmethod
    def control_queue(cls, queue: str, external_id: str | None) -> str:
        """Where messages about one launched job (kill, status) must go: the destination's
        queue, unless only the worker of one host can act on the job (the local runner)."""
        return queue

    @classmethod
    def host_queues(cls, queue: str, host: str) -> list[str]:
        """The queues a worker on `host` consumes besides the destination's own."""
        return []

    @abstractmethod
    def submit(self, launch: Launch) -> str:
        """Start the job and return its external id.

        Must be idempotent: if a job named after `launch.job_id` already exists (a previous
        attempt got as far as the external system), return that job's id instead of
        starting a second copy. The end of the job is reported later through `report`.
        """

    def has_room(self) -> bool:
        """Whether a job submitted now would start (a runner with slots says no when full)."""
        return True

    @abstractmethod
    def cancel(self, tracked: Tracked) -> None:
        """Stop the job (and everything it started); quietly accept a job already gone."""

    @abstractmethod
    def status(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None]:
        """Ask about many jobs in one call: a Completion for each job that has ended,
        None for each job that is still queued or running."""

    def recover(self, jobs: Sequence[Tracked]) -> None:
        """Follow jobs started by an earlier process again, reporting those that ended."""
        ended = self.status(jobs)
        for job in jobs:
            completion = ended.get(job.job_id)
            if completion is not None:
                self.ended(completion, job.job_dir)

    def close(self) -> None:  # noqa: B027 - optional: most runners hold nothing
        """Release what the runner holds (threads, sessions); running jobs keep running."""
