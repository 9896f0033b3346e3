"""The job directory's files, as the Slurm runner reads and writes them.

What a job left there (its exit code, the batch script's stderr) is untrusted: it is read
bounded, without following links and without blocking on a FIFO, so a job cannot make the
runner read another file or hang. What the runner writes there (the batch script, its
markers) is written atomically, so a link planted at the final name is replaced, not
followed.
"""
from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path

from galaxy_tasks.jobdir import JobDir

READ_LIMIT = 4096


def _open_regular(path: Path) -> int | None:
    """A descriptor of `path` if it is a regular file (not a link, FIFO or directory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def read_small(path: Path, limit: int = READ_LIMIT) -> str:
    """The first `limit` bytes of a regular file as text; '' for anything else."""
    fd = _open_regular(path)
    if fd is None:
        return ""
    try:
        return os.read(fd, limit).decode("utf-8", errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def read_tail(path: Path, limit: int = READ_LIMIT) -> str:
    """The last `limit` bytes of a regular file as text; '' for anything else."""
    fd = _open_regular(path)
    if fd is None:
        return ""
    try:
        os.lseek(fd, max(0, os.fstat(fd).st_size - limit), os.SEEK_SET)
        return os.read(fd, limit).decode("utf-8", errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def recorded_exit_code(job_dir: JobDir) -> int | None:
    """The exit code job.sh recorded, or None if there is none (or it is not a plain number)."""
    text = read_small(job_dir.exit_code_file, 64).strip()
    return int(text) if re.match(r"^-?\d{1,5}$", text) else None


def over_memory(job_dir: JobDir) -> bool:
    """Whether slurmstepd wrote, in the batch script's stderr, that it killed the job for
    exceeding --mem (Slurm's memory polling, without cgroups)."""
    text = read_tail(job_dir.root / "slurm.err")
    return "exceeded memory limit" in text or "Exceeded job memory limit" in text


def lexists(path: Path) -> bool:
    return os.path.lexists(path)


def write_file(path: Path, text: str, mode: int, *, sync: bool = False) -> None:
    """Write `text` to `path` atomically, with `mode`, fsynced if `sync`."""
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
