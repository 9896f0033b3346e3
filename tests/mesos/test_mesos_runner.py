"""MesosRunner with the real pymesos driver against the Mesos master TEST DOUBLE over HTTP."""
from __future__ import annotations

import pytest

from tests.support.services import require_module

pytestmark = pytest.mark.mesos
require_module("pymesos", "run ops/install-mesos-extra.sh")  # first imported in the main thread

from galaxy_tasks.jobdir import JobDir  # noqa: E402
from galaxy_tasks.runners.base import Launch, Tracked  # noqa: E402
from galaxy_tasks.runners.mesos import MesosUnavailable  # noqa: E402


def tracked(launch: Launch) -> Tracked:
    return Tracked(launch.job_id, launch.external_name, launch.job_dir)


def launches_of(master, task_id: str) -> int:
    return sum(1 for c in master.calls_of("ACCEPT")
               for op in c["accept"]["operations"]
               for t in op["launch"]["task_infos"] if t["task_id"]["value"] == task_id)


def wait_state(master, task_id: str, state: str) -> None:
    master.wait_for(lambda: (t := master.task(task_id)) is not None and t.state == state,
                    what=f"{task_id} {state}")


def test_jobs_finish_with_exit_codes_on_both_agents(master, make_runner, make_launch, make_reports,
                                                    tmp_path):
    reports = make_reports()
    runner = make_runner(reports)
    # Each job waits until all four run at once, so they must take both agents' cpus (a job
    # that ended before the next was offered would free its cpu on the first agent again).
    gate = tmp_path / "gate"
    gate.mkdir()
    wait_all = (f"touch {gate}/$GALAXY_TASKS_JOB_ID; for _ in $(seq 600); do "
                f"[ $(ls {gate} | wc -l) -ge 4 ] && break; sleep 0.1; done")
    jobs = [make_launch(f"ok{i}", f"{wait_all}; echo hello {i}") for i in range(4)]
    for launch in jobs:
        assert runner.submit(launch) == launch.external_name
        assert runner.submit(launch) == launch.external_name  # idempotent: no second copy
    for launch in jobs:
        done = reports.wait(launch.job_id)
        assert done.exit_code == 0 and "TASK_FINISHED" in done.reason
        assert done.external_id == launch.external_name and done.wall_time_s is not None
        assert JobDir(launch.job_dir).tail("stdout").startswith("hello")
        assert launches_of(master, launch.external_name) == 1
    agents = {t.agent_id for t in master.completed.values()}
    assert len(agents) == 2  # 4 jobs x 1 cpu on 2 agents x 2 cpus
    assert runner.status([tracked(j) for j in jobs]) == {j.job_id: reports.of(j.job_id)[0] for j in jobs}


def test_failing_job_keeps_exit_code_and_mesos_state(master, make_runner, make_launch, make_reports):
    reports = make_reports()
    runner = make_runner(reports)
    launch = make_launch("bad", "echo oops >&2; exit 3")
    runner.submit(launch)
    done = reports.wait("bad")
    assert done.exit_code == 3
    assert "TASK_FAILED" in done.reason and "exited with status 3" in done.reason
    assert JobDir(launch.job_dir).tail("stderr") == "oops\n"


def test_injected_task_failed_and_task_lost_after_start_are_failures(
        master, make_runner, make_launch, make_reports):
    reports = make_reports()
    runner = make_runner(reports)  # on_agent_lost=requeue, yet a started job is not rerun
    failed, lost = make_launch("f", "sleep 30"), make_launch("l", "sleep 30")
    runner.submit(failed)
    runner.submit(lost)
    for launch in (failed, lost):  # started = claimed (unclaimed lost jobs are requeued)
        master.wait_for(lambda: JobDir(launch.job_dir).claimed_pid(), what="claim")
    master.fail_task("gt-f", "disk on fire")
    master.lose_task("gt-l")
    f, lo = reports.wait("f"), reports.wait("l")
    assert f.exit_code is None and "TASK_FAILED" in f.reason and "disk on fire" in f.reason
    assert lo.exit_code is None and "TASK_LOST" in lo.reason
    assert launches_of(master, "gt-l") == 1


def test_a_task_ended_at_its_limits_says_so_in_galaxys_words(master, make_runner, make_launch, make_reports):
    """Mesos's reasons become the runner_state a resubmit condition matches: the task's
    max_completion_time (its walltime) reached, its container over its memory."""
    reports = make_reports()
    runner = make_runner(reports)
    slow = make_launch("slow", "sleep 30", walltime_s=1)
    hungry = make_launch("hungry", "sleep 30", memory_mb=64)
    runner.submit(slow)
    runner.submit(hungry)
    master.wait_for(lambda: master.task("gt-slow") is not None, what="gt-slow launched")
    sent = next(t for c in master.calls_of("ACCEPT") for op in c["accept"]["operations"]
                for t in op["launch"]["task_infos"] if t["task_id"]["value"] == "gt-slow")
    assert sent["max_completion_time"] == {"nanoseconds": 1_000_000_000}
    wait_state(master, "gt-hungry", "TASK_RUNNING")
    master.exceed_memory("gt-hungry")
    timed_out, over = reports.wait("slow"), reports.wait("hungry")
    assert timed_out.runner_state == "walltime_reached" and "MAX_COMPLETION_TIME" in timed_out.reason
    assert over.runner_state == "memory_limit_reached" and "CONTAINER_LIMITATION_MEMORY" in over.reason


def test_a_later_attempt_is_a_task_of_its_own(master, make_runner, make_launch, make_reports):
    from dataclasses import replace

    reports = make_reports()
    runner = make_runner(reports)
    first = make_launch("again", "exit 0")
    runner.submit(first)
    assert reports.wait("again").exit_code == 0
    second = replace(make_launch("again", "exit 0"), attempt=2)
    assert runner.submit(second) == "gt-again.a2"
    master.wait_for(lambda: len(reports.of("again")) == 2, what="the second attempt's end")
    assert reports.of("again")[1].external_id == "gt-again.a2"


@pytest.mark.parametrize("policy", ["requeue", "fail"])
def test_agent_loss_requeues_a_job_that_had_not_started(
        policy, master, make_runner, make_launch, make_reports):
    reports = make_reports()
    runner = make_runner(reports, on_agent_lost=policy)
    agents = list(master.agents)
    for agent in agents:
        master.pause_agent(agent)  # tasks launched there stay TASK_STAGING, unclaimed
    launch = make_launch("a1", "exit 0")
    runner.submit(launch)
    wait_state(master, "gt-a1", "TASK_STAGING")
    where = master.task("gt-a1").agent_id
    other = next(a for a in agents if a != where)
    master.pause_agent(other, False)
    master.lose_agent(where)
    done = reports.wait("a1")
    assert master.events_of("FAILURE")
    if policy == "requeue":
        assert done.exit_code == 0
        assert launches_of(master, "gt-a1") == 2
        assert master.task("gt-a1").agent_id == other
    else:
        assert done.exit_code is None and "TASK_LOST" in done.reason
        assert launches_of(master, "gt-a1") == 1
    master.wait_for(lambda: not master.task("gt-a1").updates, what="no update of gt-a1 left to deliver again")
    assert len(reports.of("a1")) == 1


def test_agent_loss_after_start_reports_the_job_failed(master, make_runner, make_launch, make_reports):
    reports = make_reports()
    runner = make_runner(reports, on_agent_lost="requeue")
    launch = make_launch("a2", "sleep 30")
    runner.submit(launch)
    wait_state(master, "gt-a2", "TASK_RUNNING")
    master.wait_for(lambda: JobDir(launch.job_dir).claimed_pid(), what="claim")
    master.lose_agent(master.task("gt-a2").agent_id)
    done = reports.wait("a2")
    assert done.exit_code is None and "REASON_AGENT_REMOVED" in done.reason
    assert launches_of(master, "gt-a2") == 1


def test_launch_racing_an_offer_rescind_is_queued_again(master, make_runner, make_launch, make_reports):
    reports = make_reports()
    runner = make_runner(reports, on_agent_lost="fail")  # invalid offers requeue regardless
    master.rescind_next_accept()
    runner.submit(make_launch("r1", "exit 5"))
    done = reports.wait("r1")
    assert done.exit_code == 5
    assert master.events_of("RESCIND")
    assert launches_of(master, "gt-r1") == 2


def test_cancel_kills_a_running_task_and_drops_a_queued_one(master, make_runner, make_launch, make_reports):
    reports = make_reports()
    runner = make_runner(reports)
    running = make_launch("c1", "sleep 30")
    queued = make_launch("c2", "exit 0", cores=64)  # never fits: stays pending
    runner.submit(running)
    runner.submit(queued)
    wait_state(master, "gt-c1", "TASK_RUNNING")
    pid = master.task("gt-c1").proc.pid
    runner.cancel(tracked(running))
    runner.cancel(tracked(queued))
    assert "cancelled before it was launched" in reports.wait("c2").reason
    done = reports.wait("c1")
    assert "TASK_KILLED" in done.reason and done.exit_code is None
    assert master.calls_of("KILL")[0]["kill"]["task_id"]["value"] == "gt-c1"
    assert master.task("gt-c1").proc.poll() is not None, f"process {pid} still running"
    assert runner.pending_ids() == []
    runner.cancel(tracked(running))  # already gone: quietly accepted


def test_unusable_offers_are_declined_with_the_refuse_filter(master, make_runner, make_launch, make_reports):
    reports = make_reports()
    runner = make_runner(reports, refuse_seconds=1.0)
    runner.submit(make_launch("big", "exit 0", cores=3))  # agents have 2 cpus

    def offered_twice() -> bool:
        agents = [e["offers"]["offers"][0]["agent_id"]["value"] for _, e in master.events_of("OFFERS")
                  if e["offers"]["offers"]]
        return any(agents.count(agent) >= 2 for agent in agents)

    master.wait_for(offered_twice, what="an agent offered again after its filter expired")
    declines = master.calls_of("DECLINE")
    assert declines and all(d["decline"]["filters"]["refuse_seconds"] == 1.0 for d in declines)
    offered: dict[str, list[float]] = {}
    for t, event in master.events_of("OFFERS"):
        for offer in event["offers"]["offers"]:
            offered.setdefault(offer["agent_id"]["value"], []).append(t)
    for times in offered.values():  # no agent offered again before its filter expired
        assert all(b - a >= 0.95 for a, b in zip(times, times[1:])), times
    assert max(len(times) for times in offered.values()) >= 2  # but offered again after
    assert not reports.completions and runner.pending_ids() == ["gt-big"]


def test_suppress_when_idle_and_revive_on_submit(master, make_runner, make_launch, make_reports):
    reports = make_reports()
    runner = make_runner(reports)
    master.wait_for(lambda: master.calls_of("SUPPRESS"), what="SUPPRESS while idle")
    fw = master.state()["frameworks"][0]
    assert fw["suppressed"]
    runner.submit(make_launch("s1", "exit 0"))
    reports.wait("s1")
    kinds = [c["type"] for c in master.calls if c["type"] in ("SUPPRESS", "REVIVE", "ACCEPT")]
    assert kinds[:3] == ["SUPPRESS", "REVIVE", "ACCEPT"]
    master.wait_for(lambda: master.state()["frameworks"][0]["suppressed"], what="suppressed again")


def test_acknowledgement_only_after_report_returned(master, make_runner, make_launch, make_reports):
    reports = make_reports(delay_s=0.5, failures=1)  # first report raises, second is slow
    runner = make_runner(reports)
    runner.submit(make_launch("k1", "exit 0"))
    reports.wait("k1")
    assert reports.calls == 2  # the unacknowledged update was delivered again
    finished = [s for _, e in master.events_of("UPDATE") if (s := e["update"]["status"])
                ["task_id"]["value"] == "gt-k1" and s["state"] == "TASK_FINISHED"]
    assert len(finished) >= 2 and finished[0]["uuid"] == finished[-1]["uuid"]
    master.wait_for(lambda: any(c["acknowledge"]["uuid"] == finished[0]["uuid"]
                                for c in master.calls_of("ACKNOWLEDGE")), what="ack")
    ack = next(c for c in master.calls_of("ACKNOWLEDGE") if c["acknowledge"]["uuid"] == finished[0]["uuid"])
    assert ack["_t"] >= reports.returned_at["k1"]
    master.wait_for(lambda: ("gt-k1" in {t for (_, t) in master.completed}), what="acked task")


def test_master_restart_resubscribes_with_the_same_framework_id(
        master, make_runner, make_launch, make_reports):
    reports = make_reports()
    runner = make_runner(reports)
    first_id = runner.framework_id
    runner.submit(make_launch("m1", "sleep 1; exit 4"))
    wait_state(master, "gt-m1", "TASK_RUNNING")
    master.restart(downtime_s=0.5)
    assert reports.wait("m1").exit_code == 4  # finished while the master was away
    master.wait_for(lambda: len(master.subscriptions) >= 2, what="re-subscription")
    assert master.subscriptions[-1]["framework_id"] == first_id == runner.framework_id
    assert [f["id"] for f in master.state()["frameworks"]] == [first_id]
    runner.submit(make_launch("m2", "exit 0"))
    assert reports.wait("m2").exit_code == 0


def test_runner_restart_recovers_a_running_task(master, make_runner, make_launch, make_reports, tmp_path):
    go = tmp_path / "go"
    launch = make_launch("p1", f"while [ ! -e {go} ]; do sleep 0.1; done; exit 7")
    first_reports = make_reports()
    first = make_runner(first_reports)
    first.submit(launch)
    wait_state(master, "gt-p1", "TASK_RUNNING")
    first.close()  # failover: framework and task stay
    master.wait_for(lambda: not master.state()["frameworks"][0]["connected"], what="disconnect")
    assert not master.calls_of("TEARDOWN")
    assert (tmp_path / "framework_id").read_text().strip() == first.framework_id

    second_reports = make_reports()
    second = make_runner(second_reports)
    assert second.framework_id == first.framework_id
    second.recover([tracked(launch)])
    assert second.status([tracked(launch)]) == {"p1": None}  # running: no completion yet
    second.submit(launch)  # a duplicate submission after the restart does not launch again
    go.touch()
    assert second_reports.wait("p1").exit_code == 7
    assert launches_of(master, "gt-p1") == 1 and not first_reports.completions
    assert master.calls_of("RECONCILE")


def test_expired_failover_timeout_gives_a_new_framework_and_settles_old_tasks(
        master, make_runner, make_launch, make_reports, tmp_path):
    first = make_runner(make_reports(), failover_timeout=0.5)
    launch = make_launch("x1", "sleep 30")
    first.submit(launch)
    wait_state(master, "gt-x1", "TASK_RUNNING")
    first.close()
    master.wait_for(lambda: master.removed, what="framework removed")
    reports = make_reports()
    second = make_runner(reports)
    second.recover([tracked(launch)])
    master.wait_for(lambda: second.framework_id and second.framework_id != first.framework_id,
                    what="new framework id")
    done = reports.wait("x1")  # its task was killed with the old framework
    assert done.exit_code is None and "TASK_LOST" in done.reason
    assert (tmp_path / "framework_id").read_text().strip() == second.framework_id


def test_status_of_an_unknown_job_reconciles_it(master, make_runner, make_launch, make_reports):
    reports = make_reports()
    runner = make_runner(reports)
    launch = make_launch("u1", "exit 0")  # never submitted
    assert runner.status([tracked(launch)]) == {"u1": None}
    done = reports.wait("u1")
    assert "TASK_LOST" in done.reason and "REASON_RECONCILIATION" in done.reason


def test_a_second_scheduler_with_the_same_framework_id_fences_the_first(
        master, make_runner, make_launch, make_reports):
    first = make_runner(make_reports())
    second = make_runner(make_reports())
    assert second.framework_id == first.framework_id
    master.wait_for(lambda: first.fenced, what="the first scheduler to know it was taken over")
    assert first.wait_stopped(10), "fenced, it stopped instead of subscribing again"
    assert len(master.subscriptions) == 2
    with pytest.raises(MesosUnavailable, match="taken over"):
        first.submit(make_launch("late", "exit 0"))
    assert master.state()["frameworks"][0]["connected"]


def test_standby_master_redirects_to_the_leader(master, make_runner, make_reports):
    from mesos_master import FakeMesosMaster

    standby = FakeMesosMaster(agents=0, leader=master.address).start()
    try:
        runner = make_runner(make_reports(), address=standby.address)
        assert runner.framework_id in {f["id"] for f in master.state()["frameworks"]}
        assert not standby.subscriptions
    finally:
        standby.stop()
