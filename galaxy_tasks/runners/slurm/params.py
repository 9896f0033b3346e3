"""The Slurm runner's params (a destination's `params:`), apart from the runner so the
listener and the sbatch options can name them without importing it."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from galaxy_tasks.runners.batch import BatchParams
from galaxy_tasks.runners.params import param

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,:+-]{0,127}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
#: short options the runner's contract refuses, with their long names
_REFUSED_SHORT = {"-J": "--job-name", "-a": "--array", "-D": "--chdir"}
_REFUSED_LONG = ("--job-name", "--array", "--wrap", "--chdir", "--export", "--export-file", "--parsable",
                 "--test-only", "--requeue")
#: what no job's own options may set: the runner's contract, and the resources a job asks
#: for in its spec (cores, memory_mb, walltime_s, gpus), which galaxy-tasks enforces
JOB_RESERVED = frozenset({name[2:] for name in _REFUSED_LONG} | {
    "output", "error", "input", "no-requeue", "ntasks", "cpus-per-task", "mem", "mem-per-cpu", "time", "gpus",
    "kill-command", "signal", "open-mode", "get-user-env", "uid", "gid", "batch"})


def check_name(value: Any) -> str | None:
    """What is wrong with a partition, account or QOS name, if anything."""
    if value is None or value == "" or _NAME.match(value):
        return None
    return f"must be a Slurm name (letters, digits, _.,:+-), not {value!r}"


def check_host(value: Any) -> str | None:
    if value is None or _HOST.match(value):
        return None
    return f"must be a host name or an IPv4 address, not {value!r}"


def check_port(value: Any) -> str | None:
    return None if value <= 65535 else f"must be a port number (at most 65535), not {value!r}"


def check_native(value: Any) -> str | None:
    """What is wrong with a native specification (further sbatch options), if anything."""
    try:
        options = shlex.split(value)
    except ValueError as exc:
        return f"{value!r} cannot be split into sbatch options: {exc}"
    for option in options:
        long = option.split("=", 1)[0]
        short = option[:2]
        if long in _REFUSED_LONG or short in _REFUSED_SHORT or long in _REFUSED_SHORT.values():
            name = _REFUSED_SHORT.get(short, long) if short in _REFUSED_SHORT else long
            return (f"may not set {name}: the runner sets the job's name, directory, environment and "
                    "output itself")
    return None


@dataclass(frozen=True)
class SlurmParams(BatchParams):
    """A slurm destination's params (docs/configuration.md has the table)."""

    partition: str | None = param(None, check=check_name, doc="the partition (`--partition`; none: Slurm's default)")
    account: str | None = param(None, check=check_name, doc="the account jobs are charged to (`--account`)")
    qos: str | None = param(None, check=check_name, doc="the quality of service (`--qos`)")
    native_specification: str = param(
        "", check=check_native, doc="further sbatch options, appended last so they win over the mapped ones; "
        "options that set the job's name, directory, environment or output (--job-name, --array, --wrap, "
        "--chdir, --export, --parsable, --requeue) are refused")
    gpu_gres: str = param("gpu", check=check_name, doc="the generic resource a job's GPUs are asked as "
                          "(`--gres=<this>:<gpus>`; `gpu:a100` for one type)")
    state_file: str | None = param(
        None, doc="where the listener keeps its port and secret, locked while in use (the Slurm worker sets "
        "$GALAXY_TASKS_HOME/slurm/<node name>.listener); none: a new secret per process, so the jobs of an "
        "earlier process are found by reconciliation only")
    listen_host: str = param("", doc="the address the listener binds (empty: every interface)")
    listen_port: int = param(0, minimum=0, check=check_port,
                             doc="the listener's port while the state file names none (0: any free one)")
    announce_host: str | None = param(None, check=check_host,
                                      doc="where jobs announce their end (default: this host's name)")
    command_timeout_s: float = param(30.0, minimum=0.1, doc="seconds a Slurm command may take before it is "
                                                            "killed (and retried)")
    command_retries: int = param(2, minimum=0, doc="retries of a Slurm command that hangs or fails in a way "
                                                  "that may pass (the controller restarting)")
    command_backoff_s: float = param(0.5, minimum=0, doc="first delay between those retries (it doubles)")
    confirm_timeout_s: float = param(180.0, minimum=0, doc="how long an announced end may wait for Slurm to "
                                                           "agree before it is left to reconciliation (a restarted "
                                                           "slurmctld learns of ends only as slurmstepd retries, "
                                                           "every ~15 s)")
    jobcomp_file: str | None = param(None, doc="Slurm's jobcomp/filetxt record, for jobs squeue has forgotten "
                                               "(default $GT_SLURM_JOBCOMP, else JobCompLoc from `scontrol show "
                                               "config`)")
    jobcomp_scan_lines: int = param(1_000_000, minimum=1, doc="most lines of the jobcomp record read per look, "
                                                              "from its end")
    slurm_conf: str | None = param(None, doc="the slurm.conf the commands use (SLURM_CONF; default: the "
                                             "worker's)")
    sbatch: str = param("sbatch", doc="the submission command")
    squeue: str = param("squeue", doc="the command of the batched status query")
    scancel: str = param("scancel", doc="the cancel command")
    scontrol: str = param("scontrol", doc="asked once where the jobcomp record is")
