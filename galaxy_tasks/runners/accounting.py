"""Reading a cluster's record of finished jobs (Grid Engine's accounting file, Slurm's
jobcomp file): newest first, and only as far back as the jobs asked about could reach."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

from galaxy_tasks.runners.base import Launch, Tracked

#: how far a DRM's clock may lag ours
CLOCK_SKEW_S = 300


def reverse_lines(path: Path, block: int = 1 << 16) -> Iterator[bytes]:
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


def not_before(jobs: Sequence[Launch | Tracked]) -> float:
    """No job can have ended before its job script was written (minus clock skew): where a
    backwards scan of the record may stop (0: scan it all)."""
    times = []
    for job in jobs:
        try:
            times.append(os.lstat(Path(job.job_dir) / "job.sh").st_mtime)
        except OSError:
            return 0.0
    return min(times) - CLOCK_SKEW_S if times else 0.0
