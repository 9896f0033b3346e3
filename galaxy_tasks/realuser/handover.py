"""The client's directory a job run as its user is given with its own: the spec's
`handover_dir`, Galaxy's job directory, where the tool writes its outputs.

The helper takes no path of the caller's, so what it hands over must be recognisable as that
job's alone: a directory under one of the configuration's `handover_roots`, at exactly the
place Galaxy gives the job directory of job number n (`<root>/<hash of n>/<n>`), reached from
the root one directory at a time without following a symlink, every directory on the way the
worker's and writable by it alone, and (to be handed over) holding the mark the directory's
owner wrote for this job (`runas.HANDOVER_MARK`). ValueError says which rule a directory
breaks; the helper turns it into a refusal.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from galaxy_tasks.runas import HANDOVER_MARK

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_MARK = 256


@dataclass(frozen=True)
class Declared:
    """A job's declared directory, checked: its root, its place below it, and what it was."""

    path: Path
    root: Path
    parts: tuple[str, ...]
    identity: tuple[int, int]  # (device, inode) when it was checked


def galaxy_place(number: str) -> list[str]:
    """Where Galaxy puts job directory `number` below its jobs directory (its
    `directory_hash_id`: 000/ for 0-999, then 3-digit parts of the number without its last 3
    digits), and the number itself."""
    if len(number) < 4:
        return ["000", number]
    padded = (3 - len(number) % 3) * "0" + number
    head = padded[:-3]
    return [head[i:i + 3] for i in range(0, len(head), 3)] + [number]


def place(text: str, roots: Sequence[Path]) -> tuple[Path, tuple[str, ...]]:
    """The root a declared directory lies under, and its place below it; ValueError if it
    is under none of them, or not where Galaxy puts a job directory."""
    path = Path(text)
    if not path.is_absolute() or os.path.normpath(path) != text:
        raise ValueError(f"{text!r} is not an absolute, normalised path")
    root = next((root for root in roots if path.is_relative_to(root) and path != root), None)
    if root is None:
        raise ValueError(f"{text} is under none of the handover_roots {[str(r) for r in roots]}")
    parts = path.relative_to(root).parts
    if not parts[-1].isdigit() or list(parts) != galaxy_place(parts[-1]):
        raise ValueError(f"{text} is not where Galaxy puts a job directory below {root} "
                         f"({'/'.join(galaxy_place(parts[-1])) if parts[-1].isdigit() else '<hash>/<job number>'})")
    return root, parts


def open_declared(root: Path, parts: Sequence[str], worker_uid: int) -> int:
    """The declared directory's descriptor, reached from `root` one directory at a time, none
    a symlink; each directory above it the worker's, writable by the worker alone."""
    fd = os.open(root, _FLAGS | os.O_DIRECTORY)
    where = root
    try:
        for part in parts:
            info = os.fstat(fd)
            if info.st_uid != worker_uid or info.st_mode & 0o022:
                raise ValueError(f"{where} is not the worker's alone (owner uid {info.st_uid}, "
                                 f"mode {stat.S_IMODE(info.st_mode):o})")
            where = where / part
            try:
                below = os.open(part, _FLAGS | os.O_DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                raise ValueError(f"{where} does not exist") from None
            except OSError:  # ELOOP: a symlink; ENOTDIR: not a directory
                raise ValueError(f"{where} is a symlink or not a directory") from None
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_mark(directory: int, path: Path, job_id: str, worker_uid: int) -> None:
    """The mark in the directory (its descriptor) is the worker's own and names `job_id`."""
    try:
        fd = os.open(HANDOVER_MARK, _FLAGS, dir_fd=directory)
    except OSError:
        raise ValueError(f"{path} holds no mark {HANDOVER_MARK} for this job (or it is a symlink)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != worker_uid:
            raise ValueError(f"{path / HANDOVER_MARK} is not a regular file of the worker's own")
        said = os.read(fd, _MAX_MARK).decode(errors="replace").strip()
    finally:
        os.close(fd)
    if said != job_id:
        raise ValueError(f"{path} is marked for another job ({said[:80]!r})")
