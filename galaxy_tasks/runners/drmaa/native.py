"""A job's resources as Grid Engine options (the native specification)."""
from __future__ import annotations

import math

from galaxy_tasks import native
from galaxy_tasks.runners.base import Launch
from galaxy_tasks.runners.drmaa.params import DrmaaParams


def native_specification(launch: Launch, params: DrmaaParams) -> str:
    """Grid Engine options for the job's resources, then the destination's own options,
    then the job's (last, so they win)."""
    parts: list[str] = []
    if launch.walltime_s:
        hours, rest = divmod(int(launch.walltime_s), 3600)
        parts.append(f"-l h_rt={hours}:{rest // 60:02d}:{rest % 60:02d}")
    pe = params.parallel_environment
    if pe:
        parts.append(f"-pe {pe} {launch.cores}")
    memory = params.memory_resource
    if memory and launch.memory_mb:
        per_slot = math.ceil(launch.memory_mb / launch.cores) if pe else launch.memory_mb
        parts.append(f"-l {memory}={per_slot}M")
    if launch.gpus and params.gpu_resource:
        parts.append(f"-l {params.gpu_resource}={launch.gpus}")
    if params.native_specification:
        parts.append(params.native_specification)
    if launch.native_specification:  # the job's own, which its destination's allow_native let through
        parts += native.arguments(launch.native_specification, "gridengine")
    return " ".join(parts)
