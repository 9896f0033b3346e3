"""A worker process closed to the jobs it starts.

A job runs as the worker's user, and the worker's environment holds the broker's and the
database's passwords. Without this, any job could read them from /proc/<worker>/environ (or
the worker's memory). PR_SET_DUMPABLE=0 makes the process's /proc entries and memory
unreadable to other processes of its user; a job that execs a program regains the default
for itself. A job running as root can still read everything: run workers as an unprivileged
user (docs/operations.md, "What a job can reach"). This module imports nothing else of the
project, so a process of any kind can close itself early.
"""
from __future__ import annotations

import ctypes
import logging
import sys

_PR_SET_DUMPABLE = 4


def undumpable() -> bool:
    """Close this process; False where the kernel would not (then say so in the log)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        logging.getLogger(__name__).warning("PR_SET_DUMPABLE failed (errno %s): jobs may read this process's "
                                            "environment", ctypes.get_errno())
        return False
    return True
