"""A silent network cut between a worker and its broker: the worker reaches the broker through
a proxy of the test's own that stops forwarding, in both directions, for ~25 s without
closing a socket (a half-open connection: neither side is told), then forwards again.
Halfway through, the worker is replaced, as the health-check timer does with a worker that
stops answering (ops/systemd: galaxy-tasks-health@.timer). Jobs submitted with plain
`send_task` before, during and after the cut, by a client that never resends, each run once
and end ok within the bound docs/operations.md states: the visibility timeout, plus the
period of the workers' sweep over unacknowledged messages, plus a margin.

Where a message could go missing: a worker that waits for work has its take in flight on
Redis. A message taken by a take whose reply goes into the silent connection (sent before
the cut, or, as here, let through by the proxy when it forwards again what the killed worker
had written) never reaches a worker. kombu's `BRPOP` forgot such a message (it is written to
the `unacked` hash only once the worker has read it); galaxy-tasks' take records it there as
it pops it, so the next worker's sweep delivers it again once the visibility timeout has
passed. RabbitMQ keeps such a delivery unacknowledged and requeues it when the connection
closes."""
from __future__ import annotations

import os
import signal
import time
from urllib.parse import urlparse

import pytest

from galaxy_tasks.edge.brokers import RESTORE_INTERVAL_S
from tests.faults.checks import assert_exactly_once, ledger_command
from tests.support.bursts import every_process_alive
from tests.support.contract import ContractClient
from tests.support.proxy import SilentProxy

pytestmark = [pytest.mark.faults, pytest.mark.both_brokers]

CUT_S = float(os.environ.get("GT_CUT_S", "25"))
RECONCILE_FAST = dict(GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_CHECK_AFTER="3",
                      GALAXY_TASKS_CHECK_AFTER_MAX="6", GALAXY_TASKS_LAUNCH_LEASE="5")
VISIBILITY_S = 60  # the shortest allowed (config.MIN_VISIBILITY_TIMEOUT)
#: every job ends within this after the link is back (docs/operations.md, "Brokers"): a message
#: taken as the link came back is delivered again after the visibility timeout, at the next
#: sweep; the margin covers the replacement worker's start and the jobs' own run
BOUND_S = VISIBILITY_S + RESTORE_INTERVAL_S + 30


def test_jobs_submitted_around_a_silent_broker_cut_each_run_once_without_a_resend(make_broker, make_deployment,
                                                                                   tmp_path, broker_kind):
    broker = make_broker()
    deployment = make_deployment(broker, GALAXY_TASKS_VISIBILITY_TIMEOUT=str(VISIBILITY_S), **RECONCILE_FAST)
    target = urlparse(broker.url)
    proxy = SilentProxy(target.hostname or "127.0.0.1", target.port or 0)
    client = ContractClient(broker.url, "galaxy.cut", resend=False)
    through_proxy = {"GALAXY_TASKS_BROKER_URL": proxy.url_for(broker.url)}
    ledger = tmp_path / "ledger"
    try:
        first = deployment.worker(env=through_proxy)
        deployment.beat()  # beat and the client reach the broker directly

        def submit(batch: str, count: int = 1) -> list[str]:
            return [client.submit({"id": f"cut-{batch}-{i}", "tool_id": "cut",
                                   "command": ledger_command(ledger, "sleep 0.5")}) for i in range(count)]

        before = submit("before", 4)
        def launched() -> bool:
            jobs = [deployment.store.job(j) for j in before]
            return all(j is not None and j.state not in ("new", "queued", "submitting") for j in jobs)

        deployment.wait_until(launched, what="the jobs submitted before the cut launched")
        proxy.cut()
        cut_at = time.monotonic()
        during = submit("during0")  # delivered into the silent connection (RabbitMQ), or waiting (Redis)
        time.sleep(1)
        in_flight = broker.queue_length("galaxy_tasks") == 0  # left the queue, though no one can read it
        during += submit("during1")
        time.sleep(CUT_S / 2 - 1)
        first.kill(signal.SIGKILL)  # the health-check timer replaces the worker that no longer answers
        second = deployment.worker(env=through_proxy, wait=False)
        during += submit("during2")
        time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
        proxy.resume()
        resumed_at = time.monotonic()
        second.wait_ready(timeout=60)
        after = submit("after", 4)
        ids = before + during + after
        client.settle(timeout=BOUND_S)  # raises, naming each job not heard to end, past the bound
        settled_s = time.monotonic() - resumed_at
        assert every_process_alive(deployment) == [f"worker {first.log.name} exited -9"]
        assert client.resent == [] and client.unknown_answers == 0
        assert_exactly_once(deployment, ids, ledger, f"silent {CUT_S:.0f} s cut ({broker_kind})",
                            extra=f"in_flight_when_cut={int(in_flight)} all_ended_s_after_link_back={settled_s:.0f} "
                                  f"bound_s={BOUND_S}")
    finally:
        client.close()
        proxy.close()
