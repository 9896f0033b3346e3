"""Commands that record their own runs, and gates that hold a job running until a test says.

Every command appends its job id to a ledger file; counting the lines proves how many times
it ran, whatever was killed in between."""
from __future__ import annotations

import collections
from pathlib import Path


def ledger_command(ledger: Path, before: str = "") -> str:
    prefix = f"{before}; " if before else ""
    return f'{prefix}echo "$GALAXY_TASKS_JOB_ID" >> {ledger}'


def ledger_lines(ledger: Path) -> list[str]:
    return ledger.read_text().splitlines() if ledger.exists() else []


def ledger_counts(ledger: Path) -> collections.Counter:
    return collections.Counter(line for line in ledger_lines(ledger) if line)


def gated(gate: Path, then: str = "true") -> str:
    """A command that runs until the test opens the gate (creates the file), then `then`."""
    return f"until [ -e {gate} ]; do sleep 0.2; done; {then}"


def timed(ledger_dir: Path, user: str, seconds: float) -> str:
    """A command that records when it started and ended in its user's ledger."""
    line = f'"$(date +%s.%N) $GALAXY_TASKS_JOB_ID" >> {ledger_dir / user}'
    return f"echo start {line}; sleep {seconds}; echo end {line}"


def most_at_once(ledger: Path) -> int:
    """The most of one user's commands that were running at the same moment."""
    marks = []
    for kind, at, _job in (line.split() for line in ledger.read_text().splitlines()):
        marks.append((float(at), 1 if kind == "start" else -1))
    running = peak = 0
    for _, step in sorted(marks, key=lambda m: (m[0], m[1])):  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak
