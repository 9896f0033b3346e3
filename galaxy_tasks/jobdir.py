"""A job's working directory and the job script every runner executes.

The same `job.sh` runs under every runner (a local process, a Grid Engine job, a Mesos
task). It claims the job before running anything (an exclusive create of `claim`), so a second
copy started by a duplicated submission exits with CLAIMED_EXIT_CODE without running the
command; and it records the command's exit code atomically (write, then rename) so a
reader never sees a half-written one.
"""
from __future__ import annotations

import os
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

CLAIMED_EXIT_CODE = 75
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
OUTPUT_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class JobDir:
    """Paths inside one job directory; the layout is the contract between the steps."""

    root: Path

    @property
    def script(self) -> Path:
        return self.root / "job.sh"

    @property
    def command(self) -> Path:
        return self.root / "command.sh"

    @property
    def working(self) -> Path:
        return self.root / "working"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr"

    @property
    def exit_code_file(self) -> Path:
        return self.root / "exit_code"

    @property
    def claim_file(self) -> Path:
        """Created exclusively by the copy of the job script that runs the job; holds its pid."""
        return self.root / "claim"

    def claimed(self) -> bool:
        return self.claim_file.exists()

    def claimed_pid(self) -> int | None:
        """The pid of the job script that claimed the job, if one did."""
        try:
            return int(self.claim_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def recorded_exit_code(self) -> int | None:
        """The exit code the job script recorded, or None if it has not finished."""
        try:
            text = self.exit_code_file.read_text()
        except FileNotFoundError:
            return None
        try:
            return int(text.strip())
        except ValueError:
            return None

    def tail(self, which: str, limit: int = OUTPUT_TAIL_BYTES) -> str:
        """The last `limit` bytes of stdout or stderr (bounded, so a chatty tool cannot
        fill the database)."""
        path = self.stdout if which == "stdout" else self.stderr
        try:
            with open(path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - limit))
                return handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def job_environment(
    job_dir: JobDir,
    *,
    cores: int,
    memory_mb: int | None,
    spec_env: Mapping[str, str],
    destination_env: Mapping[str, str],
    mesos_url: str,
    job_id: str,
) -> dict[str, str]:
    """The complete environment of a job: what the destination and the spec set, and the
    variables every Galaxy tool expects; nothing inherited from the worker's own
    environment (which may hold broker or database passwords)."""
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": str(job_dir.working)}
    env.update(destination_env)
    env.update(spec_env)
    env.update(
        {
            "TMPDIR": str(job_dir.tmp),
            "TEMP": str(job_dir.tmp),
            "TMP": str(job_dir.tmp),
            "GALAXY_SLOTS": str(cores),
            "GALAXY_TASKS_JOB_ID": job_id,
            "MESOS_URL": mesos_url,
        }
    )
    if memory_mb is not None:
        env["GALAXY_MEMORY_MB"] = str(memory_mb)
    return env


def render_script(job_dir: JobDir, env: Mapping[str, str], setup_file: str | None) -> str:
    """The job script. It exports its whole environment itself, so a runner that cannot
    pass an environment (a DRM, a Mesos agent) still gives the job exactly this one."""
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        # noclobber makes the redirection an exclusive create: a shell builtin, no process
        "set -C",
        f"{{ echo $$ > {q(str(job_dir.claim_file))}; }} 2>/dev/null || exit {CLAIMED_EXIT_CODE}",
        "set +C",
        "umask 077",
    ]
    for name in sorted(env):
        lines.append(f"{name}={q(env[name])}; export {name}")
    if setup_file:
        lines.append(f". {q(setup_file)}")
    lines += [
        f"cd {q(str(job_dir.working))} || exit 1",
        f"/bin/sh {q(str(job_dir.command))} </dev/null >{q(str(job_dir.stdout))} 2>{q(str(job_dir.stderr))}",
        "rc=$?",
        f"echo $rc > {q(str(job_dir.exit_code_file) + '.tmp')} && "
        f"mv {q(str(job_dir.exit_code_file) + '.tmp')} {q(str(job_dir.exit_code_file))}",
        "exit $rc",
        "",
    ]
    return "\n".join(lines)


def create(root: Path, command: str, env: Mapping[str, str], setup_file: str | None) -> JobDir:
    """Write a job directory (mode 0700: job data is private to the worker's user)."""
    job_dir = JobDir(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for sub in (job_dir.working, job_dir.tmp):
        sub.mkdir(mode=0o700, exist_ok=True)
    _write(job_dir.command, command if command.endswith("\n") else command + "\n", 0o600)
    _write(job_dir.script, render_script(job_dir, env, setup_file), 0o700)
    return job_dir


def _write(path: Path, text: str, mode: int) -> None:
    """Write whole, through a temporary file of this writer's own: two prepares of the same
    job (a redelivered message and the start-up recovery's) may write at once."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
