"""What every fault scenario asserts, for every job: exactly one terminal state, the command
run exactly once (each command appends its job id to a ledger), nothing left unfinished,
and a history that is a legal path through the state machine."""
from __future__ import annotations

from pathlib import Path

from galaxy_tasks.states import TERMINAL, JobState, is_legal_path
from tests.support.deployment import Deployment
from tests.support.ledger import gated, ledger_command, ledger_counts  # noqa: F401 (used by the scenarios)

FIGURES: list[str] = []


def assert_exactly_once(deployment: Deployment, ids: list[str], ledger: Path, scenario: str,
                        expect: frozenset[str] = frozenset({"ok"}), extra: str = "") -> None:
    runs = ledger_counts(ledger)
    jobs = {job.id: job for job in deployment.jobs() if job.id in ids}
    stuck = [j for j in ids if j not in jobs or JobState(jobs[j].state) not in TERMINAL]
    duplicated = [j for j in ids if runs[j] > 1]
    lost = [j for j in ids if j in jobs and jobs[j].state == "ok" and runs[j] == 0]
    FIGURES.append(f"{scenario}: jobs={len(ids)} lost={len(lost)} duplicated={len(duplicated)} "
                   f"stuck={len(stuck)}{' ' + extra if extra else ''}")
    assert not stuck, f"jobs left unfinished: {stuck}"
    assert not duplicated, f"commands run twice: {duplicated}"
    assert not lost, f"jobs ok without their command having run: {lost}"
    histories = deployment.histories(ids)
    for job_id in ids:
        history = histories[job_id]
        terminal = [state for state in history if state in TERMINAL]
        assert len(terminal) == 1, f"{job_id}: {history}"
        assert is_legal_path(history), f"{job_id}: illegal history {history}"
        assert jobs[job_id].state in expect, f"{job_id} ended {jobs[job_id].state}: {jobs[job_id].reason}"
        if jobs[job_id].state == "ok":
            assert runs[job_id] == 1
