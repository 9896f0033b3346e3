"""A job's sbatch options: identity and files, its resources, then the destination's.

The runner sets the job's name (so a resubmission can find an earlier copy), directory,
environment and output itself; a destination's `native_specification` may add any other
sbatch option, but none that would break that contract. The checks of the destination's
params run when the job_conf loads (through `param(check=...)`), so a bad partition name or
a refused option names its file, line and key instead of failing the first job.
"""
from __future__ import annotations

import shlex
from typing import Any

from galaxy_tasks import native
from galaxy_tasks.errors import RunnerError
from galaxy_tasks.runners.base import Launch
from galaxy_tasks.runners.slurm.params import SlurmParams


def sbatch_options(launch: Launch, params: SlurmParams) -> list[str]:
    """The sbatch options of one job, the destination's `native_specification` and then the
    job's own (which its destination's `allow_native` let through) last, so they win; a job whose
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
    if launch.gpus:
        options.append(f"--gres={params.gpu_gres}:{_positive_int(launch.gpus, 'gpus')}")
    if params.native_specification:
        options += shlex.split(params.native_specification)
    if launch.native_specification:
        options += native.arguments(launch.native_specification, "slurm")
    return options


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RunnerError(f"Slurm job {name} must be a positive integer, not {value!r}")
    return value
