"""Reading a cluster's record of finished jobs (Grid Engine's accounting file, Slurm's
jobcomp file): newest first, and only as far back as the jobs asked about could reach."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

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


class Ended(Protocol):
    """What a scheduler's record of an ended job has, whatever else it holds."""

    @property
    def external_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def end_time(self) -> float | None: ...


Record = TypeVar("Record", bound=Ended)


def newest_ended(path: Path, parse: Callable[[bytes], Record | None], ids: set[str], names: set[str],
                 not_before: float, *, by_name: Callable[[Record], bool] = lambda _record: True,
                 max_lines: int | None = None) -> tuple[dict[str, Record], bool]:
    """The newest record of each job asked for, by id (`ids`) or by name (`names`, passing
    over those `by_name` rejects), reading the record backwards and stopping at records older
    than `not_before`: one pass for a whole batch. Also whether the scan gave up at
    `max_lines` before finding them all. OSError is the caller's to word."""
    found: dict[str, Record] = {}
    wanted = len(ids) + len(names)
    for scanned, line in enumerate(reverse_lines(path)):
        if max_lines is not None and scanned >= max_lines:
            return found, True
        record = parse(line)
        if record is None:
            continue
        if record.end_time is not None and 0 < record.end_time < not_before:
            break
        if record.external_id in ids:
            key = record.external_id
        elif record.name in names and by_name(record):
            key = record.name
        else:
            continue
        if key not in found:
            found[key] = record
            if len(found) == wanted:
                break
    return found, False


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
