"""galaxy-tasks-run-as: the privileged step of jobs run as their real user.

Run as root (through sudo, with the sudoers lines of docs/security.md), it takes exactly
`CONFIG ACTION JOB_ID` and no path of the caller's: the job's user, directory and state come
from the job's row and the checks below, and anything that does not pass is refused with a
log line that says why. Actions:

- `start`: a job in `submitting` or `running` state. Its directory is handed to the user (group: the
  worker's, setgid, so the job's files stay readable by the worker with umask 027), a keeper
  process is left behind to hand the directory back once the job has ended, and this process
  drops every privilege (supplementary groups, gid, uid) and becomes the job script, so the
  pid the worker started is the job's.
- `term`, `kill`: signal the job's process group, as the job's user (the kernel then lets
  the signal reach only that user's processes, whatever pid the job's claim file names).
- `sbatch`, `qsub`: a job in `submitting` state, for a batch scheduler. Its directory is
  handed to the user as for `start`, then this process drops every privilege and becomes the
  scheduler's submit command (the configured program), with the arguments the runner left in
  the job's `submit.args`, read as the user. The scheduler then holds a job of the user's.
- `scancel`, `qdel`: cancel the job's scheduler job as the job's user, by the name the
  runner gave it (`gt-<job id>`): the scheduler lets the user cancel only the user's jobs.
- `handover`: a job in `submitting` state whose runner has its task started as the user by
  a privileged launcher of its own (a Mesos agent runs a task as its `command.user`): the
  directory is handed to the user as for `start`, and nothing is run.
- `reclaim`: hand a job's directory back to the worker once its end is known (a batch job
  ended, or a keeper was killed).

A job whose row declares a directory of its client's (`handover_dir`: Galaxy's job directory)
has that directory handed over and back with its own, only under the rules of `handover`.
"""
from __future__ import annotations

import grp
import logging
import os
import pwd
import select
import signal
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from galaxy_tasks.errors import ConfigError
from galaxy_tasks.jobdir import JobDir
from galaxy_tasks.logs import event
from galaxy_tasks.names import JOB_ID, USER_NAME, external_name
from galaxy_tasks.realuser import handover
from galaxy_tasks.realuser.handover import Declared
from galaxy_tasks.realuser.record import JobRecord, read_job
from galaxy_tasks.runas import HANDOVER_MARK, REFUSED, read_arguments
from galaxy_tasks.states import TERMINAL, JobState
from galaxy_tasks.yamlconf import read

log = logging.getLogger("galaxy_tasks.realuser")

_STARTING = frozenset({JobState.SUBMITTING.value})
_STARTED = frozenset({JobState.SUBMITTING.value, JobState.RUNNING.value, JobState.DELETED.value})
#: the states each action needs (a cancel moves the row to deleted before the runner stops it;
#: a batch job's end is heard, and its directory reclaimed, before the row records it; the
#: local runner's launch records `running` as soon as it has spawned the helper, which may
#: read the row after that: job.sh's claim lets one copy of a job run, however often started)
STATES: dict[str, frozenset[str]] = {
    "start": _STARTING | {JobState.RUNNING.value}, "sbatch": _STARTING, "qsub": _STARTING,
    "handover": _STARTING,
    "term": _STARTED, "kill": _STARTED, "scancel": _STARTED, "qdel": _STARTED,
    "reclaim": _STARTED | frozenset(state.value for state in TERMINAL),
}
#: the scheduler commands the helper runs as the job's user, and where they are unless the
#: configuration's `programs` says otherwise
PROGRAMS = {"sbatch": "/usr/bin/sbatch", "qsub": "/usr/bin/qsub", "scancel": "/usr/bin/scancel",
            "qdel": "/usr/bin/qdel"}
_CONFIG_KEYS = {"database_url", "jobs_root", "allowed_group", "min_uid", "log_file", "programs",
                "scheduler_environment", "handover_roots"}
#: the actions that hand a job's directories over (the declared one must carry the job's mark)
#: or back
_HANDING = frozenset({"start", "sbatch", "qsub", "handover"})
#: what the job script may be given of the caller's environment: the limits it applies to itself
_LIMITS = ("GT_RLIMIT_AS_KB", "GT_RLIMIT_FSIZE")


class Refused(Exception):
    """A request the helper will not carry out; its text says why."""


@dataclass(frozen=True)
class Config:
    """The helper's settings: a root-owned file, named in the sudoers line."""

    database_url: str
    jobs_root: Path
    allowed_group: str
    min_uid: int = 1000
    log_file: Path | None = None
    programs: Mapping[str, str] = field(default_factory=lambda: dict(PROGRAMS))
    #: what the scheduler commands need of the environment (SGE_ROOT, SLURM_CONF, ...)
    scheduler_environment: Mapping[str, str] = field(default_factory=dict)
    #: where a job's declared directory (`handover_dir`) may be; none: such jobs are refused
    handover_roots: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Checked:
    """A job that passed every check: its row, user and directory, and the worker's ids."""

    job: JobRecord
    user: pwd.struct_passwd
    job_dir: Path
    worker_uid: int
    worker_gid: int
    identity: tuple[int, int]  # the directory's (device, inode) when it was checked
    declared: Declared | None = None  # the client's directory handed over with it


def load_config(path: Path) -> Config:
    """The configuration, only from a regular file that root owns and no one else may write
    (whoever could write it could name any database and jobs root)."""
    _trusted_path(path, what="the configuration")
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise Refused(f"the configuration {path} must be a regular file owned by root, writable by root alone")
    data = read(path)
    if not isinstance(data, dict):
        raise Refused(f"the configuration {path} must be a mapping")
    unknown = set(data) - _CONFIG_KEYS
    missing = {"database_url", "jobs_root", "allowed_group"} - set(data)
    if unknown or missing:
        raise Refused(f"the configuration {path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    root = Path(str(data["jobs_root"]))
    min_uid = data.get("min_uid", 1000)
    if not root.is_absolute() or os.path.normpath(root) != str(root):
        raise Refused(f"jobs_root {root} must be an absolute, normalised path")
    if not isinstance(min_uid, int) or isinstance(min_uid, bool) or min_uid < 1:
        raise Refused(f"min_uid must be a whole number of at least 1, not {min_uid!r}")
    log_file = data.get("log_file")
    programs = {**PROGRAMS, **_text_mapping(data, "programs")}
    if unknown_programs := set(programs) - set(PROGRAMS):
        raise Refused(f"programs names no action of the helper: {sorted(unknown_programs)}")
    if relative := [path for path in programs.values() if not os.path.isabs(path)]:
        raise Refused(f"programs must be absolute paths, not {relative}")
    return Config(str(data["database_url"]), root, str(data["allowed_group"]), min_uid,
                  Path(str(log_file)) if log_file else None, programs, _text_mapping(data, "scheduler_environment"),
                  _roots(data.get("handover_roots")))


def _roots(value: object) -> tuple[Path, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Refused("handover_roots must be a list of directories")
    roots = tuple(Path(item) for item in value)
    if wrong := [str(root) for root in roots if not root.is_absolute() or os.path.normpath(root) != str(root)]:
        raise Refused(f"handover_roots must be absolute, normalised paths, not {wrong}")
    return roots


def _text_mapping(data: dict, key: str) -> dict[str, str]:
    value = data.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise Refused(f"{key} must be a mapping of names to text")
    return dict(value)


def check(config: Config, job_id: str, action: str) -> Checked:
    """Everything the action needs, from the job's row and its directory; Refused for
    anything that is not that job's own directory under the jobs root, run by an allowed user,
    in the state the action needs."""
    if not JOB_ID.match(job_id):
        raise Refused(f"{job_id!r} is not a job id")
    try:
        job = read_job(config.database_url, job_id)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if job is None:
        raise Refused(f"no job {job_id!r}")
    if job.state not in STATES[action]:
        raise Refused(f"job {job_id} is {job.state}; {action} needs {'/'.join(sorted(STATES[action]))}")
    user = _allowed_user(config, job)
    expected = config.jobs_root / job.id
    if job.job_dir is None or os.path.normpath(job.job_dir) != str(expected):
        raise Refused(f"job {job_id}'s directory {job.job_dir} is not {expected}, its own under the jobs root")
    _trusted_path(config.jobs_root, what="the jobs root")
    root_info = os.lstat(config.jobs_root)
    if root_info.st_mode & 0o022:
        raise Refused(f"the jobs root {config.jobs_root} is writable by others than its owner")
    info = _no_link(expected, f"job {job_id}'s directory {expected}")
    if not stat.S_ISDIR(info.st_mode):
        raise Refused(f"job {job_id}'s directory {expected} is not a directory")
    if info.st_uid not in (root_info.st_uid, user.pw_uid):
        raise Refused(f"job {job_id}'s directory {expected} is owned by uid {info.st_uid}, "
                      f"neither the worker's nor {user.pw_name}'s")
    if JobDir(expected).own_token() != job.token:
        raise Refused(f"job {job_id}'s directory {expected} belongs to another job (its token differs)")
    declared = _declared(config, job, user, root_info.st_uid, marked=action in _HANDING) \
        if action in _HANDING or action == "reclaim" else None
    return Checked(job, user, expected, root_info.st_uid, root_info.st_gid, (info.st_dev, info.st_ino), declared)


def _declared(config: Config, job: JobRecord, user: pwd.struct_passwd, worker_uid: int, *,
              marked: bool) -> Declared | None:
    """The job's declared directory (`handover_dir`), if it has one, checked by the rules of
    `handover`; to be handed over it must carry the job's mark (a reclaim takes back what the
    user holds there, whatever the user made of the mark)."""
    if job.handover_dir is None:
        return None
    named = f"job {job.id}'s declared directory {job.handover_dir}"
    if not config.handover_roots:
        raise Refused(f"{named}: the helper's configuration names no handover_roots")
    try:
        root, parts = handover.place(job.handover_dir, config.handover_roots)
    except ValueError as exc:
        raise Refused(f"job {job.id}'s declared directory: {exc}") from None
    _trusted_path(root, what="the handover root")
    root_info = os.lstat(root)
    if not stat.S_ISDIR(root_info.st_mode) or root_info.st_uid != worker_uid or root_info.st_mode & 0o022:
        raise Refused(f"the handover root {root} is not a directory of the worker's (uid {worker_uid}) alone")
    try:
        fd = handover.open_declared(root, parts, worker_uid)
        try:
            info = os.fstat(fd)
            if info.st_uid not in (worker_uid, user.pw_uid):
                raise ValueError(f"it is owned by uid {info.st_uid}, neither the worker's nor {user.pw_name}'s")
            if marked:
                handover.check_mark(fd, Path(job.handover_dir), job.id, worker_uid)
        finally:
            os.close(fd)
    except ValueError as exc:
        raise Refused(f"{named}: {exc}") from None
    return Declared(Path(job.handover_dir), root, parts, (info.st_dev, info.st_ino))


def _allowed_user(config: Config, job: JobRecord) -> pwd.struct_passwd:
    if not job.run_as:
        raise Refused(f"job {job.id} names no user to run as")
    if not USER_NAME.match(job.run_as):
        raise Refused(f"job {job.id}'s user {job.run_as!r} is not a user name")
    try:
        user = pwd.getpwnam(job.run_as)
    except KeyError:
        raise Refused(f"job {job.id}'s user {job.run_as!r} does not exist") from None
    if user.pw_uid == 0:
        raise Refused(f"job {job.id} would run as root ({user.pw_name})")
    if user.pw_uid < config.min_uid:
        raise Refused(f"job {job.id}'s user {user.pw_name} has uid {user.pw_uid}, under the minimum {config.min_uid}")
    try:
        group = grp.getgrnam(config.allowed_group)
    except KeyError:
        raise Refused(f"the allowed group {config.allowed_group!r} does not exist") from None
    if user.pw_gid != group.gr_gid and user.pw_name not in group.gr_mem:
        raise Refused(f"job {job.id}'s user {user.pw_name} is not in the group {group.gr_name}")
    return user


def _trusted_path(path: Path, *, what: str) -> None:
    """No symlink anywhere on the way to `path`, and every directory above it writable by
    root alone (or sticky, like /tmp), so nobody else can swap a part of it."""
    if not path.is_absolute():
        raise Refused(f"{what} {path} is not an absolute path")
    current = Path("/")
    for part in path.parts[1:]:
        parent_info = os.lstat(current)
        if parent_info.st_mode & 0o022 and not parent_info.st_mode & stat.S_ISVTX or \
                parent_info.st_uid != 0:
            raise Refused(f"{what} {path}: the directory {current} above it may be changed by others than root")
        current = current / part
        _no_link(current, f"{what} {path}: {current}")


def _no_link(path: Path, named: str) -> os.stat_result:
    """The path's own status (lstat): it must exist and must not be a symlink."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise Refused(f"{named} does not exist") from None
    if stat.S_ISLNK(info.st_mode):
        raise Refused(f"{named} is a symlink")
    return info


def hand_over(checked: Checked) -> None:
    """The job's directories to its user: every entry the worker owns becomes the user's,
    with the worker's group able to read it; directories setgid, so the job's own files
    take the worker's group. The mark of a declared directory stays the worker's."""
    for fd, info in _trees(checked):
        if info.st_uid != checked.worker_uid:
            continue
        os.fchown(fd, checked.user.pw_uid, checked.worker_gid)
        owner = stat.S_IMODE(info.st_mode) & 0o700
        mode = owner | (owner >> 3 & 0o050)
        os.fchmod(fd, mode | stat.S_ISGID if stat.S_ISDIR(info.st_mode) else mode)


def hand_back(checked: Checked) -> int:
    """An ended job's directories back to the worker: what the job's user owns there."""
    count = 0
    for fd, info in _trees(checked):
        if info.st_uid == checked.user.pw_uid:
            os.fchown(fd, checked.worker_uid, checked.worker_gid)
            count += 1
    return count


_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _trees(checked: Checked) -> Iterator[tuple[int, os.stat_result]]:
    """Every entry that changes hands: the declared directory's first, the job directory's
    last, so a runner that finds the job directory back knows that all of it is back."""
    declared = checked.declared
    if declared is not None:
        try:
            fd = handover.open_declared(declared.root, declared.parts, checked.worker_uid)
        except ValueError as exc:
            raise Refused(f"job {checked.job.id}'s declared directory: {exc}") from None
        yield from _entries(fd, declared.identity, f"job {checked.job.id}'s declared directory {declared.path}",
                            keep=frozenset({HANDOVER_MARK}))
    yield from _entries(os.open(checked.job_dir, _FLAGS | os.O_DIRECTORY), checked.identity,
                        f"job {checked.job.id}'s directory {checked.job_dir}")


def _entries(root: int, identity: tuple[int, int], named: str,
             keep: frozenset[str] = frozenset()) -> Iterator[tuple[int, os.stat_result]]:
    """The directory `root` (a descriptor, closed here) and every directory and regular file
    in it but those named in `keep`, each as a descriptor opened without following a symlink
    (anywhere: each is opened relative to its directory's descriptor, so a directory swapped
    for a symlink mid-walk leads nowhere) and its status. A file with other hard links is left
    out: its other name is not the job's to give away."""
    try:
        info = os.fstat(root)
        if (info.st_dev, info.st_ino) != identity:
            raise Refused(f"{named} was replaced after it was checked")
        yield from _below(root, _FLAGS, depth=0, keep=keep)
        yield root, info  # last: the directory changes hands once everything in it has
    finally:
        os.close(root)


def _below(directory: int, flags: int, depth: int,
           keep: frozenset[str] = frozenset()) -> Iterator[tuple[int, os.stat_result]]:
    if depth > 64:
        raise Refused("the job's directory is nested more than 64 levels deep")
    for name in os.listdir(directory):
        if name in keep:
            continue
        try:
            fd = os.open(name, flags, dir_fd=directory)
        except OSError:  # a symlink (ELOOP), a socket, or gone: nothing to hand over
            continue
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                yield from _below(fd, flags, depth + 1)
                yield fd, info
            elif stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                yield fd, info
        finally:
            os.close(fd)


def drop_privileges(user: pwd.struct_passwd) -> None:
    """Become the user entirely: no supplementary group, its gid and uid (real, effective
    and saved), and no way back."""
    os.setgroups([])
    os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
    os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
    if os.getresuid() != (user.pw_uid,) * 3 or os.getresgid() != (user.pw_gid,) * 3 or os.getgroups():
        raise Refused(f"could not drop privileges to {user.pw_name}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise Refused(f"privileges came back after dropping them to {user.pw_name}")


def start(checked: Checked, log_file: Path | None) -> None:
    """Hand the directory over, leave a keeper to hand it back, and become the job script."""
    hand_over(checked)
    watched = os.pidfd_open(os.getpid())
    if os.fork() == 0:  # the keeper: out of the job's session, so signals to the job miss it
        try:
            os.setsid()
            os.closerange(0, watched)
            os.closerange(watched + 1, 1 << 16)
            for fd in (0, 1, 2):  # nothing of the worker's: its pipes close when the job ends
                os.dup2(os.open(os.devnull, os.O_RDWR), fd)
            log.handlers.clear()
            _log_to(log_file)
            select.select([watched], [], [])
            count = hand_back(checked)
            event(log, "real_user_reclaimed", job_id=checked.job.id, user=checked.user.pw_name, entries=count)
        finally:
            os._exit(0)
    os.close(watched)
    env = _become(checked)
    env.update({name: os.environ[name] for name in _LIMITS if os.environ.get(name, "").isdigit()})
    user = checked.user
    event(log, "real_user_start", job_id=checked.job.id, user=user.pw_name, uid=user.pw_uid, pid=os.getpid())
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # where the helper's words went is the caller's, not the job's
    os.execve("/bin/sh", ["/bin/sh", str(checked.job_dir / "job.sh")], env)  # noqa: S606 - the job script


def _become(checked: Checked) -> dict[str, str]:
    """Drop to the job's user, in its directory with umask 027; the clean environment its
    commands get (GT_UMASK tells job.sh to keep the worker's group able to read)."""
    user = checked.user
    drop_privileges(user)
    os.umask(0o027)
    os.chdir(checked.job_dir)
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": user.pw_dir, "USER": user.pw_name,
            "LOGNAME": user.pw_name, "GT_UMASK": "027"}


def submit(checked: Checked, config: Config, action: str) -> None:
    """Hand the directory over and become the scheduler's submit command, as the user, with
    the arguments the runner left (read as the user: they can ask for nothing the user could
    not). Its answer (the scheduler's job id) goes to the worker."""
    hand_over(checked)
    env = {**_become(checked), **config.scheduler_environment}
    try:
        arguments = read_arguments(checked.job_dir)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    program = config.programs[action]
    event(log, "real_user_submit", job_id=checked.job.id, user=checked.user.pw_name, program=program)
    os.execve(program, [program, *arguments], env)  # noqa: S606 - the configured scheduler command


def cancel(checked: Checked, config: Config, action: str) -> None:
    """Become the scheduler's cancel command, as the user, for the job's scheduler name."""
    name = external_name(checked.job.id, checked.job.attempt)
    env = {**_become(checked), **config.scheduler_environment}
    program = config.programs[action]
    event(log, "real_user_cancel", job_id=checked.job.id, user=checked.user.pw_name, scheduler_name=name)
    os.execve(program, [program, f"--name={name}" if action == "scancel" else name], env)  # noqa: S606


def send_signal(checked: Checked, signum: int) -> None:
    """Signal the job's process group as the job's user: whatever its claim file says (the
    job wrote it), the kernel lets the signal reach that user's processes only."""
    pid = JobDir(checked.job_dir).claimed_pid()
    if pid is None or pid <= 1:
        raise Refused(f"job {checked.job.id} has no claimed process to signal")
    drop_privileges(checked.user)
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        event(log, "real_user_signal", job_id=checked.job.id, pgid=pid, signal=signum, found=False)
        return
    event(log, "real_user_signal", job_id=checked.job.id, pgid=pid, signal=signum, found=True)


def run(argv: Sequence[str]) -> int:
    """Carry out one action; the exit status is REFUSED for a refusal."""
    if len(argv) != 3 or argv[1] not in STATES:
        _log_to(None)
        event(log, "real_user_refused", level=logging.WARNING, argv=list(argv),
              reason=f"usage: galaxy-tasks-run-as CONFIG {{{','.join(STATES)}}} JOB_ID")
        return REFUSED
    config_path, action, job_id = argv
    try:
        config = load_config(Path(config_path))
    except (Refused, ConfigError, OSError) as exc:
        _log_to(None)
        event(log, "real_user_refused", level=logging.WARNING, action=action, job_id=job_id, reason=str(exc))
        return REFUSED
    _log_to(config.log_file)
    try:
        checked = check(config, job_id, action)
    except (Refused, OSError) as exc:
        event(log, "real_user_refused", level=logging.WARNING, action=action, job_id=job_id, caller=_caller(),
              reason=str(exc))
        return REFUSED
    event(log, "real_user_action", action=action, job_id=job_id, user=checked.user.pw_name, caller=_caller())
    try:
        if action == "start":
            start(checked, config.log_file)  # returns only if it failed
        elif action in ("sbatch", "qsub"):
            submit(checked, config, action)  # likewise
        elif action in ("scancel", "qdel"):
            cancel(checked, config, action)  # likewise
        elif action in ("term", "kill"):
            send_signal(checked, signal.SIGTERM if action == "term" else signal.SIGKILL)
        elif action == "handover":
            hand_over(checked)
            event(log, "real_user_handed_over", job_id=job_id, user=checked.user.pw_name)
        else:
            event(log, "real_user_reclaimed", job_id=job_id, user=checked.user.pw_name, entries=hand_back(checked))
    except (Refused, OSError) as exc:
        event(log, "real_user_refused", level=logging.WARNING, action=action, job_id=job_id, reason=str(exc))
        return REFUSED
    return 0


def _caller() -> str:
    """Who asked (sudo's record of the calling user), for the log only: nothing depends on it."""
    return os.environ.get("SUDO_USER", "") or str(os.getuid())


def _log_to(path: Path | None) -> None:
    """Every action and refusal: to stderr, and to the configured log file."""
    formatter = logging.Formatter("%(asctime)s galaxy-tasks-run-as[%(process)d] %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        handlers.append(logging.FileHandler(path))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main() -> None:
    """The entry point: `galaxy-tasks-run-as CONFIG ACTION JOB_ID`."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
