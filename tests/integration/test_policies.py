"""Galaxy's job policies through real workers on the real Redis and PostgreSQL: concurrency
limits held by two workers racing, and jobs the local runner ends at their walltime, memory
or output size, resubmitted by the destination's rules with their history kept."""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.deployment import Deployment
from tests.support.ledger import most_at_once, timed

pytestmark = pytest.mark.integration

LIMITED_CONF = """
destinations:
  local: {runner: local, params: {max_jobs: 20}}
default: local
limits:
  - type: registered_user_concurrent_jobs
    value: 2
"""

ENDINGS_CONF = """
destinations:
  short:
    runner: local
    params: {kill_grace_s: 1}
    limits: [{type: walltime, value: 2}]
    resubmit:
      - condition: walltime_reached
        destination: long
  long: {runner: local}
  small_memory:
    runner: local
    params: {memory_limit: MODE}
    resubmit:
      - condition: memory_limit_reached and attempt < 2
        destination: roomy
  roomy: {runner: local, params: {memory_limit: "off"}}
  capped:
    runner: local
    limits: [{type: output_size, value: 1MB}]  # 10^6 bytes, as Galaxy reads it
default: long
"""


DELAYED_CONF = """
destinations:
  first:
    runner: local
    resubmit:
      - condition: tool_detected_failure
        destination: second
        delay: 65
  second: {runner: local}
default: first
"""


def with_conf(make_deployment, tmp_path: Path, conf: str, **env: str) -> Deployment:
    path = tmp_path / "job_conf.yml"
    path.write_text(conf)
    return make_deployment(GALAXY_TASKS_JOB_CONF=str(path), **env)


def test_two_workers_racing_never_run_more_of_a_users_jobs_than_the_limit(make_deployment, tmp_path):
    deployment = with_conf(make_deployment, tmp_path, LIMITED_CONF)
    ledgers = tmp_path / "ledgers"
    ledgers.mkdir()
    deployment.worker(None, "w1@%h", "--concurrency", "2")
    deployment.worker(None, "w2@%h", "--concurrency", "2")
    users = [f"user{n}" for n in range(5)]
    ids = deployment.submit_many([{"tool_id": "t", "command": timed(ledgers, user, 1), "user": user}
                                  for _ in range(6) for user in users])
    jobs = deployment.wait_terminal(ids, timeout=180)
    assert [job.state for job in jobs] == ["ok"] * len(ids), [job.reason for job in jobs if job.state != "ok"]
    peaks = {user: most_at_once(ledgers / user) for user in users}
    assert all(peak <= 2 for peak in peaks.values()), f"more than 2 of a user's jobs ran at once: {peaks}"
    assert any(peak == 2 for peak in peaks.values()), f"the limit, not the workers, held jobs back: {peaks}"
    # (fair share gives a freed slot to the user with fewest running, so a job mostly waits
    # QUEUED for its turn rather than LIMITED for a place: how many did either is not the point)
    assert set(deployment.store.limit_usage([f"user:{u}" for u in users]).values()) == {0}
    assert "event=released" in deployment.logs()


def test_a_job_past_its_walltime_is_stopped_and_resubmitted_to_the_longer_destination(make_deployment,
                                                                                      tmp_path):
    deployment = with_conf(make_deployment, tmp_path, ENDINGS_CONF.replace("MODE", "auto"))
    deployment.worker()
    # it ignores SIGTERM, as its children do: only the SIGKILL after kill_grace_s stops it
    job_id = deployment.submit("trap '' TERM; sleep 4; echo finished > out.txt", "slow", "--destination", "short",
                               "--output", "out.txt")
    [job] = deployment.wait_terminal([job_id], timeout=60)
    assert job.state == "ok", job.reason
    assert job.destination == "long" and job.attempt == 2
    [first] = job.attempts or []
    assert first["destination"] == "short" and first["runner_state"] == "walltime_reached"
    assert first["resubmit"] == "walltime_reached" and first["state"] == "error"
    pid = int(first["external_id"].split(":")[1])
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the first attempt's whole process group was stopped
    history = [state.value for state in deployment.history(job_id)]
    assert history.count("new") == 2 and history.count("running") == 2 and history[-1] == "ok"
    status = deployment.cli("status", job_id)
    assert "attempt 1    on short: error (walltime_reached), resubmitted because walltime_reached" in status.stdout
    assert json.loads(deployment.cli("status", job_id, "--json").stdout)["attempts"][0]["destination"] == "short"


@pytest.mark.parametrize("mode", ["auto", "rlimit"])
def test_a_job_over_its_memory_is_ended_and_resubmitted_where_memory_is_roomy(make_deployment, tmp_path, mode):
    deployment = with_conf(make_deployment, tmp_path, ENDINGS_CONF.replace("MODE", mode))
    deployment.worker()
    hungry = "python3 -c \"b = b'x' * (300 * 1024 * 1024); print(len(b))\""
    job_id = deployment.submit(hungry, "hungry", "--destination", "small_memory", "--memory-mb", "80")
    [job] = deployment.wait_terminal([job_id], timeout=60)
    assert job.state == "ok", job.reason
    assert job.destination == "roomy" and job.stdout_tail.strip() == str(300 * 1024 * 1024)
    [first] = job.attempts or []
    assert first["runner_state"] == "memory_limit_reached", first
    assert "80 MB" in first["reason"]
    from galaxy_tasks.runners import memlimit

    by_cgroup = mode == "auto" and memlimit.detect().parent is not None  # the worker's cgroup is ours
    said = "reached its memory limit" if by_cgroup else "ran out of memory"
    assert said in first["reason"], f"{mode}: {first['reason']}"


def test_a_job_whose_file_grows_past_the_output_size_ends_output_size_limit(make_deployment, tmp_path):
    """Galaxy's output_size holds for each file: the local runner stops a file at the limit
    (RLIMIT_FSIZE), and the job is ended output_size_limit even when its shell carried on."""
    deployment = with_conf(make_deployment, tmp_path, ENDINGS_CONF.replace("MODE", "auto"))
    deployment.worker()
    carried_on = deployment.submit("head -c 3000000 /dev/zero > big.dat; echo after", "grower",
                                   "--destination", "capped")
    last = deployment.submit("mkdir -p deep/er; head -c 3000000 /dev/zero > deep/er/big.dat", "deep",
                             "--destination", "capped")
    two_small = deployment.submit("head -c 600000 /dev/zero > a.dat; head -c 600000 /dev/zero > b.dat", "pair",
                                  "--destination", "capped", "--output", "a.dat", "--output", "b.dat")
    grown, deep, pair = deployment.wait_terminal([carried_on, last, two_small], timeout=60)
    assert grown.state == "error" and grown.runner_state == "output_size_limit", grown.reason
    assert "'big.dat' grew too large" in grown.reason and "limit is 1000000 bytes" in grown.reason
    size = (Path(grown.job_dir) / "working" / "big.dat").stat().st_size
    assert 1_000_000 < size <= 1_000_000 + 512, f"stopped just past the limit, not at {size}"
    assert deep.state == "error" and deep.runner_state == "output_size_limit", deep.reason
    assert "deep/er/big.dat" in deep.reason
    assert pair.state == "ok", pair.reason


def test_host_slots_and_a_user_limit_apply_together(make_deployment, tmp_path):
    """max_jobs (the local runner's slots on a host) and a per-user limit both hold: a job
    refused a slot gives its places back, and the end of a job wakes both kinds of waiter."""
    conf = LIMITED_CONF.replace("max_jobs: 20", f"max_jobs: 2, slots_dir: {tmp_path / 'slots'}") \
        .replace("value: 2", "value: 1")
    deployment = with_conf(make_deployment, tmp_path, conf)
    ledgers = tmp_path / "ledgers"
    ledgers.mkdir()
    deployment.worker(None, "w1@%h", "--concurrency", "2")
    users = ("ann", "bob", "cy")
    ids = deployment.submit_many([{"tool_id": "t", "command": timed(ledgers, user, 0.8), "user": user}
                                  for _ in range(3) for user in users])
    jobs = deployment.wait_terminal(ids, timeout=120)
    assert [job.state for job in jobs] == ["ok"] * len(ids)
    assert {user: most_at_once(ledgers / user) for user in users} == dict.fromkeys(users, 1)
    everything = tmp_path / "all"
    everything.write_text("".join((ledgers / user).read_text() for user in users))
    assert most_at_once(everything) == 2, "two slots on the host, both used"
    assert set(deployment.store.limit_usage([f"user:{u}" for u in users]).values()) == {0}


def test_a_resubmit_delay_longer_than_the_visibility_timeout_fires_at_its_time_once(make_deployment, tmp_path):
    """A resubmission's delay longer than Redis' visibility timeout (65 s over 60 s) waits in
    the job's row, not in a message Redis would deliver again: the worker restarted in
    between does not start it early, and reconciliation starts it once, when it is due."""
    reconcile_s = 2
    deployment = with_conf(make_deployment, tmp_path, DELAYED_CONF, GALAXY_TASKS_VISIBILITY_TIMEOUT="60",
                           GALAXY_TASKS_RECONCILE_INTERVAL=str(reconcile_s))
    ledger = tmp_path / "ledger"
    first = deployment.worker()
    deployment.beat()
    job_id = deployment.submit(f"echo run >> {ledger}; [ $(wc -l < {ledger}) -ge 2 ]", "flaky")
    deployment.wait_until(lambda: deployment.job(job_id).attempt == 2, what="the first attempt resubmitted")
    first.stop()
    deployment.worker()  # starts with the resubmission waiting out its delay
    [job] = deployment.wait_terminal([job_id], timeout=120)
    assert job.state == "ok" and job.destination == "second" and job.attempt == 2, job.reason
    assert ledger.read_text().splitlines() == ["run", "run"], "each attempt ran once"
    [attempt] = job.attempts or []
    waited = (job.running_at - datetime.fromisoformat(attempt["ended_at"])).total_seconds()
    assert 65 <= waited <= 65 + reconcile_s + 10, f"the second attempt started {waited:.1f} s after the first ended"
    history = [state.value for state in deployment.history(job_id)]
    assert history.count("new") == 2 and history.count("running") == 2 and history[-1] == "ok"
