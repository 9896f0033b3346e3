"""The variant-calling example workflow (bwa, samtools, bcftools) in embedded mode, by its
one command: every sweep element calls exactly the three SNPs the donor genome carries, and
run again over the same data every job reuses the first run's outputs without running."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from galaxy_tasks import config
from galaxy_tasks.store import Store
from tests.support.services import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {("chr1", 1200), ("chr1", 3000), ("chr1", 4800)}


def test_the_example_calls_the_known_variants(tmp_path: Path):
    for tool in ("bwa", "samtools", "bcftools", "wgsim"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed: ops/ci-packages.sh installs it")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TASKS_")}
    env.update(GALAXY_TASKS_HOME=str(tmp_path / "home"), VENV=str(Path(sys.executable).parents[1]))

    def example() -> None:
        result = subprocess.run([str(ROOT / "ops" / "workflow-example.sh")], env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "state       ok" in result.stdout

    example()
    calls = sorted((tmp_path / "home" / "jobs").glob("*/working/calls.vcf"))
    assert len(calls) == 2, "one call per value of the sweep"
    for vcf in calls:
        found = {(line.split("\t")[0], int(line.split("\t")[1])) for line in vcf.read_text().splitlines()
                 if line and not line.startswith("#")}
        assert found == EXPECTED, vcf

    example()
    store = Store(config.load({"GALAXY_TASKS_HOME": str(tmp_path / "home")}).database_url, 300)
    try:
        jobs = store.recent(limit=100)
    finally:
        store.dispose()
    first = {job.id for job in jobs if job.reused_from is None}
    second = [job for job in jobs if job.reused_from is not None]
    assert len(first) == len(second) == 10, "every job of the second run reused one of the first"
    assert {job.reused_from for job in second} == first and all(job.state == "ok" for job in second)
    for job in second:
        assert job.wall_time_s is None, f"{job.tool_id} ran again"
