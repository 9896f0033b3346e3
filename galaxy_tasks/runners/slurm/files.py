"""What the Slurm runner reads and writes in a job directory beyond what galaxy_tasks.jobdir
does for every runner (the exit code, the claim, the end note, read without following links,
bounded and never blocking).

slurmstepd's own words about a job go to the batch script's stderr (`slurm.err`), which the
job could write to as well: only its tail is read, the same careful way.
"""
from __future__ import annotations

import errno
import os
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
