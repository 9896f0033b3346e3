"""What a runner and the privileged helper (galaxy-tasks-run-as) share: the helper's exit
status for a refusal, and the submission's arguments, written where the helper finds them.
Nothing heavy to import: the helper starts for every job run as its user.

The helper takes a job id and no path (docs/security.md), so what a batch scheduler needs
beyond the job id (the sbatch or qsub options the runner chose) is a file in the job's own
directory. The helper reads it only after it has become the job's user, so the file can ask
for nothing the user could not ask for; the worker that writes it already chooses what the
job runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from galaxy_tasks.errors import RunnerError
from galaxy_tasks.jobdir import read_small, write_file

#: the submission's arguments in the job directory, one a line
ARGUMENTS = "submit.args"
#: bounds on what the helper reads back
MAX_ARGUMENTS_BYTES = 64 * 1024
MAX_ARGUMENTS = 256
#: the helper's exit status for a refusal
REFUSED = 77
#: the file in a client's directory (a spec's `handover_dir`) that names the one job it may be
#: handed over for: written by the client, as the directory's owner, before it submits the job
HANDOVER_MARK = ".galaxy-tasks-job"


def write_arguments(job_dir: Path, arguments: Sequence[str]) -> None:
    """The scheduler command's arguments for the helper; one that could not be read back as
    the same single argument is refused here, naming it."""
    for argument in arguments:
        if "\n" in argument or "\0" in argument:
            raise RunnerError(f"a submission argument holds a newline or NUL: {argument!r}")
    if len(arguments) > MAX_ARGUMENTS:
        raise RunnerError(f"a submission takes at most {MAX_ARGUMENTS} arguments, not {len(arguments)}")
    text = "".join(f"{argument}\n" for argument in arguments)
    if len(text.encode()) > MAX_ARGUMENTS_BYTES:
        raise RunnerError(f"the submission's arguments exceed {MAX_ARGUMENTS_BYTES} bytes")
    write_file(job_dir / ARGUMENTS, text, 0o600)


def read_arguments(job_dir: Path) -> list[str]:
    """The arguments `write_arguments` left, or ValueError saying what is wrong with them."""
    text = read_small(job_dir / ARGUMENTS, MAX_ARGUMENTS_BYTES + 1)
    if text is None:
        raise ValueError(f"{job_dir / ARGUMENTS} is missing or not a regular file")
    if len(text.encode()) > MAX_ARGUMENTS_BYTES or "\0" in text:
        raise ValueError(f"{job_dir / ARGUMENTS} is larger than {MAX_ARGUMENTS_BYTES} bytes or holds a NUL")
    arguments = text.splitlines()
    if len(arguments) > MAX_ARGUMENTS:
        raise ValueError(f"{job_dir / ARGUMENTS} holds more than {MAX_ARGUMENTS} arguments")
    return arguments


def mark_for_handover(directory: Path, job_id: str) -> None:
    """Say, as the directory's owner, that `directory` may be handed to the user of job
    `job_id` (and of no other job) while it runs."""
    write_file(directory / HANDOVER_MARK, f"{job_id}\n", 0o644)
