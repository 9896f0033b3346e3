"""A job's sbatch options: identity and files, its resources, then the destination's.

The runner sets the job's name (so a resubmission can find an earlier copy), directory,
environment and output itself; a destination's `native_specification` may add any other
sbatch option, but none that would break that contract. The checks of the destination's
params run when the job_conf loads (through `param(check=...)`), so a bad partition name or
a refused option names its file, line and key instead of failing the first job.
"""
from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING, Any

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.runners.base import Launch

if TYPE_CHECKING:
    from galaxy_tasks.runners.slurm.runner import SlurmParams

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,:+-]{0,127}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
#: short options the runner's contract refuses, with their long names
_REFUSED_SHORT = {"-J": "--job-name", "-a": "--array", "-D": "--chdir"}
_REFUSED_LONG = ("--job-name", "--array", "--wrap", "--chdir", "--export", "--export-file", "--parsable",
                 "--test-only", "--requeue")


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


def sbatch_options(launch: Launch, params: SlurmParams) -> list[str]:
    """The sbatch options of one job, `native_specification` last (so it wins); a job whose
    resources are not positive whole numbers raises RunnerError naming the field."""
    root = str(launch.job_dir)
    options = [
        f"--job-name={launch.external_name}",
        f"--chdir={root}",
        f"--output={root}/slurm.out",
        f"--error={root}/slurm.err",
        "--no-requeue",
        "--ntasks=1",
        f"--cpus-per-task={_positive_int(launch.cores, 'cores')}",
    ]
    if launch.memory_mb is not None:
        options.append(f"--mem={_positive_int(launch.memory_mb, 'memory_mb')}M")
    if launch.walltime_s is not None:
        seconds = _positive_int(launch.walltime_s, "walltime_s")
        options.append(f"--time={-(-seconds // 60)}")  # Slurm counts whole minutes: rounded up
    for flag, value in (("--partition", params.partition), ("--account", params.account), ("--qos", params.qos)):
        if value:
            options.append(f"{flag}={value}")
    if params.native_specification:
        options += shlex.split(params.native_specification)
    return options


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RunnerError(f"Slurm job {name} must be a positive integer, not {value!r}")
    return value
