"""The plugin's runner states are the members of a real Galaxy's JobState.runner_states
that its resubmit rules compare with (the unit tier checks the mapping without Galaxy)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from galaxy_tasks.galaxy.states import RUNNER_STATES

pytestmark = pytest.mark.galaxy

READ = ("import json; from galaxy.jobs.runners import JobState; "
        "print(json.dumps(dict(JobState.runner_states.__dict__)))")


def test_each_runner_state_names_galaxys_own(galaxy_venv: Path) -> None:
    result = subprocess.run([str(galaxy_venv / "bin" / "python"), "-c", READ], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    galaxys = json.loads(result.stdout.strip().splitlines()[-1])
    assert {name: galaxys.get(member) for name, member in RUNNER_STATES.items()} == {
        name: name for name in RUNNER_STATES}
