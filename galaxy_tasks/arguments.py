"""Value types and options of the command line's arguments, shared by every group of commands."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def embedded_options(command: argparse.ArgumentParser) -> None:
    """The options of a command that runs its jobs in this process (embedded mode)."""
    command.add_argument("--concurrency", type=int, default=4)
    command.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
