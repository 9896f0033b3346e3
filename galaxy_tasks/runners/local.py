"""The local runner: jobs as detached process groups on this host.

The job script runs in a session of its own (so cancel kills everything it started and a
worker restart does not kill the job), and its end is learnt from the process exit through
one `ExitWatcher` thread, never from a loop over running jobs.

`max_jobs` (a destination param) bounds how many of the destination's jobs run at once on
a host, whichever worker process started them: each job holds a locked slot file for as
long as any of its processes lives. A launch that finds every slot taken raises RunnerFull.
"""
from __future__ import annotations

import fcntl
import logging
import os
import resource
import shlex
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence, cast

from galaxy_tasks.errors import RunnerError, RunnerFull
from galaxy_tasks.jobdir import CLAIMED_EXIT_CODE, JobDir, script_environment
from galaxy_tasks.runas import REFUSED
from galaxy_tasks.runners import memlimit
from galaxy_tasks.runners.asuser import call_helper, give_back, handed_over, run_as_command_param
from galaxy_tasks.runners.base import Completion, Launch, Report, Runner, Tracked, signal_name
from galaxy_tasks.runners.deadlines import Deadlines
from galaxy_tasks.runners.exitwatch import Exit, ExitWatcher
from galaxy_tasks.runners.params import param

log = logging.getLogger(__name__)

#: the job's descriptor of its slot file (see `_take_slot`)
SLOT_FD = 9
#: how long the end of a job run as its user waits for the helper's keeper to hand its
#: directories back (it wakes with the same exit) before asking the helper itself
HAND_BACK_WAIT_S = 2.0
_DEVNULL_ACTIONS = [
    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
]


class _Watched(NamedTuple):
    """What the exit watcher hands back with a process's end."""

    job_id: str
    job_dir: JobDir
    started: float
    rss_floor: int
    external_id: str
    memory_mb: int | None = None  # the memory limit the job runs under (None: none)
    cgroup: Path | None = None  # the job's memory cgroup, where it has one
    token: str | None = None  # the job directory's token when the job was started or followed
    helper_said: int | None = None  # what the privileged helper wrote (its stderr), for a job run as its user


@dataclass(frozen=True)
class LocalParams:
    max_jobs: int | None = param(None, minimum=1, doc="most of the destination's jobs running at once on a host, "
                                                      "whichever worker process started them (none: no limit)")
    kill_grace_s: float = param(5.0, minimum=0, doc="seconds from SIGTERM to SIGKILL when a job is cancelled")
    slots_dir: str | None = param(None, doc="where a host's slot files live "
                                            "(default $TMPDIR/galaxy-tasks-<uid>/slots/<destination>)")
    memory_limit: str = param("auto", choices=("auto", "cgroup", "rlimit", "off"),
                              doc="how a job's memory_mb is enforced: a memory cgroup of its own where this worker "
                                  "may make one, else RLIMIT_AS (auto); only one of them; or not at all")
    run_as_command: str | None = run_as_command_param()


class LocalRunner(Runner):
    name = "local"
    Params = LocalParams
    runs_as_user = True
    params: LocalParams

    def __init__(self, params: Any, report: Report, *, destination: str = "", host: str = "") -> None:
        super().__init__(params, report, destination=destination, host=host or socket.gethostname())
        self.kill_grace_s = self.params.kill_grace_s
        self.max_jobs = self.params.max_jobs
        self.slots_dir = Path(self.params.slots_dir or Path(tempfile.gettempdir()) /
                              f"galaxy-tasks-{os.getuid()}" / "slots" / self.destination)
        self._lock = threading.Lock()
        self._watcher: ExitWatcher | None = None
        self._watcher_pid = 0
        self._watching: set[int] = set()  # pids whose end this process will report
        self._deadlines: Deadlines | None = None
        self._deadlines_pid = 0
        self._walltime_killed: set[int] = set()  # pids ended for their walltime
        policy = self.params.memory_limit
        self._cgroups = memlimit.detect() if policy in ("auto", "cgroup") else memlimit.Cgroups(None, 0)
        if policy == "cgroup" and self._cgroups.parent is None:
            raise RunnerError("memory_limit is cgroup, but this worker may make no memory cgroup here")

    def submit(self, launch: Launch) -> str:
        job_dir = JobDir(launch.job_dir)
        claimed = job_dir.claimed_pid()
        if claimed is not None:  # a launch taken over: the job runs already
            external_id = self._external_id(claimed)
            self._follow(launch.job_id, job_dir, claimed, external_id, launch.attempt)
            if launch.walltime_s:
                self._end_at((_mtime(job_dir.claim_file) or time.time()) + launch.walltime_s, claimed, external_id,
                             job_dir)
            return external_id
        argv = self._command(launch)
        slot = self._take_slot()
        actions = _DEVNULL_ACTIONS if slot is None else [*_DEVNULL_ACTIONS, (os.POSIX_SPAWN_DUP2, slot, SLOT_FD)]
        # the helper's words (why it refused) in a file of no name, read at the job's end
        helper_said = _unnamed_file() if launch.run_as is not None else None
        if helper_said is not None:
            actions = [*actions, (os.POSIX_SPAWN_DUP2, helper_said, 2)]
        env, memory_mb, cgroup = self._limits(launch)
        started = time.time()  # before the spawn: the job's wall time is never under its own
        try:
            pid = os.posix_spawnp(argv[0], argv, env, setsid=True, file_actions=actions)
        except OSError as exc:
            if helper_said is not None:
                os.close(helper_said)
            raise RunnerError(f"cannot start the job script: {exc}") from exc
        finally:
            if slot is not None:
                os.close(slot)  # the job's processes hold the slot from now on
        # A spawned process inherits our peak RSS as its own starting peak (Linux keeps
        # the larger of the two across exec), so a peak not above ours says nothing.
        floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        external_id = self._external_id(pid)
        self._watch(pid, _Watched(launch.job_id, job_dir, started, floor, external_id, memory_mb, cgroup,
                                  job_dir.own_token(), helper_said), child=True)
        if launch.walltime_s:
            self._end_at(started + launch.walltime_s, pid, external_id, job_dir)
        return external_id

    def _command(self, launch: Launch) -> list[str]:
        """job.sh, or for a job that runs as its user, the privileged helper that checks the
        job and becomes job.sh as that user (the pid is the job's either way)."""
        if launch.run_as is None:
            return ["/bin/sh", str(launch.script)]
        if not self.params.run_as_command:
            raise RunnerError(f"job {launch.job_id} runs as {launch.run_as}, but destination {self.destination!r} "
                              "has no run_as_command")
        return [*shlex.split(self.params.run_as_command), "start", launch.job_id]

    def _signal(self, pid: int, sig: int, job_dir: JobDir) -> None:
        """Signal the job's process group; one that runs as another user (its own, real
        user) is signalled by the privileged helper, as that user."""
        try:
            _killpg(pid, sig)
            return
        except PermissionError:
            if not self.params.run_as_command:
                raise
        call_helper(self.params.run_as_command, "kill" if sig == signal.SIGKILL else "term", job_dir.root.name)

    def _limits(self, launch: Launch) -> tuple[dict[str, str], int | None, Path | None]:
        """The job script's environment with the limits it applies to itself, the memory
        limit it runs under, and its memory cgroup (one per attempt: an earlier attempt's
        count of OOM kills is not this one's)."""
        env = script_environment()
        memory_mb = launch.memory_mb if self.params.memory_limit != "off" else None
        cgroup = None
        if memory_mb and launch.run_as is None:
            cgroup = self._cgroups.create(_cgroup_name(launch.job_id, launch.attempt), memory_mb * 1024 * 1024) \
                if self.params.memory_limit != "rlimit" else None
        if memory_mb:
            if cgroup is not None:
                env["GT_CGROUP"] = str(cgroup)
            else:  # (a job run as its user joins no cgroup of the worker's: RLIMIT_AS)
                env["GT_RLIMIT_AS_KB"] = str(memory_mb * 1024)
        if launch.output_size_bytes:
            # one byte past the limit, so a file stopped by it is larger than the limit
            env["GT_RLIMIT_FSIZE"] = str(-(-(launch.output_size_bytes + 1) // 512))
        return env, memory_mb, cgroup

    def _end_at(self, when: float, pid: int, external_id: str, job_dir: JobDir) -> None:
        """At its walltime, the job is stopped (as a cancel stops it) and its end says why."""
        with self._lock:  # (a thread does not survive fork: a forked pool process makes its own)
            if self._deadlines is None or self._deadlines_pid != os.getpid():
                self._deadlines, self._deadlines_pid = Deadlines(), os.getpid()
            deadlines = self._deadlines
        started = self._parse(external_id)[2]

        def expire() -> None:
            if job_dir.claimed_pid() is None and started is not None and _start_time(pid) == started:
                deadlines.at(time.time() + 0.2, expire)  # not yet claimed (a helper still starting it)
                return
            if self._is_the_jobs(pid, started, job_dir):
                with self._lock:
                    self._walltime_killed.add(pid)
                self._signal(pid, signal.SIGTERM, job_dir)
                timer = threading.Timer(self.kill_grace_s, self._kill_hard, (pid, started, job_dir))
                timer.daemon = True
                timer.start()

        deadlines.at(when, expire)

    @classmethod
    def control_queue(cls, queue: str, external_id: str | None) -> str:
        """A local job can be killed or looked at only on its own host: `<queue>@<host>`."""
        host = external_id.split(":")[0] if external_id else ""
        return f"{queue}@{host}" if host else queue

    @classmethod
    def host_queues(cls, queue: str, host: str) -> list[str]:
        return [f"{queue}@{host}"]

    @classmethod
    def slots(cls, params: Any) -> int | None:
        return params.max_jobs if isinstance(params, LocalParams) else None

    def has_room(self) -> bool:
        if self.max_jobs is None:
            return True
        try:
            slot = self._take_slot()
        except RunnerFull:
            return False
        if slot is not None:
            os.close(slot)
        return True

    def cancel(self, tracked: Tracked) -> None:
        """Stop the job's process group, only if that process is still the job's: the one
        that claimed the job, started when the job started (a reused pid is a stranger's),
        and never this worker's own."""
        host, pid, started = self._parse(tracked.external_id)
        if host != self.host:
            raise RunnerError(f"job {tracked.job_id} runs on {host}, not on {self.host}")
        job_dir = JobDir(tracked.job_dir)
        if not self._is_the_jobs(pid, started, job_dir):
            return
        self._signal(pid, signal.SIGTERM, job_dir)
        timer = threading.Timer(self.kill_grace_s, self._kill_hard, (pid, started, job_dir))
        timer.daemon = True
        timer.start()

    def status(self, jobs: Sequence[Tracked]) -> dict[str, Completion | None]:
        return {job.job_id: self._status(job) for job in jobs}

    def recover(self, jobs: Sequence[Tracked]) -> None:
        for job in jobs:
            host, pid, _ = self._parse(job.external_id)
            if host != self.host:
                continue
            job_dir = JobDir(job.job_dir)
            completion = self._status(job)
            if completion is not None:
                self.ended(completion, job.job_dir)
            else:
                claimed = job_dir.claimed_pid()
                followed = claimed or pid
                external_id = job.external_id if claimed in (None, pid) else self._external_id(followed)
                self._follow(job.job_id, job_dir, followed, external_id, job.attempt)
                if job.walltime_s and job.running_since:  # its walltime goes on from when it started
                    self._end_at(job.running_since + job.walltime_s, followed, external_id, job_dir)

    def close(self) -> None:
        with self._lock:
            if self._watcher is not None and self._watcher_pid == os.getpid():
                self._watcher.close()
            if self._deadlines is not None and self._deadlines_pid == os.getpid():
                self._deadlines.close()
            self._deadlines = None
            self._watcher = None

    # -- internals --------------------------------------------------------------------

    def _take_slot(self) -> int | None:
        """With `max_jobs`, a locked slot file (host-wide: every worker process of this
        destination on the host shares the slots); the job's processes inherit the lock, so
        the slot is free again only when the last of them has ended. None without a limit."""
        if self.max_jobs is None:
            return None
        self.slots_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for index in range(self.max_jobs):
            fd = os.open(self.slots_dir / f"slot-{index}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        raise RunnerFull(f"all {self.max_jobs} job slots of {self.host} are taken")

    def _status(self, job: Tracked) -> Completion | None:
        job_dir = JobDir(job.job_dir)
        code = job_dir.recorded_exit_code()
        if code is not None:
            return Completion(job.job_id, exit_code=code, external_id=job.external_id, source="job_dir")
        host, pid, _ = self._parse(job.external_id)
        if host != self.host:
            return None
        claimed = job_dir.claimed_pid()
        alive = claimed if claimed is not None and _alive(claimed) else pid if claimed is None and _alive(pid) else None
        if alive is not None:
            overdue = job.running_since + job.walltime_s + self.kill_grace_s + 10 if job.walltime_s \
                and job.running_since else None
            if overdue is not None and time.time() > overdue:
                # past its walltime, and the process that kept its deadline is gone: stop it here
                external_id = self._external_id(alive)
                self._follow(job.job_id, job_dir, alive, external_id, job.attempt)
                self._end_at(time.time(), alive, external_id, job_dir)
            return None
        return Completion(
            job.job_id,
            reason="the job process ended without recording an exit code (killed, or the host restarted)",
            external_id=job.external_id,
            source="reconcile",
        )

    def _follow(self, job_id: str, job_dir: JobDir, pid: int, external_id: str | None = None,
                attempt: int = 1) -> None:
        cgroup = self._cgroups.parent / _cgroup_name(job_id, attempt) if self._cgroups.parent is not None else None
        tag = _Watched(job_id, job_dir, _mtime(job_dir.claim_file) or time.time(), 0,
                       external_id or self._external_id(pid), None, cgroup, job_dir.own_token())
        if not self._watch(pid, tag, child=False):
            self._on_exit(Exit(pid, None, None, time.time()), tag)

    def _watch(self, pid: int, tag: _Watched, *, child: bool) -> bool:
        """Watch `pid`; a process already watched here is not watched twice (its end would
        be reported twice). True also in that case: its end will be reported."""
        with self._lock:
            if pid in self._watching:
                return True
            self._watching.add(pid)
            # a watcher thread does not survive fork: a forked pool process makes its own
            if self._watcher is None or self._watcher_pid != os.getpid():
                self._watcher = ExitWatcher(self._on_exit)
                self._watcher_pid = os.getpid()
            watcher = self._watcher
        return watcher.watch(pid, tag, child=child)

    def _on_exit(self, exit: Exit, tag: object) -> None:
        job_id, job_dir, started, rss_floor, external_id, memory_mb, cgroup, token, helper_said = cast(_Watched, tag)
        refusal = _refusal(helper_said, exit) if helper_said is not None else None
        with self._lock:
            self._watching.discard(exit.pid)
            out_of_time = exit.pid in self._walltime_killed
            self._walltime_killed.discard(exit.pid)
        if exit.exit_code == CLAIMED_EXIT_CODE and job_dir.recorded_exit_code() is None:
            claimed = _wait_for_claim(job_dir)
            if claimed not in (None, exit.pid):
                self._follow(job_id, job_dir, claimed)  # a duplicate copy stood down
                # (its cgroup, if any, is the one the running copy joined: named by the same attempt)
                return
        recorded = job_dir.recorded_exit_code()
        reason = runner_state = None
        if exit.signal is not None:
            reason = f"killed by signal {signal_name(exit.signal)}"
        elif recorded is None and exit.exit_code is None:
            reason = "the job process ended without recording an exit code"
        limit = f" ({memory_mb} MB)" if memory_mb else ""
        if out_of_time:
            runner_state, reason = "walltime_reached", "the job reached its walltime and was stopped"
        elif cgroup is not None and cgroup.exists() and memlimit.Cgroups.oom_killed(cgroup):
            runner_state, reason = "memory_limit_reached", f"the job reached its memory limit{limit}"
        elif memory_mb and recorded not in (None, 0) and memlimit.said_out_of_memory(job_dir.tail("stderr", 8192)):
            runner_state, reason = "memory_limit_reached", f"the job ran out of memory (limit {memory_mb} MB)"
        if refusal is not None and recorded is None:
            reason = refusal
        if cgroup is not None and cgroup.exists():
            memlimit.Cgroups.remove(cgroup)
        if self.params.run_as_command and handed_over(job_dir.root):
            self._take_back(job_id, job_dir)
        self.ended(
            Completion(
                job_id,
                exit_code=recorded if recorded is not None else exit.exit_code,
                signal=exit.signal,
                reason=reason,
                runner_state=runner_state,
                wall_time_s=round(exit.ended_at - started, 3),
                max_rss_kb=exit.max_rss_kb if (exit.max_rss_kb or 0) > rss_floor else None,
                ended_at=exit.ended_at,
                external_id=external_id,
            ),
            job_dir.root,
            token,
        )

    def _take_back(self, job_id: str, job_dir: JobDir) -> None:
        """A job run as its user: its directories (and the one its client declared, Galaxy's
        job directory, whose outputs the client reads as its own user once it hears of the
        end) back before its end is reported. The helper's keeper, woken by the same exit,
        hands the job directory back last; if it has not within HAND_BACK_WAIT_S (killed, or a
        host far too busy), the helper's reclaim does it."""
        deadline = time.monotonic() + HAND_BACK_WAIT_S
        while handed_over(job_dir.root) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not handed_over(job_dir.root):  # the keeper gives the job directory back last
            return
        try:
            give_back(self.params.run_as_command, job_id, job_dir.root)
        except RunnerError as exc:
            log.warning("job %s: its directories are not back: %s", job_id, exc)

    def _kill_hard(self, pid: int, started: int | None, job_dir: JobDir) -> None:
        """SIGKILL for the group SIGTERM was sent to (checked then to be the job's), if it is
        still that group: the job's directory may have been taken by its next attempt since,
        so the claim is not asked again. The script may be gone while children that ignored
        SIGTERM live on in its group."""
        if pid <= 1 or pid in (os.getpid(), os.getppid(), os.getpgrp()):
            return
        now = _start_time(pid)
        if now is None:  # the leader is gone; while its group lives its pid cannot be reused
            same = _group_alive(pid)
        else:
            same = started is not None and now == started and _group_alive(pid)
        if same:
            self._signal(pid, signal.SIGKILL, job_dir)

    @staticmethod
    def _is_the_jobs(pid: int, started: int | None, job_dir: JobDir) -> bool:
        """Whether the process group `pid` is still this job's to signal."""
        if pid <= 1 or pid in (os.getpid(), os.getppid(), os.getpgrp()):
            return False
        if job_dir.claimed_pid() != pid:
            return False
        now = _start_time(pid)
        if now is None:  # the leader is gone; while its group lives its pid cannot be reused
            return _group_alive(pid)
        return (started is None or now == started) and _group_alive(pid)

    def _external_id(self, pid: int) -> str:
        """`host:pid:start`: the start time (clock ticks since boot) tells the job's process
        from a later one that got the same pid."""
        started = _start_time(pid)
        return f"{self.host}:{pid}" if started is None else f"{self.host}:{pid}:{started}"

    @staticmethod
    def _parse(external_id: str) -> tuple[str, int, int | None]:
        parts = external_id.split(":")
        try:
            if len(parts) == 2:
                return parts[0], int(parts[1]), None
            if len(parts) == 3:
                return parts[0], int(parts[1]), int(parts[2])
        except ValueError:
            pass
        raise RunnerError(f"not a local runner job id: {external_id!r}")


def _alive(pid: int) -> bool:
    if not _reaches(os.kill, pid):
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cgroup_name(job_id: str, attempt: int = 1) -> str:
    return f"galaxy-tasks-{job_id}" if attempt <= 1 else f"galaxy-tasks-{job_id}.a{attempt}"


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _group_alive(pgid: int) -> bool:
    return _reaches(os.killpg, pgid)


def _reaches(send: Callable[[int, int], None], target: int) -> bool:
    """A signal 0 finds the process (or group): it exists, ours or another user's."""
    try:
        send(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _unnamed_file() -> int:
    """A file of the worker's that no other process can open by name (O_TMPFILE)."""
    return os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)


def _refusal(helper_said: int, exit: Exit) -> str | None:
    """Why the privileged helper refused to start the job, from what it wrote (its refusal's
    `reason=`), if it did; the file is closed here."""
    try:
        if exit.exit_code != REFUSED:
            return None
        text = os.pread(helper_said, 8192, 0).decode(errors="replace").strip().splitlines()
    finally:
        os.close(helper_said)
    said = text[-1] if text else ""
    reason = said.partition(" reason=")[2] or said
    if reason.startswith('"') and reason.endswith('"'):
        reason = reason[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return f"the privileged helper refused to start the job: {reason or 'it said nothing'}"


def _wait_for_claim(job_dir: JobDir, timeout: float = 2.0) -> int | None:
    """The claiming copy's pid; it may not have written it yet when a duplicate exits."""
    deadline = time.monotonic() + timeout
    while True:
        pid = job_dir.claimed_pid()
        if pid is not None or not job_dir.claimed() or time.monotonic() > deadline:
            return pid
        time.sleep(0.01)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None
