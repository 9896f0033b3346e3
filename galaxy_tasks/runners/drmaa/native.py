"""A job's resources as Grid Engine options (the native specification)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from galaxy_tasks.runners.base import Launch

if TYPE_CHECKING:
    from galaxy_tasks.runners.drmaa.runner import DrmaaParams


def native_specification(launch: Launch, params: DrmaaParams) -> str:
    """Grid Engine options for the job's resources, then the destination's own options
    (last, so they win)."""
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
    if params.native_specification:
        parts.append(params.native_specification)
    return " ".join(parts)
