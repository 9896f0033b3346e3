"""Provenance reuse: a job that allows it, whose tool, version, command, environment, setup
file, destination and the contents of its inputs are those of an earlier ok job of the
same user (or of a user the operator trusts: GALAXY_TASKS_REUSE_TRUSTED_USERS) that allowed
it too, ends ok with copies of that job's outputs in its working directory, without running.

The key is bound to exactly what runs. An input path in the command is replaced by its
position (its content hash is in the key beside it) only where it stands as one whole shell
word (quoted as `shlex.quote` quotes it, or a plain word), so a workflow run again over the
same data (its jobs' directories differ) finds the earlier run's jobs, while an input named
like shell code (`a;echo 666`) cannot make another command read like an honest one. An
input that is an output of a recorded job is known by the hash recorded at that job's
finish (not read again); any other input is read once to hash it.

An earlier output is copied, never linked (a job that appends to its copy must not change
the earlier job's), read without following any link on its way, and its content checked
against the hash recorded at its finish as it is copied.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import stat
from pathlib import Path
from typing import Any

from galaxy_tasks.context import Context
from galaxy_tasks.jobdir import HashBudget, JobDir, file_digest, open_beneath
from galaxy_tasks.lifecycle.changes import move
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)

_NEW = frozenset({JobState.NEW})


def provenance_key(ctx: Context, job: Job) -> str | None:
    """What the job computes, as a sha256; None if an input or the setup file cannot be read,
    or the command holds a NUL (no reuse)."""
    command, hashes = job.command, []
    if "\x00" in command:
        return None
    budget = HashBudget()  # what reading the inputs may cost this prepare, all together
    for index, path in enumerate(job.inputs or []):
        digest = input_digest(ctx, path, budget)
        if digest is None:
            return None
        hashes.append(digest)
        command = _as_word(command, path, f"\x00input{index}\x00")
    setup = None
    if job.environment_setup_file:
        found = file_digest(Path(job.environment_setup_file), budget)
        if found is None:
            return None
        setup = found[1]
    destination = ctx.routing.destinations.get(job.destination)
    text = json.dumps([job.tool_id, job.tool_version, command, sorted((job.environment or {}).items()), hashes,
                       job.outputs, job.environment_setup_file, setup, job.destination,
                       sorted((destination.env if destination else {}).items())], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


#: what may stand before and after a path that is a whole shell word
_BEFORE, _AFTER = r"(?<![^\s\"'=<>|;&(])", r"(?![^\s\"'<>|;&)])"


def _as_word(command: str, path: str, placeholder: str) -> str:
    """`command` with each place where `path` is one whole shell word replaced: its quoted
    form, or the path itself if it needs no quotes. A path that needs quotes and stands
    unquoted is not one word to the shell, so it is left alone (and the key differs)."""
    quoted = shlex.quote(path)
    forms = {quoted} if quoted != path else {path}
    for form in forms:
        command = re.sub(_BEFORE + re.escape(form) + _AFTER, lambda _m: placeholder, command)
    return command


def input_digest(ctx: Context, path: str, budget: HashBudget) -> str | None:
    """An input's sha256: recorded by the job that produced it, or read now within `budget`
    (None past it: no reuse)."""
    producer = producer_of(ctx, path)
    if producer is not None:
        job, output = producer
        recorded = (job.output_files or {}).get(output) or {}
        if recorded.get("sha256") is not None:
            return str(recorded["sha256"])
    found = file_digest(Path(path), budget)
    return found[1] if found is not None else None


def producer_of(ctx: Context, path: str) -> tuple[Job, str] | None:
    """The recorded job whose declared output this path is (`<jobs dir>/<id>/working/<output>`)."""
    try:
        relative = Path(path).relative_to(ctx.settings.jobs_dir)
    except ValueError:
        return None
    parts = relative.parts
    if len(parts) < 3 or parts[1] != "working":
        return None
    job = ctx.store.job(parts[0])
    output = "/".join(parts[2:])
    if job is None or output not in (job.outputs or []):
        return None
    return job, output


def reuse_earlier(ctx: Context, job: Job, job_dir: JobDir, key: str) -> Job | None:
    """If an earlier ok job of a user this job may reuse has this key and its outputs are
    still as recorded: copy them in and end the job ok, reused from it (the row as the move
    left it)."""
    for earlier in ctx.store.reusable(key):
        if earlier.id == job.id or not may_reuse(ctx, job, earlier) or not _copy_outputs(ctx, earlier, job, job_dir):
            continue
        now = utcnow()
        moved = move(ctx, job.id, JobState.OK, sources=_NEW, reason=f"reused the outputs of job {earlier.id}",
                     job_dir=str(job_dir.root), exit_code=0, reused_from=earlier.id, provenance=key,
                     output_files=earlier.output_files, ended_at=now)
        if moved is None:
            return None
        event(log, "state_change", job_id=job.id, to=JobState.OK, reused_from=earlier.id)
        return moved.job
    return None


def may_reuse(ctx: Context, job: Job, earlier: Job) -> bool:
    """A job stands for another only of the same user, or of a user the operator trusts."""
    return earlier.user == job.user or (earlier.user is not None and earlier.user in ctx.settings.reuse_trusted_users)


def _copy_outputs(ctx: Context, earlier: Job, job: Job, job_dir: JobDir) -> bool:
    """Each declared output of the earlier job copied into this job's working directory,
    its content checked against the recorded hash as it is read; False (and no copy left)
    if one is gone, is reached through a link, or is not what was recorded."""
    source = Path(earlier.job_dir or ctx.settings.jobs_dir / earlier.id) / "working"
    recorded = earlier.output_files or {}
    written: list[Path] = []
    try:
        for output in job.outputs or []:
            expected = recorded.get(output)
            target = job_dir.working / output
            if expected is None or not _copy_checked(source, output, target, expected):
                return False
            written.append(target)
        written.clear()
        return True
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def _copy_checked(source: Path, output: str, target: Path, expected: dict[str, Any]) -> bool:
    fd = open_beneath(source, output)
    if fd is None:
        return False
    digest, size, created = hashlib.sha256(), 0, False
    try:
        if os.fstat(fd).st_size != expected.get("size"):
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
        created = True
        try:
            while chunk := os.read(fd, 1 << 20):
                digest.update(chunk)
                size += len(chunk)
                os.write(out, chunk)
        finally:
            os.close(out)
    except OSError:
        size = -1
    finally:
        os.close(fd)
    if size != expected.get("size") or digest.hexdigest() != expected.get("sha256"):
        if created:
            target.unlink(missing_ok=True)
        return False
    return True


def chain(ctx: Context, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    """The jobs that produced a job's inputs, and theirs, back to inputs no job produced:
    one entry per job (first the job itself), each with its inputs and the job each came
    from, and the job whose outputs it reused, if it did."""
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    pending = [job_id]
    while pending and len(found) < limit:
        current = ctx.store.job(pending.pop(0))
        if current is None or current.id in seen:
            continue
        seen.add(current.id)
        inputs = []
        for path in current.inputs or []:
            producer = producer_of(ctx, path)
            inputs.append({"path": path, "from": producer[0].id if producer else None,
                           "sha256": (producer[0].output_files or {}).get(producer[1], {}).get("sha256")
                           if producer else None})
            if producer is not None:
                pending.append(producer[0].id)
        if current.reused_from:
            pending.append(current.reused_from)
        found.append({"id": current.id, "tool_id": current.tool_id, "tool_version": current.tool_version,
                      "state": current.state, "reused_from": current.reused_from, "inputs": inputs,
                      "outputs": current.output_files or {}})
    return found
