"""Fair share on a saturated destination, why a waiting job waits, and a rule that sends a
job where it waits least: the stub runner's slots on SQLite, each step called as the tasks call it (launch_in_turn for a launch
message, launch_turn for the wake-up a freed slot sends)."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from galaxy_tasks import lifecycle, routing
from galaxy_tasks.context import Context
from galaxy_tasks.errors import ConfigError
from galaxy_tasks.runners.stub import StubRunner
from galaxy_tasks.spec import parse
from tests.support.embedded import embedded_context

JOB_CONF = """
destinations:
  busy: {runner: stub, params: {slots: 2}}
  wide: {runner: stub, params: {slots: 4}}
  batch: {runner: stub, max_cores: 1}
default: busy
rules:
  - {tool: "pick*", destinations: [busy, wide, batch]}
shares:
  - {type: user, id: heavy, value: 3}
  - {type: group, id: lab, users: [bob, carol], value: 1}
"""


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    with embedded_context(tmp_path, JOB_CONF) as context:
        yield context


@pytest.fixture
def stub(ctx: Context) -> StubRunner:
    return StubRunner(ctx.routing.destinations["busy"].params, lambda _c: None, destination="busy")


def submit(ctx: Context, stub: StubRunner, user: str, destination: str = "busy") -> str:
    """A job through accept, prepare and its launch message, as the chain runs it."""
    job, _ = lifecycle.accept(ctx, parse({"tool_id": "t", "command": "true", "user": user,
                                          "destination": destination}))
    assert lifecycle.prepare(ctx, job.id)
    lifecycle.launch_in_turn(ctx, job.id, lambda _d: stub, owner=f"launch-{job.id}")
    return job.id


def end_one(ctx: Context, stub: StubRunner, job_id: str, destination: str = "busy") -> str | None:
    """The job ends; the freed slot's wake-up starts the next turn: which job it started."""
    assert lifecycle.finish(ctx, stub.end(job_id, exit_code=0)).moved is not None
    return lifecycle.launch_turn(ctx, destination, lambda _d: stub, owner=f"next-{job_id}").started


def user_of(ctx: Context, job_id: str | None) -> str | None:
    found = ctx.store.job(job_id) if job_id else None
    return found.user if found else None


def test_a_freed_slot_goes_to_the_user_with_fewest_running_and_each_users_order_is_kept(ctx, stub):
    alice = [submit(ctx, stub, "alice") for _ in range(6)]
    assert set(stub.running) == set(alice[:2]), "alice's first two fill both slots"
    dave, erin = submit(ctx, stub, "dave"), submit(ctx, stub, "erin")
    dave2 = submit(ctx, stub, "dave")
    assert ctx.store.job(dave).state == "queued" and ctx.store.job(dave).reason.startswith("waiting for a slot")
    # first in, first out would start alice[2], alice[3], alice[4] next
    assert end_one(ctx, stub, alice[0]) == dave
    # alice none running and erin none: a tie, and alice's waiting job is the older
    assert end_one(ctx, stub, alice[1]) == alice[2]
    assert end_one(ctx, stub, dave) == erin, "dave and erin none running (alice one): erin waited longer"
    assert end_one(ctx, stub, alice[2]) == alice[3]
    assert end_one(ctx, stub, erin) == dave2
    assert set(stub.running) == {alice[3], dave2}


def test_two_turns_taken_at_once_count_each_others_claim(ctx, stub, monkeypatch):
    alice = [submit(ctx, stub, "alice") for _ in range(4)]
    dave = submit(ctx, stub, "dave")
    for job_id in alice[:2]:  # both of alice's ends recorded together, before either turn
        assert lifecycle.finish(ctx, stub.end(job_id, exit_code=0)).moved is not None
    # the two turns read the line at the same moment if nothing keeps them apart, and one
    # goes on only once the other has claimed its job
    together, line = threading.Barrier(2), ctx.store.line

    def read_line(destination: str):
        try:
            second = together.wait(timeout=0.5) == 0
        except threading.BrokenBarrierError:
            second = False
        counted = line(destination)
        if second:
            time.sleep(0.3)
        return counted

    monkeypatch.setattr(ctx.store, "line", read_line)
    started: list[str | None] = []
    turns = [threading.Thread(target=lambda: started.append(
        lifecycle.launch_turn(ctx, "busy", lambda _d: stub, owner=f"next-{n}").started)) for n in range(2)]
    for thread in turns:
        thread.start()
    for thread in turns:
        thread.join(10)
    # alice none running and dave none: alice's older job first; then alice holds one, dave none
    assert sorted(started) == sorted([alice[2], dave]), [user_of(ctx, job_id) for job_id in started]


def test_a_share_weighs_the_turns(ctx, stub):
    wide = StubRunner(ctx.routing.destinations["wide"].params, lambda _c: None, destination="wide")
    heavy = [submit(ctx, wide, "heavy", "wide") for _ in range(6)]
    dave = [submit(ctx, wide, "dave", "wide") for _ in range(2)]
    assert end_one(ctx, wide, heavy[0], "wide") == dave[0], "heavy 3 running for a share of 3, dave none"
    # heavy 2 running for its share of 3 (0.67) against dave's 1 for 1: heavy, though it runs more
    assert end_one(ctx, wide, heavy[1], "wide") == heavy[4]
    assert end_one(ctx, wide, heavy[2], "wide") == heavy[5], "the same again"
    assert end_one(ctx, wide, heavy[3], "wide") == dave[1], "heavy has no more waiting"


def test_a_groups_users_share_one_place_in_line(ctx, stub):
    alice = [submit(ctx, stub, "alice") for _ in range(2)]
    carol, bob = submit(ctx, stub, "carol"), submit(ctx, stub, "bob")
    alice += [submit(ctx, stub, "alice") for _ in range(2)]
    assert end_one(ctx, stub, alice[0]) == carol, "the lab has none running; carol is its user waiting longest"
    # alice none running, the lab (carol) one: alice's, though bob alone would have none running
    assert end_one(ctx, stub, alice[1]) == alice[2]
    assert end_one(ctx, stub, carol) == bob


def test_a_waiting_job_says_what_it_waits_for_its_place_and_when_it_may_start(ctx, stub):
    alice = [submit(ctx, stub, "alice") for _ in range(5)]
    for job_id in alice[:2]:  # two runs of the destination ended: the estimate has run times
        lifecycle.finish(ctx, stub.end(job_id, exit_code=0))
        lifecycle.launch_turn(ctx, "busy", lambda _d: stub)
    last = ctx.store.job(alice[4])
    wait = lifecycle.why_waiting(ctx, last)
    assert wait.waits_for == "slot" and wait.place == 0
    dave = submit(ctx, stub, "dave")
    wait = lifecycle.why_waiting(ctx, ctx.store.job(dave))
    assert (wait.waits_for, wait.place) == ("slot", 0), "dave has nothing running: his job goes first"
    wait = lifecycle.why_waiting(ctx, ctx.store.job(alice[4]))
    assert wait.waits_for == "share" and wait.place == 1, wait
    assert "1 job(s) of other users first" in wait.detail
    event = ctx.store.job(dave)
    assert event.event_seq == 3 and "all 2 slots of destination busy" in event.reason, \
        "the job's event (a change of its own) says why it waits"


def test_a_rule_with_several_destinations_sends_the_job_where_it_waits_least(ctx, stub):
    def route(**fields: object):
        return ctx.routing.explain(parse({"tool_id": "pick_me", "command": "true", **fields}),
                                   lambda d: lifecycle.load_of(ctx, d))

    assert route().destination.name == "busy", "nothing waits anywhere: the rule's first destination"
    for _ in range(3):  # busy: both slots taken and one job waiting
        submit(ctx, stub, "alice")
    routed = route()
    assert routed.destination.name == "wide"
    assert (routed.loads["busy"].running, routed.loads["busy"].waiting, routed.loads["busy"].slots) == (2, 1, 2)
    assert routed.loads["busy"].expected_wait_s > 0 == routed.loads["wide"].expected_wait_s
    assert "the shortest expected wait of 3" in routed.why and "busy: 2 running, 1 waiting, 2 slots" in routed.why
    assert route(cores=2).destination.name in ("busy", "wide") and "batch" not in route(cores=2).loads, \
        "a destination that refuses the job is no candidate"
    assert ctx.routing.explain(parse({"tool_id": "pick_me", "command": "true"})).destination.name == "busy", \
        "without live figures (no database at hand): the first that fits"


def test_shares_are_checked_when_the_job_conf_loads():
    base = "destinations: {busy: {runner: stub}}\nshares:\n"
    for text, error in (("  - {type: user, id: a, value: 0}", "value: must be a number above 0"),
                        ("  - {type: team, id: a, value: 1}", "type: must be user or group"),
                        ("  - {type: group, id: g, value: 1}", "a group needs users"),
                        ("  - {type: group, id: g, users: [a], value: 1}\n  - {type: group, id: h, users: [a], "
                         "value: 1}", "already in group 'g'"),
                        ("  - {type: user, id: a, value: 1}\nrules:\n  - {destinations: [busy]}",
                         "at least two destinations"),
                        ("  - {type: user, id: a, value: 1}\nrules:\n  - {destination: busy, destinations: [busy, busy]}",
                         "must be a mapping with a 'destination'")):
        with pytest.raises(ConfigError, match=error) as raised:
            routing.parse(__import__("galaxy_tasks.yamlconf", fromlist=["x"]).loads(base + text))
        assert "shares[" in str(raised.value) or "rules[" in str(raised.value)
