"""A local job's memory limit, enforced by the kernel, and how to tell it was reached.

Where this process may create a memory cgroup (cgroup v2 `memory.max`, or v1
`memory.limit_in_bytes`), each job gets one of its own below this process's cgroup: the job
script moves itself into it before anything runs (`GT_CGROUP`, a builtin `echo`), the
kernel's OOM killer ends it at the limit, and the cgroup's own count of OOM kills says so
afterwards. Elsewhere the job script sets RLIMIT_AS (`ulimit -v`): an allocation past it
fails, and the job's stderr says it ran out of memory.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: what a program that could not allocate says (Python, glibc, C++, Java, R, shells)
OUT_OF_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|bad_alloc|[Oo]ut of memory|OutOfMemoryError|"
                           r"cannot allocate vector|memory exhausted", re.M)


@dataclass(frozen=True)
class Cgroups:
    """Where job cgroups are made (None: no writable memory cgroup here) and which version."""

    parent: Path | None
    version: int

    def create(self, name: str, limit_bytes: int) -> Path | None:
        """A job's cgroup with its limit; None where none could be made (then RLIMIT_AS)."""
        if self.parent is None:
            return None
        path = self.parent / name
        try:
            path.mkdir(exist_ok=True)
            limit_file = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
            (path / limit_file).write_text(str(limit_bytes))
            if self.version == 1:
                _write_if_present(path / "memory.memsw.limit_in_bytes", str(limit_bytes))  # no escape to swap
            else:
                _write_if_present(path / "memory.swap.max", "0")
        except OSError as exc:
            log.warning("cannot make the memory cgroup %s (%s): RLIMIT_AS instead", path, exc)
            return None
        return path

    @staticmethod
    def oom_killed(path: Path) -> bool:
        """Whether the kernel killed a process of this cgroup at its limit."""
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = (path / name).read_text()
            except OSError:
                continue
            match = re.search(r"^oom_kill (\d+)", text, re.M)
            if match:
                return int(match.group(1)) > 0
        try:
            return int((path / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    @staticmethod
    def remove(path: Path) -> None:
        try:
            path.rmdir()
        except OSError:
            pass  # a process of the job lives on in it; it goes with the next clean-up


def detect() -> Cgroups:
    """This process's memory cgroup, if it may make children there."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return Cgroups(None, 0)
    paths = dict((fields[1], fields[2]) for fields in (line.split(":", 2) for line in lines) if len(fields) == 3)
    if "memory" in _read(CGROUP_ROOT / "cgroup.controllers").split():  # the unified hierarchy (v2)
        parent = CGROUP_ROOT / paths.get("", "/").lstrip("/")
        if "memory" in _read(parent / "cgroup.subtree_control").split() and os.access(parent, os.W_OK):
            return Cgroups(parent, 2)
    for controllers, path in paths.items():
        if "memory" in controllers.split(","):
            parent = CGROUP_ROOT / "memory" / path.lstrip("/")
            if (parent / "memory.limit_in_bytes").exists() and os.access(parent, os.W_OK):
                return Cgroups(parent, 1)
    return Cgroups(None, 0)


def said_out_of_memory(stderr_tail: str) -> bool:
    return bool(OUT_OF_MEMORY.search(stderr_tail))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write_if_present(path: Path, value: str) -> None:
    if path.exists():
        try:
            path.write_text(value)
        except OSError:
            pass
