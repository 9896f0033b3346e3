"""The batch script submitted for a job (`slurm.sh` in its job directory): the shared job.sh,
then one line that announces the end to the worker that submitted it.

The announcement is what makes the end of a job an event instead of a loop over running
jobs: `gt-end <job id> <Slurm id> <exit code> <token>`, written with bash's
`/dev/tcp/HOST/PORT` redirection, a builtin (no process, no interpreter per job). Slurm
signals only the batch shell when it cancels a job or its time is up, so the script passes
the TERM on to the job's process group and announces then too. A copy of the script that
finds the job claimed by another (job.sh exits 75) leaves `slurm_stood_down.<Slurm id>`, so
that its end is not taken for the job's.
"""
from __future__ import annotations

import shlex

from galaxy_tasks.jobdir import CLAIMED_EXIT_CODE
from galaxy_tasks.runners.base import Launch

#: the batch script's name in the job directory
WRAPPER = "slurm.sh"
#: `<prefix><Slurm id>`, left by a batch script whose job.sh stood down (the job was claimed)
STOOD_DOWN_PREFIX = "slurm_stood_down."
#: the first word of an announcement
ANNOUNCE_PREFIX = "gt-end"


def wrapper_script(launch: Launch, host: str, port: int, token: str) -> str:
    """The batch script of one job, announcing to `host:port` with `token`."""
    q = shlex.quote
    line = f"{ANNOUNCE_PREFIX} {launch.job_id} %s %s {token}\\n"
    return "\n".join([
        "#!/bin/bash",
        f"# galaxy-tasks: the Slurm batch script of job {launch.job_id} (written by the Slurm runner).",
        "# The announcement is a hint; the worker confirms the end with Slurm before reporting it.",
        "announce() {",
        f"  {{ printf {q(line)} \"${{SLURM_JOB_ID:-0}}\" \"$1\" >/dev/tcp/{host}/{port}; }} 2>/dev/null",
        "}",
        "stop() {",
        "  trap '' TERM",
        "  kill -TERM 0 2>/dev/null",
        "  wait $child",
        "  announce 143",
        "  exit 143",
        "}",
        "trap stop TERM",
        f"/bin/sh {q(str(launch.script))} &",
        "child=$!",
        "wait $child",
        "rc=$?",
        f"if [ \"$rc\" = {CLAIMED_EXIT_CODE} ]; then  # our job.sh found the job claimed by another copy?",
        f"  {{ read -r owner _ < {q(str(launch.job_dir / 'claim'))}; }} 2>/dev/null",  # "<pid> <token>"
        f"  [ \"$owner\" = \"$child\" ] || : > {q(str(launch.job_dir))}/{STOOD_DOWN_PREFIX}\"${{SLURM_JOB_ID:-0}}\"",
        "fi",
        'announce "$rc"',
        'exit "$rc"',
        "",
    ])
