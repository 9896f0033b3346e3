"""The DRMAA runner's params (a destination's `params:`), apart from the runner so the
session and the native-specification mapping can name them without importing it."""
from __future__ import annotations

from dataclasses import dataclass

from galaxy_tasks.runners.batch import BatchParams
from galaxy_tasks.runners.params import param

#: what no job's own options may set: the runner's contract (name, directory, streams, the
#: shell), and how the job is held or waited for
JOB_RESERVED = frozenset({"N", "o", "e", "j", "i", "wd", "cwd", "S", "V", "v", "b", "terse", "sync", "now", "hold_jid",
                          "h", "r", "notify", "M", "m", "C"})


@dataclass(frozen=True)
class DrmaaParams(BatchParams):
    native_specification: str = param("", doc="Grid Engine options, appended last so they win over the mapped ones")
    parallel_environment: str | None = param(None, doc="map cores to `-pe <this> N` (ops/sge-up.sh creates smp)")
    memory_resource: str | None = param(None, doc="map memory_mb to `-l <this>=<M>M` (h_vmem, mem_free, a "
                                                  "consumable); per slot with a parallel environment")
    gpu_resource: str | None = param(None, doc="map gpus to `-l <this>=N` (a consumable complex of the site's; "
                                               "none: the destination gives no GPUs)")
    contact: str | None = param(None, doc="re-attach to the DRMAA session of an earlier process")
    contact_file: str | None = param(None, doc="where the runner keeps its session's contact itself "
                                               "(the DRMAA worker sets it per node name)")
    submit_retries: int = param(3, minimum=0, doc="retries of a submission the DRM denies for a reason that may pass")
    submit_backoff_s: float = param(0.5, minimum=0, doc="first delay between those retries (it doubles)")
    wait_timeout_s: int = param(2, minimum=1, doc="the wait-any timeout; bounds how long closing takes")
    accounting_file: str | None = param(None, doc="Grid Engine's accounting file "
                                                  "(default $SGE_ROOT/$SGE_CELL/common/accounting)")
    accounting_flush_s: float = param(2.0, minimum=0, doc="how long Grid Engine may take to write a record")
    qstat: str = param("qstat", doc="the command of the batched status query")
