"""`galaxy-tasks run jobs.yml`: submit a file of jobs, show progress, end with a table."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from galaxy_tasks import context, yamlconf
from galaxy_tasks.client import Client
from galaxy_tasks.errors import SpecError
from galaxy_tasks.render import table
from galaxy_tasks.spec import parse
from galaxy_tasks.states import TERMINAL, JobState


def load_jobs(path: Path) -> list[dict]:
    data = yamlconf.read(path)
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, list):
        raise ValueError(f"{path}: expected a mapping with a 'jobs' list")
    return jobs


def run_file(path: Path, *, concurrency: int = 4, timeout: float | None = None, out: TextIO = sys.stdout) -> int:
    """Run every job of the file to its end in this process, and every job an earlier,
    interrupted run left unfinished. Returns 0 once all have ended (whatever their state),
    1 if the timeout passed first."""
    from galaxy_tasks.embedded import embedded_worker

    entries = load_jobs(path)
    with embedded_worker(concurrency=concurrency):
        client = Client(context.current())
        rows: list[tuple[str, dict, str | None]] = []  # (job id or "-", entry, refusal)
        first_change = client.last_change_id()
        for job in client.unfinished():
            rows.append((job.id, {"tool_id": job.tool_id}, None))
            print(f"resumed    {job.id[:8]}  {job.tool_id} ({job.state})", file=out)
        for index, entry in enumerate(entries):
            try:
                job = client.submit(parse(entry))
                rows.append((job.id, entry, None))
                print(f"submitted  {job.id[:8]}  {job.tool_id} -> {job.destination}", file=out)
            except SpecError as exc:
                rows.append(("-", entry, str(exc)))
                print(f"refused    jobs[{index}] {entry.get('tool_id', '?')}: {exc}", file=out)
        ids = [job_id for job_id, _, refusal in rows if refusal is None]
        finished = _follow(client, ids, first_change, timeout, out)
        jobs = client.wait(ids, timeout=0) if ids else {}
    body = []
    for job_id, entry, refusal in rows:
        if refusal is not None:
            body.append(["-", str(entry.get("tool_id", "?")), "refused", "", "", refusal])
            continue
        job = jobs[job_id]
        run_time = f"{job.wall_time_s:.2f}s" if job.wall_time_s is not None else ""
        body.append([job.id[:8], job.tool_id, job.state, "" if job.exit_code is None else str(job.exit_code),
                     run_time, job.reason or ""])
    print("\n" + table(["job", "tool", "state", "exit", "run time", "reason"], body), file=out)
    return 0 if finished else 1


def _follow(client: Client, ids: list[str], last_change: int, timeout: float | None, out: TextIO) -> bool:
    """Print every state change after `last_change`, in order, until all jobs have ended."""
    pending = set(ids)
    tools = {job_id: job.tool_id for job_id, job in client.wait(ids, timeout=0).items()}
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        for change in client.changes_since(last_change, ids):
            last_change = change.id
            print(f"{change.to_state:10} {change.job_id[:8]}  {tools.get(change.job_id, '')}", file=out)
            if JobState(change.to_state) in TERMINAL:
                pending.discard(change.job_id)
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
