"""Slurm through its command-line tools, in one module per concern (like `runners.drmaa`):

- `runner`: the SlurmRunner and its params: submission (idempotent), cancel, status, recovery;
- `commands`: sbatch, squeue, scancel and scontrol, each bounded in time, with retries;
- `listener`: the process's listener for the jobs' announcements of their end, and the
  thread that confirms them with Slurm: the event source;
- `state`: the listener's port and secret, kept for the next process of the same worker;
- `script`: the batch script that runs job.sh and announces its end;
- `options`: a job's resources and the destination's params as sbatch options;
- `records`: what Slurm remembers (squeue, the jobcomp record);
- `ends`: a job's end as Slurm tells it, as a Completion with Galaxy's runner_state;
- `files`: the job directory's files, read as untrusted.

The listener (a port and two threads) belongs to the process and does not survive fork():
the slurm queues are served by `workers.slurm`, a worker whose process holds it.
"""
from galaxy_tasks.runners.slurm.ends import MEMORY_LIMIT_REACHED, UNKNOWN_ERROR, WALLTIME_REACHED
from galaxy_tasks.runners.slurm.options import sbatch_options
from galaxy_tasks.runners.slurm.records import TERMINAL
from galaxy_tasks.runners.slurm.runner import SUBMIT_MARKER, SlurmParams, SlurmRunner
from galaxy_tasks.runners.slurm.script import WRAPPER

__all__ = ["MEMORY_LIMIT_REACHED", "SUBMIT_MARKER", "TERMINAL", "UNKNOWN_ERROR", "WALLTIME_REACHED", "WRAPPER",
           "SlurmParams", "SlurmRunner", "sbatch_options"]
