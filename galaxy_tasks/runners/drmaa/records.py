"""What Grid Engine itself remembers: the jobs `qstat` still holds, and the accounting file
(what `qacct` reads) for the jobs that ended. Both are read once per batch of jobs."""
from __future__ import annotations

import getpass
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, NamedTuple

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.jobdir import CLAIMED_EXIT_CODE
from galaxy_tasks.runners.accounting import reverse_lines


class Record(NamedTuple):
    """One accounting line: what Grid Engine remembers of a job that ended."""

    job_number: str
    job_name: str
    end_time: float
    failed: int
    exit_status: int
    wall_time_s: float
    max_rss_kb: int


class GridEngineRecords:
    """`qstat` and the accounting file; `count(kind)` is told of every look."""

    def __init__(self, qstat: str, accounting_file: str | None, count: Callable[[str], None]) -> None:
        self.qstat = qstat
        self.accounting_file = accounting_file or os.path.join(
            os.environ.get("SGE_ROOT", "/var/lib/gridengine"), os.environ.get("SGE_CELL", "default"),
            "common", "accounting")
        self._count = count

    def active(self) -> set[str]:
        """Ids of all of our user's jobs Grid Engine still holds (pending, running, ...)."""
        proc = self._run_qstat("-xml", "-u", getpass.getuser())
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
        found: dict[str, Record] = {}
        wanted = len(ids) + len(names)
        try:
            for line in reverse_lines(Path(self.accounting_file)):
                record = parse_record(line)
                if record is None:
                    continue
                if 0 < record.end_time < not_before:
                    break
                if record.job_number in ids:
                    key = record.job_number
                elif record.job_name in names and record.exit_status != CLAIMED_EXIT_CODE:
                    key = record.job_name  # (a copy that stood down did not run the job)
                else:
                    continue
                if key not in found:
                    found[key] = record
                    if len(found) == wanted:
                        break
        except OSError as exc:
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
