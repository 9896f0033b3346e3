"""`galaxy-tasks run jobs.yml`: submit a file of jobs, show progress, end with a table."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from galaxy_tasks import events, yamlconf
from galaxy_tasks.client import RECHECK_S, TERMINAL_NAMES, Client
from galaxy_tasks.edge import runtime
from galaxy_tasks.edge.listen import JobEvents
from galaxy_tasks.errors import SpecError
from galaxy_tasks.render import JobProgress, is_terminal, print_table
from galaxy_tasks.spec import parse
from galaxy_tasks.states import TERMINAL, JobState


def load_jobs(path: Path) -> list[dict]:
    data = yamlconf.read(path)
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, list):
        raise ValueError(f"{path}: expected a mapping with a 'jobs' list")
    return jobs


def run_file(path: Path, *, concurrency: int = 4, timeout: float | None = None, out: TextIO = sys.stdout,
             live: bool | None = None) -> int:
    """Run every job of the file to its end in this process, and every job an earlier,
    interrupted run left unfinished. Returns 0 once all have ended (whatever their state),
    1 if the timeout passed first. On a terminal (or with `live`) a progress bar counts
    the jobs in each state, moved by their events; otherwise each change is a plain line."""
    from galaxy_tasks.edge.embedded import embedded_worker

    entries = load_jobs(path)
    live = is_terminal(out) if live is None else live
    with embedded_worker(concurrency=concurrency), JobEvents() as heard, \
            JobProgress(out, live=live, title="jobs") as progress:
        client = Client(runtime.context())
        rows: list[tuple[str, dict, str | None]] = []  # (job id or "-", entry, refusal)
        for job in client.unfinished():
            rows.append((job.id, {"tool_id": job.tool_id}, None))
            progress.line(f"resumed    {job.id[:8]}  {job.tool_id} ({job.state})")
        for index, entry in enumerate(entries):
            try:
                job = client.submit(parse(entry))
                rows.append((job.id, entry, None))
                progress.line(f"submitted  {job.id[:8]}  {job.tool_id} -> {job.destination}")
            except SpecError as exc:
                rows.append(("-", entry, str(exc)))
                progress.line(f"refused    jobs[{index}] {entry.get('tool_id', '?')}: {exc}")
        ids = [job_id for job_id, _, refusal in rows if refusal is None]
        finished = _follow(client, heard, ids, timeout, progress)
        jobs = client.ctx.store.jobs(ids)
    body = []
    for job_id, entry, refusal in rows:
        if refusal is not None:
            body.append(["-", str(entry.get("tool_id", "?")), "refused", "", "", refusal])
            continue
        job = jobs[job_id]
        run_time = f"{job.wall_time_s:.2f}s" if job.wall_time_s is not None else ""
        body.append([job.id[:8], job.tool_id, job.state, "" if job.exit_code is None else str(job.exit_code),
                     run_time, job.reason or ""])
    print(file=out)
    print_table(["job", "tool", "state", "exit", "run time", "reason"], body, out)
    return 0 if finished else 1


def _follow(client: Client, heard: JobEvents, ids: list[str], timeout: float | None, progress: JobProgress) -> bool:
    """Show every state change as its event is heard, until all jobs have ended; the rows
    of the jobs still pending are read again only when nothing was heard for a while."""
    jobs = client.ctx.store.jobs(ids)
    progress.start({job_id: job.state for job_id, job in jobs.items()})
    pending = {job_id for job_id, job in jobs.items() if JobState(job.state) not in TERMINAL}
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        left = RECHECK_S if deadline is None else min(RECHECK_S, deadline - time.monotonic())
        if left <= 0:
            return False
        got = [item for item in heard.next(left) if item.get("job_id") in pending]
        for item in got:
            progress.event(item)
            if item["state"] in TERMINAL_NAMES:
                pending.discard(item["job_id"])
        if not got:
            for job_id, job in client.ctx.store.jobs(pending).items():
                if JobState(job.state) in TERMINAL:
                    progress.event(events.state_event(job))
                    pending.discard(job_id)
    return True
