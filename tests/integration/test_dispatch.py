"""Dispatch under load through real workers on Redis and PostgreSQL: a job's end is
recorded while the steps queue still holds a burst (ends have a queue and a worker of
their own), and on a saturated destination other users' jobs do not wait behind one
user's line (fair share)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]


def test_an_end_is_recorded_while_the_steps_queue_still_holds_a_burst(deployment, tmp_path: Path):
    deployment.worker("galaxy_tasks", "steps@%h", "--concurrency", "1")
    deployment.worker("galaxy_tasks.ends", "ends@%h", "--concurrency", "1")
    deployment.worker("local", "local@%h", "--concurrency", "2")
    gate = tmp_path / "gate"
    first = deployment.submit(f"until [ -e {gate} ]; do sleep 0.05; done")
    deployment.wait_until(lambda: deployment.job(first).state == "running", 60, "the first job running")
    burst = deployment.submit_many([{"tool_id": "burst", "command": "true"} for _ in range(400)])
    gate.touch()  # the first job ends while the burst's prepares wait on the steps queue
    ended = deployment.wait_terminal([first], timeout=60)[0]
    assert ended.state == "ok"
    waited = (ended.finished_at - ended.ended_at).total_seconds()
    prepared_later = [j for j in deployment.store.jobs(burst).values()
                      if j.queued_at is None or j.queued_at > ended.finished_at]
    assert prepared_later, "the burst's prepares were still waiting when the end was recorded"
    assert waited < 1.0, f"the end waited {waited:.2f} s to be recorded"


def test_other_users_jobs_start_before_one_users_earlier_line(make_deployment, tmp_path: Path):
    conf = tmp_path / "job_conf.yml"
    conf.write_text(f"destinations:\n  local: {{runner: local, params: {{max_jobs: 2, slots_dir: {tmp_path}/slots}}}}"
                    "\n")
    deployment = make_deployment(GALAXY_TASKS_JOB_CONF=str(conf))
    deployment.worker()
    # one user's line of 30, then one job each of three others, submitted right behind it
    specs = [{"tool_id": "heavy", "command": "sleep 0.3", "user": "heavy"} for _ in range(30)]
    specs += [{"tool_id": "light", "command": "true", "user": user} for user in ("ann", "ben", "cat")]
    ids = deployment.submit_many(specs)
    heavy, others = ids[:30], ids[30:]
    jobs = deployment.wait_terminal(heavy + others, timeout=120)
    assert all(job.state == "ok" for job in jobs)
    # a turn is the move that takes a waiting job (queued -> submitting); the history's ids
    # give the order turns were taken in (a job's RUNNING record lands later, and a turn
    # taken before the others were prepared may land its record after)
    turn, prepared = {}, {}
    for change in deployment.store.changes_since(0, heavy + others):
        if change.to_state == "submitting":
            turn[change.job_id] = change.id
        elif change.to_state == "queued":
            prepared[change.job_id] = change.id
    # from the moment all three wait until the last of them is taken
    ready, started = max(prepared[o] for o in others), max(turn[o] for o in others)
    overtaking = [h for h in heavy if ready < turn[h] < started]
    assert turn[heavy[-1]] > started, "first in, first out would start all of heavy's line first"
    # one only: when heavy's two running end together, heavy (none running) and the others
    # (none) tie, and heavy's waiting job is the older
    assert len(overtaking) <= 1, f"{len(overtaking)} of heavy's jobs were taken while the others' three waited"
    # two of heavy's jobs may be taken at once (two slots); none before a job more than a
    # slot's count ahead of it
    starts = [turn[h] for h in heavy]
    overtaken = [(i, j) for i in range(len(starts)) for j in range(i + 2, len(starts)) if starts[j] < starts[i]]
    assert not overtaken, f"heavy's jobs started out of their order: {overtaken}"
