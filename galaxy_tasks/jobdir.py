"""A job's working directory and the job script every runner executes.

The same `job.sh` runs under every runner (a local process, a Grid Engine job, a Mesos
task). It claims the job before running anything (an exclusive create of `claim`), so a
second copy started by a duplicated submission exits with CLAIMED_EXIT_CODE without running
the command, and it records the command's exit code. It uses shell builtins only and never
takes the job's own environment: the command's variables are set in the subshell that
becomes the command's shell (`env.sh`), so a job whose environment says `IFS=0` or
`PATH=/nowhere` cannot stop its exit code from being recorded.

A job directory belongs to one row: the token written at prepare (`token`) is in the claim
and the exit code the script writes, and in the end note a runner writes (`ended`), and a
reader that is given the row's token takes nothing written for another job, such as a
directory left by an earlier job with the same id.

Everything in a job directory was within reach of the job's own command, so it is read
without following links, only from regular files, bounded in size, and never blocking (a
FIFO in place of a file is refused, not waited on).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shlex
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

CLAIMED_EXIT_CODE = 75
#: the exit code of a job whose environment_setup_file could not be read
SETUP_FAILED_EXIT_CODE = 126
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
OUTPUT_TAIL_BYTES = 64 * 1024
#: the first line of the job's stderr that starts with this is the job script's own reason
SCRIPT_REASON_PREFIX = "galaxy-tasks: "
_SMALL = 4096
#: the most entries of a working directory a size check looks at
SCAN_ENTRIES = 20_000
#: what hashing may cost one job, at its finish or at a later job's prepare: a job may leave
#: a sparse file of terabytes (its size costs nothing to make) or many links to one file
HASH_MAX_BYTES = 1 << 30
HASH_MAX_SECONDS = 10.0


def remove(root: Path, token: str | None) -> bool:
    """Delete a job's directory once nothing needs it, only if it is this row's (its token
    file says so): a directory another job with the same id left is never taken for it."""
    if token is None or JobDir(root).own_token() != token:
        return False
    shutil.rmtree(root, ignore_errors=True)
    return not root.exists()


def new_token() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True, kw_only=True)
class EndNote:
    """How a job ended, as the runner that saw it end wrote it down (`ended`); a runner's
    completion event says the same and more (`runners.base.Completion`)."""

    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    runner_state: str | None = None
    wall_time_s: float | None = None
    max_rss_kb: int | None = None
    ended_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class JobDir:
    """Paths inside one job directory, and what the steps read from it. `token` is the
    row's; without it, the directory's own `token` file says which job it belongs to."""

    root: Path
    token: str | None = None

    @property
    def script(self) -> Path:
        return self.root / "job.sh"

    @property
    def command(self) -> Path:
        return self.root / "command.sh"

    @property
    def env_script(self) -> Path:
        return self.root / "env.sh"

    @property
    def working(self) -> Path:
        return self.root / "working"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr"

    @property
    def exit_code_file(self) -> Path:
        return self.root / "exit_code"

    @property
    def token_file(self) -> Path:
        return self.root / "token"

    @property
    def end_note_file(self) -> Path:
        return self.root / "ended"

    @property
    def claim_file(self) -> Path:
        """Created exclusively by the copy of the job script that runs the job; holds its pid."""
        return self.root / "claim"

    def own_token(self) -> str | None:
        """The token this directory was prepared with (None: an older directory, or none)."""
        text = read_small(self.token_file, 128)
        return text.strip() or None if text is not None else None

    def expected_token(self) -> str | None:
        return self.token if self.token is not None else self.own_token()

    def claimed(self) -> bool:
        return os.path.lexists(self.claim_file)

    def claimed_pid(self) -> int | None:
        """The pid of the job script that claimed the job, if one did."""
        fields = self._fields(self.claim_file)
        return int(fields[0]) if fields and fields[0].isdigit() else None

    def recorded_exit_code(self) -> int | None:
        """The exit code the job script recorded, or None if it has not finished."""
        fields = self._fields(self.exit_code_file, complete=True)
        if not fields or not fields[0].isdigit():
            return None
        code = int(fields[0])
        return code if code < 256 else None

    def end_note(self) -> EndNote | None:
        """What the runner wrote when it saw the job end, if it did (and it is this job's)."""
        text = read_small(self.end_note_file, _SMALL)
        try:
            data = json.loads(text) if text else None
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("token") != self.expected_token():
            return None
        try:
            return EndNote(exit_code=_int(data.get("exit_code")), signal=_int(data.get("signal")),
                           reason=_text(data.get("reason")), runner_state=_text(data.get("runner_state")),
                           wall_time_s=_number(data.get("wall_time_s")), max_rss_kb=_int(data.get("max_rss_kb")),
                           ended_at=_number(data.get("ended_at")) or time.time())
        except (TypeError, ValueError):
            return None

    def write_end_note(self, note: EndNote) -> None:
        """The runner's record of the end (its own observation: the exit status it reaped,
        the signal, the usage), written whole or not at all, over whatever is there."""
        data = {"token": self.expected_token(), **note.__dict__}
        write_file(self.end_note_file, json.dumps(data), 0o600)

    def tail(self, which: str, limit: int = OUTPUT_TAIL_BYTES) -> str:
        """The last `limit` bytes of stdout or stderr, as text a database column can hold
        (bounded, so a chatty tool cannot fill the database; NUL and invalid UTF-8 replaced)."""
        path = self.stdout if which == "stdout" else self.stderr
        fd = _open_regular(path)
        if fd is None:
            return ""
        try:
            size = os.fstat(fd).st_size
            os.lseek(fd, max(0, size - limit), os.SEEK_SET)
            data = _read_up_to(fd, limit)
        finally:
            os.close(fd)
        return as_text(data)

    def file_larger_than(self, size: int, first: Sequence[str] = (),
                         max_entries: int = SCAN_ENTRIES) -> tuple[str, int] | None:
        """A file of the working directory (its path there, its size) larger than `size`
        bytes, if there is one: Galaxy's output_size limit holds for each file a job
        writes. The declared outputs (`first`) are looked at first, then the walk: links
        are never followed (the working directory itself included), and it stops after
        `max_entries` entries, so a job of a million files or of links out of its directory
        costs no more than that."""
        for path in first:
            try:
                found = os.lstat(self.working / path)
            except OSError:
                continue
            if stat.S_ISREG(found.st_mode) and found.st_size > size:
                return path, found.st_size
        try:
            top = os.open(self.working, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        seen, pending = 0, [(top, "")]
        try:
            while pending:
                fd, prefix = pending.pop()
                try:
                    with os.scandir(fd) as entries:
                        for entry in entries:
                            seen += 1
                            if seen > max_entries:
                                return None
                            found = entry.stat(follow_symlinks=False)
                            if stat.S_ISDIR(found.st_mode):
                                try:
                                    sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                                  | os.O_CLOEXEC, dir_fd=fd)
                                except OSError:
                                    continue
                                pending.append((sub, f"{prefix}{entry.name}/"))
                            elif stat.S_ISREG(found.st_mode) and found.st_size > size:
                                return prefix + entry.name, found.st_size
                finally:
                    os.close(fd)
        finally:
            for fd, _ in pending:
                os.close(fd)
        return None

    def output_digests(self, paths: Sequence[str], hashed: bool) -> dict[str, dict[str, Any]]:
        """The size of each declared output that is a regular file inside the job directory
        (a link is followed only if it stays inside it) and, if `hashed`, its sha256 within
        one budget for the whole job (HASH_MAX_BYTES, HASH_MAX_SECONDS; a file hard-linked
        under several names is read once): an output past the budget has no sha256 (it
        cannot be reused), so no job can make its finish step read for hours."""
        root = self.root.resolve()
        found: dict[str, dict[str, Any]] = {}
        budget = HashBudget() if hashed else None
        seen: dict[tuple[int, int], str | None] = {}
        for path in paths:
            try:
                target = (self.working / path).resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if root not in target.parents:
                continue
            fd = _open_regular(target)
            if fd is None:
                continue
            try:
                info = os.fstat(fd)
                entry: dict[str, Any] = {"size": info.st_size}
                inode = (info.st_dev, info.st_ino)
                if budget is not None:
                    if inode not in seen:
                        seen[inode] = budget.digest(fd, info.st_size)
                    if seen[inode] is not None:
                        entry["sha256"] = seen[inode]
            finally:
                os.close(fd)
            found[path] = entry
        return found

    def script_reason(self) -> str | None:
        """The reason the job script itself gave on stderr (a setup file it could not read)."""
        for line in self.tail("stderr", _SMALL).splitlines():
            if line.startswith(SCRIPT_REASON_PREFIX):
                return line[len(SCRIPT_REASON_PREFIX):].strip()[:500]
        return None

    def _fields(self, path: Path, complete: bool = False) -> list[str] | None:
        """`<value> <token>` written by the job script; None unless it is this job's (an
        older directory's files, written before tokens, carry no token and count when the
        directory has none either). `complete`: only a whole line counts."""
        text = read_small(path, 256)
        if text is None or (complete and not text.endswith("\n")):
            return None
        fields = text.split()
        expected = self.expected_token()
        if expected is None:
            return fields[:1] if len(fields) == 1 else None
        return fields[:1] if len(fields) == 2 and fields[1] == expected else None


def job_environment(
    job_dir: JobDir,
    *,
    cores: int,
    memory_mb: int | None,
    spec_env: Mapping[str, str],
    destination_env: Mapping[str, str],
    mesos_url: str,
    job_id: str,
) -> dict[str, str]:
    """The complete environment of a job's command: what the destination and the spec set,
    and the variables every Galaxy tool expects; nothing inherited from the worker's own
    environment (which may hold broker or database passwords). Scratch space is the job
    directory's tmp/ unless the destination's env names a TMPDIR (an admin's node-local
    scratch); a spec cannot move it."""
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": str(job_dir.working)}
    env.update(destination_env)
    env.update(spec_env)
    scratch = destination_env.get("TMPDIR") or str(job_dir.tmp)
    env.update(
        {
            "TMPDIR": scratch,
            "TEMP": scratch,
            "TMP": scratch,
            "GALAXY_SLOTS": str(cores),
            "GALAXY_TASKS_JOB_ID": job_id,
            "MESOS_URL": mesos_url,
        }
    )
    if memory_mb is not None:
        env["GALAXY_MEMORY_MB"] = str(memory_mb)
    return env


def script_environment() -> dict[str, str]:
    """What a runner starts job.sh with where it chooses (the local runner): nothing of the
    job's, nothing of the worker's; the command's own environment is set by env.sh."""
    return {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}


def render_script(job_dir: JobDir, token: str) -> str:
    """The job script: builtins only (`echo`, `printf`, `cd`, `exit`), `/bin/sh` by its
    full path, quoted expansions, and its own IFS and PATH, whatever it inherited."""
    q = shlex.quote
    return "\n".join([
        "#!/bin/sh",
        "IFS=' \t\n'; PATH=/usr/bin:/bin; export PATH",
        # noclobber makes the redirection an exclusive create: a shell builtin, no process
        "set -C",
        f"{{ echo \"$$ {token}\" > {q(str(job_dir.claim_file))}; }} 2>/dev/null || exit {CLAIMED_EXIT_CODE}",
        "set +C",
        # 077: the job's files are the worker's alone; a job run as its real user is given 027
        # by the privileged helper, so its files stay readable by the worker's group
        'case "${GT_UMASK:-}" in 027) umask 027;; *) umask 077;; esac',
        # limits a local runner asks for (a DRM applies its own): a memory cgroup to join,
        # or RLIMIT_AS; RLIMIT_FSIZE for the output size limit (512-byte blocks)
        'if [ -n "${GT_CGROUP:-}" ]; then echo $$ > "$GT_CGROUP/cgroup.procs"; fi',
        'if [ -n "${GT_RLIMIT_AS_KB:-}" ]; then ulimit -v "$GT_RLIMIT_AS_KB"; fi',
        'if [ -n "${GT_RLIMIT_FSIZE:-}" ]; then ulimit -f "$GT_RLIMIT_FSIZE"; fi',
        f"if cd {q(str(job_dir.working))}; then",
        # a subshell that becomes the command's shell: no `sh -c` started only to read
        # env.sh (the command's $$ is its own shell's, as a tool's `kill $$` expects)
        f"  ( . {q(str(job_dir.env_script))} && exec /bin/sh {q(str(job_dir.command))} ) "
        f"</dev/null >{q(str(job_dir.stdout))} 2>{q(str(job_dir.stderr))}",
        "  rc=$?",
        "else",
        f"  echo '{SCRIPT_REASON_PREFIX}cannot enter the working directory' >{q(str(job_dir.stderr))}; rc=1",
        "fi",
        f"printf '%s %s\\n' \"$rc\" {token} > {q(str(job_dir.exit_code_file))}",
        "exit \"$rc\"",
        "",
    ])


def render_env_script(env: Mapping[str, str], setup_file: str | None) -> str:
    """The command's environment, sourced by the command's own shell before it runs; then
    the environment_setup_file, if any, with a reason of its own when it cannot be read."""
    q = shlex.quote
    lines = [f"{name}={q(env[name])}; export {name}" for name in sorted(env)]
    if setup_file:
        lines += [
            f"if [ -r {q(setup_file)} ]; then . {q(setup_file)}; else",
            f"  echo {q(SCRIPT_REASON_PREFIX + 'environment_setup_file ' + setup_file + ' cannot be read')} >&2",
            f"  exit {SETUP_FAILED_EXIT_CODE}",
            "fi",
        ]
    return "\n".join(lines) + "\n"


class ForeignDirectory(Exception):
    """A job directory exists at this job's path but belongs to another job (another token)."""


def create(root: Path, command: str, env: Mapping[str, str], setup_file: str | None,
           token: str | None = None) -> JobDir:
    """Write a job directory (mode 0700: job data is private to the worker's user) for the
    row whose token this is. A directory of another job at that path (an earlier job with
    the same id, a restored database, a second deployment sharing the jobs directory) is
    set aside, never taken for this one's; this row's own directory is rewritten in place
    (a prepare step run again). A new directory is written under a name of its own and
    renamed into place whole, so two prepares of one job running at once (a redelivered
    message and the start-up recovery's) never see each other's half-written directory."""
    token = token or new_token()
    job_dir = JobDir(root, token)
    for _ in range(3):
        if os.path.lexists(root):
            if job_dir.own_token() == token:
                _write_contents(root, job_dir, command, env, setup_file, token)
                return job_dir
            _set_aside(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".new", dir=root.parent))
        try:
            _write_contents(staging, job_dir, command, env, setup_file, token, fresh=True)
            os.rename(staging, root)
            return job_dir
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # another writer put a directory there first: ours if it has our token
    raise OSError(errno.EEXIST, f"{root} keeps being replaced by another job's directory")


def _write_contents(where: Path, job_dir: JobDir, command: str, env: Mapping[str, str], setup_file: str | None,
                    token: str, fresh: bool = False) -> None:
    """The files of `job_dir`, written in the directory `where` (itself, or the directory
    that becomes it)."""
    if not fresh:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(where, 0o700)
    for sub in (job_dir.working, job_dir.tmp):
        (where / sub.name).mkdir(mode=0o700, exist_ok=not fresh)
    # a fresh directory is renamed into place whole: its files need no rename of their own
    write = _write_new if fresh else write_file
    write(where / job_dir.token_file.name, token + "\n", 0o600)
    write(where / job_dir.command.name, command if command.endswith("\n") else command + "\n", 0o600)
    write(where / job_dir.env_script.name, render_env_script(env, setup_file), 0o600)
    write(where / job_dir.script.name, render_script(job_dir, token), 0o700)


def _write_new(path: Path, text: str, mode: int) -> None:
    """A file that must not exist yet, in a directory no one else writes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _set_aside(root: Path) -> None:
    aside = root.with_name(f"{root.name}.stale-{int(time.time())}-{secrets.token_hex(3)}")
    try:
        os.rename(root, aside)
    except FileNotFoundError:
        pass  # another writer set it aside a moment ago


# -- reading and writing what a job could have touched -----------------------------------


def read_small(path: Path, limit: int) -> str | None:
    """A small regular file's text (at most `limit` bytes), None if it is missing, not a
    regular file (a link, a FIFO, a device), or unreadable."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        return as_text(_read_up_to(fd, limit))
    finally:
        os.close(fd)


def as_text(data: bytes) -> str:
    """Bytes a job wrote, as text any database column can hold."""
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def write_file(path: Path, text: str, mode: int, *, sync: bool = False) -> None:
    """Write whole or not at all: a new file of our own, renamed over the name (rename
    replaces a link itself, never what it points to); on disk before it returns if `sync`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@dataclass
class HashBudget:
    """Bytes and seconds hashing may still take (one job's outputs, or one prepare's inputs)."""

    bytes_left: int = HASH_MAX_BYTES
    deadline: float = field(default_factory=lambda: time.monotonic() + HASH_MAX_SECONDS)

    def digest(self, fd: int, size: int) -> str | None:
        """The sha256 of an open file of `size` bytes, or None if it would pass the budget
        (its size up front, or the time while it is read)."""
        if size > self.bytes_left:
            return None
        digest, read = hashlib.sha256(), 0
        while chunk := os.read(fd, 1 << 20):
            read += len(chunk)
            if read > self.bytes_left or time.monotonic() > self.deadline:
                self.bytes_left = 0
                return None
            digest.update(chunk)
        self.bytes_left -= read
        return digest.hexdigest()


def file_digest(path: Path, budget: HashBudget | None = None) -> tuple[int, str] | None:
    """A regular file's size and sha256, from one read of it within `budget` (a fresh one by
    default); None: not a regular file, or past the budget."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        digest = (budget or HashBudget()).digest(fd, size)
    finally:
        os.close(fd)
    return (size, digest) if digest is not None else None


def open_beneath(root: Path, relative: str) -> int | None:
    """A regular file under `root` opened for reading, no link followed on the way (a
    directory of the path replaced by a link to elsewhere is not entered); None if there
    is no such file. The caller closes the descriptor."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        found = os.open(parts[-1], flags | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(found).st_mode):
        os.close(found)
        return None
    return found


def _open_regular(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.ENXIO, errno.EISDIR):
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(value)
    return float(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(value)
    return value[:2000]
