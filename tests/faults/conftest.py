"""Fault-injection tier: figures of every scenario are printed at the end of the run."""
from __future__ import annotations

from tests.faults.checks import FIGURES


def pytest_terminal_summary(terminalreporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault-injection figures")
    for line in FIGURES:
        terminalreporter.write_line(line)
