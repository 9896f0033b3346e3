"""What the Slurm runner reads and writes in a job directory beyond what galaxy_tasks.jobdir
does for every runner (the exit code, the claim, the end note, read without following links,
bounded and never blocking).

slurmstepd's own words about a job go to the batch script's stderr (`slurm.err`), which the
job could write to as well: only its tail is read, the same careful way. The submit marker
must be on disk before sbatch runs, so that a later attempt knows to look for an earlier
copy: it is written whole and fsynced.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from galaxy_tasks.jobdir import JobDir

TAIL_BYTES = 4096


def read_tail(path: Path, limit: int = TAIL_BYTES) -> str:
    """The last `limit` bytes of a regular file as text; '' for a missing file, a link, a
    FIFO or anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.ENXIO, errno.EISDIR):
            return ""
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ""
        os.lseek(fd, max(0, info.st_size - limit), os.SEEK_SET)
        return os.read(fd, limit).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def over_memory(job_dir: JobDir) -> bool:
    """Whether slurmstepd wrote that it killed the job for exceeding --mem (Slurm's memory
    polling, without cgroups)."""
    text = read_tail(job_dir.root / "slurm.err")
    return "exceeded memory limit" in text or "Exceeded job memory limit" in text


def write_synced(path: Path, text: str, mode: int) -> None:
    """Write whole (a link planted at the name is replaced, not followed), fsynced."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
