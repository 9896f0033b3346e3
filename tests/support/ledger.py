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
