"""Provenance reuse: a job that allows it, whose tool, version, command, environment and the
contents of its inputs are those of an earlier ok job that allowed it too, ends ok with that
job's outputs linked into its working directory, without running.

The key is taken with each input path in the command replaced by its content hash, so a
workflow run again over the same data (its jobs' directories differ) finds the earlier
run's jobs. An input that is an output of a recorded job is known by the hash recorded at
that job's finish (not read again); any other input is read once to hash it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from galaxy_tasks.context import Context
from galaxy_tasks.jobdir import JobDir, file_digest
from galaxy_tasks.lifecycle.changes import move
from galaxy_tasks.logs import event
from galaxy_tasks.model import Job, utcnow
from galaxy_tasks.states import JobState

log = logging.getLogger(__name__)

_NEW = frozenset({JobState.NEW})


def provenance_key(ctx: Context, job: Job) -> str | None:
    """What the job computes, as a sha256; None if an input cannot be read (no reuse)."""
    command, hashes = job.command, []
    for path in job.inputs or []:
        digest = input_digest(ctx, path)
        if digest is None:
            return None
        hashes.append(digest)
        command = command.replace(shlex.quote(path), f"sha256:{digest}").replace(path, f"sha256:{digest}")
    text = json.dumps([job.tool_id, job.tool_version, command, sorted((job.environment or {}).items()), hashes,
                       job.outputs], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def input_digest(ctx: Context, path: str) -> str | None:
    """An input's sha256: recorded by the job that produced it, or read now."""
    producer = producer_of(ctx, path)
    if producer is not None:
        job, output = producer
        recorded = (job.output_files or {}).get(output)
        if recorded is not None:
            return str(recorded["sha256"])
    found = file_digest(Path(path))
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
    """If an earlier ok job has this key and its outputs are still as recorded: link them in
    and end the job ok, reused from it (the row as the move left it)."""
    for earlier in ctx.store.reusable(key):
        if earlier.id == job.id or not _link_outputs(ctx, earlier, job, job_dir):
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


def _link_outputs(ctx: Context, earlier: Job, job: Job, job_dir: JobDir) -> bool:
    """Each declared output of the earlier job linked (or copied, across file systems) into
    this job's working directory; False if one is gone or its size is not the recorded one."""
    source = JobDir(Path(earlier.job_dir or ctx.settings.jobs_dir / earlier.id))
    recorded = earlier.output_files or {}
    for output in job.outputs or []:
        where, size = source.working / output, recorded.get(output, {}).get("size")
        try:
            if size is None or os.lstat(where).st_size != size:
                return False
            target = job_dir.working / output
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(where, target, follow_symlinks=False)
            except OSError:
                shutil.copy2(where, target, follow_symlinks=False)
        except OSError:
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
