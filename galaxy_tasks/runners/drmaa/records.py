"""What Grid Engine itself remembers: the jobs `qstat` still holds, and the accounting file
(what `qacct` reads) for the jobs that ended. Both are read once per batch of jobs."""
from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, NamedTuple

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.jobdir import CLAIMED_EXIT_CODE
from galaxy_tasks.runners.accounting import newest_ended


class Record(NamedTuple):
    """One accounting line: what Grid Engine remembers of a job that ended."""

    job_number: str
    job_name: str
    end_time: float
    failed: int
    exit_status: int
    wall_time_s: float
    max_rss_kb: int

    @property
    def external_id(self) -> str:
        return self.job_number

    @property
    def name(self) -> str:
        return self.job_name


class GridEngineRecords:
    """`qstat` and the accounting file; `count(kind)` is told of every look."""

    def __init__(self, qstat: str, accounting_file: str | None, count: Callable[[str], None]) -> None:
        self.qstat = qstat
        self.accounting_file = accounting_file or os.path.join(
            os.environ.get("SGE_ROOT", "/var/lib/gridengine"), os.environ.get("SGE_CELL", "default"),
            "common", "accounting")
        self._count = count

    def active(self) -> set[str]:
        """Ids of all the jobs Grid Engine still holds (pending, running, ...), whoever's:
        a job run as its real user is that user's, not the worker's."""
        proc = self._run_qstat("-xml", "-u", "*")
        if proc.returncode != 0:
            raise RunnerError(f"qstat failed: {proc.stderr.strip()}")
        try:
            root = ET.fromstring(proc.stdout)  # noqa: S314 - Grid Engine's own qstat, not a job's file
        except ET.ParseError as exc:
            raise RunnerError(f"unreadable qstat output: {exc}") from exc
        return {el.text.strip() for el in root.iter("JB_job_number") if el.text}

    def named(self, name: str) -> list[str]:
        """Ids of the jobs Grid Engine holds under this name, oldest first."""
        proc = self._run_qstat("-j", name)
        if proc.returncode != 0:
            if "do not exist" in proc.stdout + proc.stderr:
                return []
            raise RunnerError(f"qstat -j {name} failed: {proc.stderr.strip()}")
        return sorted(set(re.findall(r"^job_number:\s+(\d+)", proc.stdout, re.M)), key=int)

    def accounting(self, ids: set[str], names: set[str], not_before: float) -> dict[str, Record]:
        """Find jobs in the accounting file, newest first, stopping at records older than
        the job directories: one pass for a whole batch."""
        self._count("accounting")
        try:
            found, _gave_up = newest_ended(Path(self.accounting_file), parse_record, ids, names, not_before,
                                           by_name=lambda record: record.exit_status != CLAIMED_EXIT_CODE)
        except OSError as exc:  # (a copy that stood down, above, did not run the job)
            raise RunnerError(f"cannot read the Grid Engine accounting file {self.accounting_file}: {exc}") from exc
        return found

    def _run_qstat(self, *args: str) -> subprocess.CompletedProcess[str]:
        self._count("qstat")
        try:
            return subprocess.run([self.qstat, *args], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RunnerError(f"qstat failed: {exc}") from exc


def parse_record(line: bytes) -> Record | None:
    fields = line.decode(errors="replace").split(":")
    if len(fields) < 17 or fields[0].startswith("#"):
        return None
    try:
        return Record(
            job_number=fields[5], job_name=fields[4], end_time=float(fields[10]),
            failed=int(fields[11]), exit_status=int(fields[12]),
            wall_time_s=float(fields[13]), max_rss_kb=int(float(fields[16])),
        )
    except ValueError:
        return None
